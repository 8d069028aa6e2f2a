/* node.c: the node role's glue on the loop (see node.h). The protocol's
 * decisions are src/node's state machine (docs/node.md); this file feeds it
 * (replies, ticks with the monotonic clock, finished jobs, stop) and carries
 * out its actions: asynchronous calls to the coordinator (their replies come
 * back on an nng thread, are copied and handed to the machine on the loop),
 * jobs for the worker thread, blob deletions, log lines. */
#include "core/clock.h"
#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"
#include "daemon/coord.h"
#include "daemon/counters.h"
#include "daemon/dmetrics.h"
#include "daemon/node_priv.h"
#include "proto/proto.h"

#include <stdlib.h>
#include <string.h>

/* call_ctx carries one call's reply from nng's thread to the loop. */
typedef struct call_ctx {
    spes_node *n;
    int call; /* spes_node_call */
    int rc;
    char err[256]; /* the failure's message: it was recorded on nng's thread, not the loop's */
    uint8_t *data;
    size_t len;
} call_ctx;

static void drain(spes_node *n);

/* ---- what the store keeps ---- */

static int cmp_hash(const void *a, const void *b)
{
    return memcmp(a, b, 32);
}

/* keep_blob is the blob store's keep hook (any thread): 1 for a blob the node still needs. */
static int keep_blob(void *arg, const uint8_t hash[32])
{
    spes_node *n = arg;
    pthread_mutex_lock(&n->keep_mu);
    int hit = n->nkeep > 0 && bsearch(hash, n->keep, (size_t)n->nkeep, 32, cmp_hash) != NULL;
    pthread_mutex_unlock(&n->keep_mu);
    return hit;
}

void node_keep_add(spes_node *n, const spes_node_job *j, const uint8_t hash[32])
{
    if (!n->d->cfg.blob_quota_mb)
        return; /* no quota: nothing is ever collected */
    pthread_mutex_lock(&n->mu);
    node_task *t = n->running && n->running->job == j     ? n->running
                   : n->trunning && n->trunning->job == j ? n->trunning
                                                          : NULL;
    if (t && t->nout == t->outcap) {
        int cap = t->outcap ? 2 * t->outcap : 4;
        uint8_t(*o)[32] = realloc(t->out, (size_t)cap * 32);
        if (o) { /* out of memory: the keep set below has it until the next refresh */
            t->out = o;
            t->outcap = cap;
        }
    }
    if (t && t->nout < t->outcap)
        memcpy(t->out[t->nout++], hash, 32); /* for every keep_refresh until the loop takes the result */
    pthread_mutex_unlock(&n->mu);
    pthread_mutex_lock(&n->keep_mu); /* and from now on */
    uint8_t(*h)[32] = realloc(n->keep, (size_t)(n->nkeep + 1) * 32);
    if (h) { /* out of memory: the next keep_refresh has it */
        memcpy(h[n->nkeep++], hash, 32);
        qsort(h, (size_t)n->nkeep, 32, cmp_hash);
        n->keep = h;
    }
    pthread_mutex_unlock(&n->keep_mu);
}

/* job_hashes appends the blobs job j reads or writes to h (room for job_nhashes(j) more). */
static int job_nhashes(const spes_node_job *j)
{
    int n = 1 + (j->kind == SPES_NODE_JOB_APPLY      ? j->u.apply.ncontrib + j->u.apply.nagg
                 : j->kind == SPES_NODE_JOB_VALIDATE ? j->u.validate.n
                                                     : 0);
    for (int i = 0; j->kind == SPES_NODE_JOB_AGGREGATE && i < j->u.aggregate.ntasks; i++)
        n += j->u.aggregate.task[i].n;
    return n;
}

static void job_hashes(const spes_node_job *j, uint8_t (*h)[32], int *m)
{
    switch (j->kind) {
    case SPES_NODE_JOB_PREPARE: memcpy(h[(*m)++], j->u.prepare.hash, 32); break;
    case SPES_NODE_JOB_APPLY:
        for (int i = 0; i < j->u.apply.ncontrib; i++)
            memcpy(h[(*m)++], j->u.apply.contribs[i].hash, 32);
        for (int i = 0; i < j->u.apply.nagg; i++)
            memcpy(h[(*m)++], j->u.apply.agg[i].hash, 32);
        break;
    case SPES_NODE_JOB_AGGREGATE:
        for (int i = 0; i < j->u.aggregate.ntasks; i++)
            for (int k = 0; k < j->u.aggregate.task[i].n; k++)
                memcpy(h[(*m)++], j->u.aggregate.task[i].in[k].hash, 32);
        break;
    case SPES_NODE_JOB_VALIDATE:
        for (int i = 0; i < j->u.validate.n; i++)
            memcpy(h[(*m)++], j->u.validate.contribs[i].hash, 32);
        break;
    default: break;
    }
}

