/* test_coord.c: the coordinator's round protocol (src/coord), driven message by
 * message with a fake clock: every input is a decoded request, a tick or a
 * result at an explicit `now`, every output an action whose bytes are decoded
 * and checked. Nothing here opens a socket or a file. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord/coord.h"
#include "core/error.h"
#include "core/log.h"
#include "proto/proto.h"
#include "proto/spes.pb-c.h"

#include "core/nodestate.h"
#define EC(x) SPES__WIRE__ERROR_CODE__ERROR_##x
#define E_COLS 4
#define SYNC 5
#define DEADLINE 5000
#define FAILURE 1000
#define TICK 50
#define MAX_ACTS 1024

/* fx is one coordinator under test with the actions it has returned so far. */
typedef struct fx {
    spes_coord_sm *c;
    spes_run_config run;
    spes_coord_settings set;
    spes_coord_now now;
    spes_coord_action acts[MAX_ACTS];
    int nacts;
    int tag; /* the next request's reply tag */
    uint8_t s0[32];
} fx;

static void never_called(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx, (void)data, (void)len;
    ck_abort_msg("the library called a reply function");
}

static void fx_clear(fx *f)
{
    for (int i = 0; i < f->nacts; i++)
        spes_coord_action_fini(&f->acts[i]);
    f->nacts = 0;
}

/* fx_collect moves every queued action into f->acts (kept until fx_clear). */
static void fx_collect(fx *f)
{
    spes_coord_action a;
    while (spes_coord_sm_next_action(f->c, &a)) {
        ck_assert_int_lt(f->nacts, MAX_ACTS);
        f->acts[f->nacts++] = a;
    }
}

static void fx_settings(fx *f, int min_nodes, int approve)
{
    memset(&f->set, 0, sizeof f->set);
    snprintf(f->set.name, sizeof f->set.name, "node-0");
    snprintf(f->set.listen, sizeof f->set.listen, "tcp://127.0.0.1:7000");
    f->set.approve = approve;
    f->set.min_nodes = min_nodes;
    f->set.failure_timeout_ms = FAILURE;
    f->set.round_deadline_ms = DEADLINE;
    f->set.tick_ms = TICK;
}

static void fx_run_config(fx *f, int max_steps)
{
    spes_config_defaults(&f->run);
    f->run.model.num_experts = E_COLS;
    f->run.model.num_experts_per_tok = 2;
    f->run.spes.sync_interval = SYNC;
    f->run.spes.merge_topk = 1;
    f->run.train.max_steps = max_steps;
    f->run.train.warmup_steps = 0;
    ck_assert_int_eq(spes_config_validate(&f->run), 0);
}

/* fx_start makes the coordinator of f's settings and run config, of a new run at
 * t = 1000 ms (mono), 1.7e12 (wall). */
static void fx_start(fx *f)
{
    ck_assert_int_eq(spes_coord_sm_alloc(&f->c, &f->run, &f->set), 0);
    memset(f->s0, 0x50, 32);
    f->now = (spes_coord_now){1000, 1700000000000ull};
    ck_assert_int_eq(spes_coord_sm_new_run(f->c, "00000000000000aa", f->s0), 0);
    spes_coord_sm_start(f->c, f->now);
    fx_collect(f);
}

/* fx_init makes a coordinator of a new run (fx_start) with the default settings. */
static void fx_init(fx *f, int min_nodes, int approve, int max_steps)
{
    memset(f, 0, sizeof *f);
    fx_settings(f, min_nodes, approve);
    fx_run_config(f, max_steps);
    fx_start(f);
}

static void fx_fini(fx *f)
{
    fx_clear(f);
    spes_coord_sm_free(f->c);
    spes_config_fini(&f->run);
}

static void fx_advance(fx *f, uint64_t ms)
{
    f->now.mono_ms += ms;
    f->now.wall_ms += ms;
}

static void fx_tick(fx *f)
{
    spes_coord_sm_tick(f->c, f->now);
    fx_collect(f);
}

/* count returns how many collected actions are of this kind. */
static int count(const fx *f, int kind)
{
    int n = 0;
    for (int i = 0; i < f->nacts; i++)
        n += f->acts[i].kind == kind;
    return n;
}

/* last returns the last collected action of this kind, or NULL. */
static spes_coord_action *last(fx *f, int kind)
{
    for (int i = f->nacts - 1; i >= 0; i--)
        if (f->acts[i].kind == kind)
            return &f->acts[i];
    return NULL;
}

/* logged says whether a collected log line contains text. */
static int logged(const fx *f, const char *text)
{
    for (int i = 0; i < f->nacts; i++)
        if (f->acts[i].kind == SPES_COORD_LOG && strstr((const char *)f->acts[i].data, text))
            return 1;
    return 0;
}

/* reply_to returns the one reply collected for tag (NULL if none), failing on two. */
static spes_coord_action *reply_to(fx *f, int tag)
{
    spes_coord_action *r = NULL;
    for (int i = 0; i < f->nacts; i++)
        if (f->acts[i].kind == SPES_COORD_REPLY && f->acts[i].to.ctx == (void *)(intptr_t)tag) {
            ck_assert_msg(r == NULL, "two replies to one request");
            r = &f->acts[i];
        }
    return r;
}

/* decode decodes a reply's envelope, which must be of type want. */
static ProtobufCMessage *decode(const spes_coord_action *a, int want)
{
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(a->data);
    int type = 0;
    ProtobufCMessage *m = NULL;
    ck_assert_int_eq(spes_proto_decode(a->data, a->len, &type, &m), 0);
    if (type != want && type == SPES_MSG_ERROR)
        ck_abort_msg("wanted type %d, got error: %s", want, ((Spes__Wire__Error *)m)->message);
    ck_assert_int_eq(type, want);
    return m;
}

/* noid is a peer of a plain test run (no TLS, no identity at all); control is the local control socket. */
static const spes_pki_identity noid = {.name = "", .role = SPES_ROLE_NONE};
static const spes_pki_identity control = SPES_COORD_LOCAL_OPERATOR;

static spes_pki_identity node_peer(const char *name)
{
    spes_pki_identity p = {.role = SPES_ROLE_NODE};
    snprintf(p.name, sizeof p.name, "%s", name);
    return p;
}

static spes_pki_identity operator_peer(void)
{
    spes_pki_identity p = {.role = SPES_ROLE_OPERATOR};
    snprintf(p.name, sizeof p.name, "alice");
    return p;
}

/* send feeds one request from peer and returns its decoded reply of type want (caller frees). */
static ProtobufCMessage *send(fx *f, int type, const ProtobufCMessage *msg, const spes_pki_identity *peer,
                              int want)
{
    int tag = ++f->tag;
    spes_coord_sm_request(f->c, f->now, type, msg, peer,
                          (spes_coord_to){never_called, (void *)(intptr_t)tag});
    fx_collect(f);
    return decode(reply_to(f, tag), want);
}

/* send_error sends and checks that the reply is an Error with this code whose message contains text. */
static void send_error(fx *f, int type, const ProtobufCMessage *msg, const spes_pki_identity *peer, int code,
                       const char *text)
{
    Spes__Wire__Error *e = (Spes__Wire__Error *)send(f, type, msg, peer, SPES_MSG_ERROR);
    ck_assert_int_eq(e->code, code);
    ck_assert_uint_eq(e->in_reply_to, (unsigned)type);
    ck_assert_msg(strstr(e->message, text), "error '%s' lacks '%s'", e->message, text);
    spes_proto_free(&e->base);
}

static ProtobufCMessage *join(fx *f, const char *name, const spes_pki_identity *peer, int want)
{
    Spes__Wire__Join j = SPES__WIRE__JOIN__INIT;
    j.protocol_version = SPES_PROTO_VERSION;
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:71%s", name + strlen(name) - 1);
    j.node_name = (char *)name;
    j.listen_url = url;
    return send(f, SPES_MSG_JOIN, &j.base, peer, want);
}

/* join_ok joins name (as a node certificate of that name) and returns its node id. */
static uint32_t join_ok(fx *f, const char *name)
{
    spes_pki_identity p = node_peer(name);
    Spes__Wire__Accept *a = (Spes__Wire__Accept *)join(f, name, &p, SPES_MSG_ACCEPT);
    uint32_t id = a->node_id;
    spes_proto_free(&a->base);
    return id;
}

static ProtobufCMessage *heartbeat(fx *f, uint32_t id, uint64_t round, int state, int want)
{
    Spes__Wire__Heartbeat h = SPES__WIRE__HEARTBEAT__INIT;
    h.node_id = id;
    h.round = round;
    h.step = round * SYNC;
    h.loss = 3.0 + id;
    h.tokens_per_s = 100;
    h.state = state;
    return send(f, SPES_MSG_HEARTBEAT, &h.base, &noid, want);
}

static void heartbeat_ack(fx *f, uint32_t id, uint64_t round)
{
    Spes__Wire__Ack *a = (Spes__Wire__Ack *)heartbeat(f, id, round, NS(ACTIVE), SPES_MSG_ACK);
    spes_proto_free(&a->base);
}

/* fx_pass lets ms pass in ticks of TICK ms; the n nodes in alive heartbeat at round before each tick. */
static void fx_pass(fx *f, uint64_t ms, const uint32_t *alive, int n, uint64_t round)
{
    for (uint64_t t = 0; t < ms; t += TICK) {
        fx_advance(f, TICK);
        for (int i = 0; i < n; i++)
            heartbeat_ack(f, alive[i], round);
        fx_tick(f);
    }
}

static void fill_announce(Spes__Wire__Announce *a, uint32_t id, uint64_t round, uint8_t *blob, uint8_t *man)
{
    spes__wire__announce__init(a);
    memset(blob, 0xb0 + (int)id, 32);
    memset(man, 0xc0 + (int)id, 32);
    a->node_id = id;
    a->round = round;
    a->blob_hash = (ProtobufCBinaryData){32, blob};
    a->manifest_hash = (ProtobufCBinaryData){32, man};
    a->size = 1000;
    a->tokens_trained = 64;
}

static void announce_ok(fx *f, uint32_t id, uint64_t round)
{
    uint8_t blob[32], man[32];
    Spes__Wire__Announce a;
    fill_announce(&a, id, round, blob, man);
    Spes__Wire__Ack *ack = (Spes__Wire__Ack *)send(f, SPES_MSG_ANNOUNCE, &a.base, &noid, SPES_MSG_ACK);
    ck_assert_str_eq(ack->message, "announced");
    spes_proto_free(&ack->base);
}

static void digest(fx *f, uint32_t id, uint64_t round, uint8_t fill, const char *ckpt)
{
    uint8_t h[32];
    memset(h, fill, 32);
    Spes__Wire__Digest g = SPES__WIRE__DIGEST__INIT;
    g.node_id = id;
    g.round = round;
    g.state_hash = (ProtobufCBinaryData){32, h};
    g.checkpoint_id = (char *)(ckpt ? ckpt : "");
    Spes__Wire__Ack *a = (Spes__Wire__Ack *)send(f, SPES_MSG_DIGEST, &g.base, &noid, SPES_MSG_ACK);
    ck_assert_str_eq(a->message, "digest recorded");
    spes_proto_free(&a->base);
}

/* validate_all answers the pending VALIDATE: every contribution passes. */
static void validate_all(fx *f)
{
    spes_coord_action *v = last(f, SPES_COORD_VALIDATE);
    ck_assert_ptr_nonnull(v);
    int ok[16];
    char reasons[16][256] = {{0}};
    int E = f->run.model.num_experts, owners[1024] = {0};
    for (int i = 0; i < v->n; i++) {
        ok[i] = 1;
        /* each author's id and the columns it was told to train go along; no column has more
         * authors than spes.column_owners */
        ck_assert(i == 0 || v->ids[i] > v->ids[i - 1]);
        for (int e = 0; e < E; e++)
            if (v->cols[(size_t)i * (size_t)E + (size_t)e])
                ck_assert_int_le(++owners[e], f->run.spes.column_owners);
    }
    spes_coord_sm_validated(f->c, f->now, v->round, v->n, ok, reasons);
    fx_collect(f);
}

static Spes__Wire__StatusReply *status(fx *f)
{
    Spes__Wire__StatusRequest s = SPES__WIRE__STATUS_REQUEST__INIT;
    return (Spes__Wire__StatusReply *)send(f, SPES_MSG_STATUS_REQUEST, &s.base, &noid, SPES_MSG_STATUS_REPLY);
}

static int member_state(fx *f, uint32_t id)
{
    Spes__Wire__StatusReply *s = status(f);
    int st = -1;
    for (size_t i = 0; i < s->n_members; i++)
        if (s->members[i]->node_id == id)
            st = s->members[i]->state;
    spes_proto_free(&s->base);
    return st;
}

/* two_node_round starts a run, joins node-0 and node-1 and opens round 0 (min_nodes 2). */
static void two_node_round(fx *f, int max_steps)
{
    fx_init(f, 2, 0, max_steps);
    ck_assert_uint_eq(join_ok(f, "node-0"), 0);
    ck_assert_uint_eq(join_ok(f, "node-1"), 1);
    fx_tick(f);
}

/* commit_round announces for every id in ids at round r and validates all of them. */
static void commit_round(fx *f, const uint32_t *ids, int n, uint64_t r)
{
    for (int i = 0; i < n; i++)
        announce_ok(f, ids[i], r);
    validate_all(f);
}

static Spes__Wire__Commit *last_commit(fx *f)
{
    spes_coord_action *p = last(f, SPES_COORD_PERSIST_COMMIT);
    ck_assert_ptr_nonnull(p);
    int type;
    ProtobufCMessage *m;
    ck_assert_int_eq(spes_proto_decode(p->data, p->len, &type, &m), 0);
    ck_assert_int_eq(type, SPES_MSG_COMMIT);
    return (Spes__Wire__Commit *)m;
}

/* cols_of returns a bitmask of the columns in a list. */
static unsigned mask_of(const uint32_t *cols, size_t n)
{
    unsigned m = 0;
    for (size_t i = 0; i < n; i++)
        m |= 1u << cols[i];
    return m;
}

/* ---- the sharded round (docs/design.md, "The sharded round") ---- */

/* sharded_round starts a sharded run whose shared block makes 2 shards (audit_fraction of them
 * audited), joins node-0 (the coordinator's own) to node-(n-1), and opens round 0 (min_nodes n). */
static void sharded_round(fx *f, int n, double audit_fraction)
{
    memset(f, 0, sizeof *f);
    fx_settings(f, n, 0);
    fx_run_config(f, 100);
    f->run.model.hidden_size = 256; /* 528384 shared values: 2 shards of at least 256 Ki */
    f->run.model.vocab_size = 256;
    f->run.model.num_hidden_layers = 2;
    f->run.model.num_attention_heads = 4;
    f->run.model.num_key_value_heads = 2;
    f->run.spes.sharded = 1;
    f->run.spes.audit_fraction = audit_fraction;
    ck_assert_int_eq(spes_config_validate(&f->run), 0);
    fx_start(f);
    for (int i = 0; i < n; i++) {
        char name[16];
        snprintf(name, sizeof name, "node-%d", i);
        ck_assert_uint_eq(join_ok(f, name), (uint32_t)i);
    }
    fx_tick(f);
}

