/* node.c: the node's round protocol as (state, input) -> actions (node.h).
 * Every function here runs on the thread that feeds the machine; it reads no
 * clock, socket or file and keeps no static state. */
#include "node/node.h"

#include "core/error.h"
#include "core/log.h"
#include "core/sha256.h"
#include "proto/proto.h"
#include "proto/spes.pb-c.h"

#include <stdarg.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NS(x) SPES__WIRE__NODE_STATE__NODE_STATE_##x
#define RETRY_MS 500          /* announce and digest retry */
#define JOIN_RETRY_MS 1000    /* join retry without a retry_after_ms */
#define CONFIG_RETRY_MS 5000  /* the run config did not parse */
#define PREPARE_RETRY_MS 2000 /* S_round could not be had */
#define APPLY_RETRY_MS 1000   /* a commit could not be applied */

/* ---- the action queue ---- */

static spes_node_action *push(spes_node_out *o, int kind)
{
    if (o->head + o->n == o->cap) {
        if (o->head > 0) {
            memmove(o->v, o->v + o->head, o->n * sizeof *o->v);
            o->head = 0;
        }
        if (o->n == o->cap) {
            size_t cap = o->cap ? 2 * o->cap : 16;
            spes_node_action *v = realloc(o->v, cap * sizeof *v);
            if (!v)
                return NULL;
            o->v = v;
            o->cap = cap;
        }
    }
    spes_node_action *a = &o->v[o->head + o->n++];
    memset(a, 0, sizeof *a);
    a->kind = kind;
    return a;
}

int spes_node_out_pop(spes_node_out *o, spes_node_action *a)
{
    if (o->n == 0)
        return 0;
    *a = o->v[o->head++];
    if (--o->n == 0)
        o->head = 0;
    return 1;
}

void spes_node_action_fini(spes_node_action *a)
{
    free(a->data);
    a->data = NULL;
    spes_node_job_free(a->job);
    a->job = NULL;
}

void spes_node_out_fini(spes_node_out *o)
{
    spes_node_action a;
    while (spes_node_out_pop(o, &a))
        spes_node_action_fini(&a);
    free(o->v);
    memset(o, 0, sizeof *o);
}

__attribute__((format(printf, 3, 4))) static void say(spes_node_out *o, int level, const char *fmt, ...)
{
    spes_node_action *a = push(o, SPES_NODE_ACT_LOG);
    if (!a)
        return;
    a->level = level;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->text, sizeof a->text, fmt, ap);
    va_end(ap);
}

static void emit_job(spes_node_sm *sm, spes_node_out *o, spes_node_job *j)
{
    spes_node_action *a = push(o, SPES_NODE_ACT_JOB);
    if (!a) {
        spes_node_job_free(j);
        return;
    }
    a->job = j;
    sm->busy++;
}

static void emit_cancel(spes_node_out *o, int value)
{
    spes_node_action *a = push(o, SPES_NODE_ACT_CANCEL);
    if (a)
        a->value = value;
}

static void emit_stopped(spes_node_sm *sm, spes_node_out *o)
{
    sm->phase = SPES_NODE_DONE;
    push(o, SPES_NODE_ACT_STOPPED);
}

/* send encodes m as a call; on failure the call is answered at once as failed. */
static void send_call(spes_node_sm *sm, int call, int type, const ProtobufCMessage *m, int timeout_ms,
                      uint64_t now, spes_node_out *o)
{
    uint8_t *buf;
    size_t len;
    if (spes_proto_encode(type, m, &buf, &len) != 0) {
        say(o, SPES_LOG_ERROR, "cannot encode message type %d: %s", type, spes_errmsg());
        sm->calls++;
        spes_node_sm_reply(sm, call, SPES_EINVAL, "cannot encode", NULL, 0, now, o);
        return;
    }
    spes_node_action *a = push(o, SPES_NODE_ACT_SEND);
    if (!a) {
        free(buf);
        return;
    }
    a->call = call;
    a->type = type;
    a->data = buf;
    a->len = len;
    a->timeout_ms = timeout_ms;
    sm->calls++;
}

/* ---- jobs ---- */

void spes_node_job_free(spes_node_job *j)
{
    if (!j)
        return;
    free(j->peers);
    switch (j->kind) {
    case SPES_NODE_JOB_TRAIN:
        free(j->u.train.cols);
        free(j->u.train.shard);
        break;
    case SPES_NODE_JOB_APPLY:
        free(j->u.apply.contribs);
        free(j->u.apply.agg);
        break;
    case SPES_NODE_JOB_AGGREGATE:
        for (int i = 0; i < j->u.aggregate.ntasks; i++) {
            spes_node_shard_task *t = &j->u.aggregate.task[i];
            free(t->in);
            free(t->ok);
            free(t->missing);
            free(t->why);
        }
        free(j->u.aggregate.task);
        break;
    case SPES_NODE_JOB_VALIDATE:
        free(j->u.validate.contribs);
        free(j->u.validate.cols);
        free(j->u.validate.ok);
        free(j->u.validate.reasons);
        break;
    default: break;
    }
    free(j);
}

/* add_peer lists url as a fetch source once; the coordinator (id UINT32_MAX)
 * is often a training node too, and then the entry keeps both marks. */
static void add_peer(const spes_node_sm *sm, spes_node_job *j, uint32_t id, const char *url, const char *name)
{
    if (!url[0] || !strcmp(url, sm->o.listen))
        return; /* never ask ourselves, nor a node nobody can dial (it pushed its blobs) */
    for (int i = 0; i < j->npeers; i++)
        if (!strcmp(j->peers[i].url, url)) {
            if (id == UINT32_MAX) {
                j->peers[i].is_coord = 1;
            } else {
                j->peers[i].id = id;
                snprintf(j->peers[i].name, sizeof j->peers[i].name, "%s", name);
            }
            return;
        }
    spes_node_peer *p = &j->peers[j->npeers++];
    snprintf(p->url, sizeof p->url, "%s", url);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->is_coord = id == UINT32_MAX;
    p->id = id;
}

/* new_job makes a job with room for npeers peers besides the coordinator,
 * which holds every committed blob and state and so is always a source. */
static spes_node_job *new_job(spes_node_sm *sm, int kind, size_t npeers)
{
    spes_node_job *j = calloc(1, sizeof *j);
    if (!j || !(j->peers = calloc(npeers + 1, sizeof *j->peers))) {
        free(j);
        return NULL;
    }
    j->kind = kind;
    j->node_id = sm->id;
    if (sm->o.coordinator && sm->o.coordinator[0])
        add_peer(sm, j, UINT32_MAX, sm->o.coordinator, "");
    return j;
}

/* train_job hands out the training of round (from step) on the columns set
 * in cols (E bytes); overlap: from the node's own parameters (docs/design.md,
 * "Overlap"). */
