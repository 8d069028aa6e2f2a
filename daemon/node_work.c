/* node_work.c: the node's worker thread jobs (src/node/node.h's
 * spes_node_job): prepare the agreed state, train a round, apply a commit
 * (fetch, aggregate, merge, digest, persist), and check contributions for the
 * coordinator. Runs off the loop; touches only the job and the [worker]
 * fields of node_priv.h, reads the [once] ones, and never the daemon's
 * tables or the protocol state. */
#include "checkpoint/checkpoint.h"
#include "checkpoint/outer_file.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"
#include "core/sha256.h"
#include "daemon/counters.h"
#include "daemon/dmetrics.h"
#include "daemon/node_priv.h"
#include "merge/merge.h"
#include "sync/outer.h"
#include "sync/overlap.h"
#include "sync/resid.h"
#include "sync/robust.h"
#include "sync/sync.h"

#include <math.h>
#include <stdint.h>
#include <dirent.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_DELTA NODE_MAX_DELTA
#define SCALED_FAULT 1000.0f /* the "scaled" test fault multiplies each delta by this (within MAX_DELTA) */
#define SCALED_LATE_ROUND 4  /* "scaled-late" is honest before this round, "scaled" from it on */
#define LATE_FAULT_ROUND 3   /* "late" holds its contributions from this round on back ... */
#define LATE_FAULT_MS 4000   /* ... this long after training (past a test run's round deadline) */

static int fail(spes_node_job *j, int rc)
{
    j->rc = rc;
    snprintf(j->err, sizeof j->err, "%s", spes_errmsg());
    return rc;
}

/* ---- how the two workers share the model (docs/design.md, "Overlap") ----
 * The training worker owns the trainer (params, AdamW moments) while it is
 * train_busy; the sync worker builds S_{r+1} beside it and, to save the
 * trainer's state with it, asks it to pause between steps (pause_req). base
 * and the residual belong to the sync worker except while the training worker
 * holds base_busy (rebasing its progress onto S_round and encoding it), and a
 * rebase waits until base holds S_round (base_round). */

static int cancelled(spes_node *n)
{
    return atomic_load(&n->cancel) || atomic_load(&n->cancel_train);
}

/* clear sets a flag under mu to 0 and wakes whoever waits on it. */
static void clear(spes_node *n, int *flag)
{
    pthread_mutex_lock(&n->mu);
    *flag = 0;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

/* train_enter marks the trainer busy once no pause is asked for; -1, not
 * busy, when the job is cancelled meanwhile (training worker). */
static int train_enter(spes_node *n)
{
    pthread_mutex_lock(&n->mu);
    while (n->pause_req && !cancelled(n) && !n->quit)
        pthread_cond_wait(&n->cv, &n->mu);
    int ok = !n->pause_req;
    n->train_busy = ok;
    pthread_mutex_unlock(&n->mu);
    return ok ? 0 : -1;
}

/* train_leave marks the trainer still (training worker). */
static void train_leave(spes_node *n)
{
    clear(n, &n->train_busy);
}

/* train_yield pauses between two steps while the sync worker saves the
 * trainer, adding the pause to *paused_s; -1 (not busy) when the job is
 * cancelled meanwhile (training worker). */
static int train_yield(spes_node *n, double *paused_s)
{
    pthread_mutex_lock(&n->mu);
    int asked = n->pause_req;
    pthread_mutex_unlock(&n->mu);
    if (!asked)
        return 0;
    double t0 = spes_mono_s();
    train_leave(n);
    int rc = train_enter(n);
    *paused_s += spes_mono_s() - t0;
    return rc;
}

/* trainer_hold waits until the trainer is still and keeps it so until trainer_release (sync worker). */
static void trainer_hold(spes_node *n)
{
    pthread_mutex_lock(&n->mu);
    n->pause_req = 1;
    while (n->train_busy)
        pthread_cond_wait(&n->cv, &n->mu);
    pthread_mutex_unlock(&n->mu);
}

static void trainer_release(spes_node *n)
{
    clear(n, &n->pause_req);
}

/* base_take waits until the training worker is done with base and marks base
 * as changing: no rebase starts until base_publish names its new round (sync worker). */
static void base_take(spes_node *n)
{
    pthread_mutex_lock(&n->mu);
    while (n->base_busy)
        pthread_cond_wait(&n->cv, &n->mu);
    n->base_round = -1;
    pthread_mutex_unlock(&n->mu);
}

static void base_publish(spes_node *n, int64_t round)
{
    pthread_mutex_lock(&n->mu);
    n->base_round = round;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

/* base_use waits until base holds S_round and holds it for the training
 * worker's rebase and encoding (until base_done); -1 when the round moved on
 * or the job is cancelled. */
static int base_use(spes_node *n, int64_t round)
{
    pthread_mutex_lock(&n->mu);
    while (n->base_round < round && !cancelled(n) && !n->quit) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L; /* the cancel flags are set without the lock: look again soon */
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&n->cv, &n->mu, &ts);
    }
    int ok = n->base_round == round && !cancelled(n) && !n->quit;
    if (ok)
        n->base_busy = 1;
    pthread_mutex_unlock(&n->mu);
    return ok ? 0 : -1;
}

static void base_done(spes_node *n)
{
    clear(n, &n->base_busy);
}

/* base_try is base_use without waiting: 0 (base held) only if base holds S_round now. */
static int base_try(spes_node *n, int64_t round)
{
    pthread_mutex_lock(&n->mu);
    int ok = n->base_round == round && !n->base_busy;
    if (ok)
        n->base_busy = 1;
    pthread_mutex_unlock(&n->mu);
    return ok ? 0 : -1;
}

/* carries gives the weights of `stale` of a round's `steps` steps at the rebase:
 * c[0] for the shared block (the mean of `members` contributions), c[1] for the
 * columns (of min(column_owners, members)), from the run's overlap_carry
 * (sync/overlap.h; docs/design.md, "Overlap", says why). */
static void carries(const spes_node *n, int members, int stale, int steps, double c[2])
{
    const spes_spes_config *s = &n->sm.run.spes;
    int owners = members > 0 && s->column_owners > members ? members : s->column_owners;
    c[0] = spes_overlap_carry_of(s->overlap_carry, stale, steps, members);
    c[1] = spes_overlap_carry_of(s->overlap_carry, stale, steps, members > 0 ? owners : 0);
}