/* announce_shards announces id's contribution at round r with its K shards (hashes 0xd0 + id, shard). */
static void announce_shards(fx *f, uint32_t id, uint64_t r, int K)
{
    uint8_t blob[32], man[32], h[8][32];
    Spes__Wire__Group gv[8], *gp[8];
    Spes__Wire__Announce a;
    fill_announce(&a, id, r, blob, man);
    for (int j = 0; j < K; j++) {
        memset(h[j], 0xd0 + (int)id * 4 + j, 32);
        spes__wire__group__init(&gv[j]);
        gv[j].blob_hash = (ProtobufCBinaryData){32, h[j]};
        gv[j].manifest_hash = (ProtobufCBinaryData){32, h[j]};
        gv[j].size = 5000;
        gp[j] = &gv[j];
    }
    a.shards = gp;
    a.n_shards = (size_t)K;
    Spes__Wire__Ack *ack = (Spes__Wire__Ack *)send(f, SPES_MSG_ANNOUNCE, &a.base, &noid, SPES_MSG_ACK);
    spes_proto_free(&ack->base);
}

/* task_of returns id's aggregation task (caller frees), or NULL when its heartbeat gets none. */
static Spes__Wire__AggregateTask *task_of(fx *f, uint32_t id, uint64_t r)
{
    int tag = ++f->tag;
    Spes__Wire__Heartbeat h = SPES__WIRE__HEARTBEAT__INIT;
    h.node_id = id;
    h.round = r;
    h.state = NS(JOINING);
    spes_coord_sm_request(f->c, f->now, SPES_MSG_HEARTBEAT, &h.base, &noid,
                          (spes_coord_to){never_called, (void *)(intptr_t)tag});
    fx_collect(f);
    spes_coord_action *a = reply_to(f, tag);
    int type;
    ProtobufCMessage *m = NULL;
    ck_assert_int_eq(spes_proto_decode(a->data, a->len, &type, &m), 0);
    if (type == SPES_MSG_AGGREGATE_TASK)
        return (Spes__Wire__AggregateTask *)m;
    spes_proto_free(m);
    return NULL;
}

/* report_fill answers task i of t for aggregator id: verdict bad[k] for input k (0 ok, 1 refused,
 * 2 missing), the aggregate fill + shard when every input passed; returns the reply's type. */
static int report_fill(fx *f, uint32_t id, const Spes__Wire__AggregateTask *t, size_t i, const int *bad,
                       int fill)
{
    const Spes__Wire__ShardTask *st = t->tasks[i];
    Spes__Wire__InputVerdict vv[8], *vp[8];
    Spes__Wire__ShardResult res = SPES__WIRE__SHARD_RESULT__INIT, *rp = &res;
    Spes__Wire__Group g = SPES__WIRE__GROUP__INIT;
    uint8_t h[32];
    int all = 1;
    for (size_t k = 0; k < st->n_inputs; k++) {
        spes__wire__input_verdict__init(&vv[k]);
        vv[k].node_id = st->inputs[k]->node_id;
        vv[k].ok = !(bad && bad[k]);
        vv[k].missing = bad && bad[k] == 2;
        vv[k].reason = (char *)(vv[k].ok ? "" : "value 7 is not finite");
        vp[k] = &vv[k];
        all &= vv[k].ok;
    }
    memset(h, fill + (int)st->shard, 32);
    g.blob_hash = g.manifest_hash = (ProtobufCBinaryData){32, h};
    g.size = 4000;
    res.shard = st->shard;
    res.attempt = st->attempt;
    res.verdicts = vp;
    res.n_verdicts = st->n_inputs;
    res.aggregate = all ? &g : NULL;
    Spes__Wire__AggregateReport r = SPES__WIRE__AGGREGATE_REPORT__INIT;
    r.node_id = id;
    r.round = t->round;
    r.results = &rp;
    r.n_results = 1;
    int tag = ++f->tag;
    spes_coord_sm_request(f->c, f->now, SPES_MSG_AGGREGATE_REPORT, &r.base, &noid,
                          (spes_coord_to){never_called, (void *)(intptr_t)tag});
    fx_collect(f);
    int type;
    ProtobufCMessage *m = NULL;
    ck_assert_int_eq(spes_proto_decode(reply_to(f, tag)->data, reply_to(f, tag)->len, &type, &m), 0);
    spes_proto_free(m);
    return type;
}

/* report is report_fill with the honest aggregate, 0xe0 + shard. */
static int report(fx *f, uint32_t id, const Spes__Wire__AggregateTask *t, size_t i, const int *bad)
{
    return report_fill(f, id, t, i, bad, 0xe0);
}

/* task_for returns the index of shard j's task in t, or -1. */
static int task_for(const Spes__Wire__AggregateTask *t, uint32_t j)
{
    for (size_t i = 0; t && i < t->n_tasks; i++)
        if (t->tasks[i]->shard == j)
            return (int)i;
    return -1;
}

START_TEST(test_sharded_audit)
{
    fx f;
    sharded_round(&f, 3, 1.0); /* every shard is recomputed by a second node */
    for (uint32_t id = 0; id < 3; id++)
        announce_shards(&f, id, 0, 2);
    validate_all(&f);
    /* shard 0: node-0 aggregates, node-1 audits; shard 1: node-1 aggregates, node-2 audits */
    Spes__Wire__AggregateTask *t[3];
    for (uint32_t id = 0; id < 3; id++)
        t[id] = task_of(&f, id, 0);
    ck_assert_int_ge(task_for(t[0], 0), 0);
    ck_assert_int_ge(task_for(t[1], 0), 0);
    ck_assert_int_ge(task_for(t[1], 1), 0);
    ck_assert_int_ge(task_for(t[2], 1), 0);
    ck_assert_int_lt(task_for(t[2], 0), 0);
    /* shard 0 agrees; on shard 1 the aggregator (node-1) lies */
    report(&f, 0, t[0], (size_t)task_for(t[0], 0), NULL);
    report(&f, 1, t[1], (size_t)task_for(t[1], 0), NULL);
    report_fill(&f, 1, t[1], (size_t)task_for(t[1], 1), NULL, 0xf0);
    report(&f, 2, t[2], (size_t)task_for(t[2], 1), NULL);
    ck_assert_ptr_null(last(&f, SPES_COORD_PERSIST_COMMIT)); /* the coordinator's node recomputes shard 1 */
    ck_assert(logged(&f, "shard 1: node-1 and its auditor node-2 differ; node-0 recomputes it"));
    Spes__Wire__AggregateTask *r = task_of(&f, 0, 0);
    ck_assert_int_ge(task_for(r, 1), 0);
    report(&f, 0, r, (size_t)task_for(r, 1), NULL);
    ck_assert(logged(&f, "AUDIT MISMATCH: round 0, shard 1: node-1 and its auditor node-2 differ; node-0's "
                         "aggregate is used"));
    Spes__Wire__Commit *cm = last_commit(&f);
    ck_assert_uint_eq(cm->n_aggregates, 2);
    ck_assert_uint_eq(cm->aggregates[1]->node_id, 0);
    ck_assert_uint_eq(cm->aggregates[1]->blob->blob_hash.data[0], 0xe1);
    spes_proto_free(&cm->base);
    Spes__Wire__StatusReply *st = status(&f);
    ck_assert_uint_eq(st->last_round->audited, 2);
    ck_assert_uint_eq(st->last_round->n_audit_mismatch, 1);
    ck_assert_uint_eq(st->last_round->audit_mismatch[0], 1);
    spes_proto_free(&st->base);
    spes_proto_free(&r->base);
    for (int id = 0; id < 3; id++)
        spes_proto_free(&t[id]->base);
    fx_fini(&f);
}
END_TEST

START_TEST(test_sharded_round)
{
    fx f;
    sharded_round(&f, 2, 0);
    Spes__Wire__Accept *a = (Spes__Wire__Accept *)heartbeat(&f, 1, 0, NS(JOINING), SPES_MSG_ACCEPT);
    ck_assert_uint_eq(a->shards, 2); /* every node cuts its contribution the same way */
    spes_proto_free(&a->base);
    /* an announcement without the round's shards is refused */
    uint8_t blob[32], man[32];
    Spes__Wire__Announce an;
    fill_announce(&an, 1, 0, blob, man);
    send_error(&f, SPES_MSG_ANNOUNCE, &an.base, &noid, EC(BAD_MESSAGE), "round 0 has 2 shard(s)");
    announce_shards(&f, 0, 0, 2);
    announce_shards(&f, 1, 0, 2);
    ck_assert_ptr_nonnull(last(&f, SPES_COORD_VALIDATE)); /* the own node checks the columns */
    /* each node aggregates one shard of both contributions, inputs in id order */
    Spes__Wire__AggregateTask *t0 = task_of(&f, 0, 0), *t1 = task_of(&f, 1, 0);
    ck_assert_ptr_nonnull(t0);
    ck_assert_ptr_nonnull(t1);
    ck_assert_uint_eq(t0->shards, 2);
    ck_assert_uint_eq(t0->n_tasks, 1);
    ck_assert_uint_eq(t0->tasks[0]->shard, 0);
    ck_assert_uint_eq(t1->tasks[0]->shard, 1);
    ck_assert_uint_eq(t1->tasks[0]->n_inputs, 2);
    ck_assert_uint_eq(t1->tasks[0]->inputs[0]->node_id, 0);
    ck_assert_uint_eq(t1->tasks[0]->inputs[1]->node_id, 1);
    ck_assert_uint_eq(t1->tasks[0]->inputs[1]->blob->blob_hash.data[0], 0xd0 + 4 + 1);
    ck_assert_int_eq(memcmp(t0->base_hash.data, f.s0, 32), 0);
    validate_all(&f);
    ck_assert_ptr_null(last(&f, SPES_COORD_PERSIST_COMMIT));    /* the aggregates are not in yet */
    ck_assert_int_eq(report(&f, 1, t0, 0, NULL), SPES_MSG_ACK); /* not its shard: no effect */
    ck_assert_int_eq(report(&f, 0, t0, 0, NULL), SPES_MSG_ACK);
    ck_assert_ptr_null(last(&f, SPES_COORD_PERSIST_COMMIT));
    ck_assert_int_eq(report(&f, 1, t1, 0, NULL), SPES_MSG_ACK);
    Spes__Wire__Commit *cm = last_commit(&f);
    ck_assert_uint_eq(cm->n_contributions, 2);
    ck_assert_uint_eq(cm->shards, 2);
    ck_assert_uint_eq(cm->next_shards, 2);
    ck_assert_uint_eq(cm->n_aggregates, 2);
    for (uint32_t j = 0; j < 2; j++) {
        ck_assert_uint_eq(cm->aggregates[j]->shard, j);
        ck_assert_uint_eq(cm->aggregates[j]->node_id, j);
        ck_assert_uint_eq(cm->aggregates[j]->blob->blob_hash.data[0], 0xe0 + j);
    }
    spes_proto_free(&cm->base);
    spes_proto_free(&t0->base);
    spes_proto_free(&t1->base);
    ck_assert_uint_eq(spes_coord_sm_round(f.c), 1);
    fx_fini(&f);
}
END_TEST

START_TEST(test_sharded_refusal_and_backup)
{
    fx f;
    sharded_round(&f, 3, 0);
    for (uint32_t id = 0; id < 3; id++)
        announce_shards(&f, id, 0, 2);
    validate_all(&f);
    Spes__Wire__AggregateTask *t0 = task_of(&f, 0, 0), *t1 = task_of(&f, 1, 0);
    ck_assert_ptr_null(task_of(&f, 2, 0)); /* 2 shards: node-2 aggregates nothing */
    /* shard 0's aggregator refuses node-2's shard: every shard is averaged again without it */
    int bad[3] = {0, 0, 1};
    ck_assert_int_eq(report(&f, 0, t0, 0, bad), SPES_MSG_ACK);
    ck_assert(logged(&f, "node-2 is refused: shard 0 (checked by node-0): value 7 is not finite"));
    ck_assert_int_eq(report(&f, 1, t1, 0, NULL), SPES_MSG_ACK); /* for the old list: stale */
    ck_assert_ptr_null(last(&f, SPES_COORD_PERSIST_COMMIT));
    spes_proto_free(&t0->base);
    spes_proto_free(&t1->base);
    t0 = task_of(&f, 0, 0);
    t1 = task_of(&f, 1, 0);
    ck_assert_uint_eq(t0->tasks[0]->attempt, 2);
    ck_assert_uint_eq(t0->tasks[0]->n_inputs, 2);
    ck_assert_int_eq(report(&f, 0, t0, 0, NULL), SPES_MSG_ACK);
    /* shard 1's aggregator goes silent: past the deadline its backup (node-0) takes it over */
    for (uint64_t t = 0; t < DEADLINE + 2 * TICK; t += TICK) { /* every node heartbeats; no report */
        fx_advance(&f, TICK);
        for (uint32_t id = 0; id < 3; id++) {
            Spes__Wire__AggregateTask *x = task_of(&f, id, 0);
            if (x)
                spes_proto_free(&x->base);
        }
        fx_tick(&f);
    }
    ck_assert(logged(&f, "shard 1's aggregator node-1 missed its deadline; node-0 takes it over"));
    ck_assert_int_eq(report(&f, 1, t1, 0, NULL), SPES_MSG_ACK); /* too late: no effect */
    ck_assert_ptr_null(last(&f, SPES_COORD_PERSIST_COMMIT));
    spes_proto_free(&t1->base);
    Spes__Wire__AggregateTask *b = task_of(&f, 0, 0);
    ck_assert_uint_eq(b->tasks[0]->shard, 1);
    int missing[2] = {0, 2}; /* it cannot fetch node-1's shard: node-1 is left out, not refused */
    ck_assert_int_eq(report(&f, 0, b, 0, missing), SPES_MSG_ACK);
    spes_proto_free(&b->base);
    spes_proto_free(&t0->base);
    t0 = task_of(&f, 0, 0); /* attempt 3: node-0 alone, both shards with node-0 (node-1 is out) */
    ck_assert_uint_eq(t0->n_tasks, 2);
    ck_assert_uint_eq(t0->tasks[0]->n_inputs, 1);
    ck_assert_int_eq(report(&f, 0, t0, 0, NULL), SPES_MSG_ACK);
    ck_assert_int_eq(report(&f, 0, t0, 1, NULL), SPES_MSG_ACK);
    Spes__Wire__Commit *cm = last_commit(&f);
    ck_assert_uint_eq(cm->n_contributions, 1);
    ck_assert_uint_eq(cm->contributions[0]->node_id, 0);
    ck_assert_uint_eq(cm->n_refused, 1); /* node-2 refused; node-1 left out (its residual waits) */
    ck_assert_uint_eq(cm->refused[0]->node_id, 2);
    ck_assert_uint_eq(cm->n_aggregates, 2);
    spes_proto_free(&cm->base);
    spes_proto_free(&t0->base);
    /* a report whose verdicts do not name the task's inputs is refused */
    fx_fini(&f);
}
END_TEST

START_TEST(test_join_new_and_open)
{
    fx f;
    fx_init(&f, 1, 0, 100);
    ck_assert_int_eq(count(&f, SPES_COORD_PERSIST_STATE), 1);
    ck_assert(logged(&f, "coordinator: new run 00000000000000aa"));
    fx_clear(&f);
    spes_pki_identity p = node_peer("node-0");
    Spes__Wire__Accept *a = (Spes__Wire__Accept *)join(&f, "node-0", &p, SPES_MSG_ACCEPT);
    ck_assert_uint_eq(a->node_id, 0);
    ck_assert_str_eq(a->run_id, "00000000000000aa");
    ck_assert_uint_eq(a->round, 0);
    ck_assert_uint_eq(a->n_columns, 0); /* round 0 is not open yet */
    ck_assert_int_eq(memcmp(a->state_hash.data, f.s0, 32), 0);
    ck_assert_uint_eq(a->round_deadline_ms, DEADLINE);
    ck_assert_ptr_nonnull(strstr(a->run_config_json, "\"num_experts\""));
    spes_proto_free(&a->base);
    ck_assert(logged(&f, "node-0 joins as node 0"));
    spes_coord_action *ps = last(&f, SPES_COORD_PERSIST_STATE);
    ck_assert_ptr_nonnull(ps);
    ck_assert_ptr_nonnull(strstr((char *)ps->data, "\"name\": \"node-0\""));
    fx_tick(&f); /* one active member, min_nodes 1: round 0 opens with all columns for it */
    Spes__Wire__Accept *w = (Spes__Wire__Accept *)heartbeat(&f, 0, 0, NS(JOINING), SPES_MSG_ACCEPT);
    ck_assert_uint_eq(w->n_columns, E_COLS);
    ck_assert_uint_eq(mask_of(w->columns, w->n_columns), (1u << E_COLS) - 1);
    spes_proto_free(&w->base);
    heartbeat_ack(&f, 0, 0); /* training: nothing to hand out */
    fx_fini(&f);
}
END_TEST