static void train_job(spes_node_sm *sm, uint64_t round, uint64_t step, int overlap, const uint8_t *cols,
                      uint64_t now, spes_node_out *o)
{
    spes_node_job *j = new_job(sm, SPES_NODE_JOB_TRAIN, 0);
    if (!j || !(j->u.train.cols = calloc((size_t)sm->E, 1))) {
        spes_node_job_free(j);
        say(o, SPES_LOG_ERROR, "out of memory starting round %llu", (unsigned long long)round);
        return;
    }
    j->u.train.round = round;
    j->u.train.step = step;
    j->u.train.overlap = overlap;
    j->u.train.members = sm->members;
    j->u.train.E = sm->E;
    j->u.train.shards = overlap ? 0 : sm->shards; /* ahead: the commit that makes S_round says */
    memcpy(j->u.train.cols, cols, (size_t)sm->E);
    int ncols = 0;
    for (int e = 0; e < sm->E; e++)
        ncols += cols[e] != 0;
    sm->training = 1;
    sm->job_round = round;
    sm->job_t0 = now;
    say(o, SPES_LOG_INFO, "round %llu: training columns of %d expert(s) for %d steps from step %llu%s",
        (unsigned long long)round, ncols, sm->run.spes.sync_interval, (unsigned long long)step,
        overlap ? " (overlapped with the sync of the round before)" : "");
    emit_job(sm, o, j);
}

/* start_train trains the round of the agreed state held, from it, on the
 * columns an Accept dealt (the version-1 start, and every start after a join). */
static void start_train(spes_node_sm *sm, const uint32_t *cols, size_t ncols, uint64_t now, spes_node_out *o)
{
    memset(sm->cols, 0, (size_t)sm->E);
    for (size_t i = 0; i < ncols; i++)
        if (cols[i] < (uint32_t)sm->E)
            sm->cols[cols[i]] = 1;
    sm->phase = SPES_NODE_TRAIN;
    train_job(sm, sm->round, sm->step, 0, sm->cols, now, o);
}

/* same_columns says whether an Accept deals exactly the columns set in cols (E bytes). */
static int same_columns(const spes_node_sm *sm, const uint32_t *cols, size_t ncols, const uint8_t *have)
{
    int n = 0;
    for (int e = 0; e < sm->E; e++)
        n += have[e] != 0;
    if ((size_t)n != ncols)
        return 0;
    for (size_t i = 0; i < ncols; i++)
        if (cols[i] >= (uint32_t)sm->E || !have[cols[i]])
            return 0;
    return 1;
}

/* drop_ready forgets an overlapped round trained ahead (its blob is collected with the store's others). */
static void drop_ready(spes_node_sm *sm)
{
    spes_node_job_free(sm->ready);
    sm->ready = NULL;
}

/* to_join makes the node join again (and fetch the agreed state): a training
 * job still out is ended first, and what it trained ahead is dropped. */
static void to_join(spes_node_sm *sm, spes_node_out *o)
{
    sm->phase = SPES_NODE_JOIN;
    drop_ready(sm);
    if (sm->training)
        emit_cancel(o, 2);
}

/* announce_trained takes a finished train job's contribution for announcing;
 * with overlap the next round's training starts at once, from here. */
static void announce_trained(spes_node_sm *sm, const spes_node_job *j, uint64_t t0, uint64_t t1, uint64_t now,
                             spes_node_out *o)
{
    const spes_node_job_train *t = &j->u.train;
    sm->train_round = t->round;
    sm->t_train0 = t0;
    sm->t_train1 = t1;
    memcpy(sm->pending_blob, t->blob, 32);
    memcpy(sm->pending_manifest, t->manifest, 32);
    sm->pending_size = t->size;
    sm->pending_tokens = t->tokens;
    sm->pending_loss = t->loss_mean;
    free(sm->pending_shards);
    sm->pending_shards = NULL;
    sm->npending_shards = 0;
    if (t->nshards && (sm->pending_shards = malloc((size_t)t->nshards * sizeof *sm->pending_shards))) {
        memcpy(sm->pending_shards, t->shard, (size_t)t->nshards * sizeof *sm->pending_shards);
        sm->npending_shards = t->nshards;
    }
    sm->phase = SPES_NODE_ANNOUNCE;
    sm->next_try_ms = 0;
    uint64_t next = t->step + (uint64_t)sm->run.spes.sync_interval;
    if (sm->run.spes.overlap && !sm->training && next < (uint64_t)sm->run.train.max_steps)
        train_job(sm, t->round + 1, next, 1, t->cols, now, o); /* not past the run's end */
}

/* diverged says whether the run's agreed state of our round (hash, 32 bytes
 * when known) differs from ours: then we must not train on ours or apply a
 * commit to it. We join again, which fetches the agreed state (our own copy of
 * the round no longer matches it, so it is not reused). */
static int diverged(spes_node_sm *sm, const ProtobufCBinaryData *hash, spes_node_out *o)
{
    if (hash->len != 32 || !sm->have_state || !memcmp(hash->data, sm->hash, 32))
        return 0;
    char mine[65], agreed[65];
    spes_hex_encode(sm->hash, 32, mine);
    spes_hex_encode(hash->data, 32, agreed);
    say(o, SPES_LOG_ERROR,
        "round %llu: this node's state (digest %.16s) is not the run's agreed one (%.16s): joining again to "
        "fetch it",
        (unsigned long long)sm->round, mine, agreed);
    to_join(sm, o);
    return 1;
}

static void copy32(uint8_t *dst, const ProtobufCBinaryData *b)
{
    memset(dst, 0, 32);
    memcpy(dst, b->data, b->len < 32 ? b->len : 32);
}

/* group_of fills x with a sharded round's blob b (absent: no hash) of node and shard. */
static void group_of(spes_node_group *x, uint32_t node, uint32_t shard, const Spes__Wire__Group *b)
{
    x->node = node;
    x->shard = shard;
    if (b) {
        copy32(x->hash, &b->blob_hash);
        copy32(x->manifest, &b->manifest_hash);
        x->size = b->size;
    }
}

