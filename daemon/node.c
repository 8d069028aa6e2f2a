/* node.c: the node's state machine on the loop (see node.h). Every network
 * call is asynchronous: its reply comes back on an nng thread, is copied, and
 * is handled here on the loop. One job at a time goes to the worker. */
#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"
#include "core/sha256.h"
#include "daemon/coord.h"
#include "daemon/node_priv.h"
#include "proto/proto.h"
#include "proto/spes.pb-c.h"

#include <stdlib.h>
#include <string.h>

#define NS(x) SPES__WIRE__NODE_STATE__NODE_STATE_##x
#define CALL_TIMEOUT_MS 10000
#define LEAVE_TIMEOUT_MS 3000 /* a stopping node says goodbye once; a dead coordinator must not hold it */

typedef void (*reply_handler)(spes_node *n, int rc, int type, ProtobufCMessage *msg, const uint8_t *raw, size_t len);

typedef struct call_ctx {
    spes_node *n;
    reply_handler h;
    int rc;
    char err[256]; /* the failure's message: it was recorded on nng's thread, not the loop's */
    uint8_t *data;
    size_t len;
} call_ctx;

static void worker_done(void *arg);

static void *worker_main(void *arg)
{
    spes_node *n = arg;
    pthread_mutex_lock(&n->mu);
    for (;;) {
        while (!n->jobs && !n->quit)
            pthread_cond_wait(&n->cv, &n->mu);
        if (n->quit)
            break;
        node_job *j = n->jobs;
        n->jobs = j->next;
        if (!n->jobs)
            n->jobs_tail = NULL;
        pthread_mutex_unlock(&n->mu);
        node_run_job(n, j);
        if (spes_daemon_call_on_loop(n->d, worker_done, j) != 0)
            log_error("worker: cannot report a finished job");
        pthread_mutex_lock(&n->mu);
    }
    pthread_mutex_unlock(&n->mu);
    return NULL;
}