START_TEST(test_min_nodes_and_dealing)
{
    fx f;
    fx_init(&f, 2, 0, 100);
    join_ok(&f, "node-0");
    fx_tick(&f);
    heartbeat_ack(&f, 0, 0); /* one of two: round 0 waits */
    uint32_t alive[1] = {0};
    fx_pass(&f, 2 * FAILURE, alive, 1, 0); /* however long the second takes to come */
    join_ok(&f, "node-1");
    fx_tick(&f);
    Spes__Wire__Accept *a0 = (Spes__Wire__Accept *)heartbeat(&f, 0, 0, NS(JOINING), SPES_MSG_ACCEPT);
    Spes__Wire__Accept *a1 = (Spes__Wire__Accept *)heartbeat(&f, 1, 0, NS(JOINING), SPES_MSG_ACCEPT);
    unsigned m0 = mask_of(a0->columns, a0->n_columns), m1 = mask_of(a1->columns, a1->n_columns);
    ck_assert_uint_eq(a0->n_columns, E_COLS / 2);
    ck_assert_uint_eq(a1->n_columns, E_COLS / 2);
    ck_assert_uint_eq(m0 & m1, 0);
    ck_assert_uint_eq(m0 | m1, (1u << E_COLS) - 1);
    spes_proto_free(&a0->base);
    spes_proto_free(&a1->base);
    fx_fini(&f);
}
END_TEST

START_TEST(test_join_refusals)
{
    fx f;
    fx_init(&f, 1, 0, 100);
    spes_pki_identity op = operator_peer(), other = node_peer("node-9");
    Spes__Wire__Join j = SPES__WIRE__JOIN__INIT;
    j.protocol_version = SPES_PROTO_VERSION;
    j.node_name = "node-1";
    j.listen_url = "tcp://x:1";
    send_error(&f, SPES_MSG_JOIN, &j.base, &op, EC(UNAUTHORIZED),
               "Join needs a node certificate over TLS (alice is operator)");
    send_error(&f, SPES_MSG_JOIN, &j.base, &other, EC(UNAUTHORIZED), "certificate node-9 (node)");
    ck_assert_int_eq(spes_coord_sm_members(f.c), 0);
    /* a node of another release: refused by name with both versions, never a member */
    j.protocol_version = SPES_PROTO_VERSION - 1;
    Spes__Wire__Reject *old = (Spes__Wire__Reject *)send(&f, SPES_MSG_JOIN, &j.base, &noid, SPES_MSG_REJECT);
    ck_assert_int_eq(old->code, EC(UNSUPPORTED_VERSION));
    ck_assert_str_eq(old->reason,
                     "this node speaks protocol 2 and the run 3: install the run's spes release");
    ck_assert_uint_eq(old->retry_after_ms, 60000);
    spes_proto_free(&old->base);
    ck_assert_int_eq(spes_coord_sm_members(f.c), 0);
    j.protocol_version = SPES_PROTO_VERSION;
    /* the run is full at the table's capacity */
    char name[32];
    for (int i = 0; i < SPES_COORD_MAX_MEMBERS; i++) {
        snprintf(name, sizeof name, "n%d", i);
        j.node_name = name;
        Spes__Wire__Accept *a =
            (Spes__Wire__Accept *)send(&f, SPES_MSG_JOIN, &j.base, &noid, SPES_MSG_ACCEPT);
        ck_assert_uint_eq(a->node_id, (unsigned)i);
        spes_proto_free(&a->base);
        fx_clear(&f);
    }
    j.node_name = "one-too-many";
    Spes__Wire__Reject *r = (Spes__Wire__Reject *)send(&f, SPES_MSG_JOIN, &j.base, &noid, SPES_MSG_REJECT);
    ck_assert_int_eq(r->code, EC(REFUSED));
    ck_assert_str_eq(r->reason, "the run is full");
    spes_proto_free(&r->base);
    ck_assert_int_eq(spes_coord_sm_members(f.c), SPES_COORD_MAX_MEMBERS);
    j.node_name = "n7"; /* a known member may still rejoin */
    ProtobufCMessage *m = send(&f, SPES_MSG_JOIN, &j.base, &noid, SPES_MSG_ACCEPT);
    spes_proto_free(m);
    fx_fini(&f);
}
END_TEST

/* The local control socket is the operator: it may change the run, but every
 * node message from it is refused by name and changes nothing. */
START_TEST(test_control_socket_speaks_operator_verbs_only)
{
    fx f;
    two_node_round(&f, 100);
    fx_clear(&f);
    Spes__Wire__Join j = SPES__WIRE__JOIN__INIT;
    j.protocol_version = SPES_PROTO_VERSION;
    j.node_name = "made-up";
    j.listen_url = "tcp://x:1";
    send_error(&f, SPES_MSG_JOIN, &j.base, &control, EC(UNAUTHORIZED),
               "Join needs a node certificate over TLS (the local control socket is an operator)");
    Spes__Wire__Leave l = SPES__WIRE__LEAVE__INIT;
    l.node_id = 1;
    l.reason = "";
    send_error(&f, SPES_MSG_LEAVE, &l.base, &control, EC(UNAUTHORIZED), "Leave needs a node certificate");
    Spes__Wire__Heartbeat h = SPES__WIRE__HEARTBEAT__INIT;
    h.node_id = 1;
    send_error(&f, SPES_MSG_HEARTBEAT, &h.base, &control, EC(UNAUTHORIZED),
               "Heartbeat needs a node certificate");
    uint8_t blob[32], man[32], hash[32] = {0};
    Spes__Wire__Announce a;
    fill_announce(&a, 1, 0, blob, man);
    send_error(&f, SPES_MSG_ANNOUNCE, &a.base, &control, EC(UNAUTHORIZED),
               "Announce needs a node certificate");
    Spes__Wire__Digest g = SPES__WIRE__DIGEST__INIT;
    g.node_id = 1;
    g.state_hash = (ProtobufCBinaryData){32, hash};
    g.checkpoint_id = "";
    send_error(&f, SPES_MSG_DIGEST, &g.base, &control, EC(UNAUTHORIZED), "Digest needs a node certificate");
    /* an operator certificate named like a member does not speak for it either */
    spes_pki_identity op = operator_peer();
    snprintf(op.name, sizeof op.name, "node-1");
    send_error(&f, SPES_MSG_ANNOUNCE, &a.base, &op, EC(UNAUTHORIZED),
               "Announce needs a node certificate over TLS (node-1 is operator)");
    send_error(&f, SPES_MSG_LEAVE, &l.base, &op, EC(UNAUTHORIZED), "Leave needs a node certificate");
    /* nothing changed: no member added, node-1 still active, nothing persisted */
    ck_assert_int_eq(spes_coord_sm_members(f.c), 2);
    ck_assert_int_eq(member_state(&f, 1), NS(ACTIVE));
    ck_assert_int_eq(count(&f, SPES_COORD_PERSIST_STATE), 0);
    ck_assert(!logged(&f, "made-up"));
    /* the operator verbs still work from the control socket */
    Spes__Wire__MembersRequest mr = SPES__WIRE__MEMBERS_REQUEST__INIT;
    mr.action = SPES__WIRE__MEMBERS_ACTION__MEMBERS_EVICT;
    mr.target = "node-1";
    spes_proto_free(send(&f, SPES_MSG_MEMBERS_REQUEST, &mr.base, &control, SPES_MSG_MEMBERS_REPLY));
    ck_assert_int_eq(member_state(&f, 1), NS(EVICTED));
    ck_assert(logged(&f, "operator (local): "));
    fx_fini(&f);
}
END_TEST

/* Joins and departures far beyond the table's size keep admitting: departed
 * members give up their slots (oldest first), ids are never reused, an
 * evicted name stays refused, and a restarted coordinator keeps both. */
static char *state_text(fx *f);

START_TEST(test_departed_slots_reclaimed)
{
    fx f;
    fx_init(&f, 1, 0, 100);
    Spes__Wire__MembersRequest mr = SPES__WIRE__MEMBERS_REQUEST__INIT;
    mr.action = SPES__WIRE__MEMBERS_ACTION__MEMBERS_EVICT;
    Spes__Wire__Leave l = SPES__WIRE__LEAVE__INIT;
    l.reason = "";
    char name[32];
    uint32_t last = 0;
    int total = SPES_COORD_MAX_MEMBERS * 3 + 7;
    for (int i = 0; i < total; i++) {
        snprintf(name, sizeof name, "n%d", i);
        uint32_t id = join_ok(&f, name);
        ck_assert(i == 0 || id > last); /* unique and increasing */
        ck_assert_uint_eq(id, (unsigned)i);
        last = id;
        fx_advance(&f, 1);
        if (i % 3 == 0) { /* leaves */
            l.node_id = id;
            spes_pki_identity p = node_peer(name);
            spes_proto_free(send(&f, SPES_MSG_LEAVE, &l.base, &p, SPES_MSG_ACK));
        } else if (i % 3 == 1) { /* is evicted */
            mr.target = name;
            spes_proto_free(send(&f, SPES_MSG_MEMBERS_REQUEST, &mr.base, &control, SPES_MSG_MEMBERS_REPLY));
        } /* else stays in the run until it fails below */
        ck_assert_int_le(spes_coord_sm_members(f.c), SPES_COORD_MAX_MEMBERS);
        fx_clear(&f);
        if (i % 50 == 49) { /* the silent ones fail */
            fx_pass(&f, FAILURE + 2 * TICK, NULL, 0, 0);
            fx_clear(&f);
        }
    }
    ck_assert_int_eq(spes_coord_sm_members(f.c), SPES_COORD_MAX_MEMBERS);
    /* the slots went oldest first: n0 is gone, the newest member is there */
    Spes__Wire__StatusReply *st = status(&f);
    ck_assert_uint_eq(st->n_members, SPES_COORD_MAX_MEMBERS);
    for (size_t i = 0; i < st->n_members; i++) {
        ck_assert_str_ne(st->members[i]->name, "n0");
        ck_assert(i == 0 || st->members[i]->node_id > st->members[i - 1]->node_id);
    }
    ck_assert_uint_eq(st->members[st->n_members - 1]->node_id, (unsigned)(total - 1));
    /* the reclaimed ones stay in status: the newest SPES_COORD_MAX_DEPARTED, oldest first */
    ck_assert_uint_eq(st->n_departed, SPES_COORD_MAX_DEPARTED);
    for (size_t i = 0; i < st->n_departed; i++) {
        const Spes__Wire__MemberInfo *d = st->departed[i];
        ck_assert(i == 0 || d->node_id > st->departed[i - 1]->node_id);
        ck_assert(d->state == NS(LEFT) || d->state == NS(EVICTED) || d->state == NS(FAILED));
        snprintf(name, sizeof name, "n%u", d->node_id);
        ck_assert_str_eq(d->name, name);
        ck_assert_int_eq(d->state, d->node_id % 3 == 0   ? NS(LEFT)
                                   : d->node_id % 3 == 1 ? NS(EVICTED)
                                                         : NS(FAILED));
    }
    spes_proto_free(&st->base);
    /* an evicted member whose slot went is still refused; one that left joins again with a new id */
    Spes__Wire__Reject *r = (Spes__Wire__Reject *)join(&f, "n1", &noid, SPES_MSG_REJECT);
    ck_assert_int_eq(r->code, EC(NOT_MEMBER));
    ck_assert_str_eq(r->reason, "this node was evicted from the run");
    spes_proto_free(&r->base);
    ck_assert_uint_eq(join_ok(&f, "n0"), (unsigned)total);
    fx_clear(&f);
    /* a restarted coordinator: the same barred names and no reused id */
    fx_advance(&f, 1);
    mr.target = "n0";
    spes_proto_free(send(&f, SPES_MSG_MEMBERS_REQUEST, &mr.base, &control, SPES_MSG_MEMBERS_REPLY));
    uint32_t gone[SPES_COORD_MAX_DEPARTED];
    st = status(&f);
    for (size_t i = 0; i < st->n_departed; i++)
        gone[i] = st->departed[i]->node_id;
    spes_proto_free(&st->base);
    char *text = state_text(&f);
    fx g;
    memset(&g, 0, sizeof g);
    fx_settings(&g, 1, 0);
    fx_run_config(&g, 100);
    ck_assert_int_eq(spes_coord_sm_alloc(&g.c, &g.run, &g.set), 0);
    ck_assert_int_eq(spes_coord_sm_load(g.c, text, "coordinator.json"), 0);
    free(text);
    g.now = f.now;
    spes_coord_sm_start(g.c, g.now);
    r = (Spes__Wire__Reject *)join(&g, "n1", &noid, SPES_MSG_REJECT);
    ck_assert_str_eq(r->reason, "this node was evicted from the run");
    spes_proto_free(&r->base);
    r = (Spes__Wire__Reject *)join(&g, "n0", &noid, SPES_MSG_REJECT); /* evicted, slot still held */
    ck_assert_str_eq(r->reason, "this node was evicted from the run");
    spes_proto_free(&r->base);
    ck_assert_uint_eq(join_ok(&g, "fresh"), (unsigned)total + 1);
    st = status(&g); /* the departed list survived the restart; "fresh" took one more slot */
    ck_assert_uint_eq(st->n_departed, SPES_COORD_MAX_DEPARTED);
    for (size_t i = 0; i + 1 < st->n_departed; i++)
        ck_assert_uint_eq(st->departed[i]->node_id, gone[i + 1]);
    spes_proto_free(&st->base);
    fx_fini(&g);
    fx_fini(&f);
}
END_TEST

START_TEST(test_rejoin_mid_round)
{
    fx f;
    two_node_round(&f, 100);
    ck_assert_int_eq(member_state(&f, 1), NS(ACTIVE));
    spes_pki_identity p = node_peer("node-1");
    Spes__Wire__Accept *a = (Spes__Wire__Accept *)join(&f, "node-1", &p, SPES_MSG_ACCEPT);
    ck_assert_uint_eq(a->node_id, 1);   /* the same id */
    ck_assert_uint_eq(a->n_columns, 0); /* it sits this round out */
    spes_proto_free(&a->base);
    ck_assert_int_eq(member_state(&f, 1), NS(JOINING));
    /* round 0 commits with node-0 alone (node-1 is no participant), then node-1 is active again */
    announce_ok(&f, 0, 0);
    ck_assert_int_eq(last(&f, SPES_COORD_VALIDATE)->n, 1);
    validate_all(&f);
    Spes__Wire__Commit *cm = last_commit(&f);
    ck_assert_uint_eq(cm->n_contributions, 1);
    ck_assert_uint_eq(cm->n_assignment, 2); /* node-1 is dealt columns for round 1 */
    spes_proto_free(&cm->base);
    ck_assert_int_eq(member_state(&f, 1), NS(ACTIVE));
    fx_fini(&f);
}
END_TEST