static void start_apply(spes_node_sm *sm, const Spes__Wire__Commit *cm, spes_node_out *o)
{
    if (sm->o.hooks.commit)
        sm->o.hooks.commit(sm->o.hooks.arg, cm, sm->id);
    if (diverged(sm, &cm->base_hash, o))
        return;
    sm->members = cm->n_peers > INT_MAX ? INT_MAX : (int)cm->n_peers; /* every active member is a peer */
    spes_node_job *j = new_job(sm, SPES_NODE_JOB_APPLY, cm->n_peers);
    spes_node_job_apply *a = j ? &j->u.apply : NULL;
    if (!j || !(a->contribs = calloc(cm->n_contributions + 1, sizeof *a->contribs))) {
        spes_node_job_free(j);
        say(o, SPES_LOG_ERROR, "out of memory applying round %llu", (unsigned long long)cm->round);
        return;
    }
    a->round = sm->round;
    a->merge = cm->merge_applied;
    const char *ck = cm->checkpoint_id ? cm->checkpoint_id : "";
    if (ck[0] == '.' || strchr(ck, '/')) { /* it names a directory under checkpoints/ */
        say(o, SPES_LOG_WARN, "round %llu: checkpoint id \"%.64s\" refused", (unsigned long long)cm->round,
            ck);
        ck = "";
    }
    snprintf(a->ckpt_id, sizeof a->ckpt_id, "%s", ck);
    a->next_step = cm->next_step;
    for (size_t i = 0; i < cm->n_peers; i++)
        add_peer(sm, j, cm->peers[i]->node_id, cm->peers[i]->listen_url, cm->peers[i]->name);
    for (size_t i = 0; i < cm->n_contributions; i++) {
        spes_node_contrib *c = &a->contribs[a->ncontrib++];
        c->node = cm->contributions[i]->node_id;
        copy32(c->hash, &cm->contributions[i]->blob_hash);
        copy32(c->manifest, &cm->contributions[i]->manifest_hash);
    }
    for (size_t i = 0; i < cm->n_refused; i++)
        a->refused_self |= cm->refused[i]->node_id == sm->id;
    a->shards = (int)cm->shards;
    a->next_shards = (int)cm->next_shards;
    if (cm->n_aggregates && !(a->agg = calloc(cm->n_aggregates, sizeof *a->agg))) {
        spes_node_job_free(j);
        say(o, SPES_LOG_ERROR, "out of memory applying round %llu", (unsigned long long)cm->round);
        return;
    }
    for (size_t i = 0; i < cm->n_aggregates; i++)
        group_of(&a->agg[a->nagg++], cm->aggregates[i]->node_id, cm->aggregates[i]->shard,
                 cm->aggregates[i]->blob);
    char list[512] = "", hex[17];
    for (int i = 0; i < a->ncontrib; i++) {
        size_t at = strlen(list);
        spes_hex_encode(a->contribs[i].hash, 8, hex);
        snprintf(list + at, sizeof list - at, "%s%u:%s", i ? " " : "", a->contribs[i].node, hex);
    }
    say(o, SPES_LOG_DEBUG, "round %llu: applying contributions %s", (unsigned long long)cm->round, list);
    sm->phase = SPES_NODE_APPLY;
    emit_job(sm, o, j);
}

/* aggregate_task copies one shard task of an AggregateTask into t, adding its inputs' authors as
 * peers of j; 0, or -1 when out of memory. */
static int aggregate_task(spes_node_sm *sm, spes_node_job *j, spes_node_shard_task *t,
                          const Spes__Wire__ShardTask *w)
{
    size_t n = w->n_inputs ? w->n_inputs : 1;
    t->shard = w->shard;
    t->attempt = w->attempt;
    t->in = calloc(n, sizeof *t->in);
    t->ok = calloc(n, sizeof *t->ok);
    t->missing = calloc(n, sizeof *t->missing);
    t->why = calloc(n, sizeof *t->why);
    if (!t->in || !t->ok || !t->missing || !t->why)
        return -1;
    for (size_t k = 0; k < w->n_inputs; k++) {
        const Spes__Wire__ShardInput *x = w->inputs[k];
        group_of(&t->in[t->n++], x->node_id, w->shard, x->blob);
        add_peer(sm, j, x->node_id, x->listen_url, x->name);
    }
    return 0;
}

/* start_aggregate starts the coordinator's aggregation tasks on the agreed state held (sharded
 * rounds; docs/design.md, "The sharded round"), unless an aggregate job is out or owed already. */
static void start_aggregate(spes_node_sm *sm, const Spes__Wire__AggregateTask *w, spes_node_out *o)
{
    if (sm->aggregating || sm->agg_done || !sm->have_state || w->round != sm->round || !w->n_tasks ||
        w->base_hash.len != 32 || memcmp(w->base_hash.data, sm->hash, 32) || sm->phase == SPES_NODE_APPLY ||
        sm->phase == SPES_NODE_PREPARE || sm->phase == SPES_NODE_JOIN)
        return; /* the coordinator asks again at the next heartbeat */
    size_t npeers = 0;
    int too_many = w->shards > SPES_NODE_MAX_SHARDS || w->n_tasks > SPES_NODE_MAX_SHARDS;
    for (size_t i = 0; i < w->n_tasks; i++) {
        too_many |= w->tasks[i]->n_inputs > SPES_MAX_MEMBERS; /* a contribution per member at most */
        npeers += w->tasks[i]->n_inputs;
    }
    if (too_many) {
        say(o, SPES_LOG_WARN,
            "round %llu: aggregation task refused: %zu task(s) of %u shard(s), or more "
            "inputs than a run has members",
            (unsigned long long)w->round, w->n_tasks, w->shards);
        return;
    }
    spes_node_job *j = new_job(sm, SPES_NODE_JOB_AGGREGATE, npeers);
    spes_node_job_aggregate *a = j ? &j->u.aggregate : NULL;
    if (!j || !(a->task = calloc(w->n_tasks, sizeof *a->task))) {
        spes_node_job_free(j);
        return;
    }
    a->round = w->round;
    a->shards = (int)w->shards;
    for (size_t i = 0; i < w->n_tasks; i++)
        if (aggregate_task(sm, j, &a->task[a->ntasks++], w->tasks[i]) != 0) {
            spes_node_job_free(j);
            return;
        }
    say(o, SPES_LOG_DEBUG, "round %llu: aggregating %d shard(s) of %u, %d contribution(s) each",
        (unsigned long long)w->round, a->ntasks, w->shards, a->task[0].n);
    sm->aggregating = 1;
    emit_job(sm, o, j);
}

