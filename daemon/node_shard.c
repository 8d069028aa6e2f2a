/* node_shard.c: a node's work in sharded rounds (docs/design.md, "The sharded
 * round"), on the worker threads: publishing the shared block's shards of its
 * contribution, checking and averaging the shards it aggregates for the
 * coordinator, and reading the aggregates a commit names into S_{r+1}. The
 * decisions (which shards, whose, when) are the machines' (src/node,
 * src/coord); the formats are src/sync/shard.c's. */
#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"
#include "daemon/node_priv.h"
#include "sync/shard.h"
#include "sync/sync.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MUTE_AGGREGATOR_ROUND 5 /* the round whose aggregations the "mute-aggregator" test fault fails */

/* shard_hdr is the header of shard s of K (plan off) of round by node, in the codec. */
static spes_group_hdr shard_hdr(uint32_t kind, uint32_t codec, int64_t round, int32_t node, int s, int K,
                                const size_t *off)
{
    return (spes_group_hdr){.kind = kind,
                            .codec = codec,
                            .round = round,
                            .node = node,
                            .shard = (uint32_t)s,
                            .shards = (uint32_t)K,
                            .offset = off[s],
                            .count = off[s + 1] - off[s]};
}

/* read_group reads held blob hash and decodes it as the group want describes into val. */
static int read_group(spes_node *n, const uint8_t *hash, const spes_group_hdr *want, const float *base,
                      float *val, const char *origin)
{
    char path[1024];
    char *buf = NULL;
    size_t len = 0;
    spes_group_hdr h;
    int rc = spes_blob_path(n->blobs, hash, path, sizeof path);
    if (!rc)
        rc = spes_read_file(path, spes_group_size(SPES_CODEC_FP32, want->count), &buf, &len);
    if (!rc)
        rc = spes_group_decode(&h, val, (const uint8_t *)buf, len, want, base, NODE_MAX_DELTA, origin);
    free(buf);
    return rc;
}

/* put_group stores an encoded group as a blob and fills g with its name, manifest and size. */
static int put_group(spes_node *n, spes_node_job *j, uint8_t *buf, size_t len, spes_node_group *g)
{
    int rc = spes_blob_put(n->blobs, buf, len, g->hash);
    free(buf);
    if (rc)
        return rc;
    node_keep_add(n, j, g->hash);
    g->size = len;
    spes_manifest m;
    if ((rc = spes_blob_manifest_get(n->blobs, g->hash, &m)) == 0) {
        rc = spes_manifest_hash(&m, g->manifest);
        spes_manifest_fini(&m);
    }
    return rc;
}

int node_encode_shards(spes_node *n, spes_node_job *j, const spes_contrib *c, uint32_t codec, int shards)
{
    spes_node_job_train *t = &j->u.train;
    size_t off[SPES_SHARD_MAX + 1];
    int K = spes_shard_plan(n->lo.shared_numel, shards, off);
    if (K != shards || K > SPES_NODE_MAX_SHARDS)
        return spes_errf(SPES_EFORMAT, "round %llu: %d shards dealt, the shared block makes %d",
                         (unsigned long long)t->round, shards, K);
    t->shard = calloc((size_t)K, sizeof *t->shard);
    uint8_t(*names)[32] = calloc((size_t)K, 32);
    if (!t->shard || !names) {
        free(names);
        return SPES_ENOMEM;
    }
    int rc = 0;
    for (int s = 0; s < K && !rc; s++) {
        spes_group_hdr h = shard_hdr(SPES_GROUP_CONTRIB, codec, c->round, c->node, s, K, off);
        uint8_t *buf;
        size_t len;
        float *ef = n->have_ef ? n->ef.val + off[s] : NULL; /* the residual's shared block comes first */
        rc = spes_group_encode(&h, c->val + off[s], n->base + off[s], ef, &buf, &len);
        if (!rc && (rc = put_group(n, j, buf, len, &t->shard[s])) == 0) {
            t->shard[s].node = (uint32_t)c->node;
            t->shard[s].shard = (uint32_t)s;
            memcpy(names[s], t->shard[s].hash, 32);
            t->nshards++;
        }
    }
    if (rc) {
        free(names);
        return rc;
    }
    free(n->ef_shards);
    n->ef_shards = names;
    n->nef_shards = K;
    return 0;
}