START_TEST(test_approval_and_operator_verbs)
{
    fx f;
    fx_init(&f, 1, 1, 100);
    join_ok(&f, "node-0"); /* the coordinator's own node needs no approval */
    spes_pki_identity p1 = node_peer("node-1"), op = operator_peer();
    Spes__Wire__Reject *r = (Spes__Wire__Reject *)join(&f, "node-1", &p1, SPES_MSG_REJECT);
    ck_assert_int_eq(r->code, EC(REFUSED));
    ck_assert_uint_eq(r->retry_after_ms, 2000);
    ck_assert_str_eq(r->reason, "awaiting operator approval");
    spes_proto_free(&r->base);
    ck_assert(logged(&f, "node-1 joins as node 1, awaiting approval"));
    ck_assert_int_eq(member_state(&f, 1), NS(PENDING));
    Spes__Wire__MembersRequest mr = SPES__WIRE__MEMBERS_REQUEST__INIT;
    mr.action = SPES__WIRE__MEMBERS_ACTION__MEMBERS_APPROVE;
    mr.target = "node-1";
    send_error(&f, SPES_MSG_MEMBERS_REQUEST, &mr.base, &p1, EC(UNAUTHORIZED),
               "needs an operator certificate");
    mr.target = "node-7";
    send_error(&f, SPES_MSG_MEMBERS_REQUEST, &mr.base, &op, EC(NOT_FOUND), "no member named node-7");
    mr.target = "1"; /* by id */
    Spes__Wire__MembersReply *rep =
        (Spes__Wire__MembersReply *)send(&f, SPES_MSG_MEMBERS_REQUEST, &mr.base, &op, SPES_MSG_MEMBERS_REPLY);
    ck_assert_str_eq(rep->message, "node-1 approved");
    ck_assert_uint_eq(rep->n_members, 2);
    ck_assert_int_eq(rep->members[1]->state, NS(JOINING));
    spes_proto_free(&rep->base);
    ck_assert(logged(&f, "operator alice: node-1 approved"));
    join_ok(&f, "node-1");
    mr.action = 99;
    send_error(&f, SPES_MSG_MEMBERS_REQUEST, &mr.base, &noid, EC(INTERNAL), "unknown members action");
    /* list is open to nodes */
    mr.action = SPES__WIRE__MEMBERS_ACTION__MEMBERS_LIST;
    rep =
        (Spes__Wire__MembersReply *)send(&f, SPES_MSG_MEMBERS_REQUEST, &mr.base, &p1, SPES_MSG_MEMBERS_REPLY);
    ck_assert_str_eq(rep->message, "");
    spes_proto_free(&rep->base);
    /* drain and evict: the node is told to stop and its columns move */
    mr.action = SPES__WIRE__MEMBERS_ACTION__MEMBERS_DRAIN;
    mr.target = "node-1";
    rep = (Spes__Wire__MembersReply *)send(&f, SPES_MSG_MEMBERS_REQUEST, &mr.base, &noid,
                                           SPES_MSG_MEMBERS_REPLY);
    ck_assert_str_eq(rep->message, "node-1 drains: its columns move at the next round");
    ck_assert_uint_eq(rep->members[1]->n_columns, 0);
    ck_assert_uint_eq(rep->members[0]->n_columns, E_COLS);
    spes_proto_free(&rep->base);
    r = (Spes__Wire__Reject *)join(&f, "node-1", &p1, SPES_MSG_REJECT);
    ck_assert_int_eq(r->code, EC(NOT_MEMBER));
    ck_assert_str_eq(r->reason, "this node was drained from the run");
    spes_proto_free(&r->base);
    mr.action = SPES__WIRE__MEMBERS_ACTION__MEMBERS_EVICT;
    rep =
        (Spes__Wire__MembersReply *)send(&f, SPES_MSG_MEMBERS_REQUEST, &mr.base, &op, SPES_MSG_MEMBERS_REPLY);
    ck_assert_str_eq(rep->message, "node-1 evicted");
    spes_proto_free(&rep->base);
    r = (Spes__Wire__Reject *)join(&f, "node-1", &p1, SPES_MSG_REJECT);
    ck_assert_str_eq(r->reason, "this node was evicted from the run");
    ck_assert_uint_eq(r->retry_after_ms, 0);
    spes_proto_free(&r->base);
    r = (Spes__Wire__Reject *)heartbeat(&f, 1, 0, NS(ACTIVE), SPES_MSG_REJECT);
    ck_assert_int_eq(r->code, EC(NOT_MEMBER));
    ck_assert_uint_eq(r->retry_after_ms, 500);
    spes_proto_free(&r->base);
    fx_fini(&f);
}
END_TEST

START_TEST(test_announce_refusals)
{
    fx f;
    two_node_round(&f, 100);
    uint8_t blob[32], man[32];
    Spes__Wire__Announce a;
    fill_announce(&a, 1, 3, blob, man);
    send_error(&f, SPES_MSG_ANNOUNCE, &a.base, &noid, EC(WRONG_ROUND),
               "round 3 is not open for node-1 (open round 0)");
    fill_announce(&a, 7, 0, blob, man);
    send_error(&f, SPES_MSG_ANNOUNCE, &a.base, &noid, EC(UNAUTHORIZED), "node id 7 is not");
    fill_announce(&a, 1, 0, blob, man);
    spes_pki_identity p0 = node_peer("node-0");
    send_error(&f, SPES_MSG_ANNOUNCE, &a.base, &p0, EC(UNAUTHORIZED), "node id 1 is not node-0");
    a.size = 1ull << 40;
    send_error(&f, SPES_MSG_ANNOUNCE, &a.base, &noid, EC(BAD_MESSAGE), "exceeds the");
    ck_assert_int_eq(count(&f, SPES_COORD_VALIDATE), 0);
    announce_ok(&f, 1, 0);
    announce_ok(&f, 1, 0); /* a repeat before the round closes is taken again */
    ck_assert_int_eq(count(&f, SPES_COORD_VALIDATE), 0);
    announce_ok(&f, 0, 0);
    spes_coord_action *v = last(&f, SPES_COORD_VALIDATE);
    ck_assert_int_eq(count(&f, SPES_COORD_VALIDATE), 1);
    ck_assert_int_eq(v->n, 2);
    ck_assert_str_eq(v->names[0], "node-0"); /* id order */
    ck_assert_str_eq(v->names[1], "node-1");
    ck_assert_str_eq(v->urls[1], "tcp://127.0.0.1:711");
    ck_assert_int_eq(v->hashes[1][0], 0xb1);
    ck_assert_int_eq(v->manifests[0][0], 0xc0);
    ck_assert(logged(&f, "round 0: checking 2 contribution(s)"));
    fill_announce(&a, 0, 0, blob, man);
    send_error(&f, SPES_MSG_ANNOUNCE, &a.base, &noid, EC(WRONG_ROUND), ", closing");
    fx_fini(&f);
}
END_TEST

START_TEST(test_commit_with_refusal)
{
    fx f;
    two_node_round(&f, 100);
    announce_ok(&f, 0, 0);
    announce_ok(&f, 1, 0);
    spes_coord_action *v = last(&f, SPES_COORD_VALIDATE);
    int ok[2] = {1, 0};
    char reasons[2][256] = {"", "blob has NaN"};
    spes_coord_sm_validated(f.c, f.now, 1, 2, ok, reasons); /* wrong round: ignored */
    spes_coord_sm_validated(f.c, f.now, 0, 1, ok, reasons); /* wrong count: ignored */
    fx_collect(&f);
    ck_assert_int_eq(count(&f, SPES_COORD_PERSIST_COMMIT), 0);
    spes_coord_sm_validated(f.c, f.now, v->round, v->n, ok, reasons);
    fx_collect(&f);
    Spes__Wire__Commit *cm = last_commit(&f);
    ck_assert_uint_eq(last(&f, SPES_COORD_PERSIST_COMMIT)->round, 0);
    ck_assert_uint_eq(cm->round, 0);
    ck_assert_int_eq(memcmp(cm->base_hash.data, f.s0, 32), 0);
    ck_assert_uint_eq(cm->n_contributions, 1);
    ck_assert_uint_eq(cm->contributions[0]->node_id, 0);
    ck_assert_int_eq(cm->contributions[0]->blob_hash.data[0], 0xb0);
    ck_assert_uint_eq(cm->contributions[0]->size, 1000);
    ck_assert_uint_eq(cm->n_refused, 1);
    ck_assert_uint_eq(cm->refused[0]->node_id, 1);
    ck_assert_str_eq(cm->refused[0]->reason, "blob has NaN");
    ck_assert_uint_eq(cm->next_step, SYNC);
    ck_assert_uint_eq(cm->next_deadline_ms, DEADLINE);
    ck_assert_uint_eq(cm->n_peers, 2);
    ck_assert_str_eq(cm->peers[1]->listen_url, "tcp://127.0.0.1:711");
    ck_assert_uint_eq(cm->n_assignment, 2);
    unsigned m0 = mask_of(cm->assignment[0]->columns, cm->assignment[0]->n_columns);
    unsigned m1 = mask_of(cm->assignment[1]->columns, cm->assignment[1]->n_columns);
    ck_assert_uint_eq(m0 | m1, (1u << E_COLS) - 1);
    ck_assert_uint_eq(m0 & m1, 0);
    spes_proto_free(&cm->base);
    ck_assert(logged(&f, "round 0: contribution of node-1 refused: blob has NaN"));
    ck_assert(logged(&f, "round 0 committed: 1 contribution(s) (node-0)")); /* who, by name */
    ck_assert_uint_eq(spes_coord_sm_round(f.c), 1);
    uint8_t h[32];
    ck_assert_int_eq(spes_coord_sm_state_hash(f.c, h), 0); /* S_1 is not agreed yet */
    Spes__Wire__StatusReply *s = status(&f);
    ck_assert_uint_eq(s->round, 1);
    ck_assert_uint_eq(s->step, SYNC);
    ck_assert_ptr_nonnull(s->last_round);
    ck_assert_uint_eq(s->last_round->round, 0);
    ck_assert_uint_eq(s->last_round->contributors, 1);
    ck_assert_uint_eq(s->last_round->n_refused, 1);
    ck_assert_str_eq(s->last_round->refused[0]->reason, "node-1: blob has NaN");
    ck_assert_uint_eq(s->last_round->refused[0]->node_id, 1); /* who, for spesctl to name */
    ck_assert_uint_eq(s->last_round->committed_unix_ms, f.now.wall_ms);
    ck_assert_uint_eq(s->last_round->digest.len, 0);
    spes_proto_free(&s->base);
    /* the persisted state is the new round's */
    ck_assert_ptr_nonnull(strstr((char *)last(&f, SPES_COORD_PERSIST_STATE)->data, "\"round\": 1"));
    fx_fini(&f);
}
END_TEST

START_TEST(test_deadline_leaves_late_nodes_out)
{
    fx f;
    two_node_round(&f, 100);
    uint32_t ids[2] = {0, 1};
    announce_ok(&f, 0, 0); /* both stay alive, only node-0 announces */
    fx_pass(&f, DEADLINE, ids, 2, 0);
    ck_assert_int_eq(count(&f, SPES_COORD_VALIDATE), 0);
    fx_pass(&f, TICK, ids, 2, 0);
    ck_assert(logged(&f, "round 0: deadline passed; committing without the missing nodes"));
    spes_coord_action *v = last(&f, SPES_COORD_VALIDATE);
    ck_assert_int_eq(count(&f, SPES_COORD_VALIDATE), 1);
    ck_assert_int_eq(v->n, 1);
    ck_assert_str_eq(v->names[0], "node-0");
    validate_all(&f);
    Spes__Wire__Commit *cm = last_commit(&f);
    ck_assert_uint_eq(cm->n_contributions, 1);
    spes_proto_free(&cm->base);
    fx_fini(&f);
}
END_TEST

START_TEST(test_deadline_without_announcements_waits)
{
    fx f;
    two_node_round(&f, 100);
    uint32_t ids[2] = {0, 1};
    fx_pass(&f, DEADLINE + 2 * TICK, ids, 2, 0);
    ck_assert_int_eq(count(&f, SPES_COORD_VALIDATE), 0); /* nothing to commit: the deadline restarts */
    fx_pass(&f, DEADLINE - 3 * TICK, ids, 2, 0);
    announce_ok(&f, 1, 0);
    fx_pass(&f, 2 * TICK, ids, 2, 0);
    ck_assert_int_eq(count(&f, SPES_COORD_VALIDATE), 0); /* the restarted deadline has not passed */
    announce_ok(&f, 0, 0);
    ck_assert_int_eq(count(&f, SPES_COORD_VALIDATE), 1);
    fx_fini(&f);
}
END_TEST

START_TEST(test_failure_detection)
{
    fx f;
    two_node_round(&f, 100);
    announce_ok(&f, 0, 0);
    uint32_t alive[1] = {0};
    fx_pass(&f, FAILURE, alive, 1, 0); /* node-1 silent for exactly the timeout: still alive */
    ck_assert_int_eq(member_state(&f, 1), NS(ACTIVE));
    fx_pass(&f, TICK, alive, 1, 0);
    ck_assert(logged(&f, "node-1 missed its heartbeats for 1050 ms: marked failed"));
    ck_assert_int_eq(member_state(&f, 1), NS(FAILED));
    ck_assert_int_eq(member_state(&f, 0), NS(ACTIVE));
    /* the round no longer waits for the failed node: it commits with node-0 */
    spes_coord_action *v = last(&f, SPES_COORD_VALIDATE);
    ck_assert_ptr_nonnull(v);
    ck_assert_int_eq(v->n, 1);
    validate_all(&f);
    Spes__Wire__Commit *cm = last_commit(&f);
    ck_assert_uint_eq(cm->n_assignment, 1); /* its columns go to node-0 */
    ck_assert_uint_eq(cm->assignment[0]->n_columns, E_COLS);
    spes_proto_free(&cm->base);
    Spes__Wire__Reject *r = (Spes__Wire__Reject *)heartbeat(&f, 1, 0, NS(ACTIVE), SPES_MSG_REJECT);
    ck_assert_str_eq(r->reason, "not an active member: join again");
    spes_proto_free(&r->base);
    r = (Spes__Wire__Reject *)heartbeat(&f, 42, 0, NS(ACTIVE), SPES_MSG_REJECT);
    ck_assert_str_eq(r->reason, "unknown node id");
    spes_proto_free(&r->base);
    fx_fini(&f);
}
END_TEST

START_TEST(test_own_stall_is_forgiven)
{
    fx f;
    two_node_round(&f, 100);
    uint32_t ids[2] = {0, 1};
    fx_pass(&f, TICK, ids, 2, 0);
    fx_clear(&f);
    fx_advance(&f, 5500); /* the caller's loop blocked for 5.5 s (failure timeout 1 s) */
    fx_tick(&f);
    ck_assert(logged(&f, "coordinator: this daemon did not run for 5450 ms"));
    ck_assert(!logged(&f, "marked failed"));
    ck_assert_int_eq(member_state(&f, 0), NS(ACTIVE));
    ck_assert_int_eq(member_state(&f, 1), NS(ACTIVE));
    /* the queued heartbeats arrive after the stall; the deadline moved on too */
    heartbeat_ack(&f, 0, 0);
    heartbeat_ack(&f, 1, 0);
    announce_ok(&f, 0, 0);
    fx_pass(&f, TICK, ids, 2, 0);
    ck_assert_int_eq(count(&f, SPES_COORD_VALIDATE), 0);
    /* a real silence after the stall is still detected */
    fx_pass(&f, FAILURE + TICK, ids, 1, 0);
    ck_assert(logged(&f, "node-1 missed its heartbeats"));
    fx_fini(&f);
}
END_TEST