/* send_report reports a finished aggregate job to the coordinator. */
static void send_report(spes_node_sm *sm, uint64_t now, spes_node_out *o)
{
    spes_node_job *j = sm->agg_done;
    const spes_node_job_aggregate *a = &j->u.aggregate;
    Spes__Wire__AggregateReport r = SPES__WIRE__AGGREGATE_REPORT__INIT;
    Spes__Wire__ShardResult *rv = calloc((size_t)a->ntasks, sizeof *rv),
                            **rp = calloc((size_t)a->ntasks, sizeof *rp);
    Spes__Wire__Group *gv = calloc((size_t)a->ntasks, sizeof *gv);
    size_t nv = 0;
    for (int i = 0; i < a->ntasks; i++)
        nv += (size_t)a->task[i].n;
    Spes__Wire__InputVerdict *vv = calloc(nv + 1, sizeof *vv), **vp = calloc(nv + 1, sizeof *vp);
    if (rv && rp && gv && vv && vp) {
        size_t at = 0;
        for (int i = 0; i < a->ntasks; i++) {
            const spes_node_shard_task *t = &a->task[i];
            spes__wire__shard_result__init(&rv[i]);
            rv[i].shard = t->shard;
            rv[i].attempt = t->attempt;
            rv[i].verdicts = vp + at;
            for (int k = 0; k < t->n; k++, at++) {
                spes__wire__input_verdict__init(&vv[at]);
                vv[at].node_id = t->in[k].node;
                vv[at].ok = t->ok[k];
                vv[at].missing = t->missing[k];
                vv[at].reason = (char *)t->why[k];
                vp[at] = &vv[at];
            }
            rv[i].n_verdicts = (size_t)t->n;
            if (t->have) {
                spes__wire__group__init(&gv[i]);
                gv[i].blob_hash = (ProtobufCBinaryData){32, (uint8_t *)t->out.hash};
                gv[i].manifest_hash = (ProtobufCBinaryData){32, (uint8_t *)t->out.manifest};
                gv[i].size = t->out.size;
                rv[i].aggregate = &gv[i];
            }
            rp[i] = &rv[i];
        }
        r.node_id = sm->id;
        r.round = a->round;
        r.results = rp;
        r.n_results = (size_t)a->ntasks;
        send_call(sm, SPES_NODE_CALL_REPORT, SPES_MSG_AGGREGATE_REPORT, &r.base, SPES_NODE_CALL_TIMEOUT_MS,
                  now, o);
    }
    free(rv);
    free(rp);
    free(gv);
    free(vv);
    free(vp);
    spes_node_job_free(j);
    sm->agg_done = NULL; /* lost with its reply or not: the coordinator hands the task out again */
}

/* ---- replies ---- */

static const char *error_text(int type, ProtobufCMessage *msg)
{
    if (type == SPES_MSG_ERROR)
        return ((Spes__Wire__Error *)msg)->message;
    if (type == SPES_MSG_REJECT)
        return ((Spes__Wire__Reject *)msg)->reason;
    return "unexpected reply";
}

static void on_report_reply(spes_node_sm *sm, const char *err, int type, ProtobufCMessage *msg,
                            spes_node_out *o)
{
    (void)sm;
    if (err || type != SPES_MSG_ACK)
        say(o, SPES_LOG_WARN, "aggregate report not taken: %s", err ? err : error_text(type, msg));
}

static void retry_later(spes_node_sm *sm, uint64_t now, uint64_t ms)
{
    sm->next_try_ms = now + ms;
}

static void try_leave(spes_node_sm *sm, uint64_t now, spes_node_out *o);

static void on_digest_reply(spes_node_sm *sm, const char *err, int type, ProtobufCMessage *msg, uint64_t now,
                            spes_node_out *o)
{
    if (err || type == SPES_MSG_ERROR) {
        say(o, SPES_LOG_WARN, "digest report failed: %s", err ? err : error_text(type, msg));
        retry_later(sm, now, RETRY_MS);
        return;
    }
    if (sm->phase == SPES_NODE_DIGEST)
        sm->phase = SPES_NODE_IDLE;
}

static void on_announce_reply(spes_node_sm *sm, const char *err, int type, ProtobufCMessage *msg,
                              uint64_t now, spes_node_out *o)
{
    if (err) {
        say(o, SPES_LOG_WARN, "announce failed (%s); retrying", err);
        retry_later(sm, now, RETRY_MS);
        return;
    }
    if (type != SPES_MSG_ACK)
        say(o, SPES_LOG_WARN, "round %llu: contribution not taken: %s", (unsigned long long)sm->round,
            error_text(type, msg));
    if (sm->phase == SPES_NODE_ANNOUNCE)
        sm->phase = SPES_NODE_WAIT;
}

static void on_heartbeat_reply(spes_node_sm *sm, const char *err, int type, ProtobufCMessage *msg,
                               const uint8_t *raw, size_t len, uint64_t now, spes_node_out *o)
{
    if (err) {
        say(o, SPES_LOG_DEBUG, "heartbeat failed: %s", err);
        return;
    }
    if (sm->o.hooks.heartbeat_reply)
        sm->o.hooks.heartbeat_reply(sm->o.hooks.arg, type, msg);
    if (type == SPES_MSG_COMMIT) {
        const Spes__Wire__Commit *cm = (const Spes__Wire__Commit *)msg;
        if (cm->round != sm->round)
            return;
        if (sm->phase == SPES_NODE_IDLE || sm->phase == SPES_NODE_WAIT || sm->phase == SPES_NODE_ANNOUNCE) {
            if (sm->phase == SPES_NODE_IDLE) { /* the round closed without us: what we train for it is late */
                drop_ready(sm);
                if (sm->training && sm->job_round <= sm->round)
                    emit_cancel(o, 2);
            }
            start_apply(sm, cm, o); /* a late announce reply finds the phase moved on */
        } else if (sm->phase == SPES_NODE_TRAIN) {
            /* the round closed without us: abandon, then apply */
            free(sm->pending_commit);
            sm->pending_commit = malloc(len);
            sm->pending_commit_len = 0;
            if (sm->pending_commit) {
                memcpy(sm->pending_commit, raw, len);
                sm->pending_commit_len = len;
            }
            emit_cancel(o, 2);
        }
    } else if (type == SPES_MSG_ACCEPT) {
        const Spes__Wire__Accept *a = (const Spes__Wire__Accept *)msg;
        if (sm->phase == SPES_NODE_IDLE && a->round == sm->round && a->n_columns > 0 && sm->have_state) {
            if (diverged(sm, &a->state_hash, o))
                return;
            sm->shards = (int)a->shards;
            if (sm->ready && sm->ready->u.train.round == sm->round &&
                sm->ready->u.train.nshards == (sm->run.spes.sharded ? (int)a->shards : 0) &&
                same_columns(sm, a->columns, a->n_columns, sm->ready->u.train.cols)) {
                spes_node_job *r = sm->ready; /* trained ahead, overlapped: announce it now */
                sm->ready = NULL;
                announce_trained(sm, r, sm->ready_t0, sm->ready_t1, now, o);
                spes_node_job_free(r);
                spes_node_sm_tick(sm, now, o);
            } else if (sm->training && sm->job_round == sm->round) {
                if (same_columns(sm, a->columns, a->n_columns, sm->cols)) {
                    sm->dealt_round = sm->round; /* announced as soon as it ends */
                } else {
                    say(o, SPES_LOG_INFO,
                        "round %llu: columns dealt anew; the overlapped training is dropped",
                        (unsigned long long)sm->round);
                    emit_cancel(o, 2); /* its end brings us back here */
                }
            } else if (!sm->training) {
                drop_ready(sm);
                start_train(sm, a->columns, a->n_columns, now, o);
            }
        } else if (sm->phase == SPES_NODE_WAIT && a->round == sm->round && sm->train_round == sm->round) {
            sm->phase = SPES_NODE_ANNOUNCE; /* the coordinator lost our announcement (it restarted) */
            sm->next_try_ms = 0;
        }
    } else if (type == SPES_MSG_AGGREGATE_TASK) {
        start_aggregate(sm, (const Spes__Wire__AggregateTask *)msg, o);
    } else if (type == SPES_MSG_REJECT) {
        const Spes__Wire__Reject *r = (const Spes__Wire__Reject *)msg;
        if (r->code == SPES__WIRE__ERROR_CODE__ERROR_WRONG_ROUND ||
            r->code == SPES__WIRE__ERROR_CODE__ERROR_NOT_MEMBER) {
            if (sm->phase == SPES_NODE_IDLE || sm->phase == SPES_NODE_WAIT) {
                say(o, SPES_LOG_WARN, "coordinator: %s; joining again", r->reason);
                to_join(sm, o);
            } else { /* said again at every heartbeat while a job runs: acted on once it ends */
                say(o, SPES_LOG_DEBUG, "coordinator: %s (once the running job ends)", r->reason);
            }
        }
    }
}