/* rebase moves the progress made since xstart onto the agreed state in base
 * (base held): params = base + c (params - xstart), with the weights c of
 * carries, one for the shared block and one for the columns. */
static void rebase(spes_node *n, const double c[2])
{
    size_t at[3] = {0, n->lo.shared_numel, n->lo.total_numel};
    for (int g = 0; g < 2; g++) {
        float *p = n->tr.model->params + at[g];
        size_t len = at[g + 1] - at[g];
        spes_overlap_rebase(p, n->base + at[g], n->xstart + at[g], len, (float)c[g]);
    }
}

/* outer_ready readies the outer optimizer for the run (the momentum buffer
 * when outer_momentum != 0; see docs/convergence.md); zero: zero it. */
static int outer_ready(spes_node *n, int zero)
{
    int rc =
        spes_outer_init(&n->outer, n->sm.run.spes.outer_lr, n->sm.run.spes.outer_momentum, n->lo.total_numel);
    if (!rc && zero && n->outer.mom)
        memset(n->outer.mom, 0, n->lo.total_numel * sizeof(float));
    return rc;
}

/* ef_ready gives a q8ef or topk run its error-feedback residual (docs/design.md, "Codecs"); zero: zero it. */
static int ef_ready(spes_node *n, int zero)
{
    spes_codec codec = spes_codec_from_name(n->sm.run.spes.codec);
    if (codec != SPES_CODEC_Q8EF && codec != SPES_CODEC_TOPK)
        return 0;
    if (!n->have_ef) {
        int rc = spes_resid_init(&n->ef, &n->lo, n->sm.E);
        if (rc)
            return rc;
        n->have_ef = 1;
    }
    if (zero)
        spes_resid_zero(&n->ef);
    n->ef_round = -1;
    return 0;
}

/* ef_load restores the residual saved in dir with the state of round R (zero if there is none). */
static int ef_load(spes_node *n, const char *dir, uint64_t R)
{
    int rc = ef_ready(n, 1);
    if (rc || !n->have_ef)
        return rc;
    const spes_layout *lo = &n->lo;
    float *v = NULL;
    size_t numel = 0;
    rc =
        spes_resid_load(dir, n->sm.E, lo->shared_numel, lo->column_numel, (int64_t)R, n->ef.cols, &v, &numel);
    if (rc) {
        log_warnx("no error-feedback residual of round %llu in %s (%s): starting from zero",
                  (unsigned long long)R, dir, spes_errmsg());
        memset(n->ef.cols, 0, (size_t)n->sm.E);
        n->ef.ncols = 0;
        spes_resid_zero(&n->ef); /* the shared block's */
        return 0;
    }
    free(n->ef.val);
    n->ef.val = v;
    n->ef.ncols = (int)((numel - lo->shared_numel) / (lo->column_numel ? lo->column_numel : 1));
    return 0;
}

/* state_digest is the digest of the node's params (and outer momentum, if the run keeps one) at round R. */
static int state_digest(spes_node *n, const float *p, int64_t R, uint8_t out[32])
{
    return spes_state_digest2(p, spes_outer_has_state(&n->outer) ? n->outer.mom : NULL, n->lo.total_numel, R,
                              out);
}

/* open_trainer builds the trainer for columns cols with params from base (if given). */
static int open_trainer(spes_node *n, const uint8_t *cols, uint32_t id)
{
    spes_trainer old = n->tr;
    int had = n->have_trainer;
    int rc = spes_trainer_init(&n->tr, &n->sm.run, cols, n->d->cfg.threads);
    if (rc) {
        n->tr = old;
        return rc;
    }
    if ((rc = spes_trainer_open_data(&n->tr, (int)(id % (uint32_t)n->d->cfg.data_parts),
                                     n->d->cfg.data_parts))) {
        spes_trainer_fini(&n->tr);
        n->tr = old;
        return rc;
    }
    n->have_trainer = 1;
    if (!had)
        return 0;
    /* keep AdamW moments of the shared block and of columns still trained */
    const spes_layout *lo = &old.model->layout;
    memcpy(n->tr.opt.m, old.opt.m, lo->shared_numel * sizeof(float));
    memcpy(n->tr.opt.v, old.opt.v, lo->shared_numel * sizeof(float));
    n->tr.opt.t = old.opt.t;
    for (int e = 0; e < n->sm.E; e++) {
        float *src_m = NULL, *src_v = NULL, *dst_m = NULL, *dst_v = NULL;
        for (int s = 1; s < old.nseg; s++)
            if (old.seg[s].param_off == lo->shared_numel + (size_t)e * lo->column_numel) {
                src_m = old.opt.m + old.seg[s].grad_off;
                src_v = old.opt.v + old.seg[s].grad_off;
            }
        for (int s = 1; s < n->tr.nseg; s++)
            if (n->tr.seg[s].param_off == lo->shared_numel + (size_t)e * lo->column_numel) {
                dst_m = n->tr.opt.m + n->tr.seg[s].grad_off;
                dst_v = n->tr.opt.v + n->tr.seg[s].grad_off;
            }
        if (src_m && dst_m) {
            memcpy(dst_m, src_m, lo->column_numel * sizeof(float));
            memcpy(dst_v, src_v, lo->column_numel * sizeof(float));
        }
    }
    spes_trainer_fini(&old);
    return 0;
}

static int same_cols(spes_node *n, const uint8_t *cols)
{
    return n->have_trainer && memcmp(n->tr.model->trained, cols, (size_t)n->sm.E) == 0;
}

static int ensure_base(spes_node *n)
{
    if (!n->base)
        n->base = malloc(n->lo.total_numel * sizeof(float));
    return n->base ? 0 : SPES_ENOMEM;
}

static int load_local_dir(spes_node *n, const char *dir, uint64_t R, const uint8_t *H, uint32_t id);
static int load_checkpoint_for(spes_node *n, uint64_t R, const uint8_t *H, uint32_t id);

/* load_local tries the node's own persisted state for round R with digest H. */
static int load_local(spes_node *n, uint64_t R, const uint8_t *H, uint32_t id)
{
    char *dir = spes_path_join(n->state_dir, "state");
    if (!dir)
        return SPES_ENOMEM;
    int rc = load_local_dir(n, dir, R, H, id);
    free(dir);
    return rc;
}