/* keep_refresh (loop) sets what the store keeps: the blobs of the rounds the
 * machine keeps (docs/node.md), the agreed state held, the contribution not yet
 * applied, and the blobs of every job queued or running, extra included. */
static void keep_refresh(spes_node *n, const spes_node_job *extra)
{
    if (!n->d->cfg.blob_quota_mb)
        return; /* no quota: the store never collects, so nothing needs keeping (and this runs every tick) */
    const spes_node_sm *sm = &n->sm;
    pthread_mutex_lock(&n->mu);
    int cap = 6 + sm->npending_shards + (extra ? job_nhashes(extra) : 0); /* 4: the running jobs' outputs */
    for (int i = 0; i < SPES_NODE_KEEP_ROUNDS; i++)
        cap += sm->kept[i].n;
    for (node_task *t = n->done; t; t = t->dnext)
        cap += t->nout;
    for (node_task *t = n->jobs; t; t = t->next)
        cap += job_nhashes(t->job);
    for (node_task *t = n->tjobs; t; t = t->next)
        cap += job_nhashes(t->job);
    if (n->running)
        cap += job_nhashes(n->running->job);
    if (n->trunning)
        cap += job_nhashes(n->trunning->job);
    uint8_t(*h)[32] = malloc((size_t)cap * 32);
    int m = 0;
    if (h) {
        for (int i = 0; i < SPES_NODE_KEEP_ROUNDS; i++)
            for (int k = 0; k < sm->kept[i].n; k++)
                memcpy(h[m++], sm->kept[i].hash[k], 32);
        if (sm->have_state)
            memcpy(h[m++], sm->hash, 32);
        memcpy(h[m++], sm->pending_blob, 32);
        for (int i = 0; i < sm->npending_shards; i++)
            memcpy(h[m++], sm->pending_shards[i].hash, 32);
        for (node_task *t = n->jobs; t; t = t->next)
            job_hashes(t->job, h, &m);
        for (node_task *t = n->tjobs; t; t = t->next)
            job_hashes(t->job, h, &m);
        if (n->running)
            job_hashes(n->running->job, h, &m);
        if (n->trunning)
            job_hashes(n->trunning->job, h, &m);
        node_task *made[2] = {n->running, n->trunning};
        for (int i = 0; i < 2; i++)
            for (int k = 0; made[i] && k < made[i]->nout; k++)
                memcpy(h[m++], made[i]->out[k], 32);
        for (node_task *t = n->done; t; t = t->dnext)
            for (int k = 0; k < t->nout; k++)
                memcpy(h[m++], t->out[k], 32);
        if (extra)
            job_hashes(extra, h, &m);
        qsort(h, (size_t)m, 32, cmp_hash);
    }
    pthread_mutex_unlock(&n->mu);
    if (!h)
        return; /* out of memory: the last set stays */
    pthread_mutex_lock(&n->keep_mu);
    free(n->keep);
    n->keep = h;
    n->nkeep = m;
    pthread_mutex_unlock(&n->keep_mu);
}

/* ---- the worker ---- */

static void worker_done(void *arg);

/* worker_loop runs the jobs of one queue (the training one or the other) until quit. */
static void worker_loop(spes_node *n, int train)
{
    node_task **head = train ? &n->tjobs : &n->jobs, **tail = train ? &n->tjobs_tail : &n->jobs_tail;
    node_task **running = train ? &n->trunning : &n->running;
    pthread_mutex_lock(&n->mu);
    for (;;) {
        while (!*head && !n->quit)
            pthread_cond_wait(&n->cv, &n->mu);
        if (n->quit)
            break;
        node_task *t = *head;
        *head = t->next;
        if (!*head)
            *tail = NULL;
        *running = t;
        pthread_mutex_unlock(&n->mu);
        node_run_job(n, t->job);
        if (train || t->job->kind == SPES_NODE_JOB_PREPARE)
            node_publish_progress(n); /* the trainer is the training worker's while it may run */
        /* the store keeps the job's blobs until the loop has taken its result (keep_refresh) */
        pthread_mutex_lock(&n->mu);
        *running = NULL;
        t->dnext = n->done;
        n->done = t;
        pthread_mutex_unlock(&n->mu);
        if (spes_daemon_call_on_loop(n->d, worker_done, t) != 0)
            log_error("worker: cannot report a finished job");
        pthread_mutex_lock(&n->mu);
    }
    pthread_mutex_unlock(&n->mu);
}