/* take_run adopts the run config of the first Accept. */
static int take_run(spes_node_sm *sm, const Spes__Wire__Accept *a, spes_node_out *o)
{
    spes_config_defaults(&sm->run);
    if (spes_config_parse_json(&sm->run, a->run_config_json, "run config from the coordinator") ||
        spes_config_validate(&sm->run) ||
        (sm->o.data && sm->o.data[0] && spes_config_set_data(&sm->run, sm->o.data) != 0) ||
        !(sm->cols = calloc((size_t)sm->run.model.num_experts + 1, 1))) {
        say(o, SPES_LOG_ERROR, "%s", spes_errmsg());
        spes_config_fini(&sm->run);
        return -1;
    }
    sm->E = sm->run.model.num_experts;
    sm->have_run = 1;
    return 0;
}

static void on_join_reply(spes_node_sm *sm, const char *err, int type, ProtobufCMessage *msg, uint64_t now,
                          spes_node_out *o)
{
    if (!err && type == SPES_MSG_REJECT &&
        ((Spes__Wire__Reject *)msg)->code == SPES__WIRE__ERROR_CODE__ERROR_NOT_MEMBER) {
        say(o, SPES_LOG_ERROR, "coordinator: %s; stopping this daemon", ((Spes__Wire__Reject *)msg)->reason);
        sm->joined = 0; /* nothing to leave */
        spes_node_sm_stop(sm, o);
        return;
    }
    if (err || type != SPES_MSG_ACCEPT) {
        uint32_t retry = !err && type == SPES_MSG_REJECT ? ((Spes__Wire__Reject *)msg)->retry_after_ms : 0;
        say(o, SPES_LOG_WARN, "join: %s", err ? err : error_text(type, msg));
        retry_later(sm, now, retry ? retry : JOIN_RETRY_MS);
        return;
    }
    const Spes__Wire__Accept *a = (const Spes__Wire__Accept *)msg;
    if (!sm->have_run && take_run(sm, a, o) != 0) {
        retry_later(sm, now, CONFIG_RETRY_MS);
        return;
    }
    sm->id = a->node_id;
    sm->joined = 1;
    say(o, SPES_LOG_INFO, "joined run %s as node %u at round %llu (step %llu)", a->run_id, a->node_id,
        (unsigned long long)a->round, (unsigned long long)a->step);
    size_t npeers = a->n_peers < SPES_NODE_STATE_PEERS ? a->n_peers : SPES_NODE_STATE_PEERS;
    spes_node_job *j = new_job(sm, SPES_NODE_JOB_PREPARE, npeers);
    if (!j)
        return;
    for (size_t i = 0; i < npeers; i++) /* those holding the state: it comes from all at once */
        if (a->peers[i]->listen_url[0])
            add_peer(sm, j, a->peers[i]->node_id, a->peers[i]->listen_url, a->peers[i]->name);
    spes_node_job_prepare *p = &j->u.prepare;
    p->round = a->round;
    p->step = a->step;
    copy32(p->hash, &a->state_hash);
    p->have_held = sm->have_state;
    p->held_round = sm->round;
    memcpy(p->held_hash, sm->hash, 32);
    free(sm->accept_cols);
    sm->accept_cols = malloc(sizeof *sm->accept_cols * (a->n_columns ? a->n_columns : 1));
    sm->accept_ncols = sm->accept_cols ? a->n_columns : 0;
    sm->shards = (int)a->shards;
    if (sm->accept_cols && a->n_columns)
        memcpy(sm->accept_cols, a->columns, sizeof *sm->accept_cols * a->n_columns);
    sm->phase = SPES_NODE_PREPARE;
    emit_job(sm, o, j);
}

static void on_leave_reply(spes_node_sm *sm, spes_node_out *o)
{
    emit_stopped(sm, o);
}

void spes_node_sm_reply(spes_node_sm *sm, int call, int rc, const char *err, const uint8_t *data, size_t len,
                        uint64_t now, spes_node_out *out)
{
    if (sm->calls > 0)
        sm->calls--;
    int type = 0;
    ProtobufCMessage *msg = NULL;
    char why[SPES_NODE_ERR_MAX];
    if (rc)
        snprintf(why, sizeof why, "%s", err && err[0] ? err : spes_strerror(rc));
    else if (spes_proto_decode(data, len, &type, &msg) != 0)
        snprintf(why, sizeof why, "%s", spes_errmsg());
    else
        why[0] = '\0';
    const char *e = why[0] ? why : NULL;
    if (call == SPES_NODE_CALL_LEAVE) {
        if (sm->phase != SPES_NODE_DONE)
            on_leave_reply(sm, out);
    } else if (sm->phase == SPES_NODE_STOP) {
        try_leave(sm, now, out); /* what this call was for no longer matters; the goodbye waited for it */
    } else if (sm->phase != SPES_NODE_DONE) {
        switch (call) {
        case SPES_NODE_CALL_JOIN: on_join_reply(sm, e, type, msg, now, out); break;
        case SPES_NODE_CALL_HEARTBEAT: on_heartbeat_reply(sm, e, type, msg, data, len, now, out); break;
        case SPES_NODE_CALL_ANNOUNCE: on_announce_reply(sm, e, type, msg, now, out); break;
        case SPES_NODE_CALL_DIGEST: on_digest_reply(sm, e, type, msg, now, out); break;
        case SPES_NODE_CALL_REPORT: on_report_reply(sm, e, type, msg, out); break;
        default: break;
        }
    }
    spes_proto_free(msg);
}

/* ---- sends ---- */