static int load_local_dir(spes_node *n, const char *dir, uint64_t R, const uint8_t *H, uint32_t id)
{
    spes_ckpt meta;
    spes_ckpt_reader *r;
    int rc = spes_ckpt_reader_open(&r, dir, &meta);
    if (rc)
        return rc;
    spes_ckpt_reader_close(r);
    rc = (uint64_t)meta.round == R && meta.E == n->sm.E ? 0 : SPES_ESTATE;
    if (!rc && !same_cols(n, meta.trained))
        rc = open_trainer(n, meta.trained, id);
    if (!rc)
        rc = spes_trainer_load(&n->tr, dir);
    spes_ckpt_fini(&meta);
    if (!rc && (rc = outer_ready(n, 1)) == 0 && n->outer.mom &&
        spes_outer_load(dir, n->outer.mom, n->lo.total_numel, (int64_t)R) != 0)
        memset(n->outer.mom, 0, n->lo.total_numel * sizeof(float)); /* no file: the digest decides */
    if (!rc)
        rc = ef_load(n, dir, R);
    uint8_t dg[32];
    if (!rc && (rc = state_digest(n, n->tr.model->params, (int64_t)R, dg)) == 0 && memcmp(dg, H, 32))
        rc = spes_errf(SPES_ESTATE, "local state of round %llu differs from the agreed one",
                       (unsigned long long)R);
    return rc;
}

/* load_blob reads a state blob (SPESSTATE1 | round | numel | params, or
 * SPESSTATE2 with the outer momentum after the params) into the trainer. */
static int load_blob(spes_node *n, const uint8_t *H, uint64_t R)
{
    char path[1024];
    int rc = spes_blob_path(n->blobs, H, path, sizeof path);
    char *buf = NULL;
    size_t len = 0;
    if (!rc)
        rc = spes_read_file(path, (size_t)1 << 40, &buf, &len);
    if (!rc && (rc = outer_ready(n, 1)) == 0 && (rc = ef_ready(n, 1)) == 0)
        rc = spes_state_blob_parse((const uint8_t *)buf, len, n->lo.total_numel, R, n->tr.model->params,
                                   spes_outer_has_state(&n->outer) ? n->outer.mom : NULL, path);
    free(buf);
    return rc;
}

/* peers_of lists whom to ask for a blob, into p (returns the count): with an
 * author (first >= 0), the author, then the coordinator (nobody else holds a
 * fresh contribution); without one, every peer of the job. */
static int peers_of(const spes_node_job *j, spes_blob_peer *p, int first)
{
    int k = 0;
    if (first >= 0)
        p[k++] = (spes_blob_peer){.url = j->peers[first].url,
                                  .name = j->peers[first].name[0] ? j->peers[first].name : NULL};
    for (int i = 0; i < j->npeers; i++)
        if (i != first && (first < 0 || j->peers[i].is_coord))
            p[k++] = (spes_blob_peer){.url = j->peers[i].url,
                                      .name = j->peers[i].name[0] ? j->peers[i].name : NULL};
    return k;
}

/* fetch gets a blob from peers_of's peers. manifest pins the blob's manifest
 * (and so its size); max_size bounds what a peer may claim (0: the largest
 * contribution of the model). Received bytes are counted in j->bytes_in. */
static int fetch(spes_node *n, spes_node_job *j, const uint8_t *hash, int first, const uint8_t *manifest,
                 uint64_t max_size)
{
    if (spes_blob_has(n->blobs, hash))
        return 0;
    spes_blob_peer *peers = calloc((size_t)j->npeers + 1, sizeof *peers);
    if (!peers)
        return SPES_ENOMEM;
    int npeers = peers_of(j, peers, first);
    spes_blob_fetch_opts o;
    memset(&o, 0, sizeof o);
    o.tls = n->d->tls;
    o.plain = n->d->cfg.plain;
    o.cancel = &n->cancel;
    o.manifest_hash = manifest;
    o.max_size = max_size || !n->have_lo ? max_size : spes_contrib_max_size(&n->lo, n->sm.E);
    int rc = spes_blob_fetch(n->blobs, hash, peers, npeers, &o, NULL);
    free(peers);
    char path[1024];
    struct stat st;
    if (!rc && spes_blob_path(n->blobs, hash, path, sizeof path) == 0 && stat(path, &st) == 0)
        j->bytes_in += (uint64_t)st.st_size;
    return rc;
}

int node_fetch_blob(spes_node *n, spes_node_job *j, const uint8_t *hash, int first, const uint8_t *manifest,
                    uint64_t max_size)
{
    return fetch(n, j, hash, first, manifest, max_size);
}

int node_job_fail(spes_node_job *j, int rc)
{
    return fail(j, rc);
}

static int job_prepare(spes_node *n, spes_node_job *j)
{
    const spes_node_job_prepare *p = &j->u.prepare;
    int rc = 0;
    char cache[700];
    snprintf(cache, sizeof cache, "%.600s/data", n->state_dir);
    if ((rc = spes_data_fetch_urls(&n->sm.run, cache, (const volatile int *)&n->cancel)) != 0)
        return fail(j, rc);
    if (n->have_trainer && p->have_held && p->held_round == p->round && !memcmp(p->held_hash, p->hash, 32))
        return 0;
    uint8_t *all = malloc((size_t)n->sm.E);
    if (!all)
        return fail(j, SPES_ENOMEM);
    memset(all, 1, (size_t)n->sm.E);
    if (load_local(n, p->round, p->hash, j->node_id) == 0) {
        log_info("resuming from the local state of round %llu", (unsigned long long)p->round);
    } else if (load_checkpoint_for(n, p->round, p->hash, j->node_id) == 0) {
        log_info("restoring the checkpoint of round %llu with this node's optimizer state",
                 (unsigned long long)p->round);
    } else if (!n->have_trainer && (rc = open_trainer(n, all, j->node_id)) != 0) {
        free(all);
        return fail(j, rc);
    } else if (p->round == 0) {
        spes_model_init_weights(n->tr.model, (uint64_t)n->sm.run.train.seed);
        if ((rc = outer_ready(n, 1)) == 0)
            rc = ef_ready(n, 1);
    } else {
        log_info("fetching the agreed state of round %llu from %d peer(s)", (unsigned long long)p->round,
                 j->npeers);
        uint64_t state_size = spes_state_blob_size(n->lo.total_numel, n->sm.run.spes.outer_momentum != 0);
        double t0 = spes_mono_s();
        if ((rc = fetch(n, j, p->hash, -1, NULL, state_size)) != 0 ||
            (rc = load_blob(n, p->hash, p->round)) != 0) {
            free(all);
            return fail(j, rc);
        }
        double dt = spes_mono_s() - t0;
        log_info("agreed state of round %llu in hand: %.1f MB in %.1f s (%.1f Mbit/s)",
                 (unsigned long long)p->round, (double)state_size / 1e6, dt,
                 dt > 0 ? (double)state_size * 8 / 1e6 / dt : 0.0);
    }
    free(all);
    uint8_t dg[32];
    if (rc || (rc = state_digest(n, n->tr.model->params, (int64_t)p->round, dg)))
        return fail(j, rc);
    if (memcmp(dg, p->hash, 32))
        return fail(j, spes_errf(SPES_ESTATE,
                                 "the state of round %llu here does not match the run's digest "
                                 "(different run config or seed?)",
                                 (unsigned long long)p->round));
    if ((rc = ensure_base(n)) != 0)
        return fail(j, rc);
    memcpy(n->base, n->tr.model->params, n->lo.total_numel * sizeof(float));
    return 0;
}