START_TEST(test_digests_and_mismatch)
{
    fx f;
    two_node_round(&f, 100);
    uint32_t ids[2] = {0, 1};
    commit_round(&f, ids, 2, 0);
    fx_clear(&f);
    /* node-1 reports first; the agreed digest is node-0's (the coordinator's own node) */
    digest(&f, 1, 1, 0x77, NULL);
    ck_assert(!logged(&f, "MISMATCH"));
    ck_assert_int_eq(count(&f, SPES_COORD_PERSIST_STATE), 0);
    digest(&f, 0, 1, 0x66, NULL);
    ck_assert(logged(&f, "round 1: agreed state digest 6666666666666666"));
    ck_assert(logged(&f, "DIGEST MISMATCH: node-1 reports 7777777777777777 for round 1"));
    ck_assert_int_eq(count(&f, SPES_COORD_PERSIST_STATE), 1);
    uint8_t h[32];
    ck_assert_int_eq(spes_coord_sm_state_hash(f.c, h), 1);
    ck_assert_int_eq(h[0], 0x66);
    digest(&f, 1, 1, 0x77, NULL); /* again: counted once */
    Spes__Wire__StatusReply *s = status(&f);
    ck_assert_uint_eq(s->last_round->n_digest_mismatch, 1);
    ck_assert_uint_eq(s->last_round->digest_mismatch[0], 1);
    ck_assert_uint_eq(s->last_round->digest.len, 32);
    ck_assert_uint_eq(s->members[1]->digest.len, 32);
    ck_assert_int_eq(s->members[1]->digest.data[0], 0x77);
    spes_proto_free(&s->base);
    fx_clear(&f);
    digest(&f, 1, 1, 0x66, NULL); /* a healed node matches: no new complaint */
    ck_assert(!logged(&f, "MISMATCH"));
    Spes__Wire__Digest g = SPES__WIRE__DIGEST__INIT;
    uint8_t z[32] = {0};
    g.node_id = 1;
    g.state_hash = (ProtobufCBinaryData){32, z};
    spes_pki_identity p0 = node_peer("node-0");
    send_error(&f, SPES_MSG_DIGEST, &g.base, &p0, EC(UNAUTHORIZED), "node id 1 is not node-0");
    fx_fini(&f);
}
END_TEST

START_TEST(test_heartbeat_replies)
{
    fx f;
    two_node_round(&f, 100);
    /* before any commit the state is known: an idle participant is handed its work */
    Spes__Wire__Accept *a = (Spes__Wire__Accept *)heartbeat(&f, 1, 0, NS(JOINING), SPES_MSG_ACCEPT);
    ck_assert_uint_eq(a->n_columns, E_COLS / 2);
    spes_proto_free(&a->base);
    uint32_t ids[2] = {0, 1};
    commit_round(&f, ids, 2, 0);
    spes_coord_action *pc = last(&f, SPES_COORD_PERSIST_COMMIT);
    size_t clen = pc->len;
    uint8_t *cbytes = malloc(clen);
    memcpy(cbytes, pc->data, clen);
    /* a node still at round 0 gets the commit itself, byte for byte */
    int tag = ++f.tag;
    Spes__Wire__Heartbeat h = SPES__WIRE__HEARTBEAT__INIT;
    h.node_id = 1;
    h.round = 0;
    spes_coord_sm_request(f.c, f.now, SPES_MSG_HEARTBEAT, &h.base, &noid,
                          (spes_coord_to){never_called, (void *)(intptr_t)tag});
    fx_collect(&f);
    spes_coord_action *r = reply_to(&f, tag);
    ck_assert_uint_eq(r->len, clen);
    ck_assert_int_eq(memcmp(r->data, cbytes, clen), 0);
    Spes__Wire__Reject *rj = (Spes__Wire__Reject *)heartbeat(&f, 1, 5, NS(ACTIVE), SPES_MSG_REJECT);
    ck_assert_int_eq(rj->code, EC(WRONG_ROUND));
    ck_assert_str_eq(rj->reason, "the run was restored: join again");
    spes_proto_free(&rj->base);
    /* S_1 is not agreed yet: an idle node is not handed round 1's work */
    Spes__Wire__Ack *ack = (Spes__Wire__Ack *)heartbeat(&f, 1, 1, NS(JOINING), SPES_MSG_ACK);
    spes_proto_free(&ack->base);
    /* a joiner now starts from S_0 and the last commit brings it up */
    spes_pki_identity p2 = node_peer("node-2");
    a = (Spes__Wire__Accept *)join(&f, "node-2", &p2, SPES_MSG_ACCEPT);
    ck_assert_uint_eq(a->round, 0);
    ck_assert_uint_eq(a->step, 0);
    ck_assert_int_eq(memcmp(a->state_hash.data, f.s0, 32), 0);
    ck_assert_uint_eq(a->n_columns, 0);
    spes_proto_free(&a->base);
    digest(&f, 0, 1, 0x61, NULL);
    digest(&f, 1, 1, 0x61, NULL);
    announce_ok(&f, 0, 1);
    announce_ok(&f, 1, 1);
    validate_all(&f);
    /* a node two rounds behind catches up: it gets the commit of its round, byte for byte, as long
     * as nodes still hold that round's contributions (SPES_COORD_COMMIT_HISTORY rounds) */
    tag = ++f.tag;
    spes_coord_sm_request(f.c, f.now, SPES_MSG_HEARTBEAT, &h.base, &noid,
                          (spes_coord_to){never_called, (void *)(intptr_t)tag});
    fx_collect(&f);
    r = reply_to(&f, tag);
    ck_assert_uint_eq(r->len, clen);
    ck_assert_int_eq(memcmp(r->data, cbytes, clen), 0);
    Spes__Wire__Commit *cm = (Spes__Wire__Commit *)heartbeat(&f, 1, 1, NS(ACTIVE), SPES_MSG_COMMIT);
    ck_assert_uint_eq(cm->round, 1);
    spes_proto_free(&cm->base);
    for (uint64_t round = 2; round <= 3; round++) { /* node-2 (id 2) takes part from round 2 */
        for (uint32_t id = 0; id < 3; id++)
            digest(&f, id, round, (uint8_t)(0x60 + round), NULL);
        for (uint32_t id = 0; id < 3; id++)
            announce_ok(&f, id, round);
        validate_all(&f);
    }
    /* at round 4 the commit of round 0 is no longer held: too far behind, join again */
    rj = (Spes__Wire__Reject *)heartbeat(&f, 1, 0, NS(ACTIVE), SPES_MSG_REJECT);
    ck_assert_str_eq(rj->reason, "too far behind: join again");
    spes_proto_free(&rj->base);
    cm = (Spes__Wire__Commit *)heartbeat(&f, 1, 1, NS(ACTIVE), SPES_MSG_COMMIT);
    ck_assert_uint_eq(cm->round, 1);
    spes_proto_free(&cm->base);
    free(cbytes);
    fx_fini(&f);
}
END_TEST

START_TEST(test_accept_names_state_holders)
{
    fx f;
    two_node_round(&f, 100);
    uint32_t ids[2] = {0, 1};
    commit_round(&f, ids, 2, 0);
    digest(&f, 0, 1, 0x61, NULL);
    digest(&f, 1, 1, 0x61, NULL);
    heartbeat_ack(&f, 0, 1); /* both hold S_1 */
    heartbeat_ack(&f, 1, 1);
    /* a joiner is told who holds S_1: both members, never itself */
    spes_pki_identity p2 = node_peer("node-2");
    Spes__Wire__Accept *a = (Spes__Wire__Accept *)join(&f, "node-2", &p2, SPES_MSG_ACCEPT);
    ck_assert_uint_eq(a->round, 1);
    ck_assert_uint_eq(a->n_peers, 2);
    for (size_t i = 0; i < a->n_peers; i++) {
        ck_assert_uint_lt(a->peers[i]->node_id, 2);
        ck_assert_str_ne(a->peers[i]->listen_url, "");
    }
    spes_proto_free(&a->base);
    /* a member reporting round 0 is applying the commit that makes S_1: named; one further behind
     * (its heartbeat names a round the coordinator no longer knows) is not */
    Spes__Wire__Commit *cm = (Spes__Wire__Commit *)heartbeat(&f, 1, 0, NS(ACTIVE), SPES_MSG_COMMIT);
    spes_proto_free(&cm->base);
    spes_pki_identity p3 = node_peer("node-3");
    a = (Spes__Wire__Accept *)join(&f, "node-3", &p3, SPES_MSG_ACCEPT);
    ck_assert_uint_eq(a->n_peers, 2);
    spes_proto_free(&a->base);
    Spes__Wire__Reject *rj = (Spes__Wire__Reject *)heartbeat(&f, 1, 7, NS(ACTIVE), SPES_MSG_REJECT);
    spes_proto_free(&rj->base);
    spes_pki_identity p4 = node_peer("node-4");
    a = (Spes__Wire__Accept *)join(&f, "node-4", &p4, SPES_MSG_ACCEPT);
    ck_assert_uint_eq(a->n_peers, 1);
    ck_assert_uint_eq(a->peers[0]->node_id, 0);
    spes_proto_free(&a->base);
    fx_fini(&f);
}
END_TEST

START_TEST(test_accept_holders_from_digests)
{
    /* rounds shorter than a heartbeat: node-1 last heartbeated at round 0 and has applied rounds 1
     * and 2 since; its digest of S_2 says it holds the state a joiner fetches */
    fx f;
    two_node_round(&f, 100);
    uint32_t ids[2] = {0, 1};
    commit_round(&f, ids, 2, 0);
    heartbeat_ack(&f, 0, 1);
    Spes__Wire__Commit *cm = (Spes__Wire__Commit *)heartbeat(&f, 1, 0, NS(ACTIVE), SPES_MSG_COMMIT);
    spes_proto_free(&cm->base);
    digest(&f, 0, 1, 0x61, NULL);
    commit_round(&f, ids, 2, 1);
    digest(&f, 0, 2, 0x62, NULL);
    heartbeat_ack(&f, 0, 2);
    spes_pki_identity p2 = node_peer("node-2");
    Spes__Wire__Accept *a = (Spes__Wire__Accept *)join(&f, "node-2", &p2, SPES_MSG_ACCEPT);
    ck_assert_uint_eq(a->round, 2);
    ck_assert_uint_eq(a->n_peers, 1); /* as far as the coordinator knows, node-1 holds S_0 */
    spes_proto_free(&a->base);
    digest(&f, 1, 9, 0x69, NULL); /* a round the run has not reached proves nothing */
    spes_pki_identity p3 = node_peer("node-3");
    a = (Spes__Wire__Accept *)join(&f, "node-3", &p3, SPES_MSG_ACCEPT);
    ck_assert_uint_eq(a->n_peers, 1);
    spes_proto_free(&a->base);
    digest(&f, 1, 2, 0x62, NULL);
    spes_pki_identity p4 = node_peer("node-4");
    a = (Spes__Wire__Accept *)join(&f, "node-4", &p4, SPES_MSG_ACCEPT);
    ck_assert_uint_eq(a->n_peers, 2);
    spes_proto_free(&a->base);
    fx_fini(&f);
}
END_TEST

START_TEST(test_join_mid_run_waits_for_next_round)
{
    fx f;
    two_node_round(&f, 100);
    uint32_t id2 = join_ok(&f, "node-2");
    ck_assert_int_eq(member_state(&f, id2), NS(JOINING));
    announce_ok(&f, 0, 0);
    announce_ok(&f, 1, 0); /* node-2 is no participant of round 0: the round closes without it */
    ck_assert_int_eq(last(&f, SPES_COORD_VALIDATE)->n, 2);
    validate_all(&f);
    Spes__Wire__Commit *cm = last_commit(&f);
    ck_assert_uint_eq(cm->n_assignment, 3); /* round 1's columns include node-2's */
    unsigned all = 0;
    for (size_t i = 0; i < cm->n_assignment; i++) {
        ck_assert_uint_ge(cm->assignment[i]->n_columns, 1);
        all |= mask_of(cm->assignment[i]->columns, cm->assignment[i]->n_columns);
    }
    ck_assert_uint_eq(all, (1u << E_COLS) - 1);
    spes_proto_free(&cm->base);
    ck_assert_int_eq(member_state(&f, id2), NS(ACTIVE));
    fx_fini(&f);
}
END_TEST

START_TEST(test_busy_until_state_known)
{
    fx f;
    memset(&f, 0, sizeof f);
    fx_settings(&f, 1, 0);
    fx_run_config(&f, 100);
    ck_assert_int_eq(spes_coord_sm_alloc(&f.c, &f.run, &f.set), 0);
    /* a resumed run whose S_round digest was lost: nodes are told to retry */
    const char *json =
        "{\"run_id\": \"r1\", \"round\": 4, \"step\": 20, \"next_id\": 1, \"state_hash\": null,"
        " \"members\": [{\"id\": 0, \"name\": \"node-0\", \"url\": \"u\", \"state\": 3, \"columns\": "
        "[0,1,2,3]}]}";
    ck_assert_int_eq(spes_coord_sm_load(f.c, json, "coordinator.json"), 0);
    spes_coord_sm_start(f.c, f.now);
    spes_pki_identity p = node_peer("node-0");
    Spes__Wire__Reject *r = (Spes__Wire__Reject *)join(&f, "node-0", &p, SPES_MSG_REJECT);
    ck_assert_int_eq(r->code, EC(BUSY));
    ck_assert_uint_eq(r->retry_after_ms, 300);
    spes_proto_free(&r->base);
    fx_tick(&f);
    ck_assert_int_eq(member_state(&f, 0), NS(ACTIVE)); /* no round opens without the agreed state */
    uint8_t h[32];
    memset(h, 0x42, 32);
    spes_coord_sm_set_state_hash(f.c, 3, h); /* not the run's round: ignored */
    ck_assert_int_eq(spes_coord_sm_state_hash(f.c, h), 0);
    memset(h, 0x42, 32);
    spes_coord_sm_set_state_hash(f.c, 4, h);
    Spes__Wire__Accept *a = (Spes__Wire__Accept *)join(&f, "node-0", &p, SPES_MSG_ACCEPT);
    ck_assert_uint_eq(a->round, 4);
    ck_assert_uint_eq(a->step, 20);
    ck_assert_int_eq(a->state_hash.data[0], 0x42);
    spes_proto_free(&a->base);
    fx_fini(&f);
}
END_TEST

START_TEST(test_leave_and_unknown_type)
{
    fx f;
    two_node_round(&f, 100);
    Spes__Wire__Leave l = SPES__WIRE__LEAVE__INIT;
    l.node_id = 1;
    l.reason = "";
    spes_pki_identity p0 = node_peer("node-0");
    send_error(&f, SPES_MSG_LEAVE, &l.base, &p0, EC(UNAUTHORIZED), "may not speak for node node-1");
    spes_pki_identity p1 = node_peer("node-1");
    Spes__Wire__Ack *a = (Spes__Wire__Ack *)send(&f, SPES_MSG_LEAVE, &l.base, &p1, SPES_MSG_ACK);
    ck_assert_str_eq(a->message, "left");
    spes_proto_free(&a->base);
    ck_assert(logged(&f, "node-1 leaves the run: no reason given"));
    ck_assert_int_eq(member_state(&f, 1), NS(LEFT));
    l.node_id = 9;
    a = (Spes__Wire__Ack *)send(&f, SPES_MSG_LEAVE, &l.base, &p1, SPES_MSG_ACK);
    ck_assert_str_eq(a->message, "unknown node");
    spes_proto_free(&a->base);
    Spes__Wire__Ack ack = SPES__WIRE__ACK__INIT;
    send_error(&f, SPES_MSG_ACK, &ack.base, &noid, EC(INTERNAL), "unexpected message type 19");
    fx_fini(&f);
}
END_TEST