static void send_join(spes_node_sm *sm, uint64_t now, spes_node_out *o)
{
    Spes__Wire__Join j = SPES__WIRE__JOIN__INIT;
    Spes__Wire__Capabilities cap = SPES__WIRE__CAPABILITIES__INIT;
    j.node_name = (char *)sm->o.name;
    j.listen_url = (char *)sm->o.listen;
    j.software_version = "spes 0.1";
    j.protocol_version = SPES_PROTO_VERSION;
    cap.threads = (uint32_t)sm->o.threads;
    j.capabilities = &cap;
    send_call(sm, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN, &j.base, SPES_NODE_CALL_TIMEOUT_MS, now, o);
}

static void send_announce(spes_node_sm *sm, uint64_t now, spes_node_out *o)
{
    Spes__Wire__Announce a = SPES__WIRE__ANNOUNCE__INIT;
    Spes__Wire__LossStats ls = SPES__WIRE__LOSS_STATS__INIT;
    a.node_id = sm->id;
    a.round = sm->round;
    a.blob_hash = (ProtobufCBinaryData){32, sm->pending_blob};
    a.manifest_hash = (ProtobufCBinaryData){32, sm->pending_manifest};
    a.size = sm->pending_size;
    a.tokens_trained = sm->pending_tokens;
    ls.mean = sm->pending_loss;
    ls.last = sm->loss;
    ls.count = (uint32_t)sm->run.spes.sync_interval;
    a.loss = &ls;
    Spes__Wire__Group gv[SPES_NODE_MAX_SHARDS], *gp[SPES_NODE_MAX_SHARDS];
    for (int i = 0; i < sm->npending_shards && i < SPES_NODE_MAX_SHARDS; i++) {
        spes__wire__group__init(&gv[i]);
        gv[i].blob_hash = (ProtobufCBinaryData){32, sm->pending_shards[i].hash};
        gv[i].manifest_hash = (ProtobufCBinaryData){32, sm->pending_shards[i].manifest};
        gv[i].size = sm->pending_shards[i].size;
        gp[i] = &gv[i];
    }
    a.shards = gp;
    a.n_shards =
        (size_t)(sm->npending_shards < SPES_NODE_MAX_SHARDS ? sm->npending_shards : SPES_NODE_MAX_SHARDS);
    a.codec = !strcmp(sm->run.spes.codec, "q8ef")   ? SPES__WIRE__CODEC__CODEC_Q8EF
              : !strcmp(sm->run.spes.codec, "topk") ? SPES__WIRE__CODEC__CODEC_TOPK
              : !strcmp(sm->run.spes.codec, "bf16") ? SPES__WIRE__CODEC__CODEC_BF16
                                                    : SPES__WIRE__CODEC__CODEC_FP32;
    send_call(sm, SPES_NODE_CALL_ANNOUNCE, SPES_MSG_ANNOUNCE, &a.base, SPES_NODE_CALL_TIMEOUT_MS, now, o);
}

static void send_digest(spes_node_sm *sm, uint64_t now, spes_node_out *o)
{
    Spes__Wire__Digest g = SPES__WIRE__DIGEST__INIT;
    g.node_id = sm->id;
    g.round = sm->round;
    g.state_hash = (ProtobufCBinaryData){32, sm->hash};
    g.checkpoint_id = sm->saved_ckpt;
    send_call(sm, SPES_NODE_CALL_DIGEST, SPES_MSG_DIGEST, &g.base, SPES_NODE_CALL_TIMEOUT_MS, now, o);
}

static void send_heartbeat(spes_node_sm *sm, uint64_t now, spes_node_out *o)
{
    Spes__Wire__Heartbeat h = SPES__WIRE__HEARTBEAT__INIT;
    h.node_id = sm->id;
    h.round = sm->round;
    h.step = sm->have_step ? sm->trainer_step : sm->step;
    h.loss = sm->loss;
    h.tokens_per_s = sm->tps;
    /* JOINING = idle or waiting for the commit: the coordinator may hand us work */
    h.state = sm->phase == SPES_NODE_IDLE || sm->phase == SPES_NODE_WAIT ? NS(JOINING) : NS(ACTIVE);
    Spes__Wire__NodeCounters w;
    if (sm->o.hooks.heartbeat)
        sm->o.hooks.heartbeat(sm->o.hooks.arg, &h, &w);
    sm->last_hb_ms = now;
    send_call(sm, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT, &h.base, SPES_NODE_CALL_TIMEOUT_MS, now, o);
}

void spes_node_sm_tick(spes_node_sm *sm, uint64_t now, spes_node_out *out)
{
    if (sm->calls > 0)
        return;
    if (sm->agg_done && sm->phase != SPES_NODE_STOP && sm->phase != SPES_NODE_DONE) {
        send_report(sm, now, out); /* the round waits for it */
        return;
    }
    if (now < sm->next_try_ms)
        return;
    switch (sm->phase) {
    case SPES_NODE_JOIN:
        if (!sm->busy)
            send_join(sm, now, out);
        break;
    case SPES_NODE_ANNOUNCE: send_announce(sm, now, out); break;
    case SPES_NODE_DIGEST: send_digest(sm, now, out); break;
    case SPES_NODE_PREPARE:
    case SPES_NODE_IDLE:
    case SPES_NODE_TRAIN:
    case SPES_NODE_WAIT:
    case SPES_NODE_APPLY: {
        /* commits come with heartbeat replies: one awaited comes sooner (docs/design.md, "Overlap") */
        int every = sm->phase == SPES_NODE_WAIT && sm->o.commit_poll_ms > 0 &&
                            sm->o.commit_poll_ms < sm->o.heartbeat_ms
                        ? sm->o.commit_poll_ms
                        : sm->o.heartbeat_ms;
        if (sm->joined && now - sm->last_hb_ms >= (uint64_t)every)
            send_heartbeat(sm, now, out);
        break;
    }
    default: break;
    }
}

void spes_node_sm_progress(spes_node_sm *sm, int have_step, uint64_t step, double loss, double tps)
{
    sm->have_step = have_step;
    sm->trainer_step = step;
    sm->loss = loss;
    sm->tps = tps;
}

/* ---- blob retention ---- */

/* keep_round records the blobs of applied round r (its contributions and
 * S_{r+1}) in slot r % KEEP_ROUNDS and releases those of round r - KEEP_ROUNDS
 * held there: after applying round r the node keeps rounds r-2, r-1 and r,
 * which is what nodes that lag behind or join need (the current state and the
 * last commits' blobs). */
