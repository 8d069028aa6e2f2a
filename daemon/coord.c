/* coord.c: the coordinator: membership, rounds and digests (DESIGN.md "SPES
 * semantics", "Roles and data flow"). Only the loop thread runs this file. A
 * round r opens with its participants and their columns fixed; it commits
 * when every participant has announced, or at its deadline with whoever did,
 * after the coordinator's own node has fetched and checked every announced
 * contribution (so every node aggregates exactly the same, valid, set). */
#include "checkpoint/checkpoint.h"
#include "checkpoint/outer_file.h"
#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"
#include "core/rng.h"
#include "core/sha256.h"
#include "daemon/coord_state.h"
#include "daemon/node.h"
#include "membership/columns.h"
#include "merge/merge.h"
#include "model/model.h"
#include "proto/proto.h"
#include "sync/outer.h"
#include "sync/sync.h"

#include <stdlib.h>
#include <string.h>

#define NS(x) SPES__WIRE__NODE_STATE__NODE_STATE_##x

void coord_reply_msg(spes_reply_fn reply, void *ctx, int type, const ProtobufCMessage *m)
{
    uint8_t *out;
    size_t len;
    if (spes_proto_encode(type, m, &out, &len) != 0) {
        spes_daemon_reply_error(reply, ctx, SPES_ENOMEM, type, "cannot encode the reply: %s", spes_errmsg());
        return;
    }
    reply(ctx, out, len);
    free(out);
}

void coord_reply_ack(spes_reply_fn reply, void *ctx, const char *text)
{
    Spes__Wire__Ack a = SPES__WIRE__ACK__INIT;
    a.message = (char *)text;
    coord_reply_msg(reply, ctx, SPES_MSG_ACK, &a.base);
}

/* initial_digest computes the digest of S_0 (weights from the seed). */
static int initial_digest(spes_coord *c)
{
    spes_model *m;
    int rc = spes_model_alloc(&m, &c->run.model, NULL, 1, 1, 0, NULL);
    if (rc)
        return rc;
    spes_model_init_weights(m, (uint64_t)c->run.train.seed);
    float *mom = NULL; /* outer momentum: zero at S_0, part of the state when the run keeps one */
    if (c->run.spes.outer_momentum != 0 && !(mom = calloc(m->layout.total_numel, sizeof *mom)))
        rc = SPES_ENOMEM;
    if (!rc)
        rc = spes_state_digest2(m->params, mom, m->layout.total_numel, 0, c->state_hash);
    free(mom);
    spes_model_free(m);
    c->state_hash_known = rc == 0;
    return rc;
}

/* recover_state_hash: the coordinator's own node persists the agreed state
 * after each round; if we died before it reported the digest, read it here. */
static void recover_state_hash(spes_coord *c)
{
    char dir[700];
    snprintf(dir, sizeof dir, "%.600s/node/state", c->d->cfg.state_dir);
    spes_ckpt ck;
    if (spes_ckpt_load(dir, &ck) != 0) {
        log_warnx("coordinator: the agreed state of round %llu is unknown (%s)", (unsigned long long)c->round,
                  spes_errmsg());
        return;
    }
    float *mom = NULL; /* the outer momentum saved beside the state, when the run keeps one */
    if (c->run.spes.outer_momentum != 0 && (!(mom = calloc(ck.nparams, sizeof *mom)) ||
                                            spes_outer_load(dir, mom, ck.nparams, ck.round) != 0))
        ck.round = -1; /* unknown: the state's digest cannot be formed */
    if ((uint64_t)ck.round == c->round &&
        spes_state_digest2(ck.params, mom, ck.nparams, ck.round, c->state_hash) == 0) {
        c->state_hash_known = 1;
        log_info("coordinator: agreed state of round %llu recovered from this node's state", (unsigned long long)c->round);
    } else {
        log_warnx("coordinator: this node holds round %lld, the run is at round %llu", (long long)ck.round,
                  (unsigned long long)c->round);
    }
    free(mom);
    spes_ckpt_fini(&ck);
}

/* load_last_commit reads the last commit back, for nodes still waiting for it. */
static void load_last_commit(spes_coord *c)
{
    char path[700];
    snprintf(path, sizeof path, "%.600s/last_commit.bin", c->d->cfg.state_dir);
    char *buf;
    size_t len;
    if (spes_read_file(path, 64u << 20, &buf, &len) == 0) {
        c->last_commit = (uint8_t *)buf;
        c->last_commit_len = len;
    }
}