/* publish_aggregate encodes and stores the mean out of shard task t (round, K, plan off). */
static int publish_aggregate(spes_node *n, spes_node_job *j, uint64_t round, int K, const size_t *off,
                             spes_node_shard_task *t, uint32_t codec, const float *out)
{
    spes_group_hdr h =
        shard_hdr(SPES_GROUP_AGGREGATE, codec, (int64_t)round, SPES_GROUP_NO_AUTHOR, (int)t->shard, K, off);
    h.contributors = (uint32_t)t->n;
    uint8_t *buf;
    size_t len;
    int rc = spes_group_encode(&h, out, n->base + h.offset, NULL, &buf, &len);
    if (!rc && (rc = put_group(n, j, buf, len, &t->out)) == 0) {
        t->out.node = j->node_id;
        t->out.shard = t->shard;
        t->have = 1;
    }
    return rc;
}

/* aggregate_one checks shard task t's inputs (round, K and plan off) and averages them if all pass,
 * holding one decoded input at a time beside the running sum. */
static int aggregate_one(spes_node *n, spes_node_job *j, uint64_t round, int K, const size_t *off,
                         spes_node_shard_task *t, uint32_t codec)
{
    size_t o = off[t->shard], cnt = off[t->shard + 1] - o, sz = (cnt ? cnt : 1) * sizeof(float);
    float *v = malloc(sz), *acc = calloc(1, sz), *out = malloc(sz);
    int rc = v && acc && out ? 0 : SPES_ENOMEM, all = 1;
    for (int k = 0; !rc && k < t->n; k++) {
        const spes_node_group *g = &t->in[k];
        char origin[96];
        snprintf(origin, sizeof origin, "shard %u of node %u", t->shard, g->node);
        spes_group_hdr want =
            shard_hdr(SPES_GROUP_CONTRIB, codec, (int64_t)round, (int32_t)g->node, (int)t->shard, K, off);
        int r = node_fetch_blob(n, j, g->hash, node_author(j, g->node), g->manifest,
                                spes_group_size(SPES_CODEC_FP32, cnt));
        t->missing[k] = r != 0;
        if (!r && (r = read_group(n, g->hash, &want, n->base + o, v, origin)) == 0) {
            if (t->n == 1)
                memcpy(out, v, cnt * sizeof *v); /* one contribution: its values exactly */
            else
                spes_shard_acc_add(acc, v, n->base + o, cnt);
        }
        if (r == SPES_EINTR || r == SPES_ENOMEM)
            rc = r;
        t->ok[k] = r == 0;
        if (r)
            snprintf(t->why[k], sizeof t->why[k], "%s", spes_errmsg());
        all &= t->ok[k];
    }
    if (!rc && all && t->n > 0) {
        if (t->n > 1)
            spes_shard_acc_mean(out, n->base + o, acc, t->n, cnt);
        if (!strcmp(n->d->cfg.fault, "lying-aggregate")) /* tests: an aggregate off by 1e-3 */
            for (size_t i = 0; i < cnt; i++)
                out[i] += 1e-3f;
        rc = publish_aggregate(n, j, round, K, off, t, codec, out);
    }
    free(v);
    free(acc);
    free(out);
    return rc;
}