static void keep_round(spes_node_sm *sm, const spes_node_job *j, spes_node_out *o)
{
    const spes_node_job_apply *a = &j->u.apply;
    spes_node_kept *k = &sm->kept[a->round % SPES_NODE_KEEP_ROUNDS];
    if (!sm->o.keep_blobs && k->n > 0 && k->round < a->round) {
        for (int i = 0; i < k->n; i++) {
            spes_node_action *r = push(o, SPES_NODE_ACT_RELEASE);
            if (r)
                memcpy(r->hash, k->hash[i], 32);
        }
        say(o, SPES_LOG_DEBUG, "round %llu: %d old blob(s) released", (unsigned long long)k->round, k->n);
    }
    k->round = a->round;
    k->n = 0;
    int own = sm->train_round == a->round ? sm->npending_shards : 0; /* our shards: aggregators' inputs */
    uint8_t(*h)[32] = realloc(k->hash, (size_t)(a->ncontrib + a->nagg + own + 1) * sizeof *h);
    if (!h)
        return; /* these blobs stay on disk */
    k->hash = h;
    for (int i = 0; i < a->ncontrib; i++)
        memcpy(k->hash[k->n++], a->contribs[i].hash, 32);
    for (int i = 0; i < a->nagg; i++)
        memcpy(k->hash[k->n++], a->agg[i].hash, 32);
    for (int i = 0; i < own; i++)
        memcpy(k->hash[k->n++], sm->pending_shards[i].hash, 32);
    memcpy(k->hash[k->n++], a->state_hash, 32); /* S_{round+1} */
}

/* ---- worker results ---- */

static void prepare_done(spes_node_sm *sm, const spes_node_job *j, uint64_t now, spes_node_out *o)
{
    const spes_node_job_prepare *p = &j->u.prepare;
    sm->bytes_in_total += j->bytes_in; /* a state fetched from peers counts, as contributions do */
    if (j->rc) {
        say(o, SPES_LOG_ERROR, "cannot get the agreed state of round %llu: %s", (unsigned long long)p->round,
            j->err);
        to_join(sm, o);
        retry_later(sm, now, PREPARE_RETRY_MS);
        return;
    }
    sm->round = p->round;
    sm->step = p->step;
    memcpy(sm->hash, p->hash, 32);
    sm->have_state = 1;
    sm->phase = SPES_NODE_IDLE;
    if (sm->accept_ncols)
        start_train(sm, sm->accept_cols, sm->accept_ncols, now, o);
}

/* train_done takes a finished train job; 1 when it keeps the job (trained ahead). */
static int train_done(spes_node_sm *sm, spes_node_job *j, uint64_t now, spes_node_out *o)
{
    const spes_node_job_train *t = &j->u.train;
    sm->training = 0;
    emit_cancel(o, 0);
    if (t->overlap) {
        /* trained beside the sync of the round before: kept until the node holds S_round
         * and the coordinator deals it the same columns (on_heartbeat_reply) */
        if (j->rc && j->rc != SPES_EINTR)
            say(o, SPES_LOG_ERROR, "round %llu: overlapped training failed: %s", (unsigned long long)t->round,
                j->err);
        if (j->rc || sm->phase == SPES_NODE_JOIN || sm->phase == SPES_NODE_PREPARE || t->round < sm->round) {
            if (j->rc == SPES_EINTR)
                say(o, SPES_LOG_DEBUG, "round %llu: overlapped training ended early",
                    (unsigned long long)t->round);
            return 0;
        }
        if (sm->phase == SPES_NODE_IDLE && t->round == sm->round && sm->dealt_round == sm->round) {
            announce_trained(sm, j, sm->job_t0, now, now, o); /* the columns were dealt while it trained */
            spes_node_sm_tick(sm, now, o);
            return 0;
        }
        drop_ready(sm);
        sm->ready = j;
        sm->ready_t0 = sm->job_t0;
        sm->ready_t1 = now;
        return 1;
    }
    if (j->rc || sm->pending_commit) {
        /* failed, abandoned, or the round committed without us while we trained
         * (even if training just finished): apply that commit, nothing to announce */
        if (j->rc && j->rc != SPES_EINTR)
            say(o, SPES_LOG_ERROR, "round %llu: training failed: %s", (unsigned long long)t->round, j->err);
        if (sm->phase != SPES_NODE_TRAIN)
            return 0; /* the node went on (joining again) while the job ran */
        sm->train_round = UINT64_MAX;
        sm->phase = SPES_NODE_WAIT;
        if (sm->pending_commit) {
            int type;
            ProtobufCMessage *m = NULL;
            if (spes_proto_decode(sm->pending_commit, sm->pending_commit_len, &type, &m) == 0 &&
                type == SPES_MSG_COMMIT && ((const Spes__Wire__Commit *)m)->round == sm->round)
                start_apply(sm, (const Spes__Wire__Commit *)m, o);
            spes_proto_free(m);
            free(sm->pending_commit);
            sm->pending_commit = NULL;
            sm->pending_commit_len = 0;
        }
        return 0;
    }
    if (sm->phase != SPES_NODE_TRAIN)
        return 0;
    announce_trained(sm, j, sm->job_t0, now, now, o);
    spes_node_sm_tick(sm, now, o);
    return 0;
}

static void apply_done(spes_node_sm *sm, const spes_node_job *j, uint64_t now, spes_node_out *o)
{
    const spes_node_job_apply *a = &j->u.apply;
    if (j->rc) {
        say(o, SPES_LOG_ERROR, "round %llu: cannot apply the commit: %s", (unsigned long long)a->round,
            j->err);
        sm->have_state = 0;
        to_join(sm, o);
        retry_later(sm, now, APPLY_RETRY_MS);
        return;
    }
    sm->round = a->round + 1;
    sm->step = a->next_step;
    memcpy(sm->hash, a->state_hash, 32);
    keep_round(sm, j, o);
    snprintf(sm->saved_ckpt, sizeof sm->saved_ckpt, "%s", a->ckpt_id);
    sm->bytes_in_total += j->bytes_in;
    char hex[65];
    spes_hex_encode(sm->hash, 32, hex);
    int trained = sm->train_round == a->round && sm->t_train1 >= sm->t_train0 && sm->t_train0 > 0;
    say(o, SPES_LOG_INFO,
        "round %llu applied: state digest %.16s (blob bytes received %llu, served %llu in all; "
        "train %.2f s, sync %.2f s)",
        (unsigned long long)a->round, hex, (unsigned long long)sm->bytes_in_total,
        (unsigned long long)a->bytes_served, trained ? (double)(sm->t_train1 - sm->t_train0) / 1e3 : 0.0,
        trained ? (double)(now - sm->t_train1) / 1e3 : 0.0);
    if (sm->o.hooks.applied)
        sm->o.hooks.applied(sm->o.hooks.arg, a->round,
                            trained ? (double)(sm->t_train1 - sm->t_train0) / 1e3 : -1.0,
                            trained ? (double)(now - sm->t_train1) / 1e3 : -1.0);
    sm->phase = SPES_NODE_DIGEST;
    sm->next_try_ms = 0;
    spes_node_sm_tick(sm, now, o);
}