START_TEST(test_status_reply)
{
    fx f;
    two_node_round(&f, 100);
    fx_advance(&f, 10);
    heartbeat_ack(&f, 0, 0); /* loss 3, 100 tokens/s */
    heartbeat_ack(&f, 1, 0); /* loss 4, 100 tokens/s */
    Spes__Wire__StatusReply *s = status(&f);
    ck_assert_str_eq(s->run_id, "00000000000000aa");
    ck_assert_str_eq(s->coordinator, "tcp://127.0.0.1:7000");
    ck_assert_uint_eq(s->round, 0);
    ck_assert_ptr_null(s->last_round);
    ck_assert_uint_eq(s->n_members, 2);
    ck_assert_double_eq_tol(s->loss, 3.5, 1e-9);
    ck_assert_double_eq_tol(s->tokens_per_s, 200, 1e-9);
    ck_assert_str_eq(s->members[1]->name, "node-1");
    ck_assert_str_eq(s->members[1]->listen_url, "tcp://127.0.0.1:711");
    ck_assert_uint_eq(s->members[1]->last_seen_unix_ms, f.now.wall_ms);
    ck_assert_uint_eq(s->members[1]->n_columns, E_COLS / 2);
    ck_assert_uint_eq(s->members[1]->digest.len, 0);
    spes_proto_free(&s->base);
    fx_fini(&f);
}
END_TEST

static Spes__Wire__CheckpointReply *ckpt_req(fx *f, int action, const char *id, int wait,
                                             const spes_pki_identity *peer)
{
    Spes__Wire__CheckpointRequest r = SPES__WIRE__CHECKPOINT_REQUEST__INIT;
    r.action = action;
    r.id = (char *)(id ? id : "");
    r.wait = wait;
    r.out_dir = "/tmp/hf-out";
    return (Spes__Wire__CheckpointReply *)send(f, SPES_MSG_CHECKPOINT_REQUEST, &r.base, peer,
                                               SPES_MSG_CHECKPOINT_REPLY);
}

START_TEST(test_checkpoint_save_and_waiters)
{
    fx f;
    two_node_round(&f, 100);
    spes_pki_identity p1 = node_peer("node-1"), op = operator_peer();
    Spes__Wire__CheckpointRequest rq = SPES__WIRE__CHECKPOINT_REQUEST__INIT;
    rq.action = SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_SAVE;
    send_error(&f, SPES_MSG_CHECKPOINT_REQUEST, &rq.base, &p1, EC(UNAUTHORIZED),
               "checkpoints need an operator");
    Spes__Wire__CheckpointReply *r =
        ckpt_req(&f, SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_SAVE, NULL, 0, &op);
    ck_assert(r->pending);
    ck_assert_str_eq(r->message, "checkpoint ckpt-000001 will be taken when round 0 commits");
    ck_assert_uint_eq(r->n_checkpoints, 1);
    ck_assert_uint_eq(r->checkpoints[0]->round, 1);
    ck_assert_uint_eq(r->checkpoints[0]->step, SYNC);
    ck_assert(!r->checkpoints[0]->complete);
    spes_proto_free(&r->base);
    /* --wait: no reply until the coordinator's own node holds it */
    int tag = f.tag + 1;
    rq.wait = 1;
    spes_coord_sm_request(f.c, f.now, SPES_MSG_CHECKPOINT_REQUEST, &rq.base, &op,
                          (spes_coord_to){never_called, (void *)(intptr_t)tag});
    f.tag = tag;
    fx_collect(&f);
    ck_assert_ptr_null(reply_to(&f, tag));
    uint32_t ids[2] = {0, 1};
    commit_round(&f, ids, 2, 0);
    Spes__Wire__Commit *cm = last_commit(&f);
    ck_assert_str_eq(cm->checkpoint_id, "ckpt-000001");
    spes_proto_free(&cm->base);
    digest(&f, 1, 1, 0x31, "ckpt-000001");
    ck_assert_ptr_null(reply_to(&f, tag));
    digest(&f, 0, 1, 0x31, "ckpt-000001");
    ck_assert(logged(&f, "checkpoint ckpt-000001 complete (round 1)"));
    r = (Spes__Wire__CheckpointReply *)decode(reply_to(&f, tag), SPES_MSG_CHECKPOINT_REPLY);
    ck_assert_str_eq(r->message, "checkpoint ckpt-000001 saved");
    ck_assert(!r->pending);
    ck_assert(r->checkpoints[0]->complete);
    ck_assert_uint_eq(r->checkpoints[0]->n_holders, 2);
    ck_assert_uint_eq(r->checkpoints[0]->holders[0], 1);
    ck_assert_uint_eq(r->checkpoints[0]->holders[1], 0);
    ck_assert_int_eq(r->checkpoints[0]->state_hash.data[0], 0x31);
    spes_proto_free(&r->base);
    /* list is open to nodes; the next commit carries no checkpoint */
    r = ckpt_req(&f, SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_LIST, NULL, 0, &p1);
    ck_assert_uint_eq(r->n_checkpoints, 1);
    ck_assert_str_eq(r->message, "");
    spes_proto_free(&r->base);
    commit_round(&f, ids, 2, 1);
    cm = last_commit(&f);
    ck_assert_str_eq(cm->checkpoint_id, "");
    spes_proto_free(&cm->base);
    fx_fini(&f);
}
END_TEST

START_TEST(test_checkpoint_restore_and_export)
{
    fx f;
    two_node_round(&f, 100);
    spes_pki_identity p1 = node_peer("node-1");
    spes_proto_free(&ckpt_req(&f, SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_SAVE, NULL, 0, &noid)->base);
    fx_clear(&f);
    Spes__Wire__CheckpointRequest rq = SPES__WIRE__CHECKPOINT_REQUEST__INIT;
    rq.action = SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_RESTORE;
    rq.id = "ckpt-000001";
    send_error(&f, SPES_MSG_CHECKPOINT_REQUEST, &rq.base, &noid, EC(WRONG_ROUND), "is not complete yet");
    send_error(&f, SPES_MSG_CHECKPOINT_REQUEST, &rq.base, &p1, EC(UNAUTHORIZED),
               "checkpoints need an operator");
    rq.id = "nope";
    send_error(&f, SPES_MSG_CHECKPOINT_REQUEST, &rq.base, &noid, EC(NOT_FOUND), "no checkpoint nope");
    rq.action = 42;
    rq.id = "ckpt-000001";
    send_error(&f, SPES_MSG_CHECKPOINT_REQUEST, &rq.base, &noid, EC(INTERNAL), "unknown checkpoint action");
    uint32_t ids[2] = {0, 1};
    commit_round(&f, ids, 2, 0);
    digest(&f, 0, 1, 0x31, "ckpt-000001");
    commit_round(&f, ids, 2, 1);
    commit_round(&f, ids, 2, 2);
    ck_assert_uint_eq(spes_coord_sm_round(f.c), 3);
    /* a waiter for a later checkpoint is told when the run is restored under it */
    rq.action = SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_SAVE;
    rq.wait = 1;
    int wtag = ++f.tag;
    spes_coord_sm_request(f.c, f.now, SPES_MSG_CHECKPOINT_REQUEST, &rq.base, &noid,
                          (spes_coord_to){never_called, (void *)(intptr_t)wtag});
    fx_clear(&f);
    int tag = ++f.tag;
    rq.action = SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_RESTORE;
    spes_coord_sm_request(f.c, f.now, SPES_MSG_CHECKPOINT_REQUEST, &rq.base, &noid,
                          (spes_coord_to){never_called, (void *)(intptr_t)tag});
    fx_collect(&f);
    spes_coord_action *ra = last(&f, SPES_COORD_CKPT_RESTORE);
    ck_assert_ptr_nonnull(ra);
    ck_assert_str_eq(ra->id, "ckpt-000001");
    ck_assert_uint_eq(ra->round, 1);
    ck_assert_int_eq(ra->hash[0], 0x31);
    ck_assert_ptr_null(reply_to(&f, tag)); /* the reply waits for the file work */
    spes_coord_sm_restored(f.c, f.now, ra->to, ra->id, SPES_ESTATE,
                           "its state does not match the recorded digest");
    fx_collect(&f);
    Spes__Wire__Error *e = (Spes__Wire__Error *)decode(reply_to(&f, tag), SPES_MSG_ERROR);
    ck_assert_str_eq(e->message, "cannot restore ckpt-000001: its state does not match the recorded digest");
    spes_proto_free(&e->base);
    ck_assert_uint_eq(spes_coord_sm_round(f.c), 3);
    fx_clear(&f);
    spes_coord_sm_restored(f.c, f.now, (spes_coord_to){never_called, (void *)(intptr_t)tag}, "ckpt-000001", 0,
                           "");
    fx_collect(&f);
    Spes__Wire__CheckpointReply *r =
        (Spes__Wire__CheckpointReply *)decode(reply_to(&f, tag), SPES_MSG_CHECKPOINT_REPLY);
    ck_assert_str_eq(r->message, "run restored to ckpt-000001 (round 1)");
    spes_proto_free(&r->base);
    e = (Spes__Wire__Error *)decode(reply_to(&f, wtag), SPES_MSG_ERROR);
    ck_assert_str_eq(e->message, "checkpoint ckpt-000004 dropped: the run was restored to ckpt-000001");
    spes_proto_free(&e->base);
    ck_assert(logged(&f, "run restored to checkpoint ckpt-000001: round 1, step 5"));
    ck_assert_uint_eq(spes_coord_sm_round(f.c), 1);
    uint8_t h[32];
    ck_assert_int_eq(spes_coord_sm_state_hash(f.c, h), 1);
    ck_assert_int_eq(h[0], 0x31);
    ck_assert_int_eq(member_state(&f, 0), NS(JOINING));
    /* a node that heartbeats from the abandoned future is told to join again */
    Spes__Wire__Reject *rj = (Spes__Wire__Reject *)heartbeat(&f, 1, 3, NS(ACTIVE), SPES_MSG_REJECT);
    ck_assert_str_eq(rj->reason, "the run was restored: join again");
    spes_proto_free(&rj->base);
    /* both rejoin at round 1 and the run goes on from there */
    join_ok(&f, "node-0");
    join_ok(&f, "node-1");
    fx_tick(&f);
    commit_round(&f, ids, 2, 1);
    Spes__Wire__Commit *cm = last_commit(&f);
    ck_assert_uint_eq(cm->round, 1);
    ck_assert_int_eq(cm->base_hash.data[0], 0x31);
    spes_proto_free(&cm->base);
    /* export */
    fx_clear(&f);
    rq.action = SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_EXPORT;
    rq.out_dir = "/tmp/hf";
    tag = ++f.tag;
    spes_coord_sm_request(f.c, f.now, SPES_MSG_CHECKPOINT_REQUEST, &rq.base, &control,
                          (spes_coord_to){never_called, (void *)(intptr_t)tag});
    fx_collect(&f);
    spes_coord_action *ex = last(&f, SPES_COORD_CKPT_EXPORT);
    ck_assert_str_eq(ex->out_dir, "/tmp/hf");
    spes_coord_sm_exported(f.c, ex->to, ex->id, ex->out_dir, SPES_EIO, "disk full");
    spes_coord_sm_exported(f.c, ex->to, ex->id, ex->out_dir, 0, "");
    fx_collect(&f);
    int n = 0;
    for (int i = 0; i < f.nacts; i++)
        if (f.acts[i].kind == SPES_COORD_REPLY && f.acts[i].to.ctx == (void *)(intptr_t)tag) {
            ProtobufCMessage *m = decode(&f.acts[i], n == 0 ? SPES_MSG_ERROR : SPES_MSG_CHECKPOINT_REPLY);
            if (n == 1)
                ck_assert_str_eq(((Spes__Wire__CheckpointReply *)m)->message,
                                 "checkpoint ckpt-000001 exported to /tmp/hf");
            spes_proto_free(m);
            n++;
        }
    ck_assert_int_eq(n, 2);
    fx_clear(&f);
    /* a remote operator (and a plain peer) exports only to exports/NAME under the state directory */
    spes_pki_identity op = operator_peer();
    const char *bad[] = {"/tmp/hf", "", ".", "..", "../hf", "a/b", "hf/", "/"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        rq.out_dir = (char *)bad[i];
        send_error(&f, SPES_MSG_CHECKPOINT_REQUEST, &rq.base, &op, EC(UNAUTHORIZED),
                   "a remote export takes one name");
    }
    rq.out_dir = "/tmp/hf";
    send_error(&f, SPES_MSG_CHECKPOINT_REQUEST, &rq.base, &noid, EC(UNAUTHORIZED),
               "a remote export takes one name");
    char longname[SPES_COORD_EXPORT_NAME_MAX + 2];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    rq.out_dir = longname;
    send_error(&f, SPES_MSG_CHECKPOINT_REQUEST, &rq.base, &op, EC(UNAUTHORIZED), "at most 128 bytes");
    /* the control socket: an absolute path as given, a relative one only as one name */
    rq.out_dir = "../hf";
    send_error(&f, SPES_MSG_CHECKPOINT_REQUEST, &rq.base, &control, EC(UNAUTHORIZED),
               "the control socket takes an absolute path or one name");
    ck_assert_int_eq(count(&f, SPES_COORD_CKPT_EXPORT), 0);
    const spes_pki_identity *who[] = {&op, &control};
    for (int i = 0; i < 2; i++) {
        fx_clear(&f);
        rq.out_dir = "hf-1.v2";
        spes_coord_sm_request(f.c, f.now, SPES_MSG_CHECKPOINT_REQUEST, &rq.base, who[i],
                              (spes_coord_to){never_called, (void *)(intptr_t)++f.tag});
        fx_collect(&f);
        ex = last(&f, SPES_COORD_CKPT_EXPORT);
        ck_assert_ptr_nonnull(ex);
        ck_assert_str_eq(ex->out_dir, "exports/hf-1.v2");
    }
    fx_fini(&f);
}
END_TEST

START_TEST(test_run_complete_and_final_checkpoint)
{
    fx f;
    two_node_round(&f, 2 * SYNC);
    uint32_t ids[2] = {0, 1};
    commit_round(&f, ids, 2, 0);
    commit_round(&f, ids, 2, 1);
    ck_assert(logged(&f, "the run is complete: 10 steps (train.max_steps)"));
    fx_clear(&f);
    fx_advance(&f, 100);
    heartbeat_ack(&f, 0, 2);
    heartbeat_ack(&f, 1, 2);
    fx_tick(&f);
    ck_assert_int_eq(count(&f, SPES_COORD_VALIDATE), 0);
    digest(&f, 0, 2, 0x22, NULL);
    uint8_t blob[32], man[32];
    Spes__Wire__Announce a;
    fill_announce(&a, 0, 2, blob, man);
    send_error(&f, SPES_MSG_ANNOUNCE, &a.base, &noid, EC(WRONG_ROUND), "not a participant");
    /* save on a complete run copies the final state: a CKPT_FINAL, then the record */
    int tag = ++f.tag;
    Spes__Wire__CheckpointRequest rq = SPES__WIRE__CHECKPOINT_REQUEST__INIT;
    rq.action = SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_SAVE;
    spes_coord_sm_request(f.c, f.now, SPES_MSG_CHECKPOINT_REQUEST, &rq.base, &noid,
                          (spes_coord_to){never_called, (void *)(intptr_t)tag});
    fx_collect(&f);
    spes_coord_action *fa = last(&f, SPES_COORD_CKPT_FINAL);
    ck_assert_str_eq(fa->id, "ckpt-000002");
    ck_assert_uint_eq(fa->round, 2);
    spes_coord_sm_final_saved(f.c, f.now, fa->to, fa->id, SPES_ESTATE, "this node holds round 1");
    fx_collect(&f);
    Spes__Wire__Error *e = (Spes__Wire__Error *)decode(reply_to(&f, tag), SPES_MSG_ERROR);
    ck_assert_str_eq(e->message, "this node holds round 1");
    spes_proto_free(&e->base);
    fx_clear(&f);
    for (int k = 0; k < 2; k++) { /* twice: the record is replaced, not duplicated */
        spes_coord_sm_final_saved(f.c, f.now, (spes_coord_to){never_called, (void *)(intptr_t)tag},
                                  "ckpt-000002", 0, "");
        fx_collect(&f);
        Spes__Wire__CheckpointReply *r =
            (Spes__Wire__CheckpointReply *)decode(reply_to(&f, tag), SPES_MSG_CHECKPOINT_REPLY);
        ck_assert_str_eq(r->message, "checkpoint ckpt-000002 of the completed run saved");
        ck_assert_uint_eq(r->n_checkpoints, 1);
        ck_assert(r->checkpoints[0]->complete);
        ck_assert_uint_eq(r->checkpoints[0]->n_holders, 1);
        ck_assert_uint_eq(r->checkpoints[0]->holders[0], 0);
        ck_assert_int_eq(r->checkpoints[0]->state_hash.data[0], 0x22);
        spes_proto_free(&r->base);
        fx_clear(&f);
    }
    fx_fini(&f);
}
END_TEST