int node_job_aggregate(spes_node *n, spes_node_job *j)
{
    spes_node_job_aggregate *a = &j->u.aggregate;
    size_t off[SPES_SHARD_MAX + 1];
    int K = spes_shard_plan(n->lo.shared_numel, a->shards, off), rc = 0;
    uint32_t codec = (uint32_t)spes_codec_from_name(n->sm.run.spes.codec);
    pthread_mutex_lock(&n->mu);
    int held = n->base_round == (int64_t)a->round; /* the sync worker alone moves base on */
    pthread_mutex_unlock(&n->mu);
    if (!held)
        return node_job_fail(j,
                             spes_errf(SPES_ESTATE, "round %llu: aggregation asked, but S_%llu is not held",
                                       (unsigned long long)a->round, (unsigned long long)a->round));
    if (K != a->shards)
        return node_job_fail(j,
                             spes_errf(SPES_EFORMAT, "round %llu: %d shards asked, the shared block makes %d",
                                       (unsigned long long)a->round, a->shards, K));
    if (!strcmp(n->d->cfg.fault, "mute-aggregator") && a->round == MUTE_AGGREGATOR_ROUND)
        return node_job_fail(j, spes_errf(SPES_EIO, "fault injection: round %llu's aggregation fails",
                                          (unsigned long long)a->round)); /* tests: its backup takes over */
    for (int i = 0; i < a->ntasks && !rc; i++) {
        if (a->task[i].shard >= (uint32_t)K) {
            rc = spes_errf(SPES_EFORMAT, "round %llu: shard %u of %d asked", (unsigned long long)a->round,
                           a->task[i].shard, K);
            break;
        }
        rc = aggregate_one(n, j, a->round, K, off, &a->task[i], codec);
        if (!rc)
            log_info("round %llu: shard %u of %d %s from %d contribution(s)", (unsigned long long)a->round,
                     a->task[i].shard, K, a->task[i].have ? "averaged" : "not averaged (an input failed)",
                     a->task[i].n);
    }
    return rc ? node_job_fail(j, rc) : 0;
}

int node_apply_aggregates(spes_node *n, spes_node_job *j, float *p)
{
    const spes_node_job_apply *a = &j->u.apply;
    size_t off[SPES_SHARD_MAX + 1];
    int K = spes_shard_plan(n->lo.shared_numel, a->shards, off);
    if (K != a->shards || a->nagg != K)
        return spes_errf(SPES_EFORMAT,
                         "round %llu: the commit names %d aggregate(s) of %d shard(s); the "
                         "shared block makes %d",
                         (unsigned long long)a->round, a->nagg, a->shards, K);
    uint32_t codec = (uint32_t)spes_codec_from_name(n->sm.run.spes.codec);
    for (int s = 0; s < K; s++) {
        const spes_node_group *g = &a->agg[s];
        char origin[96];
        snprintf(origin, sizeof origin, "aggregate of shard %d by node %u", s, g->node);
        spes_group_hdr want =
            shard_hdr(SPES_GROUP_AGGREGATE, codec, (int64_t)a->round, SPES_GROUP_NO_AUTHOR, s, K, off);
        int rc =
            g->shard == (uint32_t)s ? 0 : spes_errf(SPES_EFORMAT, "%s: listed as shard %u", origin, g->shard);
        if (!rc)
            rc = node_fetch_blob(n, j, g->hash, node_author(j, g->node), g->manifest,
                                 spes_group_size(SPES_CODEC_FP32, want.count));
        if (!rc)
            rc = read_group(n, g->hash, &want, n->base + off[s], p + off[s], origin);
        if (rc)
            return rc;
    }
    return 0;
}

int node_own_shards(spes_node *n, spes_contrib *own)
{
    size_t off[SPES_SHARD_MAX + 1];
    int K = spes_shard_plan(n->lo.shared_numel, n->nef_shards, off);
    if (K != n->nef_shards || !n->ef_shards)
        return spes_errf(SPES_ESTATE, "this node's shards are not known");
    uint32_t codec = (uint32_t)spes_codec_from_name(n->sm.run.spes.codec);
    for (int s = 0; s < K; s++) {
        spes_group_hdr want = shard_hdr(SPES_GROUP_CONTRIB, codec, own->round, own->node, s, K, off);
        int rc = read_group(n, n->ef_shards[s], &want, n->base + off[s], own->val + off[s],
                            "this node's contribution");
        if (rc)
            return rc;
    }
    return 0;
}