void spes_node_sm_job_done(spes_node_sm *sm, spes_node_job *j, uint64_t now, spes_node_out *out)
{
    if (sm->busy > 0)
        sm->busy--;
    if (j->kind == SPES_NODE_JOB_TRAIN)
        sm->training = 0;
    if (j->kind == SPES_NODE_JOB_AGGREGATE)
        sm->aggregating = 0;
    if (sm->phase == SPES_NODE_STOP || sm->phase == SPES_NODE_DONE) {
        spes_node_job_free(j);
        try_leave(sm, now, out);
        return;
    }
    switch (j->kind) {
    case SPES_NODE_JOB_PREPARE: prepare_done(sm, j, now, out); break;
    case SPES_NODE_JOB_TRAIN:
        if (train_done(sm, j, now, out))
            return;
        break;
    case SPES_NODE_JOB_APPLY: apply_done(sm, j, now, out); break;
    case SPES_NODE_JOB_AGGREGATE:
        sm->aggregating = 0;
        sm->bytes_in_total += j->bytes_in;
        if (j->rc) { /* the coordinator hands the task out again, or to a backup */
            say(out, SPES_LOG_WARN, "round %llu: aggregation failed: %s",
                (unsigned long long)j->u.aggregate.round, j->err);
            break;
        }
        if (j->u.aggregate.round != sm->round)
            break; /* the round went on without it */
        sm->agg_done = j;
        spes_node_sm_tick(sm, now, out);
        return;
    case SPES_NODE_JOB_VALIDATE: {
        sm->bytes_in_total += j->bytes_in;
        spes_node_action *a = push(out, SPES_NODE_ACT_VALIDATED);
        if (a) {
            a->job = j;
            return;
        }
        break;
    }
    default: break;
    }
    spes_node_job_free(j);
}

int spes_node_sm_validate(spes_node_sm *sm, uint64_t round, int count, const uint8_t (*hashes)[32],
                          const uint8_t (*manifests)[32], const char **urls, const char **names,
                          const uint32_t *ids, const uint8_t *cols, spes_node_out *out)
{
    if (count < 0)
        return spes_errf(SPES_EINVAL, "validate: %d contributions", count);
    /* before its Accept the node has no run (no model to decode with): the coordinator asks again
     * on a later tick, and a job queued now would hold the node's own join back for ever */
    if (!sm->have_run)
        return spes_errf(SPES_ESTATE, "validate: this node has not joined the run yet");
    size_t n = (size_t)count;
    spes_node_job *j = calloc(1, sizeof *j);
    spes_node_job_validate *v = j ? &j->u.validate : NULL;
    if (j) {
        j->kind = SPES_NODE_JOB_VALIDATE;
        j->node_id = sm->id;
        j->peers = calloc(n + 1, sizeof *j->peers);
        v->contribs = calloc(n + 1, sizeof *v->contribs);
        v->ok = calloc(n + 1, sizeof *v->ok);
        v->reasons = calloc(n + 1, sizeof *v->reasons);
        v->E = sm->E;
        v->cols = calloc(n * (size_t)sm->E + 1, 1);
    }
    if (!j || !j->peers || !v->contribs || !v->ok || !v->reasons || !v->cols) {
        spes_node_job_free(j);
        return spes_errf(SPES_ENOMEM, "out of memory validating round %llu", (unsigned long long)round);
    }
    v->round = round;
    for (int k = 0; k < count; k++) {
        memcpy(v->contribs[k].hash, hashes[k], 32);
        memcpy(v->contribs[k].manifest, manifests[k], 32);
        v->contribs[k].node = ids[k];
        memcpy(v->cols + (size_t)k * (size_t)sm->E, cols + (size_t)k * (size_t)sm->E, (size_t)sm->E);
        snprintf(j->peers[k].url, sizeof j->peers[k].url, "%s", urls[k]);
        snprintf(j->peers[k].name, sizeof j->peers[k].name, "%s", names[k]);
        v->n++;
        j->npeers++;
    }
    emit_job(sm, out, j);
    return 0;
}

/* ---- lifecycle ---- */

int spes_node_sm_init(spes_node_sm *sm, const spes_node_opts *o)
{
    memset(sm, 0, sizeof *sm);
    sm->o = *o;
    if (!sm->o.name || !sm->o.listen)
        return spes_errf(SPES_EINVAL, "node: name and listen URL are required");
    sm->phase = SPES_NODE_JOIN;
    sm->train_round = UINT64_MAX;
    sm->dealt_round = UINT64_MAX;
    return 0;
}

void spes_node_sm_fini(spes_node_sm *sm)
{
    if (sm->have_run)
        spes_config_fini(&sm->run);
    free(sm->cols);
    free(sm->pending_commit);
    free(sm->accept_cols);
    free(sm->pending_shards);
    spes_node_job_free(sm->ready);
    spes_node_job_free(sm->agg_done);
    for (int i = 0; i < SPES_NODE_KEEP_ROUNDS; i++)
        free(sm->kept[i].hash);
    memset(sm, 0, sizeof *sm);
}

static void try_leave(spes_node_sm *sm, uint64_t now, spes_node_out *o)
{
    if (sm->phase != SPES_NODE_STOP || sm->busy || sm->calls)
        return;
    if (!sm->joined) {
        emit_stopped(sm, o);
        return;
    }
    Spes__Wire__Leave l = SPES__WIRE__LEAVE__INIT;
    l.node_id = sm->id;
    l.reason = "shutting down";
    send_call(sm, SPES_NODE_CALL_LEAVE, SPES_MSG_LEAVE, &l.base, SPES_NODE_LEAVE_TIMEOUT_MS, now, o);
}

void spes_node_sm_stop(spes_node_sm *sm, spes_node_out *out)
{
    if (sm->phase == SPES_NODE_STOP || sm->phase == SPES_NODE_DONE)
        return;
    emit_cancel(out, 1);
    sm->phase = SPES_NODE_STOP;
    if (sm->calls)
        push(out, SPES_NODE_ACT_ABORT_CALLS); /* a gone coordinator must not hold us for a call's timeout */
    try_leave(sm, 0, out);
}

const char *spes_node_phase_name(int phase)
{
    switch (phase) {
    case SPES_NODE_JOIN: return "join";
    case SPES_NODE_PREPARE: return "prepare";
    case SPES_NODE_IDLE: return "idle";
    case SPES_NODE_TRAIN: return "train";
    case SPES_NODE_ANNOUNCE: return "announce";
    case SPES_NODE_WAIT: return "wait";
    case SPES_NODE_APPLY: return "apply";
    case SPES_NODE_DIGEST: return "digest";
    case SPES_NODE_STOP: return "stop";
    case SPES_NODE_DONE: return "done";
    default: return "?";
    }
}