static void *worker_main(void *arg)
{
    worker_loop(arg, 0);
    return NULL;
}

static void *train_worker_main(void *arg)
{
    worker_loop(arg, 1);
    return NULL;
}

static void submit(spes_node *n, spes_node_job *j)
{
    node_task *t = calloc(1, sizeof *t);
    if (!n->have_lo && n->sm.have_run) {
        if (spes_layout_build(&n->lo, &n->sm.run.model) == 0) {
            n->have_lo = 1; /* before any job runs: the workers read it without a lock */
            if (n->d->push) /* a pushed blob is at most a contribution */
                spes_blob_push_rx_limit(n->d->push, spes_contrib_max_size(&n->lo, n->sm.E));
        }
    }
    if (!t || !n->have_lo) {
        /* the machine counts the job as out: hand it back failed */
        free(t);
        j->rc = SPES_ENOMEM;
        snprintf(j->err, sizeof j->err, "out of memory");
        spes_node_sm_job_done(&n->sm, j, spes_mono_ms(), &n->out);
        return;
    }
    t->n = n;
    t->job = j;
    j->rc = 0;
    keep_refresh(n, j); /* before the worker can start it */
    int train = j->kind == SPES_NODE_JOB_TRAIN;
    node_task **head = train ? &n->tjobs : &n->jobs, **tail = train ? &n->tjobs_tail : &n->jobs_tail;
    pthread_mutex_lock(&n->mu);
    if (*tail)
        (*tail)->next = t;
    else
        *head = t;
    *tail = t;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

/* take_progress hands the worker's last published progress to the machine
 * (heartbeats and the announce report it). */
static void take_progress(spes_node *n)
{
    pthread_mutex_lock(&n->mu);
    spes_node_sm_progress(&n->sm, n->prog_have_step, n->prog_step, n->prog_loss, n->prog_tps);
    pthread_mutex_unlock(&n->mu);
}

static void worker_done(void *arg)
{
    node_task *t = arg;
    spes_node *n = t->n;
    pthread_mutex_lock(&n->mu);
    for (node_task **p = &n->done; *p; p = &(*p)->dnext)
        if (*p == t) {
            *p = t->dnext;
            break;
        }
    pthread_mutex_unlock(&n->mu);
    take_progress(n);
    spes_node_sm_job_done(&n->sm, t->job, spes_mono_ms(), &n->out);
    free(t->out);
    free(t);
    drain(n);
}

/* ---- calls to the coordinator ---- */

static void call_back_on_loop(void *arg)
{
    call_ctx *cc = arg;
    spes_node *n = cc->n;
    spes_node_sm_reply(&n->sm, cc->call, cc->rc, cc->err, cc->data, cc->len, spes_mono_ms(), &n->out);
    free(cc->data);
    free(cc);
    drain(n);
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

/* send_call starts an action's call; a call that cannot start is answered
 * at once as failed, as its reply would have been. */
static void send_call(spes_node *n, const spes_node_action *a)
{
    call_ctx *cc = calloc(1, sizeof *cc);
    int rc = cc ? 0 : SPES_ENOMEM;
    if (cc) {
        cc->n = n;
        cc->call = a->call;
        rc = spes_net_call_async(n->cc, a->data, a->len, a->timeout_ms, call_back, cc);
    }
    if (rc) {
        free(cc);
        spes_node_sm_reply(&n->sm, a->call, rc, spes_errmsg(), NULL, 0, spes_mono_ms(), &n->out);
    }
}

static void say(int level, const char *text)
{
    switch (level) {
    case SPES_LOG_ERROR: log_error("%s", text); break;
    case SPES_LOG_WARN: log_warnx("%s", text); break;
    case SPES_LOG_INFO: log_info("%s", text); break;
    default: log_debug("%s", text); break;
    }
}

/* drain carries out the machine's actions, including those that carrying
 * them out causes (a call that cannot start is answered at once). */
static void drain(spes_node *n)
{
    if (n->draining)
        return;
    n->draining = 1;
    spes_node_action a;
    while (spes_node_out_pop(&n->out, &a)) {
        switch (a.kind) {
        case SPES_NODE_ACT_SEND: send_call(n, &a); break;
        case SPES_NODE_ACT_JOB:
            submit(n, a.job);
            a.job = NULL;
            break;
        case SPES_NODE_ACT_CANCEL:
            if (a.value == 1)
                atomic_store(&n->cancel, 1);
            atomic_store(&n->cancel_train, a.value != 0);
            pthread_mutex_lock(&n->mu); /* a worker waiting on the other may be waiting for this */
            pthread_cond_broadcast(&n->cv);
            pthread_mutex_unlock(&n->mu);
            break;
        case SPES_NODE_ACT_ABORT_CALLS:
            if (n->cc)
                spes_net_client_abort_calls(n->cc);
            break;
        case SPES_NODE_ACT_RELEASE:
            if (spes_blob_delete(n->blobs, a.hash) != 0)
                log_debug("blob not deleted: %s", spes_errmsg());
            break;
        case SPES_NODE_ACT_VALIDATED:
            if (n->d->coord)
                spes_coord_validated(n->d->coord, a.job->u.validate.round, a.job->u.validate.n,
                                     a.job->u.validate.ok, a.job->u.validate.reasons);
            break;
        case SPES_NODE_ACT_LOG: say(a.level, a.text); break;
        case SPES_NODE_ACT_STOPPED:
            spes_node_action_fini(&a);
            n->draining = 0;
            spes_daemon_stopped(n->d); /* closes the loop's handles; nothing of the node runs after */
            return;
        default: break;
        }
        spes_node_action_fini(&a);
    }
    n->draining = 0;
    keep_refresh(n, NULL);
}

int spes_node_validate(spes_node *n, uint64_t round, int count, const uint8_t (*hashes)[32],
                       const uint8_t (*manifests)[32], const char **urls, const char **names,
                       const uint32_t *ids, const uint8_t *cols)
{
    int rc = spes_node_sm_validate(&n->sm, round, count, hashes, manifests, urls, names, ids, cols, &n->out);
    drain(n);
    return rc;
}

/* ---- what the daemon observes of the machine (docs/counters.md, docs/operations.md) ---- */

static void hook_heartbeat(void *arg, Spes__Wire__Heartbeat *h, Spes__Wire__NodeCounters *w)
{
    (void)arg;
    spes_counters_heartbeat(h, w);
}

static void hook_heartbeat_reply(void *arg, int type, const ProtobufCMessage *msg)
{
    (void)arg;
    spes_counters_heartbeat_reply(type, msg); /* an older coordinator refuses the counters */
}

static void hook_commit(void *arg, const Spes__Wire__Commit *cm, uint32_t self)
{
    (void)arg;
    spes_counters_commit_seen(cm, self);
}

static void hook_applied(void *arg, uint64_t round, double train_s, double wait_s)
{
    spes_node *n = arg;
    spes_dmetrics_round_applied(n->d->metrics, round, train_s, wait_s);
}

/* ---- lifecycle ---- */

int spes_node_alloc(spes_node **out, spes_daemon *d)
{
    spes_node *n = calloc(1, sizeof *n);
    if (!n)
        return SPES_ENOMEM;
    n->d = d;
    pthread_mutex_init(&n->mu, NULL);
    pthread_mutex_init(&n->keep_mu, NULL);
    pthread_cond_init(&n->cv, NULL);
    n->base_round = -1;
    spes_node_opts o = {
        .name = d->cfg.name,
        .listen = d->cfg.advertise, /* what the others dial (Join), and never a fetch source */
        .coordinator = d->cfg.coordinator,
        .data = d->cfg.data,
        .threads = d->cfg.threads,
        .heartbeat_ms = d->cfg.heartbeat_ms,
        .commit_poll_ms = d->cfg.commit_poll_ms,
        .keep_blobs = d->cfg.keep_blobs,
        .hooks = {n, hook_heartbeat, hook_heartbeat_reply, hook_commit, hook_applied},
    };
    int rc = spes_node_sm_init(&n->sm, &o);
    snprintf(n->state_dir, sizeof n->state_dir, "%.500s/node", d->cfg.state_dir);
    char *bdir = rc ? NULL : spes_path_join(n->state_dir, "blobs");
    if (!rc)
        rc = bdir ? spes_mkdir_p(bdir, 0750) : SPES_ENOMEM;
    spes_blob_store_opts bo;
    memset(&bo, 0, sizeof bo);
    bo.max_bytes = (uint64_t)d->cfg.blob_quota_mb << 20; /* docs/security.md: the store's quota */
    bo.keep = keep_blob;                                 /* never what a round still needs */
    bo.keep_arg = n;
    if (!rc)
        rc = spes_blob_store_open(&n->blobs, bdir, &bo);
    free(bdir);
    spes_net_client_opts co;
    memset(&co, 0, sizeof co);
    co.url = d->cfg.coordinator[0] ? d->cfg.coordinator : d->cfg.listen;
    /* the coordinator's certificate name is pinned: our own name when we coordinate (docs/security.md) */
    co.peer_name = !d->cfg.coordinator[0]       ? d->cfg.name
                   : d->cfg.coordinator_name[0] ? d->cfg.coordinator_name
                                                : NULL;
    if (!d->cfg.plain && co.peer_name)
        log_info("coordinator pinned: %s at %s", co.peer_name, co.url);
    else if (!d->cfg.plain)
        log_warnx("coordinator_name is empty: any node certificate of the run is accepted as the coordinator "
                  "at %s; set coordinator_name to pin it (docs/operations.md)",
                  co.url);
    co.tls = d->tls;
    co.plain = d->cfg.plain;
    co.max_msg = 64u << 20;
    if (!rc)
        rc = spes_net_client_open(&n->cc, &co);
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
    if (pthread_create(&n->th_train, NULL, train_worker_main, n) != 0)
        return spes_errf(SPES_ENOMEM, "cannot start the training thread");
    n->th_started = 2;
    return 0;
}

void spes_node_tick(spes_node *n)
{
    take_progress(n);
    spes_node_sm_tick(&n->sm, spes_mono_ms(), &n->out);
    drain(n);
}

void spes_node_stop(spes_node *n)
{
    spes_node_sm_stop(&n->sm, &n->out);
    drain(n);
}

void spes_node_free(spes_node *n)
{
    if (!n)
        return;
    if (n->th_started) {
        pthread_mutex_lock(&n->mu);
        n->quit = 1;
        pthread_cond_broadcast(&n->cv);
        pthread_mutex_unlock(&n->mu);
        pthread_join(n->th, NULL);
        if (n->th_started > 1)
            pthread_join(n->th_train, NULL);
    }
    for (node_task **q = &n->jobs; q; q = q == &n->jobs ? &n->tjobs : NULL)
        while (*q) {
            node_task *t = *q;
            *q = t->next;
            spes_node_job_free(t->job);
            free(t->out);
            free(t);
        }
    if (n->cc)
        spes_net_client_close(n->cc);
    if (n->blobs)
        spes_blob_store_close(n->blobs);
    if (n->have_trainer)
        spes_trainer_fini(&n->tr);
    free(n->base);
    free(n->ef_shards);
    free(n->xstart);
    if (n->have_lo)
        spes_layout_fini(&n->lo);
    free(n->norms);
    spes_resid_fini(&n->ef);
    free(n->keep);
    pthread_mutex_destroy(&n->keep_mu);
    spes_outer_fini(&n->outer);
    spes_node_out_fini(&n->out);
    spes_node_sm_fini(&n->sm);
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
    pthread_mutex_lock(&n->mu);
    *loss = n->prog_loss;
    *tps = n->prog_tps;
    pthread_mutex_unlock(&n->mu);
    *round = n->sm.round;
    *step = n->sm.step;
}

/* ---- status requests relayed to the coordinator ---- */

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
        spes_daemon_reply_error(f->reply, f->ctx, f->rc, SPES_MSG_STATUS_REQUEST,
                                "coordinator unreachable: %s", spes_strerror(f->rc));
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
    if (spes_net_call_async(n->cc, data, len, SPES_NODE_CALL_TIMEOUT_MS, fwd_back, f) != 0) {
        spes_daemon_reply_error(reply, ctx, SPES_ENET, SPES_MSG_STATUS_REQUEST,
                                "cannot reach the coordinator: %s", spes_errmsg());
        free(f);
    }
}