START_TEST(test_checkpoint_records_are_bounded)
{
    fx f;
    two_node_round(&f, 1000);
    uint32_t ids[2] = {0, 1};
    for (int r = 0; r < SPES_COORD_MAX_CKPTS + 3; r++) {
        Spes__Wire__CheckpointReply *rep =
            ckpt_req(&f, SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_SAVE, NULL, 0, &noid);
        spes_proto_free(&rep->base);
        commit_round(&f, ids, 2, (uint64_t)r);
        digest(&f, 1, (uint64_t)r + 1, 0x40, NULL);
        fx_clear(&f);
    }
    Spes__Wire__CheckpointReply *l =
        ckpt_req(&f, SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_LIST, NULL, 0, &noid);
    ck_assert_uint_eq(l->n_checkpoints, SPES_COORD_MAX_CKPTS);
    ck_assert_str_eq(l->checkpoints[0]->id, "ckpt-000004"); /* the oldest three went */
    spes_proto_free(&l->base);
    fx_fini(&f);
}
END_TEST

/* state_text returns a copy of the last persisted state text. */
static char *state_text(fx *f)
{
    spes_coord_action *p = last(f, SPES_COORD_PERSIST_STATE);
    ck_assert_ptr_nonnull(p);
    return strdup((char *)p->data);
}

START_TEST(test_persistence_round_trip_and_restart)
{
    fx f;
    two_node_round(&f, 100);
    uint32_t ids[2] = {0, 1};
    commit_round(&f, ids, 2, 0);
    digest(&f, 0, 1, 0x61, NULL);
    join_ok(&f, "node-2");
    Spes__Wire__CheckpointReply *r =
        ckpt_req(&f, SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_SAVE, NULL, 0, &noid);
    spes_proto_free(&r->base);
    Spes__Wire__MembersRequest mr = SPES__WIRE__MEMBERS_REQUEST__INIT;
    mr.action = SPES__WIRE__MEMBERS_ACTION__MEMBERS_EVICT;
    mr.target = "node-2";
    spes_proto_free(send(&f, SPES_MSG_MEMBERS_REQUEST, &mr.base, &noid, SPES_MSG_MEMBERS_REPLY));
    char *text = state_text(&f);
    Spes__Wire__StatusReply *before = status(&f);
    /* a restarted coordinator: the same table, ids, round, digests, columns and checkpoint */
    fx g;
    memset(&g, 0, sizeof g);
    fx_settings(&g, 2, 0);
    fx_run_config(&g, 100);
    ck_assert_int_eq(spes_coord_sm_alloc(&g.c, &g.run, &g.set), 0);
    ck_assert_int_eq(spes_coord_sm_load(g.c, text, "coordinator.json"), 0);
    g.now = f.now;
    fx_advance(&g, 10);
    spes_coord_sm_start(g.c, g.now);
    Spes__Wire__StatusReply *after = status(&g);
    ck_assert_str_eq(after->run_id, before->run_id);
    ck_assert_uint_eq(after->round, 1);
    ck_assert_uint_eq(after->step, SYNC);
    ck_assert_uint_eq(after->n_members, 3);
    for (size_t i = 0; i < 3; i++) {
        ck_assert_uint_eq(after->members[i]->node_id, before->members[i]->node_id);
        ck_assert_str_eq(after->members[i]->listen_url, before->members[i]->listen_url);
        ck_assert_uint_eq(mask_of(after->members[i]->columns, after->members[i]->n_columns),
                          mask_of(before->members[i]->columns, before->members[i]->n_columns));
    }
    ck_assert_int_eq(after->members[0]->state, NS(JOINING)); /* active again once heard from */
    ck_assert_int_eq(after->members[2]->state, NS(EVICTED));
    spes_proto_free(&after->base);
    spes_proto_free(&before->base);
    Spes__Wire__CheckpointReply *l =
        ckpt_req(&g, SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_LIST, NULL, 0, &noid);
    ck_assert_uint_eq(l->n_checkpoints, 1);
    ck_assert_str_eq(l->checkpoints[0]->id, "ckpt-000002");
    spes_proto_free(&l->base);
    /* a node one round behind gets the last commit, as read back from last_commit.bin */
    spes_coord_action *pc = last(&f, SPES_COORD_PERSIST_COMMIT);
    ck_assert_int_eq(spes_coord_sm_set_last_commit(g.c, pc->data, pc->len), 0);
    int tag = ++g.tag;
    Spes__Wire__Heartbeat hb = SPES__WIRE__HEARTBEAT__INIT;
    hb.node_id = 1;
    spes_coord_sm_request(g.c, g.now, SPES_MSG_HEARTBEAT, &hb.base, &noid,
                          (spes_coord_to){never_called, (void *)(intptr_t)tag});
    fx_collect(&g);
    spes_coord_action *rc = reply_to(&g, tag);
    ck_assert_uint_eq(rc->len, pc->len);
    ck_assert_int_eq(memcmp(rc->data, pc->data, pc->len), 0);
    /* it waits for both restored members, not for min_nodes, then goes on with their columns */
    heartbeat_ack(&g, 0, 1);
    fx_tick(&g);
    Spes__Wire__Ack *ack = (Spes__Wire__Ack *)heartbeat(&g, 0, 1, NS(JOINING), SPES_MSG_ACK);
    spes_proto_free(&ack->base); /* not open yet: no work */
    heartbeat_ack(&g, 1, 1);
    fx_tick(&g);
    Spes__Wire__Accept *a0 = (Spes__Wire__Accept *)heartbeat(&g, 0, 1, NS(JOINING), SPES_MSG_ACCEPT);
    Spes__Wire__Accept *a1 = (Spes__Wire__Accept *)heartbeat(&g, 1, 1, NS(JOINING), SPES_MSG_ACCEPT);
    ck_assert_int_eq(a0->state_hash.data[0], 0x61);
    ck_assert_uint_eq(mask_of(a0->columns, a0->n_columns) | mask_of(a1->columns, a1->n_columns),
                      (1u << E_COLS) - 1);
    spes_proto_free(&a0->base);
    spes_proto_free(&a1->base);
    /* a new member never reuses an id */
    ck_assert_uint_eq(join_ok(&g, "node-3"), 3);
    /* the next commit carries the pending checkpoint from before the restart */
    commit_round(&g, ids, 2, 1);
    Spes__Wire__Commit *cm = last_commit(&g);
    ck_assert_str_eq(cm->checkpoint_id, "ckpt-000002");
    spes_proto_free(&cm->base);
    free(text);
    fx_fini(&g);
    fx_fini(&f);
}
END_TEST

/* spes.rotate_interval K: before every round that is a multiple of K each active
 * member takes the previous member's columns (the first takes the last's); between
 * those rounds the dealing stays put. */
static unsigned status_mask(fx *f, uint32_t id)
{
    Spes__Wire__StatusReply *s = status(f);
    unsigned m = 0;
    for (size_t i = 0; i < s->n_members; i++)
        if (s->members[i]->node_id == id)
            m = mask_of(s->members[i]->columns, s->members[i]->n_columns);
    spes_proto_free(&s->base);
    return m;
}

/* columns_run starts a run of n members (node-0 .. node-n-1, min_nodes n, ids
 * in ids) with spes.rotate_interval rotate and spes.column_owners owners, and opens round 0. */
static void columns_run(fx *f, int n, int rotate, int owners, uint32_t *ids)
{
    memset(f, 0, sizeof *f);
    fx_settings(f, n, 0);
    fx_run_config(f, 100);
    f->run.spes.rotate_interval = rotate;
    f->run.spes.column_owners = owners;
    fx_start(f);
    for (int k = 0; k < n; k++) {
        char name[16];
        snprintf(name, sizeof name, "node-%d", k);
        ids[k] = join_ok(f, name);
    }
    fx_tick(f);
}

START_TEST(test_rotate_columns)
{
    fx f;
    uint32_t ids[3];
    columns_run(&f, 3, 2, 1, ids);
    unsigned m[3], was[3];
    for (int k = 0; k < 3; k++)
        was[k] = status_mask(&f, ids[k]);
    ck_assert_uint_eq(was[0] | was[1] | was[2], (1u << E_COLS) - 1);
    for (uint64_t r = 0; r < 6; r++) {
        fx_clear(&f);
        commit_round(&f, ids, 3, r);
        ck_assert_int_eq(logged(&f, "every member's columns go to the next member"), ((r + 1) % 2 == 0));
        for (int k = 0; k < 3; k++)
            m[k] = status_mask(&f, ids[k]);
        if ((r + 1) % 2 == 0) { /* rounds 2 and 4 */
            ck_assert_msg(m[0] == was[2] && m[1] == was[0] && m[2] == was[1],
                          "round %d: %x %x %x after %x %x %x", (int)r + 1, m[0], m[1], m[2], was[0], was[1],
                          was[2]);
        } else {
            ck_assert(m[0] == was[0] && m[1] == was[1] && m[2] == was[2]);
        }
        memcpy(was, m, sizeof m);
    }
    fx_fini(&f);
}
END_TEST

/* spes.column_owners R: each member trains its dealt columns and those dealt to
 * the next R - 1 active members (cyclic), in the validation's columns and in
 * status; rotation moves the deal under them; with fewer members than R every
 * member trains every column. */
START_TEST(test_column_owners)
{
    fx f;
    uint32_t ids[3];
    columns_run(&f, 3, 2, 2, ids);
    const unsigned all = (1u << E_COLS) - 1;
    unsigned was[3] = {0};
    for (uint64_t r = 0; r < 6; r++) {
        unsigned m[3], x[3];
        for (int k = 0; k < 3; k++)
            m[k] = status_mask(&f, ids[k]);
        for (int k = 0; k < 3; k++) /* the deal: m_k = x_k | x_{k+1} with x a partition */
            x[k] = m[k] & ~m[(k + 1) % 3];
        ck_assert_uint_eq(x[0] | x[1] | x[2], all);
        ck_assert_uint_eq(x[0] & x[1], 0);
        ck_assert_uint_eq(x[1] & x[2], 0);
        ck_assert_uint_eq(x[0] & x[2], 0);
        for (int k = 0; k < 3; k++) {
            ck_assert_uint_eq(m[k], x[k] | x[(k + 1) % 3]);
            ck_assert_uint_ne(x[k], 0);
        }
        if (r == 2 || r == 4) /* the rounds after a rotation: each takes the previous one's deal */
            ck_assert(x[0] == was[2] && x[1] == was[0] && x[2] == was[1]);
        else if (r > 0)
            ck_assert(x[0] == was[0] && x[1] == was[1] && x[2] == was[2]);
        memcpy(was, x, sizeof x);
        /* the round's validation carries the same columns (validate_all: at most 2 authors each) */
        for (int i = 0; i < 3; i++)
            announce_ok(&f, ids[i], r);
        spes_coord_action *v = last(&f, SPES_COORD_VALIDATE);
        ck_assert_ptr_nonnull(v);
        ck_assert_int_eq(v->n, 3);
        for (int i = 0; i < 3; i++) {
            unsigned vm = 0;
            for (int e = 0; e < E_COLS; e++)
                vm |= v->cols[(size_t)i * E_COLS + (size_t)e] ? 1u << e : 0;
            ck_assert_uint_eq(vm, m[i]);
        }
        validate_all(&f);
        fx_clear(&f);
    }
    fx_fini(&f);

    /* more owners than members: everyone trains everything */
    columns_run(&f, 2, 0, 5, ids);
    ck_assert_uint_eq(status_mask(&f, ids[0]), all);
    ck_assert_uint_eq(status_mask(&f, ids[1]), all);
    fx_fini(&f);
}
END_TEST

START_TEST(test_restart_waits_at_most_failure_timeout)
{
    fx f;
    memset(&f, 0, sizeof f);
    fx_settings(&f, 5, 0);
    fx_run_config(&f, 100);
    ck_assert_int_eq(spes_coord_sm_alloc(&f.c, &f.run, &f.set), 0);
    /* the state file as the coordinator before the library wrote it (same fields and layout) */
    const char *old =
        "{\n \"run_id\": \"3f2a9c1d00e4b7aa\",\n \"round\": 7,\n \"step\": 35,\n \"next_id\": 2,\n"
        " \"state_hash\": \"6161616161616161616161616161616161616161616161616161616161616161\",\n"
        " \"prev_state_hash\": \"6060606060606060606060606060606060606060606060606060606060606060\",\n"
        " \"members\": [\n  {\n   \"id\": 0,\n   \"name\": \"node-0\",\n   \"url\": \"tcp://a:1\",\n"
        "   \"state\": 3,\n   \"columns\": [\n    0,\n    1\n   ]\n  },\n  {\n   \"id\": 1,\n"
        "   \"name\": \"node-1\",\n   \"url\": \"tcp://b:1\",\n   \"state\": 3,\n   \"columns\": [\n"
        "    2,\n    3\n   ]\n  }\n ],\n \"checkpoints\": [],\n \"pending_checkpoint\": \"\"\n}";
    ck_assert_int_eq(spes_coord_sm_load(f.c, old, "coordinator.json"), 0);
    ck_assert_str_eq(spes_coord_sm_run_id(f.c), "3f2a9c1d00e4b7aa");
    ck_assert_int_eq(spes_coord_sm_members(f.c), 2);
    spes_coord_sm_start(f.c, f.now);
    uint32_t alive[1] = {0};
    heartbeat_ack(&f, 0, 7); /* node-1 never comes back */
    fx_pass(&f, FAILURE, alive, 1, 7);
    Spes__Wire__Ack *ack = (Spes__Wire__Ack *)heartbeat(&f, 0, 7, NS(JOINING), SPES_MSG_ACK);
    spes_proto_free(&ack->base); /* both restored members are awaited for failure_timeout_ms */
    fx_pass(&f, TICK, alive, 1, 7);
    Spes__Wire__Accept *a = (Spes__Wire__Accept *)heartbeat(&f, 0, 7, NS(JOINING), SPES_MSG_ACCEPT);
    ck_assert_uint_eq(a->round, 7);
    ck_assert_int_eq(a->state_hash.data[0], 0x61);
    /* node-1, restored but never heard from, keeps its columns (untrained) until it rejoins or is evicted */
    ck_assert_uint_eq(mask_of(a->columns, a->n_columns), 0x3);
    spes_proto_free(&a->base);
    /* saving again gives back the same file, except what changed (states) */
    fx_clear(&f);
    spes_coord_sm_persist_failed(f.c);
    digest(&f, 0, 7, 0x61, NULL);
    Spes__Wire__Leave l = SPES__WIRE__LEAVE__INIT;
    l.node_id = 1;
    l.reason = "bye";
    spes_proto_free(send(&f, SPES_MSG_LEAVE, &l.base, &noid, SPES_MSG_ACK));
    char *text = state_text(&f);
    ck_assert_ptr_nonnull(strstr(text, "\"prev_state_hash\": \"6060606060606060"));
    ck_assert_ptr_nonnull(strstr(text, "\"state\": 5"));
    free(text);
    fx_fini(&f);
}
END_TEST