int spes_coord_alloc(spes_coord **out, spes_daemon *d)
{
    spes_coord *c = calloc(1, sizeof *c);
    if (!c)
        return SPES_ENOMEM;
    c->d = d;
    spes_config_defaults(&c->run);
    int rc = spes_config_load(&c->run, d->cfg.run_config);
    if (!rc)
        rc = spes_config_validate(&c->run);
    if (rc)
        goto fail;
    c->E = c->run.model.num_experts;
    spes_layout lo;
    if ((rc = spes_layout_build(&lo, &c->run.model)) != 0)
        goto fail;
    c->shared_numel = lo.shared_numel;
    c->column_numel = lo.column_numel;
    spes_layout_fini(&lo);
    for (int i = 0; i < COORD_MAX_MEMBERS; i++) {
        c->mem[i].cols = calloc((size_t)c->E, 1);
        c->mem[i].cur = calloc((size_t)c->E, 1);
        if (!c->mem[i].cols || !c->mem[i].cur) {
            rc = SPES_ENOMEM;
            goto fail;
        }
    }
    c->run_json = spes_config_to_json(&c->run);
    snprintf(c->state_path, sizeof c->state_path, "%.500s/coordinator.json", d->cfg.state_dir);
    rc = coord_load(c);
    if (rc == SPES_ENOENT) {
        spes_rng r;
        spes_rng_seed(&r, spes_now_ms() ^ (uint64_t)(uintptr_t)c);
        snprintf(c->run_id, sizeof c->run_id, "%016llx", (unsigned long long)spes_rng_u64(&r));
        c->next_id = 0;
        if ((rc = initial_digest(c)) == 0)
            rc = coord_save(c);
        log_info("coordinator: new run %s", c->run_id);
    } else if (!rc) {
        for (int i = 0; i < c->nmem; i++)
            if (c->mem[i].state == NS(ACTIVE) || c->mem[i].state == NS(JOINING)) {
                c->mem[i].state = NS(JOINING); /* active again once heard from */
                c->restored_active++;
            }
        if (!c->state_hash_known)
            recover_state_hash(c);
        load_last_commit(c);
        log_info("coordinator: resumed run %s at round %llu (%d members known)", c->run_id,
                 (unsigned long long)c->round, c->nmem);
    }
    if (rc)
        goto fail;
    c->round_open_ms = c->started_ms = spes_mono_ms();
    *out = c;
    return 0;
fail:
    spes_coord_free(c);
    return rc;
}

void spes_coord_free(spes_coord *c)
{
    if (!c)
        return;
    for (int i = 0; i < COORD_MAX_MEMBERS; i++) {
        free(c->mem[i].cols);
        free(c->mem[i].cur);
    }
    free(c->run_json);
    free(c->last_commit);
    free(c->saved);
    spes_config_fini(&c->run);
    free(c);
}

void coord_member_seen(coord_member *m)
{
    m->last_seen_ms = spes_now_ms();
    m->seen_mono_ms = spes_mono_ms();
}

int coord_member_active(const coord_member *m)
{
    return m->state == NS(ACTIVE) || m->state == NS(JOINING);
}

/* rebalance deals the next round's columns over the active members. */
void coord_rebalance(spes_coord *c)
{
    int idx[COORD_MAX_MEMBERS], n = 0;
    for (int i = 0; i < c->nmem; i++)
        if (coord_member_active(&c->mem[i]))
            idx[n++] = i;
    if (n == 0)
        return;
    uint8_t *own = calloc((size_t)n * (size_t)c->E, 1);
    if (!own)
        return;
    for (int k = 0; k < n; k++)
        memcpy(own + (size_t)k * c->E, c->mem[idx[k]].cols, (size_t)c->E);
    spes_columns_rebalance(own, n, c->E);
    for (int i = 0; i < c->nmem; i++)
        if (!coord_member_active(&c->mem[i]))
            memset(c->mem[i].cols, 0, (size_t)c->E);
    for (int k = 0; k < n; k++)
        memcpy(c->mem[idx[k]].cols, own + (size_t)k * c->E, (size_t)c->E);
    free(own);
}

/* open_round fixes the participants of round c->round: the active members. */
void coord_open_round(spes_coord *c)
{
    coord_rebalance(c);
    if (c->step >= (uint64_t)c->run.train.max_steps) {
        /* the run is complete: no more rounds; members stay for status and checkpoints */
        for (int i = 0; i < c->nmem; i++) {
            c->mem[i].participant = 0;
            c->mem[i].announced = 0;
        }
        return;
    }
    for (int i = 0; i < c->nmem; i++) {
        coord_member *m = &c->mem[i];
        m->participant = m->state == NS(ACTIVE);
        memcpy(m->cur, m->participant ? m->cols : m->cur, (size_t)c->E);
        if (!m->participant)
            memset(m->cur, 0, (size_t)c->E);
        m->announced = 0;
    }
    c->round_open_ms = spes_mono_ms();
    c->validating = 0;
}

size_t coord_cols_fill(const uint8_t *cols, int E, uint32_t *out)
{
    size_t n = 0;
    for (int e = 0; e < E; e++)
        if (cols[e])
            out[n++] = (uint32_t)e;
    return n;
}

uint32_t *coord_cols_list(const uint8_t *cols, int E, size_t *n)
{
    uint32_t *out = malloc(sizeof *out * (size_t)(E ? E : 1));
    *n = out ? coord_cols_fill(cols, E, out) : 0;
    return out;
}

int coord_peer_is_operator(const spes_pki_identity *peer)
{
    return peer->role == SPES_ROLE_OPERATOR || (peer->role == SPES_ROLE_NONE && !peer->name[0]);
}

int coord_any_announced(const spes_coord *c)
{
    for (int i = 0; i < c->nmem; i++)
        if (c->mem[i].participant && c->mem[i].announced)
            return 1;
    return 0;
}