static void submit(spes_node *n, node_job *j)
{
    j->rc = 0;
    j->next = NULL;
    pthread_mutex_lock(&n->mu);
    if (n->jobs_tail)
        n->jobs_tail->next = j;
    else
        n->jobs = j;
    n->jobs_tail = j;
    n->busy++;
    pthread_cond_signal(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

/* ---- async calls to the coordinator ---- */

static void on_leave_reply(spes_node *n, int rc, int type, ProtobufCMessage *msg, const uint8_t *raw, size_t len);
static void try_leave(spes_node *n);

static void call_back_on_loop(void *arg)
{
    call_ctx *cc = arg;
    spes_node *n = cc->n;
    n->call_inflight--;
    int type = 0;
    ProtobufCMessage *msg = NULL;
    int rc = cc->rc;
    if (rc)
        spes_errf(rc, "%s", cc->err[0] ? cc->err : spes_strerror(rc));
    else
        rc = spes_proto_decode(cc->data, cc->len, &type, &msg);
    if (n->phase == P_STOP && cc->h != on_leave_reply) {
        /* stopping: what this call was for no longer matters; the goodbye waited for it */
        try_leave(n);
    } else if (n->phase != P_DONE) {
        cc->h(n, rc, type, msg, cc->data, cc->len);
    }
    spes_proto_free(msg);
    free(cc->data);
    free(cc);
}

static void call_back(void *arg, int err, const void *rep, size_t len)
{
    call_ctx *cc = arg;
    cc->rc = err;
    if (err)
        snprintf(cc->err, sizeof cc->err, "%s", spes_errmsg());
    if (!err && (cc->data = malloc(len ? len : 1)) != NULL) {
        memcpy(cc->data, rep, len);
        cc->len = len;
    } else if (!err) {
        cc->rc = SPES_ENOMEM;
    }
    spes_daemon_call_on_loop(cc->n->d, call_back_on_loop, cc);
}

static int call_within(spes_node *n, int type, const ProtobufCMessage *m, reply_handler h, int timeout_ms)
{
    uint8_t *buf;
    size_t len;
    int rc = spes_proto_encode(type, m, &buf, &len);
    if (rc) {
        log_error("cannot encode message type %d: %s", type, spes_errmsg());
        return rc;
    }
    call_ctx *cc = calloc(1, sizeof *cc);
    if (!cc) {
        free(buf);
        return SPES_ENOMEM;
    }
    cc->n = n;
    cc->h = h;
    n->call_inflight++;
    rc = spes_net_call_async(n->cc, buf, len, timeout_ms, call_back, cc);
    free(buf);
    if (rc) {
        n->call_inflight--;
        free(cc);
    }
    return rc;
}

static int call(spes_node *n, int type, const ProtobufCMessage *m, reply_handler h)
{
    return call_within(n, type, m, h, CALL_TIMEOUT_MS);
}

static void retry_later(spes_node *n, uint64_t ms)
{
    n->next_try_ms = spes_mono_ms() + ms;
}

static const char *error_text(int type, ProtobufCMessage *msg)
{
    if (type == SPES_MSG_ERROR)
        return ((Spes__Wire__Error *)msg)->message;
    if (type == SPES_MSG_REJECT)
        return ((Spes__Wire__Reject *)msg)->reason;
    return "unexpected reply";
}

static void send_join(spes_node *n);

static void add_peer(node_job *j, uint32_t id, const char *url, const char *name)
{
    if (j->npeers >= NODE_MAX_PEERS || !strcmp(url, j->d_node->d->cfg.listen))
        return; /* never ask ourselves */
    for (int i = 0; i < j->npeers; i++)
        if (!strcmp(j->urls[i], url)) {
            /* the coordinator's URL is often a training node's too: keep both marks */
            if (id == UINT32_MAX) {
                j->is_coord[i] = 1;
            } else {
                j->peer_ids[i] = id;
                snprintf(j->names[i], sizeof j->names[i], "%s", name);
            }
            return;
        }
    snprintf(j->urls[j->npeers], sizeof j->urls[0], "%s", url);
    snprintf(j->names[j->npeers], sizeof j->names[0], "%s", name);
    j->is_coord[j->npeers] = id == UINT32_MAX;
    j->peer_ids[j->npeers++] = id;
}

static node_job *new_job(spes_node *n, int kind)
{
    node_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->kind = kind;
    j->d_node = n;
    j->round = n->round;
    j->step = n->step;
    /* the coordinator holds every committed blob and state: always a source */
    if (n->d->cfg.coordinator[0])
        add_peer(j, UINT32_MAX, n->d->cfg.coordinator, "");
    return j;
}

static void start_train(spes_node *n, const uint32_t *cols, size_t ncols)
{
    node_job *j = new_job(n, JOB_TRAIN);
    if (!j || !(j->cols = calloc((size_t)n->E, 1))) {
        free(j);
        log_error("out of memory starting round %llu", (unsigned long long)n->round);
        return;
    }
    for (size_t i = 0; i < ncols; i++)
        if (cols[i] < (uint32_t)n->E)
            j->cols[cols[i]] = 1;
    memcpy(n->cols, j->cols, (size_t)n->E);
    n->phase = P_TRAIN;
    n->train_round = n->round;
    n->t_train0 = uv_hrtime() / 1e9;
    log_info("round %llu: training columns of %zu expert(s) for %d steps from step %llu", (unsigned long long)n->round,
             ncols, n->run.spes.sync_interval, (unsigned long long)n->step);
    submit(n, j);
}

/* diverged says whether the run's agreed state of our round (hash, 32 bytes
 * when known) differs from ours: then we must not train on ours or apply a
 * commit to it. We join again, which fetches the agreed state (our own copy of
 * the round no longer matches it, so it is not reused). */
static int diverged(spes_node *n, const ProtobufCBinaryData *hash)
{
    if (hash->len != 32 || !n->have_state || !memcmp(hash->data, n->hash, 32))
        return 0;
    char mine[65], agreed[65];
    spes_hex_encode(n->hash, 32, mine);
    spes_hex_encode(hash->data, 32, agreed);
    log_error("round %llu: this node's state (digest %.16s) is not the run's agreed one (%.16s): joining "
              "again to fetch it",
              (unsigned long long)n->round, mine, agreed);
    n->phase = P_JOIN;
    return 1;
}

static void start_apply(spes_node *n, const Spes__Wire__Commit *cm)
{
    if (diverged(n, &cm->base_hash))
        return;
    node_job *j = new_job(n, JOB_APPLY);
    if (!j)
        return;
    j->merge = cm->merge_applied;
    const char *ck = cm->checkpoint_id ? cm->checkpoint_id : "";
    if (ck[0] == '.' || strchr(ck, '/')) { /* it names a directory under checkpoints/ */
        log_warnx("round %llu: checkpoint id \"%.64s\" refused", (unsigned long long)cm->round, ck);
        ck = "";
    }
    snprintf(j->ckpt_id, sizeof j->ckpt_id, "%s", ck);
    j->next_step = cm->next_step;
    for (size_t i = 0; i < cm->n_peers; i++)
        add_peer(j, cm->peers[i]->node_id, cm->peers[i]->listen_url, cm->peers[i]->name);
    for (size_t i = 0; i < cm->n_contributions && i < NODE_MAX_PEERS; i++) {
        j->contrib_node[i] = cm->contributions[i]->node_id;
        memcpy(j->contrib_hash[i], cm->contributions[i]->blob_hash.data, 32);
        memcpy(j->contrib_manifest[i], cm->contributions[i]->manifest_hash.data, 32);
        j->ncontrib++;
    }
    n->phase = P_APPLY;
    submit(n, j);
}

/* ---- replies ---- */

static void on_digest_reply(spes_node *n, int rc, int type, ProtobufCMessage *msg, const uint8_t *raw, size_t len)
{
    (void)raw;
    (void)len;
    if (rc || type == SPES_MSG_ERROR) {
        log_warnx("digest report failed: %s", rc ? spes_errmsg() : error_text(type, msg));
        retry_later(n, 500);
        return;
    }
    if (n->phase == P_DIGEST)
        n->phase = P_IDLE;
}

static void send_digest(spes_node *n)
{
    Spes__Wire__Digest g = SPES__WIRE__DIGEST__INIT;
    g.node_id = n->id;
    g.round = n->round;
    g.state_hash = (ProtobufCBinaryData){32, n->hash};
    g.checkpoint_id = n->saved_ckpt;
    if (call(n, SPES_MSG_DIGEST, &g.base, on_digest_reply) != 0)
        retry_later(n, 500);
}

static void on_announce_reply(spes_node *n, int rc, int type, ProtobufCMessage *msg, const uint8_t *raw, size_t len)
{
    (void)raw;
    (void)len;
    if (rc) {
        log_warnx("announce failed (%s); retrying", spes_errmsg());
        retry_later(n, 500);
        return;
    }
    if (type != SPES_MSG_ACK)
        log_warnx("round %llu: contribution not taken: %s", (unsigned long long)n->round, error_text(type, msg));
    if (n->phase == P_ANNOUNCE)
        n->phase = P_WAIT;
}

static void send_announce(spes_node *n)
{
    Spes__Wire__Announce a = SPES__WIRE__ANNOUNCE__INIT;
    Spes__Wire__LossStats ls = SPES__WIRE__LOSS_STATS__INIT;
    a.node_id = n->id;
    a.round = n->round;
    a.blob_hash = (ProtobufCBinaryData){32, n->pending_blob};
    a.manifest_hash = (ProtobufCBinaryData){32, n->pending_manifest};
    a.size = n->pending_size;
    a.tokens_trained = n->pending_tokens;
    ls.mean = n->pending_loss;
    ls.last = n->loss;
    ls.count = (uint32_t)n->run.spes.sync_interval;
    a.loss = &ls;
    a.codec = strcmp(n->d->cfg.codec, "bf16") ? SPES__WIRE__CODEC__CODEC_FP32 : SPES__WIRE__CODEC__CODEC_BF16;
    if (call(n, SPES_MSG_ANNOUNCE, &a.base, on_announce_reply) != 0)
        retry_later(n, 500);
}

static void on_heartbeat_reply(spes_node *n, int rc, int type, ProtobufCMessage *msg, const uint8_t *raw,
                               size_t len)
{
    if (rc) {
        log_debug("heartbeat failed: %s", spes_errmsg());
        return;
    }
    if (type == SPES_MSG_COMMIT) {
        const Spes__Wire__Commit *cm = (const Spes__Wire__Commit *)msg;
        if (cm->round != n->round)
            return;
        if (n->phase == P_IDLE || n->phase == P_WAIT || n->phase == P_ANNOUNCE) {
            start_apply(n, cm); /* a late announce reply finds the phase moved on */
        } else if (n->phase == P_TRAIN) {
            /* the round closed without us: abandon, then apply */
            free(n->pending_commit);
            n->pending_commit = malloc(len);
            if (n->pending_commit) {
                memcpy(n->pending_commit, raw, len);
                n->pending_commit_len = len;
            }
            atomic_store(&n->cancel, 1);
        }
    } else if (type == SPES_MSG_ACCEPT) {
        const Spes__Wire__Accept *a = (const Spes__Wire__Accept *)msg;
        if (n->phase == P_IDLE && a->round == n->round && a->n_columns > 0 && n->have_state) {
            if (!diverged(n, &a->state_hash))
                start_train(n, a->columns, a->n_columns);
        } else if (n->phase == P_WAIT && a->round == n->round && n->train_round == n->round) {
            n->phase = P_ANNOUNCE; /* the coordinator lost our announcement (it restarted) */
            n->next_try_ms = 0;
        }
    } else if (type == SPES_MSG_REJECT) {
        const Spes__Wire__Reject *r = (const Spes__Wire__Reject *)msg;
        if (r->code == SPES__WIRE__ERROR_CODE__ERROR_WRONG_ROUND || r->code == SPES__WIRE__ERROR_CODE__ERROR_NOT_MEMBER) {
            log_warnx("coordinator: %s; joining again", r->reason);
            if (n->phase == P_IDLE || n->phase == P_WAIT)
                n->phase = P_JOIN;
        }
    }
}

static void send_heartbeat(spes_node *n)
{
    Spes__Wire__Heartbeat h = SPES__WIRE__HEARTBEAT__INIT;
    h.node_id = n->id;
    h.round = n->round;
    h.step = n->have_trainer ? (uint64_t)n->tr.step : n->step;
    h.loss = n->loss;
    h.tokens_per_s = n->tps;
    /* JOINING = idle or waiting for the commit: the coordinator may hand us work */
    h.state = n->phase == P_IDLE || n->phase == P_WAIT ? NS(JOINING) : NS(ACTIVE);
    n->last_hb_ms = spes_mono_ms();
    call(n, SPES_MSG_HEARTBEAT, &h.base, on_heartbeat_reply);
}

static void on_join_reply(spes_node *n, int rc, int type, ProtobufCMessage *msg, const uint8_t *raw, size_t len)
{
    (void)raw;
    (void)len;
    if (!rc && type == SPES_MSG_REJECT &&
        ((Spes__Wire__Reject *)msg)->code == SPES__WIRE__ERROR_CODE__ERROR_NOT_MEMBER) {
        log_error("coordinator: %s; stopping this daemon", ((Spes__Wire__Reject *)msg)->reason);
        n->joined = 0; /* nothing to leave */
        spes_node_stop(n);
        return;
    }
    if (rc || type != SPES_MSG_ACCEPT) {
        uint32_t retry = type == SPES_MSG_REJECT ? ((Spes__Wire__Reject *)msg)->retry_after_ms : 0;
        log_warnx("join: %s", rc ? spes_errmsg() : error_text(type, msg));
        retry_later(n, retry ? retry : 1000);
        return;
    }
    const Spes__Wire__Accept *a = (const Spes__Wire__Accept *)msg;
    if (!n->have_run) {
        spes_config_defaults(&n->run);
        if (spes_config_parse_json(&n->run, a->run_config_json, "run config from the coordinator") ||
            spes_config_validate(&n->run) ||
            (n->d->cfg.data[0] && spes_config_set_data(&n->run, n->d->cfg.data) != 0) ||
            !(n->cols = calloc((size_t)n->run.model.num_experts + 1, 1))) {
            log_error("%s", spes_errmsg());
            spes_config_fini(&n->run);
            retry_later(n, 5000);
            return;
        }
        n->E = n->run.model.num_experts;
        n->have_run = 1;
    }
    n->id = a->node_id;
    n->joined = 1;
    log_info("joined run %s as node %u at round %llu (step %llu)", a->run_id, a->node_id, (unsigned long long)a->round,
             (unsigned long long)a->step);
    node_job *j = new_job(n, JOB_PREPARE);
    if (!j)
        return;
    j->round = a->round;
    j->step = a->step;
    memcpy(j->hash, a->state_hash.data, 32);
    free(n->accept_cols);
    n->accept_cols = malloc(sizeof *n->accept_cols * (a->n_columns ? a->n_columns : 1));
    n->accept_ncols = n->accept_cols ? a->n_columns : 0;
    if (n->accept_cols && a->n_columns)
        memcpy(n->accept_cols, a->columns, sizeof *n->accept_cols * a->n_columns);
    n->phase = P_PREPARE;
    submit(n, j);
}

static void send_join(spes_node *n)
{
    Spes__Wire__Join j = SPES__WIRE__JOIN__INIT;
    Spes__Wire__Capabilities cap = SPES__WIRE__CAPABILITIES__INIT;
    j.node_name = n->d->cfg.name;
    j.listen_url = n->d->cfg.listen;
    j.software_version = "spes 0.1";
    j.protocol_version = SPES_PROTO_VERSION;
    cap.threads = (uint32_t)n->d->cfg.threads;
    j.capabilities = &cap;
    if (call(n, SPES_MSG_JOIN, &j.base, on_join_reply) != 0) {
        log_warnx("join: %s", spes_errmsg());
        retry_later(n, 1000);
    }
}

/* ---- blob housekeeping ---- */

/* keep_round records the blobs of an applied round (its contributions and the
 * new state) and deletes those of three rounds before: nodes that lag behind
 * or join need only the current state and the last commit's blobs. */
static void keep_round(spes_node *n, const node_job *j)
{
    int slot = (int)(j->round % 3);
    if (!n->d->cfg.keep_blobs && n->kept[slot].n > 0 && n->kept[slot].round < j->round) { /* round - 3 */
        int deleted = 0;
        for (int i = 0; i < n->kept[slot].n; i++)
            deleted += spes_blob_delete(n->blobs, n->kept[slot].hash[i]) == 0;
        log_debug("round %llu: %d old blob(s) deleted", (unsigned long long)n->kept[slot].round, deleted);
    }
    n->kept[slot].round = j->round;
    n->kept[slot].n = 0;
    for (int k = 0; k < j->ncontrib && n->kept[slot].n < NODE_MAX_PEERS; k++)
        memcpy(n->kept[slot].hash[n->kept[slot].n++], j->contrib_hash[k], 32);
    memcpy(n->kept[slot].hash[n->kept[slot].n++], j->out_hash, 32); /* S_{round+1} */
}

/* ---- worker results ---- */

static void worker_done(void *arg)
{
    node_job *j = arg;
    spes_node *n = j->d_node;
    n->busy--;
    if (n->phase == P_STOP || n->phase == P_DONE) {
        free(j->cols);
        free(j);
        try_leave(n);
        return;
    }
    switch (j->kind) {
    case JOB_PREPARE:
        if (j->rc) {
            log_error("cannot get the agreed state of round %llu: %s", (unsigned long long)j->round, j->err);
            n->phase = P_JOIN;
            retry_later(n, 2000);
            break;
        }
        n->round = j->round;
        n->step = j->step;
        memcpy(n->hash, j->hash, 32);
        n->have_state = 1;
        n->phase = P_IDLE;
        if (n->accept_ncols)
            start_train(n, n->accept_cols, n->accept_ncols);
        break;
    case JOB_TRAIN:
        atomic_store(&n->cancel, 0);
        if (j->rc || n->pending_commit) {
            /* failed, abandoned, or the round committed without us while we trained
             * (even if training just finished): apply that commit, nothing to announce */
            if (j->rc && j->rc != SPES_EINTR)
                log_error("round %llu: training failed: %s", (unsigned long long)j->round, j->err);
            n->train_round = UINT64_MAX;
            n->phase = P_WAIT;
            if (n->pending_commit) {
                int type;
                ProtobufCMessage *m = NULL;
                if (spes_proto_decode(n->pending_commit, n->pending_commit_len, &type, &m) == 0 &&
                    type == SPES_MSG_COMMIT && ((const Spes__Wire__Commit *)m)->round == n->round)
                    start_apply(n, (const Spes__Wire__Commit *)m);
                spes_proto_free(m);
                free(n->pending_commit);
                n->pending_commit = NULL;
            }
            break;
        }
        n->t_train1 = uv_hrtime() / 1e9;
        memcpy(n->pending_blob, j->out_hash, 32);
        memcpy(n->pending_manifest, j->out_manifest, 32);
        n->pending_size = j->out_size;
        n->pending_tokens = j->tokens;
        n->pending_loss = j->loss_mean;
        n->phase = P_ANNOUNCE;
        n->next_try_ms = 0;
        spes_node_tick(n);
        break;
    case JOB_APPLY:
        if (j->rc) {
            log_error("round %llu: cannot apply the commit: %s", (unsigned long long)j->round, j->err);
            n->have_state = 0;
            n->phase = P_JOIN;
            retry_later(n, 1000);
            break;
        }
        n->round = j->round + 1;
        n->step = j->next_step;
        memcpy(n->hash, j->out_hash, 32);
        keep_round(n, j);
        snprintf(n->saved_ckpt, sizeof n->saved_ckpt, "%s", j->ckpt_id);
        {
            char hex[65];
            spes_blob_serve_stats ss;
            spes_blob_store_stats(n->blobs, &ss);
            n->bytes_in_total += j->bytes_in;
            spes_hex_encode(n->hash, 32, hex);
            double now = uv_hrtime() / 1e9;
            int trained = n->train_round == j->round && n->t_train1 >= n->t_train0 && n->t_train0 > 0;
            log_info("round %llu applied: state digest %.16s (blob bytes received %llu, served %llu in all; "
                     "train %.2f s, sync %.2f s)",
                     (unsigned long long)j->round, hex, (unsigned long long)n->bytes_in_total,
                     (unsigned long long)ss.bytes_served, trained ? n->t_train1 - n->t_train0 : 0.0,
                     trained ? now - n->t_train1 : 0.0);
        }
        n->phase = P_DIGEST;
        n->next_try_ms = 0;
        spes_node_tick(n);
        break;
    case JOB_VALIDATE:
        n->bytes_in_total += j->bytes_in;
        if (n->d->coord)
            spes_coord_validated(n->d->coord, j->round, j->ncontrib, j->ok, j->reasons);
        break;
    }
    free(j->cols);
    free(j);
}

int spes_node_validate(spes_node *n, uint64_t round, int count, const uint8_t (*hashes)[32],
                       const uint8_t (*manifests)[32], const char **urls, const char **names)
{
    node_job *j = new_job(n, JOB_VALIDATE);
    if (!j)
        return SPES_ENOMEM;
    j->round = round;
    j->npeers = 0;
    for (int k = 0; k < count && k < NODE_MAX_PEERS; k++) {
        memcpy(j->contrib_hash[k], hashes[k], 32);
        memcpy(j->contrib_manifest[k], manifests[k], 32);
        snprintf(j->urls[k], sizeof j->urls[k], "%s", urls[k]);
        snprintf(j->names[k], sizeof j->names[k], "%s", names[k]);
        j->peer_ids[k] = 0; /* ids do not matter here: contribution k's author is peer k */
        j->is_coord[k] = 0;
        j->ncontrib++;
        j->npeers++;
    }
    submit(n, j);
    return 0;
}

/* ---- lifecycle ---- */

int spes_node_alloc(spes_node **out, spes_daemon *d)
{
    spes_node *n = calloc(1, sizeof *n);
    if (!n)
        return SPES_ENOMEM;
    n->d = d;
    snprintf(n->state_dir, sizeof n->state_dir, "%.500s/node", d->cfg.state_dir);
    char *bdir = spes_path_join(n->state_dir, "blobs");
    int rc = bdir ? spes_mkdir_p(bdir, 0750) : SPES_ENOMEM;
    spes_blob_store_opts bo;
    memset(&bo, 0, sizeof bo);
    bo.max_bytes = (uint64_t)d->cfg.blob_quota_mb << 20; /* docs/security.md: the store's quota */
    if (!rc)
        rc = spes_blob_store_open(&n->blobs, bdir, &bo);
    free(bdir);
    spes_net_client_opts co;
    memset(&co, 0, sizeof co);
    co.url = d->cfg.coordinator[0] ? d->cfg.coordinator : d->cfg.listen;
    co.tls = d->tls;
    co.plain = d->cfg.plain;
    co.max_msg = 64u << 20;
    if (!rc)
        rc = spes_net_client_open(&n->cc, &co);
    pthread_mutex_init(&n->mu, NULL);
    pthread_cond_init(&n->cv, NULL);
    if (rc) {
        spes_node_free(n);
        return rc;
    }
    *out = n;
    return 0;
}

int spes_node_start(spes_node *n)
{
    if (pthread_create(&n->th, NULL, worker_main, n) != 0)
        return spes_errf(SPES_ENOMEM, "cannot start the worker thread");
    n->th_started = 1;
    n->phase = P_JOIN;
    return 0;
}

void spes_node_tick(spes_node *n)
{
    uint64_t now = spes_mono_ms();
    if (n->call_inflight > 0 || now < n->next_try_ms)
        return;
    switch (n->phase) {
    case P_JOIN:
        if (!n->busy)
            send_join(n);
        break;
    case P_ANNOUNCE: send_announce(n); break;
    case P_DIGEST: send_digest(n); break;
    case P_PREPARE:
    case P_IDLE:
    case P_TRAIN:
    case P_WAIT:
    case P_APPLY:
        if (n->joined && now - n->last_hb_ms >= (uint64_t)n->d->cfg.heartbeat_ms)
            send_heartbeat(n);
        break;
    default: break;
    }
}

static void on_leave_reply(spes_node *n, int rc, int type, ProtobufCMessage *msg, const uint8_t *raw, size_t len)
{
    (void)rc;
    (void)type;
    (void)msg;
    (void)raw;
    (void)len;
    n->phase = P_DONE;
    spes_daemon_stopped(n->d);
}

static void try_leave(spes_node *n)
{
    if (n->phase != P_STOP || n->busy || n->call_inflight)
        return;
    if (!n->joined) {
        n->phase = P_DONE;
        spes_daemon_stopped(n->d);
        return;
    }
    Spes__Wire__Leave l = SPES__WIRE__LEAVE__INIT;
    l.node_id = n->id;
    l.reason = "shutting down";
    if (call_within(n, SPES_MSG_LEAVE, &l.base, on_leave_reply, LEAVE_TIMEOUT_MS) != 0)
        on_leave_reply(n, 0, 0, NULL, NULL, 0);
}

void spes_node_stop(spes_node *n)
{
    atomic_store(&n->cancel, 1);
    n->phase = P_STOP;
    if (n->call_inflight && n->cc)
        spes_net_client_abort_calls(n->cc); /* a gone coordinator must not hold us for a call's timeout */
    try_leave(n);
}

void spes_node_free(spes_node *n)
{
    if (!n)
        return;
    if (n->th_started) {
        pthread_mutex_lock(&n->mu);
        n->quit = 1;
        pthread_cond_signal(&n->cv);
        pthread_mutex_unlock(&n->mu);
        pthread_join(n->th, NULL);
    }
    while (n->jobs) {
        node_job *j = n->jobs;
        n->jobs = j->next;
        free(j->cols);
        free(j);
    }
    if (n->cc)
        spes_net_client_close(n->cc);
    if (n->blobs)
        spes_blob_store_close(n->blobs);
    if (n->have_trainer)
        spes_trainer_fini(&n->tr);
    if (n->have_run)
        spes_config_fini(&n->run);
    free(n->cols);
    free(n->base);
    free(n->pending_commit);
    free(n->accept_cols);
    pthread_mutex_destroy(&n->mu);
    pthread_cond_destroy(&n->cv);
    free(n);
}

spes_blob_store *spes_node_blobs(spes_node *n)
{
    return n->blobs;
}

void spes_node_status(spes_node *n, double *loss, double *tps, uint64_t *round, uint64_t *step)
{
    *loss = n->loss;
    *tps = n->tps;
    *round = n->round;
    *step = n->step;
}

typedef struct fwd_ctx {
    spes_reply_fn reply;
    void *ctx;
    int rc;
    uint8_t *data;
    size_t len;
    spes_node *n;
} fwd_ctx;

static void fwd_on_loop(void *arg)
{
    fwd_ctx *f = arg;
    if (f->rc)
        spes_daemon_reply_error(f->reply, f->ctx, f->rc, SPES_MSG_STATUS_REQUEST, "coordinator unreachable: %s",
                                spes_strerror(f->rc));
    else
        f->reply(f->ctx, f->data, f->len);
    free(f->data);
    free(f);
}

static void fwd_back(void *arg, int err, const void *rep, size_t len)
{
    fwd_ctx *f = arg;
    f->rc = err;
    if (!err && (f->data = malloc(len ? len : 1)) != NULL) {
        memcpy(f->data, rep, len);
        f->len = len;
    } else if (!err) {
        f->rc = SPES_ENOMEM;
    }
    spes_daemon_call_on_loop(f->n->d, fwd_on_loop, f);
}

void spes_node_forward_status(spes_node *n, const uint8_t *data, size_t len, spes_reply_fn reply, void *ctx)
{
    fwd_ctx *f = calloc(1, sizeof *f);
    if (!f) {
        spes_daemon_reply_error(reply, ctx, SPES_ENOMEM, SPES_MSG_STATUS_REQUEST, "out of memory");
        return;
    }
    f->reply = reply;
    f->ctx = ctx;
    f->n = n;
    if (spes_net_call_async(n->cc, data, len, CALL_TIMEOUT_MS, fwd_back, f) != 0) {
        spes_daemon_reply_error(reply, ctx, SPES_ENET, SPES_MSG_STATUS_REQUEST, "cannot reach the coordinator: %s",
                                spes_errmsg());
        free(f);
    }
}