START_TEST(test_load_errors)
{
    fx f;
    memset(&f, 0, sizeof f);
    fx_settings(&f, 1, 0);
    fx_run_config(&f, 100);
    const char *bad[] = {
        "{not json",
        "{\"run_id\": \"r\", \"round\": 1, \"step\": 5, \"next_id\": 1}",
        "{\"run_id\": \"r\", \"round\": 1, \"step\": 5, \"next_id\": 1, \"state_hash\": \"zz\", \"members\": "
        "[]}",
        "{\"run_id\": \"r\", \"round\": 1, \"step\": 5, \"next_id\": 1, \"members\": [{\"id\": 0}]}",
        "{\"run_id\": \"r\", \"round\": 1, \"step\": 5, \"next_id\": 1, \"members\": [{\"id\": 0, \"name\": "
        "\"a\", "
        "\"url\": \"u\", \"state\": 3, \"columns\": [9]}]}",
        "{\"run_id\": \"r\", \"round\": 1, \"step\": 5, \"next_id\": 1, \"members\": [{\"id\": 0, \"name\": "
        "\"a\", "
        "\"url\": \"u\", \"state\": 3, \"columns\": []}, {\"id\": 0, \"name\": \"b\", \"url\": \"u\", "
        "\"state\": 3, "
        "\"columns\": []}]}",
        "{\"run_id\": \"r\", \"round\": 1, \"step\": 5, \"next_id\": 0, \"members\": [], \"checkpoints\": "
        "[{}]}",
    };
    const char *why[] = {"coordinator.json:1", "missing run_id",        NULL,
                         "lacks id, name",     "column 9 outside 0..3", "member id 0 appears twice",
                         "has no id"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(spes_coord_sm_alloc(&f.c, &f.run, &f.set), 0);
        int rc = spes_coord_sm_load(f.c, bad[i], "coordinator.json");
        ck_assert_msg(rc < 0, "case %zu loaded", i);
        if (why[i])
            ck_assert_msg(strstr(spes_errmsg(), why[i]), "case %zu: %s", i, spes_errmsg());
        spes_coord_sm_free(f.c);
    }
    /* a member with an id at or above next_id moves next_id on */
    ck_assert_int_eq(spes_coord_sm_alloc(&f.c, &f.run, &f.set), 0);
    ck_assert_int_eq(
        spes_coord_sm_load(f.c,
                           "{\"run_id\": \"r\", \"round\": 0, \"step\": 0, \"next_id\": 0, \"state_hash\": "
                           "\"5050505050505050505050505050505050505050505050505050505050505050\", "
                           "\"members\": [{\"id\": 4, \"name\": \"node-4\", \"url\": \"u\", \"state\": 5, "
                           "\"columns\": []}], \"checkpoints\": [{\"id\": \"c\", \"holders\": [4, 4]}]}",
                           "coordinator.json"),
        0);
    ck_assert_uint_eq(join_ok(&f, "node-9"), 5);
    spes_config_fini(&f.run);
    fx_clear(&f);
    spes_coord_sm_free(f.c);
}
END_TEST

START_TEST(test_validation_failure_retries)
{
    fx f;
    two_node_round(&f, 100);
    announce_ok(&f, 0, 0);
    announce_ok(&f, 1, 0);
    ck_assert_int_eq(count(&f, SPES_COORD_VALIDATE), 1);
    spes_coord_sm_validation_failed(f.c, 9); /* another round: ignored */
    fx_tick(&f);
    ck_assert_int_eq(count(&f, SPES_COORD_VALIDATE), 1);
    spes_coord_sm_validation_failed(f.c, 0);
    fx_tick(&f); /* every participant announced: the tick starts the check again */
    ck_assert_int_eq(count(&f, SPES_COORD_VALIDATE), 2);
    int said = 0; /* asking again (our node late) says nothing new: "checking" is logged once */
    for (int i = 0; i < f.nacts; i++)
        said += f.acts[i].kind == SPES_COORD_LOG &&
                strstr((const char *)f.acts[i].data, "checking 2 contribution");
    ck_assert_int_eq(said, 1);
    validate_all(&f);
    ck_assert_uint_eq(spes_coord_sm_round(f.c), 1);
    fx_fini(&f);
}
END_TEST

/* The round deadline follows recent rounds (2 x the 95th percentile of announcements + 2 s, within
 * the operator's bounds; round 0 not counted), and the stragglers of a round are named with how far
 * behind they were. */
START_TEST(test_adaptive_deadline_and_stragglers)
{
    fx f;
    memset(&f, 0, sizeof f);
    fx_settings(&f, 3, 0);
    f.set.failure_timeout_ms = 600000;
    f.set.round_deadline_ms = 60000;
    f.set.round_deadline_min_ms = 1000;
    fx_run_config(&f, 1000);
    ck_assert_int_eq(spes_coord_sm_alloc(&f.c, &f.run, &f.set), 0);
    memset(f.s0, 0x50, 32);
    f.now = (spes_coord_now){1000, 1700000000000ull};
    ck_assert_int_eq(spes_coord_sm_new_run(f.c, "00000000000000aa", f.s0), 0);
    spes_coord_sm_start(f.c, f.now);
    for (int k = 0; k < 3; k++) {
        char name[16];
        snprintf(name, sizeof name, "node-%d", k);
        ck_assert_uint_eq(join_ok(&f, name), (uint32_t)k);
    }
    fx_tick(&f);
    Spes__Wire__StatusReply *st = status(&f);
    ck_assert_uint_eq(st->round_deadline_ms, 60000); /* no samples yet: the ceiling */
    spes_proto_free(&st->base);
    /* four rounds: node-0 announces after 1.0 s, node-1 after 1.2 s, node-2 after 3.0 s */
    for (uint64_t r = 0; r < 4; r++) {
        fx_advance(&f, 1000);
        announce_ok(&f, 0, r);
        fx_advance(&f, 200);
        announce_ok(&f, 1, r);
        fx_advance(&f, 1800);
        announce_ok(&f, 2, r);
        validate_all(&f);
        ck_assert_uint_eq(spes_coord_sm_round(f.c), r + 1);
        digest(&f, 0, r + 1, (uint8_t)(0x31 + r), NULL); /* the agreed S_{r+1}: the next commit's base */
        st = status(&f);
        ck_assert_ptr_nonnull(st->last_round);
        ck_assert_uint_eq(st->last_round->median_announce_ms, 1200);
        ck_assert_uint_eq(st->last_round->n_stragglers, 1);
        ck_assert_uint_eq(st->last_round->stragglers[0]->node_id, 2);
        ck_assert_uint_eq(st->last_round->stragglers[0]->behind_ms, 1800);
        ck_assert(!st->last_round->stragglers[0]->missed);
        /* round 0 is not counted: 9 samples from round 3 on, p95 = 3000 ms, so 2 x 3000 + 2000 */
        ck_assert_uint_eq(st->round_deadline_ms, r < 3 ? 60000 : 8000);
        spes_proto_free(&st->base);
    }
    ck_assert(logged(&f, "round 0: stragglers (median announcement 1.2 s): node-2 1.8 s behind"));
    Spes__Wire__Commit *cm = last_commit(&f);
    ck_assert_uint_eq(cm->round, 3);
    ck_assert_uint_eq(cm->next_deadline_ms, 8000);
    spes_proto_free(&cm->base);
    /* round 4: node-2 is silent; the round commits once 8 s have passed, not 60 s (ticked at their
     * period from now on: a longer gap between ticks is a stall of the caller, forgiven) */
    fx_tick(&f);
    for (int t = 0; t < 7950; t += TICK) {
        if (t == 1000)
            announce_ok(&f, 0, 4);
        if (t == 1200)
            announce_ok(&f, 1, 4);
        fx_advance(&f, TICK);
        fx_tick(&f);
    }
    ck_assert(!logged(&f, "round 4: deadline passed"));
    fx_advance(&f, TICK);
    fx_tick(&f);
    fx_advance(&f, TICK);
    fx_tick(&f);
    ck_assert(logged(&f, "round 4: deadline passed; committing without the missing nodes"));
    validate_all(&f);
    st = status(&f);
    ck_assert_uint_ge(st->last_round->median_announce_ms, 1100);
    ck_assert_uint_le(st->last_round->median_announce_ms, 1100 + TICK);
    ck_assert_uint_eq(st->last_round->n_stragglers, 1);
    ck_assert(st->last_round->stragglers[0]->missed);
    ck_assert_uint_eq(st->last_round->stragglers[0]->behind_ms, 8000 - st->last_round->median_announce_ms);
    /* the missed announcement counts at the deadline: the next deadline does not shrink */
    ck_assert_uint_ge(st->round_deadline_ms, 8000);
    spes_proto_free(&st->base);
    fx_fini(&f);
    /* a floor at or above the ceiling: the deadline is fixed */
    two_node_round(&f, 1000);
    for (uint64_t r = 0; r < 6; r++) {
        fx_advance(&f, 10);
        uint32_t ids[] = {0, 1};
        commit_round(&f, ids, 2, r);
    }
    st = status(&f);
    ck_assert_uint_eq(st->round_deadline_ms, DEADLINE);
    ck_assert_uint_eq(st->last_round->n_stragglers, 0);
    spes_proto_free(&st->base);
    fx_fini(&f);
}
END_TEST

START_TEST(test_unchanged_state_not_rewritten)
{
    fx f;
    fx_init(&f, 1, 0, 100);
    join_ok(&f, "node-0");
    fx_clear(&f);
    join_ok(&f, "node-0"); /* a join retry: nothing new to make durable */
    ck_assert_int_eq(count(&f, SPES_COORD_PERSIST_STATE), 0);
    spes_coord_sm_persist_failed(f.c); /* the last write failed: the next change writes again */
    join_ok(&f, "node-0");
    ck_assert_int_eq(count(&f, SPES_COORD_PERSIST_STATE), 1);
    fx_fini(&f);
}
END_TEST

START_TEST(test_queue_grows_and_frees)
{
    fx f;
    fx_init(&f, 1, 0, 100);
    Spes__Wire__StatusRequest s = SPES__WIRE__STATUS_REQUEST__INIT;
    for (int i = 0; i < 100; i++) /* 100 replies queued before any is taken */
        spes_coord_sm_request(f.c, f.now, SPES_MSG_STATUS_REQUEST, &s.base, &noid,
                              (spes_coord_to){never_called, (void *)(intptr_t)(1000 + i)});
    spes_coord_action a;
    ck_assert_int_eq(spes_coord_sm_next_action(f.c, &a), 1);
    ck_assert_ptr_eq(a.to.ctx, (void *)(intptr_t)1000);
    spes_coord_action_fini(&a);
    for (int i = 100; i < 150;
         i++) /* more than the room left behind the taken one: first in, first out still */
        spes_coord_sm_request(f.c, f.now, SPES_MSG_STATUS_REQUEST, &s.base, &noid,
                              (spes_coord_to){never_called, (void *)(intptr_t)(1000 + i)});
    for (int i = 1; i < 120; i++) {
        ck_assert_int_eq(spes_coord_sm_next_action(f.c, &a), 1);
        ck_assert_ptr_eq(a.to.ctx, (void *)(intptr_t)(1000 + i));
        spes_coord_action_fini(&a);
    }
    fx_fini(&f); /* the other 30 are freed with the coordinator */
}
END_TEST

START_TEST(test_reply_that_cannot_be_encoded)
{
    fx f;
    fx_init(&f, 1, 0, 100);
    Spes__Wire__Join j = SPES__WIRE__JOIN__INIT;
    j.protocol_version = SPES_PROTO_VERSION;
    j.node_name =
        "bad\001name"; /* the daemon's decoder refuses such a name; the library never sends it either */
    j.listen_url = "tcp://x:1";
    spes_proto_free(send(&f, SPES_MSG_JOIN, &j.base, &noid, SPES_MSG_ACCEPT));
    Spes__Wire__StatusRequest s = SPES__WIRE__STATUS_REQUEST__INIT;
    Spes__Wire__Error *e =
        (Spes__Wire__Error *)send(&f, SPES_MSG_STATUS_REQUEST, &s.base, &noid, SPES_MSG_ERROR);
    ck_assert_ptr_nonnull(strstr(e->message, "cannot encode the reply: StatusReply.members[0].name"));
    spes_proto_free(&e->base);
    fx_fini(&f);
}
END_TEST

static Suite *coord_suite(void)
{
    Suite *s = suite_create("coord");
    TCase *tc = tcase_create("protocol");
    tcase_add_test(tc, test_join_new_and_open);
    tcase_add_test(tc, test_min_nodes_and_dealing);
    tcase_add_test(tc, test_rotate_columns);
    tcase_add_test(tc, test_column_owners);
    tcase_add_test(tc, test_join_refusals);
    tcase_add_test(tc, test_rejoin_mid_round);
    tcase_add_test(tc, test_control_socket_speaks_operator_verbs_only);
    tcase_add_test(tc, test_departed_slots_reclaimed);
    tcase_add_test(tc, test_approval_and_operator_verbs);
    tcase_add_test(tc, test_announce_refusals);
    tcase_add_test(tc, test_commit_with_refusal);
    tcase_add_test(tc, test_deadline_leaves_late_nodes_out);
    tcase_add_test(tc, test_deadline_without_announcements_waits);
    tcase_add_test(tc, test_failure_detection);
    tcase_add_test(tc, test_own_stall_is_forgiven);
    tcase_add_test(tc, test_digests_and_mismatch);
    tcase_add_test(tc, test_heartbeat_replies);
    tcase_add_test(tc, test_join_mid_run_waits_for_next_round);
    tcase_add_test(tc, test_accept_names_state_holders);
    tcase_add_test(tc, test_accept_holders_from_digests);
    tcase_add_test(tc, test_busy_until_state_known);
    tcase_add_test(tc, test_leave_and_unknown_type);
    tcase_add_test(tc, test_status_reply);
    tcase_add_test(tc, test_checkpoint_save_and_waiters);
    tcase_add_test(tc, test_checkpoint_restore_and_export);
    tcase_add_test(tc, test_run_complete_and_final_checkpoint);
    tcase_add_test(tc, test_checkpoint_records_are_bounded);
    tcase_add_test(tc, test_persistence_round_trip_and_restart);
    tcase_add_test(tc, test_restart_waits_at_most_failure_timeout);
    tcase_add_test(tc, test_load_errors);
    tcase_add_test(tc, test_validation_failure_retries);
    tcase_add_test(tc, test_adaptive_deadline_and_stragglers);
    tcase_add_test(tc, test_unchanged_state_not_rewritten);
    tcase_add_test(tc, test_queue_grows_and_frees);
    tcase_add_test(tc, test_reply_that_cannot_be_encoded);
    tcase_add_test(tc, test_sharded_round);
    tcase_add_test(tc, test_sharded_refusal_and_backup);
    tcase_add_test(tc, test_sharded_audit);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    spes_log_set_level(SPES_LOG_ERROR);
    SRunner *r = srunner_create(coord_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
