/* node_work.c: the node's worker thread jobs: prepare the agreed state,
 * train a round, apply a commit (fetch, aggregate, merge, digest, persist),
 * and check contributions for the coordinator. Runs off the loop; touches
 * only the job and the trainer, and never the daemon's tables. */
#include "checkpoint/checkpoint.h"
#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"
#include "core/sha256.h"
#include "daemon/node_priv.h"
#include "merge/merge.h"
#include "sync/sync.h"

#include <math.h>
#include <stdint.h>
#include <dirent.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STATE_MAGIC "SPESSTATE1"
#define STATE_HDR 26
#define MAX_DELTA 1e4f /* a contribution moving a weight further than this in one round is refused */

static int fail(node_job *j, int rc)
{
    j->rc = rc;
    snprintf(j->err, sizeof j->err, "%s", spes_errmsg());
    return rc;
}

/* open_trainer builds the trainer for columns cols with params from base (if given). */
static int open_trainer(spes_node *n, const uint8_t *cols)
{
    spes_trainer old = n->tr;
    int had = n->have_trainer;
    int rc = spes_trainer_init(&n->tr, &n->run, cols, n->d->cfg.threads);
    if (rc) {
        n->tr = old;
        return rc;
    }
    if ((rc = spes_trainer_open_data(&n->tr, (int)(n->id % (uint32_t)n->d->cfg.data_parts), n->d->cfg.data_parts))) {
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
    for (int e = 0; e < n->E; e++) {
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
    return n->have_trainer && memcmp(n->tr.model->trained, cols, (size_t)n->E) == 0;
}

static int ensure_base(spes_node *n)
{
    if (!n->base)
        n->base = malloc(n->tr.model->layout.total_numel * sizeof(float));
    return n->base ? 0 : SPES_ENOMEM;
}

static int load_local_dir(spes_node *n, const char *dir, uint64_t R, const uint8_t *H);
static int load_checkpoint_for(spes_node *n, uint64_t R, const uint8_t *H);

/* load_local tries the node's own persisted state for round R with digest H. */
static int load_local(spes_node *n, uint64_t R, const uint8_t *H)
{
    char *dir = spes_path_join(n->state_dir, "state");
    if (!dir)
        return SPES_ENOMEM;
    int rc = load_local_dir(n, dir, R, H);
    free(dir);
    return rc;
}

static int load_local_dir(spes_node *n, const char *dir, uint64_t R, const uint8_t *H)
{
    spes_ckpt meta;
    spes_ckpt_reader *r;
    int rc = spes_ckpt_reader_open(&r, dir, &meta);
    if (rc)
        return rc;
    spes_ckpt_reader_close(r);
    rc = (uint64_t)meta.round == R && meta.E == n->E ? 0 : SPES_ESTATE;
    if (!rc && !same_cols(n, meta.trained))
        rc = open_trainer(n, meta.trained);
    if (!rc)
        rc = spes_trainer_load(&n->tr, dir);
    spes_ckpt_fini(&meta);
    uint8_t dg[32];
    if (!rc && (rc = spes_state_digest(n->tr.model->params, n->tr.model->layout.total_numel, (int64_t)R, dg)) == 0 &&
        memcmp(dg, H, 32))
        rc = spes_errf(SPES_ESTATE, "local state of round %llu differs from the agreed one", (unsigned long long)R);
    return rc;
}

/* load_blob reads a state blob (SPESSTATE1 | round | numel | params) into the trainer. */
static int load_blob(spes_node *n, const uint8_t *H, uint64_t R)
{
    char path[1024];
    int rc = spes_blob_path(n->blobs, H, path, sizeof path);
    char *buf = NULL;
    size_t len = 0;
    if (!rc)
        rc = spes_read_file(path, (size_t)1 << 40, &buf, &len);
    if (rc)
        return rc;
    size_t total = n->tr.model->layout.total_numel;
    uint64_t round, numel;
    if (len != STATE_HDR + total * 4 || memcmp(buf, STATE_MAGIC, 10)) {
        free(buf);
        return spes_errf(SPES_EFORMAT, "%s: not a state blob of this model (%zu bytes)", path, len);
    }
    memcpy(&round, buf + 10, 8);
    memcpy(&numel, buf + 18, 8);
    if (round != R || numel != total) {
        free(buf);
        return spes_errf(SPES_EFORMAT, "%s: state of round %llu, expected %llu", path, (unsigned long long)round,
                         (unsigned long long)R);
    }
    memcpy(n->tr.model->params, buf + STATE_HDR, total * 4);
    free(buf);
    return 0;
}

/* peers_of lists whom to ask for a blob, into p (returns the count): with an
 * author (first >= 0), the author, then the coordinator (nobody else holds a
 * fresh contribution); without one, every peer of the job. */
static int peers_of(const node_job *j, spes_blob_peer *p, int first)
{
    int k = 0;
    if (first >= 0)
        p[k++] = (spes_blob_peer){.url = j->urls[first], .name = j->names[first][0] ? j->names[first] : NULL};
    for (int i = 0; i < j->npeers; i++)
        if (i != first && (first < 0 || j->is_coord[i]))
            p[k++] = (spes_blob_peer){.url = j->urls[i], .name = j->names[i][0] ? j->names[i] : NULL};
    return k;
}

/* fetch gets a blob from peers_of's peers. manifest pins the blob's manifest
 * (and so its size); max_size bounds what a peer may claim (0: the largest
 * contribution of the model). Received bytes are counted in j->bytes_in. */
static int fetch(spes_node *n, node_job *j, const uint8_t *hash, int first, const uint8_t *manifest,
                 uint64_t max_size)
{
    if (spes_blob_has(n->blobs, hash))
        return 0;
    spes_blob_peer peers[NODE_MAX_PEERS];
    int npeers = peers_of(j, peers, first);
    spes_blob_fetch_opts o;
    memset(&o, 0, sizeof o);
    o.tls = n->d->tls;
    o.plain = n->d->cfg.plain;
    o.cancel = &n->cancel;
    o.manifest_hash = manifest;
    o.max_size = max_size || !n->have_trainer ? max_size : spes_contrib_max_size(&n->tr.model->layout, n->E);
    int rc = spes_blob_fetch(n->blobs, hash, peers, npeers, &o, NULL);
    char path[1024];
    struct stat st;
    if (!rc && spes_blob_path(n->blobs, hash, path, sizeof path) == 0 && stat(path, &st) == 0)
        j->bytes_in += (uint64_t)st.st_size;
    return rc;
}

static int job_prepare(spes_node *n, node_job *j)
{
    int rc = 0;
    char cache[700];
    snprintf(cache, sizeof cache, "%.600s/data", n->state_dir);
    if ((rc = spes_data_fetch_urls(&n->run, cache, (const volatile int *)&n->cancel)) != 0)
        return fail(j, rc);
    if (n->have_trainer && n->have_state && n->round == j->round && !memcmp(n->hash, j->hash, 32))
        return 0;
    uint8_t *all = malloc((size_t)n->E);
    if (!all)
        return fail(j, SPES_ENOMEM);
    memset(all, 1, (size_t)n->E);
    if (load_local(n, j->round, j->hash) == 0) {
        log_info("resuming from the local state of round %llu", (unsigned long long)j->round);
    } else if (load_checkpoint_for(n, j->round, j->hash) == 0) {
        log_info("restoring the checkpoint of round %llu with this node's optimizer state", (unsigned long long)j->round);
    } else if (!n->have_trainer && (rc = open_trainer(n, all)) != 0) {
        free(all);
        return fail(j, rc);
    } else if (j->round == 0) {
        spes_model_init_weights(n->tr.model, (uint64_t)n->run.train.seed);
    } else {
        log_info("fetching the agreed state of round %llu from %d peer(s)", (unsigned long long)j->round, j->npeers);
        uint64_t state_size = STATE_HDR + (uint64_t)n->tr.model->layout.total_numel * 4;
        if ((rc = fetch(n, j, j->hash, -1, NULL, state_size)) != 0 || (rc = load_blob(n, j->hash, j->round)) != 0) {
            free(all);
            return fail(j, rc);
        }
    }
    free(all);
    uint8_t dg[32];
    if ((rc = spes_state_digest(n->tr.model->params, n->tr.model->layout.total_numel, (int64_t)j->round, dg)))
        return fail(j, rc);
    if (memcmp(dg, j->hash, 32))
        return fail(j, spes_errf(SPES_ESTATE, "the state of round %llu here does not match the run's digest "
                                              "(different run config or seed?)", (unsigned long long)j->round));
    if ((rc = ensure_base(n)) != 0)
        return fail(j, rc);
    memcpy(n->base, n->tr.model->params, n->tr.model->layout.total_numel * sizeof(float));
    return 0;
}

static int put_state(spes_node *n, const float *params, uint64_t round, uint8_t out[32])
{
    return spes_node_put_state(n, params, n->tr.model->layout.total_numel, round, out);
}

int spes_node_put_state(spes_node *n, const float *params, size_t total, uint64_t round, uint8_t out[32])
{
    uint8_t *buf = malloc(STATE_HDR + total * 4);
    if (!buf)
        return SPES_ENOMEM;
    memcpy(buf, STATE_MAGIC, 10);
    memcpy(buf + 10, &round, 8);
    uint64_t nn = total;
    memcpy(buf + 18, &nn, 8);
    memcpy(buf + STATE_HDR, params, total * 4);
    int rc = spes_blob_put(n->blobs, buf, STATE_HDR + total * 4, out);
    free(buf);
    return rc;
}

static int job_train(spes_node *n, node_job *j)
{
    int rc = 0;
    if (!same_cols(n, j->cols) && (rc = open_trainer(n, j->cols)) != 0)
        return fail(j, rc);
    size_t total = n->tr.model->layout.total_numel;
    memcpy(n->tr.model->params, n->base, total * sizeof(float));
    n->tr.step = (int64_t)j->step;
    n->tr.round = (int64_t)j->round;
    double sum = 0;
    int steps = n->run.spes.sync_interval, done = 0;
    for (; done < steps; done++) {
        if (atomic_load(&n->cancel))
            return fail(j, spes_errf(SPES_EINTR, "round abandoned"));
        spes_step_stats st;
        if ((rc = spes_trainer_step(&n->tr, &st)) != 0)
            return fail(j, rc);
        sum += st.loss;
        n->loss = st.loss;
        n->tps = (double)n->run.train.batch_size * n->run.train.seq_len / st.seconds;
        printf("step %lld loss %.9g\n", (long long)st.step, st.loss);
        fflush(stdout);
    }
    spes_contrib c;
    j->tokens = (uint64_t)steps * (uint64_t)n->run.train.batch_size * (uint64_t)n->run.train.seq_len;
    j->loss_mean = sum / steps;
    if ((rc = spes_contrib_make(&c, &n->tr.model->layout, n->E, j->cols, n->tr.model->params, (int64_t)j->round,
                                (int32_t)n->id, j->tokens, (float)j->loss_mean)) != 0)
        return fail(j, rc);
    if (!strcmp(n->d->cfg.fault, "nan")) {
        c.val[0] = NAN; /* fault injection for tests: a poisoned contribution */
        log_warnx("fault injection: contribution of round %llu carries a NaN", (unsigned long long)j->round);
    }
    uint8_t *buf;
    size_t len;
    spes_codec codec = strcmp(n->d->cfg.codec, "bf16") ? SPES_CODEC_FP32 : SPES_CODEC_BF16;
    rc = spes_contrib_encode(&c, codec, n->base, &buf, &len);
    spes_contrib_fini(&c);
    if (rc)
        return fail(j, rc);
    rc = spes_blob_put(n->blobs, buf, len, j->out_hash);
    free(buf);
    j->out_size = len;
    spes_manifest m;
    if (!rc && (rc = spes_blob_manifest_get(n->blobs, j->out_hash, &m)) == 0) {
        rc = spes_manifest_hash(&m, j->out_manifest);
        spes_manifest_fini(&m);
    }
    if (!rc && !strcmp(n->d->cfg.fault, "wrong-hash")) {
        j->out_hash[0] ^= 0xff; /* fault injection for tests: announce a hash nobody holds */
        log_warnx("fault injection: announcing a wrong hash for round %llu", (unsigned long long)j->round);
    }
    return rc ? fail(j, rc) : 0;
}

/* decode_blob reads and decodes a held contribution blob against the base. */
static int decode_blob(spes_node *n, const uint8_t *hash, const char *origin, spes_contrib *c)
{
    char path[1024];
    char *buf = NULL;
    size_t len = 0;
    int rc = spes_blob_path(n->blobs, hash, path, sizeof path);
    if (!rc)
        rc = spes_read_file(path, (size_t)1 << 40, &buf, &len);
    if (!rc)
        rc = spes_contrib_decode(c, (const uint8_t *)buf, len, &n->tr.model->layout, n->E, n->base, MAX_DELTA,
                                 origin);
    free(buf);
    return rc;
}

static int author_index(const node_job *j, uint32_t node)
{
    for (int i = 0; i < j->npeers; i++)
        if (j->peer_ids[i] == node)
            return i;
    return -1;
}

static int job_validate(spes_node *n, node_job *j)
{
    for (int k = 0; k < j->ncontrib; k++) {
        spes_contrib c;
        int held = spes_blob_has(n->blobs, j->contrib_hash[k]); /* a refused blob this check fetched is deleted */
        int rc = fetch(n, j, j->contrib_hash[k], k, j->contrib_manifest[k], 0);
        if (!rc)
            rc = decode_blob(n, j->contrib_hash[k], j->names[k], &c);
        if (rc && !held)
            spes_blob_delete(n->blobs, j->contrib_hash[k]);
        j->ok[k] = rc == 0;
        if (rc)
            snprintf(j->reasons[k], sizeof j->reasons[k], "%s", spes_errmsg());
        else
            spes_contrib_fini(&c);
    }
    return 0;
}

static int job_apply(spes_node *n, node_job *j)
{
    int rc = 0, k;
    size_t total = n->tr.model->layout.total_numel;
    spes_contrib *cs = calloc((size_t)(j->ncontrib ? j->ncontrib : 1), sizeof *cs);
    const spes_contrib **cp = calloc((size_t)(j->ncontrib ? j->ncontrib : 1), sizeof *cp);
    if (!cs || !cp)
        rc = SPES_ENOMEM;
    for (k = 0; !rc && k < j->ncontrib; k++) {
        char origin[96];
        snprintf(origin, sizeof origin, "contribution of node %u", j->contrib_node[k]);
        int first = author_index(j, j->contrib_node[k]);
        if ((rc = fetch(n, j, j->contrib_hash[k], first, j->contrib_manifest[k], 0)) == 0 &&
            (rc = decode_blob(n, j->contrib_hash[k], origin, &cs[k])) == 0)
            cp[k] = &cs[k];
    }
    float *p = n->tr.model->params;
    if (!rc) {
        memcpy(p, n->base, total * sizeof(float));
        rc = spes_aggregate(p, &n->tr.model->layout, n->E, cp, j->ncontrib);
    }
    double alpha = spes_merge_alpha(&n->run.spes, (int64_t)j->next_step);
    if (!rc && j->merge && alpha > 0)
        rc = spes_merge_apply(p, &n->tr.model->layout, &n->run.model, n->run.spes.merge_topk, alpha);
    if (!rc && j->round == 2 && !strcmp(n->d->cfg.fault, "diverge"))
        p[0] += 1.0f; /* tests only: this node's S_3 is no longer the run's */
    for (int i = 0; i < j->ncontrib; i++)
        spes_contrib_fini(&cs[i]);
    free(cs);
    free(cp);
    if (!rc && (rc = spes_state_digest(p, total, (int64_t)j->round + 1, j->out_hash)) == 0) {
        memcpy(n->base, p, total * sizeof(float));
        n->tr.step = (int64_t)j->next_step;
        n->tr.round = (int64_t)j->round + 1;
        uint8_t sh[32];
        if ((rc = put_state(n, p, j->round + 1, sh)) == 0 && memcmp(sh, j->out_hash, 32))
            rc = spes_errf(SPES_EIO, "state blob hash differs from the digest");
    }
    return rc ? fail(j, rc) : 0;
}

/* save_checkpoint keeps the state just persisted (S and this node's AdamW
 * state) under checkpoints/ID, where restore and export find it. */
static int save_checkpoint(spes_node *n, const char *id)
{
    char dir[800];
    snprintf(dir, sizeof dir, "%.600s/checkpoints/%.64s", n->state_dir, id);
    int rc = spes_trainer_save(&n->tr, dir);
    if (!rc)
        log_info("checkpoint %s saved (round %lld)", id, (long long)n->tr.round);
    return rc;
}

/* load_checkpoint_for looks for a saved checkpoint of round R with digest H. */
static int load_checkpoint_for(spes_node *n, uint64_t R, const uint8_t *H)
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
        rc = load_local_dir(n, dir, R, H);
    }
    closedir(dp);
    return rc;
}

void node_run_job(spes_node *n, node_job *j)
{
    j->rc = 0;
    j->err[0] = 0;
    switch (j->kind) {
    case JOB_PREPARE: job_prepare(n, j); break;
    case JOB_TRAIN: job_train(n, j); break;
    case JOB_APPLY:
        if (job_apply(n, j) == 0 && node_persist(n) != 0)
            log_error("node state not persisted: %s", spes_errmsg());
        if (j->rc == 0 && j->ckpt_id[0] && save_checkpoint(n, j->ckpt_id) != 0) {
            log_error("checkpoint %s not saved: %s", j->ckpt_id, spes_errmsg());
            j->ckpt_id[0] = '\0';
        }
        break;
    case JOB_VALIDATE: job_validate(n, j); break;
    }
}

int node_persist(spes_node *n)
{
    char *dir = spes_path_join(n->state_dir, "state");
    if (!dir)
        return SPES_ENOMEM;
    int rc = spes_trainer_save(&n->tr, dir);
    free(dir);
    return rc;
}