static int put_state(spes_node *n, const float *params, uint64_t round, uint8_t out[32])
{
    return spes_node_put_state_outer(n, params, spes_outer_has_state(&n->outer) ? n->outer.mom : NULL,
                                     n->lo.total_numel, round, out);
}

int spes_node_put_state(spes_node *n, const float *params, size_t total, uint64_t round, uint8_t out[32])
{
    return spes_node_put_state_outer(n, params, NULL, total, round, out);
}

int spes_node_put_state_outer(spes_node *n, const float *params, const float *mom, size_t total,
                              uint64_t round, uint8_t out[32])
{
    uint8_t *buf;
    size_t len;
    int rc = spes_state_blob_make(params, mom, total, round, &buf, &len);
    if (rc)
        return rc;
    rc = spes_blob_put(n->blobs, buf, len, out);
    free(buf);
    return rc;
}

/* train_steps trains sync_interval steps of round t: from S_round, or
 * overlapped from the node's own parameters (kept in xstart), rebased onto
 * S_round as soon as it arrives: params = S_round + (params - xstart), at the
 * first step boundary that finds it held, else after the last step (waiting
 * for it). Either way the round's progress is what its contribution carries,
 * and the steps after the rebase train on the fresh state (docs/design.md,
 * "Overlap"). On success it holds base (base_use) for the encoding that follows. */
static int train_steps(spes_node *n, spes_node_job *j, double *loss_sum)
{
    spes_node_job_train *t = &j->u.train;
    const spes_run_config *run = &n->sm.run;
    size_t total = n->lo.total_numel;
    int rc = 0;
    if (train_enter(n) != 0)
        return fail(j, spes_errf(SPES_EINTR, "round abandoned"));
    if (t->overlap &&
        !same_cols(n, t->cols)) { /* the machine never asks this: the progress is in the trainer */
        train_leave(n);
        return fail(j, spes_errf(SPES_ESTATE, "round %llu: an overlapped round on other columns",
                                 (unsigned long long)t->round));
    }
    if (!same_cols(n, t->cols) && (rc = open_trainer(n, t->cols, j->node_id)) != 0) {
        train_leave(n);
        return fail(j, rc);
    }
    float *p = n->tr.model->params;
    if (t->overlap) {
        if (!n->xstart && !(n->xstart = malloc(total * sizeof(float)))) {
            train_leave(n);
            return fail(j, SPES_ENOMEM);
        }
        memcpy(n->xstart, p, total * sizeof(float));
    } else {
        memcpy(p, n->base, total * sizeof(float)); /* nothing changes base while no round travels */
    }
    n->tr.step = (int64_t)t->step;
    n->tr.round = (int64_t)t->round;
    int steps = run->spes.sync_interval, rebased = !t->overlap, rebased_at = steps;
    double carry[2] = {1, 1};
    spes_counters_train_begin(); /* training time (docs/counters.md): the steps, not the wait for S_round */
    double step_s[2] = {0, 0};   /* seconds of steps without and with a sync job running beside them */
    double paused_s = 0;         /* seconds paused while the sync worker saved the trainer */
    int nstep[2] = {0, 0};
    for (int done = 0; !rc && done < steps; done++) {
        if (cancelled(n)) {
            rc = spes_errf(SPES_EINTR, "round abandoned");
            break;
        }
        if (train_yield(n, &paused_s) != 0) {
            spes_counters_train_end();
            return fail(j, spes_errf(SPES_EINTR, "round abandoned"));
        }
        if (!rebased && base_try(n, (int64_t)t->round) == 0) {
            carries(n, t->members, done, steps, carry);
            rebase(n, carry);
            base_done(n);
            rebased = 1;
            rebased_at = done;
        }
        spes_step_stats st;
        pthread_mutex_lock(&n->mu);
        int beside = n->running != NULL;
        pthread_mutex_unlock(&n->mu);
        if ((rc = spes_trainer_step(&n->tr, &st)) != 0)
            break;
        step_s[beside] += st.seconds;
        nstep[beside]++;
        spes_dmetrics_note_routing(n->d->metrics, n->tr.model); /* router load per expert */
        *loss_sum += st.loss;
        n->loss = st.loss;
        n->tps = (double)run->train.batch_size * run->train.seq_len / st.seconds;
        node_publish_progress(n);
        printf("step %lld loss %.9g\n", (long long)st.step, st.loss);
        fflush(stdout);
    }
    spes_counters_train_end();
    train_leave(n);
    if (rc)
        return fail(j, rc);
    /* what a sync beside the steps costs them (docs/benchmarks.md, "Overlap") */
    char when[128] = "";
    if (t->overlap && !rebased)
        carries(n, t->members, steps, steps, carry);
    if (t->overlap && rebased)
        snprintf(when, sizeof when,
                 "; rebased onto S_%llu after %d step(s), carried at %.3f (shared), %.3f (columns)",
                 (unsigned long long)t->round, rebased_at, carry[0], carry[1]);
    else if (t->overlap)
        snprintf(when, sizeof when,
                 "; rebased onto S_%llu after the last step, carried at %.3f (shared), %.3f (columns)",
                 (unsigned long long)t->round, carry[0], carry[1]);
    log_info(
        "round %llu: %d steps in %.2f s: %.1f ms a step, %.1f ms over %d with a sync job running beside, "
        "paused %.1f ms for the state's write%s",
        (unsigned long long)t->round, steps, step_s[0] + step_s[1], 1e3 * (step_s[0] + step_s[1]) / steps,
        nstep[1] ? 1e3 * step_s[1] / nstep[1] : 0.0, nstep[1], 1e3 * paused_s, when);
    if (base_use(n, (int64_t)t->round) != 0)
        return fail(j, spes_errf(SPES_EINTR, "round %llu: the run went on without this node's round",
                                 (unsigned long long)t->round));
    if (!rebased)
        rebase(n, carry); /* S_round came after the last step: the weights of the log line */
    return 0;
}

/* push_contribution hands this node's contribution to the coordinator, which serves it to the
 * others: nobody can dial a node with no listen URL (docs/design.md, "Reachability"). */
static int push_contribution(spes_node *n, const uint8_t hash[32], uint64_t round)
{
    spes_blob_peer to = {.url = n->d->cfg.coordinator,
                         .name = n->d->cfg.coordinator_name[0] ? n->d->cfg.coordinator_name : NULL};
    spes_blob_push_opts o = {.tls = n->d->tls, .plain = n->d->cfg.plain, .cancel = &n->cancel};
    spes_blob_push_result r;
    uint64_t t0 = spes_mono_ms();
    int rc = spes_blob_push(n->blobs, hash, &to, &o, &r);
    if (rc)
        return spes_errf(rc, "round %llu: cannot push the contribution to the coordinator: %s",
                         (unsigned long long)round, spes_errmsg());
    log_info("round %llu: contribution pushed to the coordinator (%llu bytes in %.2f s%s)",
             (unsigned long long)round, (unsigned long long)r.bytes, (double)(spes_mono_ms() - t0) / 1e3,
             r.held ? ", it held it already" : "");
    return 0;
}

static int job_train(spes_node *n, spes_node_job *j)
{
    spes_node_job_train *t = &j->u.train;
    const spes_run_config *run = &n->sm.run;
    double sum = 0;
    int rc = train_steps(n, j, &sum);
    if (rc)
        return rc;
    rc = 0;
    int steps = run->spes.sync_interval;
    spes_contrib c;
    t->tokens = (uint64_t)steps * (uint64_t)run->train.batch_size * (uint64_t)run->train.seq_len;
    t->loss_mean = sum / steps;
    /* fault injection for tests: a contribution that claims another node's id, or every column */
    int32_t author = (int32_t)j->node_id + (!strcmp(n->d->cfg.fault, "other-node") ? 1 : 0);
    uint8_t *all = !strcmp(n->d->cfg.fault, "all-columns") ? malloc((size_t)n->sm.E) : NULL;
    if (all)
        memset(all, 1, (size_t)n->sm.E);
    rc = spes_contrib_make(&c, &n->lo, n->sm.E, all ? all : t->cols, n->tr.model->params, (int64_t)t->round,
                           author, t->tokens, (float)t->loss_mean);
    free(all);
    if (rc) {
        base_done(n);
        return fail(j, rc);
    }
    if (!strcmp(n->d->cfg.fault, "nan")) {
        c.val[0] = NAN; /* fault injection for tests: a poisoned contribution */
        log_warnx("fault injection: contribution of round %llu carries a NaN", (unsigned long long)t->round);
    }
    if (!strcmp(n->d->cfg.fault, "scaled") ||
        (!strcmp(n->d->cfg.fault, "scaled-late") && t->round >= SCALED_LATE_ROUND)) {
        /* fault injection for tests: every delta (shared block and columns) times SCALED_FAULT, kept
         * within the per-value bound so that only the norm bound or robust aggregation stop it */
        for (int g = -1; g < c.ncols; g++) {
            size_t at = g < 0 ? 0 : c.shared_numel + (size_t)c.cols[g] * c.column_numel;
            float *val = c.val + (g < 0 ? 0 : c.shared_numel + (size_t)g * c.column_numel);
            for (size_t i = 0; i < (g < 0 ? c.shared_numel : c.column_numel); i++) {
                float d = (val[i] - n->base[at + i]) * SCALED_FAULT;
                val[i] = n->base[at + i] + fminf(fmaxf(d, -0.5f * MAX_DELTA), 0.5f * MAX_DELTA);
            }
        }
        log_warnx("fault injection: contribution of round %llu has its deltas scaled by %g",
                  (unsigned long long)t->round, (double)SCALED_FAULT);
    }
    uint8_t *buf;
    size_t len;
    spes_codec codec = spes_codec_from_name(run->spes.codec);
    if ((rc = ef_ready(n, 0)) == 0 && n->have_ef) {
        /* the residual follows the contribution's columns: one dealt to this node starts at zero */
        uint8_t *carried = calloc((size_t)n->sm.E, 1);
        for (int k = 0; carried && k < c.ncols; k++)
            carried[c.cols[k]] = 1;
        rc = carried ? spes_resid_hold(&n->ef, carried) : SPES_ENOMEM;
        free(carried);
    }
    if (rc) {
        spes_contrib_fini(&c);
        base_done(n);
        return fail(j, rc);
    }
    double cap = n->have_ef ? 2.0 * spes_contrib_delta_norm(&c, n->base) : 0;
    if (run->spes.sharded) { /* the shared block goes as shards, to its aggregators; the columns below */
        int K = t->shards;
        if (!K) { /* trained ahead: the commit that made S_round dealt the round's shards */
            pthread_mutex_lock(&n->mu);
            K = n->base_shards;
            pthread_mutex_unlock(&n->mu);
        }
        rc = node_encode_shards(n, j, &c, (uint32_t)codec, K);
        c.columns_only = 1;
    }
    if (!rc)
        rc = spes_contrib_encode(&c, codec, n->base, n->have_ef ? n->ef.val : NULL, &buf, &len);
    spes_contrib_fini(&c);
    if (!rc && n->have_ef) {
        n->ef_round = (int64_t)t->round;
        n->ef_cap = cap;
    }
    base_done(n); /* base and the residual are the sync worker's again */
    if (rc)
        return fail(j, rc);
    rc = spes_blob_put(n->blobs, buf, len, t->blob);
    free(buf);
    if (!rc)
        node_keep_add(n, j, t->blob);
    if (!rc && !strcmp(n->d->cfg.fault, "late") && t->round >= LATE_FAULT_ROUND) {
        /* fault injection for tests: a valid contribution that comes after its round's deadline */
        log_warnx("fault injection: holding the contribution of round %llu back for %d ms",
                  (unsigned long long)t->round, LATE_FAULT_MS);
        struct timespec ts = {LATE_FAULT_MS / 1000, (LATE_FAULT_MS % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (!rc && n->have_ef)
        memcpy(n->ef_blob, t->blob, 32);
    if (!rc && spes_dconfig_outbound_only(&n->d->cfg))
        rc = push_contribution(n, t->blob, t->round);
    for (int s = 0; !rc && s < t->nshards && spes_dconfig_outbound_only(&n->d->cfg); s++)
        rc = push_contribution(n, t->shard[s].hash, t->round); /* its aggregators fetch them there */
    t->size = len;
    spes_manifest m;
    if (!rc && (rc = spes_blob_manifest_get(n->blobs, t->blob, &m)) == 0) {
        rc = spes_manifest_hash(&m, t->manifest);
        spes_manifest_fini(&m);
    }
    if (!rc && !strcmp(n->d->cfg.fault, "wrong-hash")) {
        t->blob[0] ^= 0xff; /* fault injection for tests: announce a hash nobody holds */
        log_warnx("fault injection: announcing a wrong hash for round %llu", (unsigned long long)t->round);
    }
    return rc ? fail(j, rc) : 0;
}

/* decode_blob reads and decodes a held contribution blob against the base; it must be in the run's codec. */
static int decode_blob(spes_node *n, const uint8_t *hash, const char *origin, spes_contrib *c)
{
    char path[1024];
    char *buf = NULL;
    size_t len = 0;
    int rc = spes_blob_path(n->blobs, hash, path, sizeof path);
    if (!rc)
        rc = spes_read_file(path, (size_t)1 << 40, &buf, &len);
    if (!rc)
        rc = spes_contrib_decode(c, (const uint8_t *)buf, len, &n->lo, n->sm.E, n->base, MAX_DELTA, origin);
    free(buf);
    if (!rc && c->codec != (uint32_t)spes_codec_from_name(n->sm.run.spes.codec)) {
        rc = spes_errf(SPES_EFORMAT, "%s: contribution in codec %u, the run's codec is %s", origin, c->codec,
                       n->sm.run.spes.codec);
        spes_contrib_fini(c);
    } else if (!rc && c->columns_only != (n->sm.run.spes.sharded != 0)) {
        rc = spes_errf(SPES_EFORMAT, "%s: a contribution %s the shared block; the run's rounds are %s",
                       origin, c->columns_only ? "without" : "with",
                       n->sm.run.spes.sharded ? "sharded" : "not sharded");
        spes_contrib_fini(c);
    }
    return rc;
}

static int author_index(const spes_node_job *j, uint32_t node)
{
    for (int i = 0; i < j->npeers; i++)
        if (j->peers[i].id == node)
            return i;
    return -1;
}

int node_author(const spes_node_job *j, uint32_t node)
{
    return author_index(j, node);
}

/* log_norms logs the spread of the round's delta norms (the largest over the median, per group) among
 * the contributions that passed the other checks: what the norm bound is measured against. */
static void log_norms(const spes_node_job_validate *v, const spes_delta_norms *nm, const int *ok)
{
    double sh[64], co[256], shmax = 0, comax = 0;
    int a = 0, b = 0;
    for (int k = 0; k < v->n && a < 64; k++)
        if (ok[k] && nm[k].col) {
            shmax = fmax(shmax, sh[a++] = nm[k].shared);
            for (int j = 0; j < nm[k].ncols && b < 256; j++)
                comax = fmax(comax, co[b++] = nm[k].col[j]);
        }
    if (a < 2)
        return;
    double shmed = spes_median(sh, a), comed = spes_median(co, b);
    log_info("round %llu: delta norms of %d contributions: shared median %.4g max %.4g (x%.3g), columns "
             "median %.4g max %.4g (x%.3g)",
             (unsigned long long)v->round, a, shmed, shmax, shmed > 0 ? shmax / shmed : 0.0, comed, comax,
             comed > 0 ? comax / comed : 0.0);
}

static int job_validate(spes_node *n, spes_node_job *j)
{
    spes_node_job_validate *v = &j->u.validate;
    double bound = n->sm.run.spes.norm_bound;
    /* the norm bound needs every contribution's delta norms: keep those, not the contributions */
    spes_delta_norms *nm = calloc((size_t)(v->n ? v->n : 1), sizeof *nm);
    int *held = calloc((size_t)(v->n ? v->n : 1), sizeof *held);
    int *was = malloc((size_t)(v->n ? v->n : 1) * sizeof *was);
    uint32_t *ids = malloc((size_t)(v->n ? v->n : 1) * sizeof *ids);
    for (int k = 0; (!nm || !held || !was || !ids) && k < v->n; k++) {
        v->ok[k] = 0;
        snprintf(v->reasons[k], sizeof v->reasons[k], "validation: out of memory");
    }
    if (!nm || !held || !was || !ids)
        goto done;
    for (int k = 0; k < v->n; k++) {
        spes_contrib c;
        held[k] =
            spes_blob_has(n->blobs, v->contribs[k].hash); /* a refused blob this check fetched is deleted */
        int r = fetch(n, j, v->contribs[k].hash, k, v->contribs[k].manifest, 0);
        if (!r && (r = decode_blob(n, v->contribs[k].hash, j->peers[k].name, &c)) == 0) {
            r = spes_contrib_check_author(&c, (int64_t)v->round, (int32_t)v->contribs[k].node,
                                          v->cols + (size_t)k * (size_t)v->E, v->E, j->peers[k].name);
            if (!r && bound > 0)
                r = spes_delta_norms_of(&nm[k], &c, n->base, &n->lo);
            spes_contrib_fini(&c);
        }
        if (r && !held[k])
            spes_blob_delete(n->blobs, v->contribs[k].hash);
        v->ok[k] = r == 0;
        if (r)
            snprintf(v->reasons[k], sizeof v->reasons[k], "%s", spes_errmsg());
    }
    memcpy(was, v->ok, (size_t)v->n * sizeof *was);
    log_norms(v, nm, was);
    for (int k = 0; k < v->n; k++)
        ids[k] = v->contribs[k].node;
    if (!n->norms && bound > 0 && !(n->norms = calloc(1, sizeof *n->norms)))
        log_warnx("round %llu: no memory for the norm history: the round's bound only",
                  (unsigned long long)v->round);
    if (spes_norm_bound_check(nm, v->n, bound, n->norms, v->round, ids, NULL, v->ok, &v->reasons[0][0],
                              sizeof v->reasons[0]) != 0)
        memcpy(v->ok, was, (size_t)v->n * sizeof *was); /* out of memory: no relative bound this round */
    if (n->norms && bound > 0 && spes_norm_history_add(n->norms, v->round, nm, ids, v->ok, v->n) != 0)
        log_warnx("round %llu: the norm history is not updated: %s", (unsigned long long)v->round,
                  spes_errmsg());
    for (int k = 0; k < v->n; k++)
        if (was[k] && !v->ok[k]) {
            log_warnx("round %llu: %s: %s", (unsigned long long)v->round, j->peers[k].name, v->reasons[k]);
            if (!held[k])
                spes_blob_delete(n->blobs, v->contribs[k].hash);
        }
done:
    for (int k = 0; nm && k < v->n; k++)
        spes_delta_norms_fini(&nm[k]);
    free(ids);
    free(was);
    free(nm);
    free(held);
    return 0;
}

/* settle_residual settles the residual of this node's contribution to the committed round (before
 * the base moves on): applied, refused, or left out (docs/design.md, "Codecs"). */
static void settle_residual(spes_node *n, const spes_node_job *j, const spes_node_job_apply *a)
{
    if (!n->have_ef || n->ef_round != (int64_t)a->round)
        return;
    n->ef_round = -1;
    spes_resid_outcome o = a->refused_self ? SPES_RESID_REFUSED : SPES_RESID_LEFT_OUT;
    for (int k = 0; k < a->ncontrib && o == SPES_RESID_LEFT_OUT; k++)
        if (a->contribs[k].node == j->node_id)
            o = SPES_RESID_APPLIED;
    if (o == SPES_RESID_APPLIED)
        return;
    const char *what = o == SPES_RESID_REFUSED ? "refused" : "left out";
    spes_contrib own;
    int have_own =
        o == SPES_RESID_LEFT_OUT && decode_blob(n, n->ef_blob, "this node's contribution", &own) == 0;
    if (have_own && own.columns_only && node_own_shards(n, &own) != 0) { /* and its shards */
        spes_contrib_fini(&own);
        have_own = 0;
    }
    int rc = o == SPES_RESID_LEFT_OUT && !have_own
                 ? SPES_EIO /* its own blob is gone: what it held cannot be recovered */
                 : spes_resid_settle(&n->ef, o, have_own ? &own : NULL, n->base, n->ef_cap);
    if (have_own)
        spes_contrib_fini(&own);
    if (rc) {
        log_warnx("round %llu: this node's contribution was %s; its residual is dropped (%s)",
                  (unsigned long long)a->round, what, spes_errmsg());
        spes_resid_zero(&n->ef);
        return;
    }
    log_info("round %llu: this node's contribution was %s; its residual is %s", (unsigned long long)a->round,
             what, o == SPES_RESID_REFUSED ? "dropped" : "kept");
}

static int job_apply(spes_node *n, spes_node_job *j)
{
    spes_node_job_apply *a = &j->u.apply;
    const spes_run_config *run = &n->sm.run;
    int rc = 0, k;
    size_t total = n->lo.total_numel;
    spes_contrib *cs = calloc((size_t)(a->ncontrib ? a->ncontrib : 1), sizeof *cs);
    const spes_contrib **cp = calloc((size_t)(a->ncontrib ? a->ncontrib : 1), sizeof *cp);
    if (!cs || !cp)
        rc = SPES_ENOMEM;
    for (k = 0; !rc && k < a->ncontrib; k++) {
        char origin[96];
        snprintf(origin, sizeof origin, "contribution of node %u", a->contribs[k].node);
        int first = author_index(j, a->contribs[k].node);
        if ((rc = fetch(n, j, a->contribs[k].hash, first, a->contribs[k].manifest, 0)) == 0 &&
            (rc = decode_blob(n, a->contribs[k].hash, origin, &cs[k])) == 0)
            cp[k] = &cs[k];
    }
    /* S_{r+1} is built in the trainer's working copy, or beside it while a round trains (overlap) */
    int overlap = run->spes.overlap;
    float *p = overlap ? malloc(total * sizeof(float)) : n->tr.model->params;
    float *mom_old = NULL; /* the outer momentum of S_r, put back if the apply fails */
    if (!rc && !p)
        rc = SPES_ENOMEM;
    if (!rc && (rc = outer_ready(n, 0)) == 0 && n->outer.mom && !(mom_old = malloc(total * sizeof(float))))
        rc = SPES_ENOMEM;
    if (!rc) {
        memcpy(p, n->base, total * sizeof(float));
        if (mom_old)
            memcpy(mom_old, n->outer.mom, total * sizeof(float));
        if (a->shards && a->ncontrib) /* sharded: the shared block is the aggregates' */
            rc = node_apply_aggregates(n, j, p);
    }
    if (!rc) {
        spes_agg g;
        if ((rc = spes_agg_from_name(&g, run->spes.aggregation, run->spes.trim, run->spes.clip)) == 0)
            rc = spes_aggregate_robust(p, &n->lo, n->sm.E, cp, a->ncontrib, &g, &n->outer);
    }
    double alpha = spes_merge_alpha(&run->spes, run->train.max_steps, (int64_t)a->next_step);
    if (!rc && a->merge && alpha > 0)
        rc = spes_merge_apply(p, &n->lo, &run->model, run->spes.merge_topk, alpha);
    if (!rc && a->round == 2 && !strcmp(n->d->cfg.fault, "diverge"))
        p[0] += 1.0f; /* tests only: this node's S_3 is no longer the run's */
    for (int i = 0; i < a->ncontrib; i++)
        spes_contrib_fini(&cs[i]);
    free(cs);
    free(cp);
    if (!rc)
        base_take(n); /* a training round that still encodes against S_r finishes first */
    if (!rc)
        settle_residual(n, j, a);
    if (!rc && (rc = state_digest(n, p, (int64_t)a->round + 1, a->state_hash)) == 0) {
        spes_dmetrics_note_delta(n->d->metrics, &n->lo, n->sm.E, p, n->base); /* column delta norms */
        if (overlap) {
            float *old = n->base;
            n->base = p;
            p = old;
        } else {
            memcpy(n->base, p, total * sizeof(float));
            n->tr.step = (int64_t)a->next_step;
            n->tr.round = (int64_t)a->round + 1;
        }
        uint8_t sh[32];
        node_keep_add(n, j, a->state_hash); /* the state blob's name is its digest */
        if ((rc = put_state(n, n->base, a->round + 1, sh)) == 0 && memcmp(sh, a->state_hash, 32))
            rc = spes_errf(SPES_EIO, "state blob hash differs from the digest");
    }
    if (rc && mom_old)
        memcpy(n->outer.mom, mom_old, total * sizeof(float));
    free(mom_old);
    if (overlap)
        free(p);
    return rc ? fail(j, rc) : 0;
}

/* outer_save keeps the outer momentum and the error-feedback residual beside a
 * saved trainer state in dir (and removes stale ones when the run keeps none). */
static int outer_save(spes_node *n, const char *dir, int64_t round)
{
    int rc = n->have_ef
                 ? spes_resid_save(dir, n->ef.cols, n->sm.E, n->ef.val, spes_resid_numel(&n->ef), round)
                 : spes_resid_remove(dir); /* the residual is node state kept with it */
    if (rc)
        return rc;
    if (!spes_outer_has_state(&n->outer))
        return spes_outer_remove(dir);
    return spes_outer_save(dir, n->outer.mom, n->lo.total_numel, round);
}

/* save_state writes the agreed state held (base, of round R from step) with
 * this node's optimizer state into dir; a training round beside it pauses
 * between two steps meanwhile (sync worker). */
static int save_state(spes_node *n, const char *dir, int64_t step, int64_t R)
{
    trainer_hold(n);
    /* the residual and the momentum first, each keeping its previous generation: a kill before the
     * trainer state of R is written leaves that of R - 1 with its files (checkpoint/outer_file.h) */
    int rc = spes_mkdir_p(dir, 0);
    if (!rc)
        rc = outer_save(n, dir, R);
    if (!rc)
        rc = spes_trainer_save_as(&n->tr, dir, n->base, step, R);
    trainer_release(n);
    return rc;
}

/* save_checkpoint keeps the state just persisted (S and this node's AdamW
 * state) under checkpoints/ID, where restore and export find it. */
static int save_checkpoint(spes_node *n, const char *id, int64_t step, int64_t R)
{
    char dir[800];
    snprintf(dir, sizeof dir, "%.600s/checkpoints/%.64s", n->state_dir, id);
    int rc = save_state(n, dir, step, R);
    if (!rc)
        log_info("checkpoint %s saved (round %lld)", id, (long long)R);
    return rc;
}

/* load_checkpoint_for looks for a saved checkpoint of round R with digest H. */
static int load_checkpoint_for(spes_node *n, uint64_t R, const uint8_t *H, uint32_t id)
{
    char base[700];
    snprintf(base, sizeof base, "%.600s/checkpoints", n->state_dir);
    DIR *dp = opendir(base);
    if (!dp)
        return SPES_ENOENT;
    struct dirent *de;
    int rc = SPES_ENOENT;
    while (rc && (de = readdir(dp)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char dir[1000];
        snprintf(dir, sizeof dir, "%s/%s", base, de->d_name);
        rc = load_local_dir(n, dir, R, H, id);
    }
    closedir(dp);
    return rc;
}

/* node_persist writes the node's state (trainer checkpoint) durably, under STATE_DIR/node/state. */
static int node_persist(spes_node *n, int64_t step, int64_t R)
{
    char *dir = spes_path_join(n->state_dir, "state");
    if (!dir)
        return SPES_ENOMEM;
    int rc = save_state(n, dir, step, R);
    free(dir);
    return rc;
}

void node_run_job(spes_node *n, spes_node_job *j)
{
    j->rc = 0;
    j->err[0] = 0;
    switch (j->kind) {
    case SPES_NODE_JOB_PREPARE:
        if (job_prepare(n, j) == 0) {
            base_publish(n, (int64_t)j->u.prepare.round);
            spes_counters_state_held(); /* the wait for the round ends */
        }
        break;
    case SPES_NODE_JOB_TRAIN: job_train(n, j); break;
    case SPES_NODE_JOB_APPLY: {
        spes_node_job_apply *a = &j->u.apply;
        int64_t R = (int64_t)a->round + 1, step = (int64_t)a->next_step;
        if (job_apply(n, j) == 0 && node_persist(n, step, R) != 0)
            log_error("node state not persisted: %s", spes_errmsg());
        if (j->rc == 0 && a->ckpt_id[0] && save_checkpoint(n, a->ckpt_id, step, R) != 0) {
            log_error("checkpoint %s not saved: %s", a->ckpt_id, spes_errmsg());
            a->ckpt_id[0] = '\0';
        }
        if (j->rc == 0) {
            pthread_mutex_lock(&n->mu);
            n->base_shards = a->next_shards; /* what a round trained ahead is cut into */
            pthread_mutex_unlock(&n->mu);
            base_publish(n, R); /* a round trained beside this one may rebase onto S_{r+1} now */
        }
        spes_blob_serve_stats ss;
        spes_blob_store_stats(n->blobs, &ss);
        a->bytes_served = ss.bytes_served;
        if (j->rc == 0)
            spes_counters_state_held(); /* S_{r+1} is held: the wait ends */
        break;
    }
    case SPES_NODE_JOB_VALIDATE: job_validate(n, j); break;
    case SPES_NODE_JOB_AGGREGATE: node_job_aggregate(n, j); break;
    }
}

void node_publish_progress(spes_node *n)
{
    pthread_mutex_lock(&n->mu);
    n->prog_have_step = n->have_trainer;
    n->prog_step = n->have_trainer ? (uint64_t)n->tr.step : 0;
    n->prog_loss = n->loss;
    n->prog_tps = n->tps;
    pthread_mutex_unlock(&n->mu);
}
