/* coord.c: the coordinator's life cycle, its action queue and the member
 * table: membership, column dealing, opening a round (docs/protocol.md). A
 * round r opens with its participants and their columns fixed; it commits
 * when every participant has announced, or at its deadline with whoever did,
 * after the coordinator's own node has fetched and checked every announced
 * contribution (so every node aggregates exactly the same, valid, set).
 * Never does I/O: everything leaves as a queued action. */
#include "coord/coord_priv.h"
#include "core/error.h"
#include "core/log.h"
#include "membership/columns.h"
#include "model/model.h"
#include "proto/proto.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void spes_coord_action_fini(spes_coord_action *a)
{
    if (!a)
        return;
    free(a->data);
    free(a->hashes);
    free(a->manifests);
    for (int i = 0; i < a->n; i++) {
        if (a->urls)
            free(a->urls[i]);
        if (a->names)
            free(a->names[i]);
    }
    free(a->urls);
    free(a->names);
    free(a->ids);
    free(a->cols);
    free(a->out_dir);
    memset(a, 0, sizeof *a);
}

int coord_push(spes_coord_sm *c, spes_coord_action *a)
{
    if (c->qhead + c->qlen == c->qcap) {
        if (c->qhead > 0) {
            memmove(c->q, c->q + c->qhead, c->qlen * sizeof *c->q);
            c->qhead = 0;
        } else {
            size_t cap = c->qcap ? 2 * c->qcap : 16;
            spes_coord_action *q = realloc(c->q, cap * sizeof *q);
            if (!q) {
                spes_coord_action_fini(a);
                return SPES_ENOMEM;
            }
            c->q = q;
            c->qcap = cap;
        }
    }
    c->q[c->qhead + c->qlen++] = *a;
    memset(a, 0, sizeof *a);
    return 0;
}

int spes_coord_sm_next_action(spes_coord_sm *c, spes_coord_action *a)
{
    if (!c->qlen)
        return 0;
    *a = c->q[c->qhead++];
    if (--c->qlen == 0)
        c->qhead = 0;
    return 1;
}

void coord_log(spes_coord_sm *c, int level, const char *fmt, ...)
{
    spes_coord_action a = {.kind = SPES_COORD_LOG, .level = level};
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    a.len = strlen(buf);
    if (!(a.data = malloc(a.len + 1)))
        return;
    memcpy(a.data, buf, a.len + 1);
    coord_push(c, &a);
}

void coord_reply_raw(spes_coord_sm *c, spes_coord_to to, const uint8_t *data, size_t len)
{
    spes_coord_action a = {.kind = SPES_COORD_REPLY, .to = to};
    if (data) {
        if (!(a.data = malloc(len ? len : 1)))
            len = 0; /* cannot copy: the request is dropped, its sender retries */
        else
            memcpy(a.data, data, len);
        a.len = a.data ? len : 0;
    }
    coord_push(c, &a);
}

void coord_reply_error(spes_coord_sm *c, spes_coord_to to, int err, int in_reply_to, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    spes_coord_action a = {.kind = SPES_COORD_REPLY, .to = to};
    if (spes_proto_encode_error(err, msg, in_reply_to, &a.data, &a.len) != 0) {
        a.data = NULL;
        a.len = 0;
    }
    coord_push(c, &a);
}

void coord_reply_msg(spes_coord_sm *c, spes_coord_to to, int type, const ProtobufCMessage *m)
{
    spes_coord_action a = {.kind = SPES_COORD_REPLY, .to = to};
    if (spes_proto_encode(type, m, &a.data, &a.len) != 0) {
        coord_reply_error(c, to, SPES_ENOMEM, type, "cannot encode the reply: %s", spes_errmsg());
        return;
    }
    coord_push(c, &a);
}

void coord_reply_ack(spes_coord_sm *c, spes_coord_to to, const char *text)
{
    Spes__Wire__Ack a = SPES__WIRE__ACK__INIT;
    a.message = (char *)text;
    coord_reply_msg(c, to, SPES_MSG_ACK, &a.base);
}

void coord_save(spes_coord_sm *c)
{
    char *text = coord_state_json(c);
    if (!text) {
        coord_log(c, SPES_LOG_ERROR, "coordinator state not saved: out of memory");
        return;
    }
    if (c->saved && !strcmp(c->saved, text)) {
        free(text); /* a join retry or a repeated status change: nothing new to make durable */
        return;
    }
    spes_coord_action a = {.kind = SPES_COORD_PERSIST_STATE, .len = strlen(text)};
    if (!(a.data = malloc(a.len + 1))) {
        free(text);
        return;
    }
    memcpy(a.data, text, a.len + 1);
    free(c->saved);
    c->saved = text;
    coord_push(c, &a);
}

void spes_coord_sm_persist_failed(spes_coord_sm *c)
{
    free(c->saved);
    c->saved = NULL;
}

/* grow makes room for one more member row. */
static int grow(spes_coord_sm *c)
{
    if (c->nmem < c->cap)
        return 0;
    if (c->cap == SPES_COORD_MAX_MEMBERS)
        return SPES_ERANGE;
    int cap = c->cap ? 2 * c->cap : 8;
    if (cap > SPES_COORD_MAX_MEMBERS)
        cap = SPES_COORD_MAX_MEMBERS;
    coord_member *mem = realloc(c->mem, (size_t)cap * sizeof *mem);
    if (!mem)
        return SPES_ENOMEM;
    c->mem = mem;
    int *vi = realloc(c->val_idx, (size_t)cap * sizeof *vi);
    if (!vi)
        return SPES_ENOMEM;
    c->val_idx = vi;
    uint32_t *mm = realloc(c->mismatch, (size_t)cap * sizeof *mm);
    if (!mm)
        return SPES_ENOMEM;
    c->mismatch = mm;
    c->cap = cap;
    return 0;
}

coord_member *coord_add_member(spes_coord_sm *c)
{
    if (grow(c) != 0)
        return NULL;
    coord_member *m = &c->mem[c->nmem];
    memset(m, 0, sizeof *m);
    m->cols = calloc((size_t)c->E, 1);
    m->cur = calloc((size_t)c->E, 1);
    if (!m->cols || !m->cur) {
        free(m->cols);
        free(m->cur);
        return NULL;
    }
    c->nmem++;
    return m;
}

int spes_coord_sm_alloc(spes_coord_sm **out, const spes_run_config *run, const spes_coord_settings *s)
{
    spes_coord_sm *c = calloc(1, sizeof *c);
    if (!c)
        return SPES_ENOMEM;
    c->set = *s;
    c->val_said_n = -1;
    int rc = spes_config_copy(&c->run, run);
    if (rc)
        goto fail_copy;
    c->E = c->run.model.num_experts;
    spes_layout lo;
    if ((rc = spes_layout_build(&lo, &c->run.model)) != 0)
        goto fail;
    c->shared_numel = lo.shared_numel;
    c->column_numel = lo.column_numel;
    spes_layout_fini(&lo);
    if (!(c->run_json = spes_config_to_json(&c->run))) {
        rc = SPES_ENOMEM;
        goto fail;
    }
    *out = c;
    return 0;
fail:
    spes_config_fini(&c->run);
fail_copy:
    free(c);
    return rc;
}

void spes_coord_sm_free(spes_coord_sm *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->nmem; i++) {
        free(c->mem[i].cols);
        free(c->mem[i].cur);
        free(c->mem[i].shards);
    }
    free(c->mem);
    free(c->barred);
    free(c->val_idx);
    free(c->mismatch);
    for (int i = 0; i < c->nckpt; i++)
        coord_ckpt_clear(&c->ckpts[i]);
    for (size_t i = 0; i < c->qlen; i++)
        spes_coord_action_fini(&c->q[c->qhead + i]);
    free(c->q);
    free(c->run_json);
    coord_commits_forget(c);
    free(c->saved);
    spes_config_fini(&c->run);
    free(c);
}

int spes_coord_sm_new_run(spes_coord_sm *c, const char *run_id, const uint8_t digest[32])
{
    snprintf(c->run_id, sizeof c->run_id, "%s", run_id);
    c->next_id = 0;
    memcpy(c->state_hash, digest, 32);
    c->state_hash_known = 1;
    coord_save(c);
    coord_log(c, SPES_LOG_INFO, "coordinator: new run %s", c->run_id);
    return 0;
}

int spes_coord_sm_load(spes_coord_sm *c, const char *json, const char *origin)
{
    int rc = coord_state_load(c, json, origin);
    if (rc)
        return rc;
    for (int i = 0; i < c->nmem; i++)
        if (coord_member_active(&c->mem[i])) {
            c->mem[i].state = NS(JOINING); /* active again once heard from */
            c->restored_active++;
        }
    return 0;
}

void spes_coord_sm_set_state_hash(spes_coord_sm *c, uint64_t round, const uint8_t hash[32])
{
    if (round != c->round)
        return;
    memcpy(c->state_hash, hash, 32);
    c->state_hash_known = 1;
}

int spes_coord_sm_set_last_commit(spes_coord_sm *c, const uint8_t *data, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return SPES_ENOMEM;
    memcpy(copy, data, len);
    free(c->last_commit);
    c->last_commit = copy;
    c->last_commit_len = len;
    return 0;
}

void spes_coord_sm_start(spes_coord_sm *c, spes_coord_now now)
{
    c->round_open_ms = c->started_ms = now.mono_ms;
}

uint64_t spes_coord_sm_round(const spes_coord_sm *c)
{
    return c->round;
}

int spes_coord_sm_state_hash(const spes_coord_sm *c, uint8_t out[32])
{
    if (c->state_hash_known)
        memcpy(out, c->state_hash, 32);
    return c->state_hash_known;
}

const char *spes_coord_sm_run_id(const spes_coord_sm *c)
{
    return c->run_id;
}

int spes_coord_sm_members(const spes_coord_sm *c)
{
    return c->nmem;
}

int coord_is_barred(const spes_coord_sm *c, const char *name)
{
    for (int i = 0; i < c->nbarred; i++)
        if (!strcmp(c->barred[i].name, name))
            return 1;
    return 0;
}

int coord_bar(spes_coord_sm *c, uint32_t id, const char *name)
{
    if (!c->barred && !(c->barred = calloc(SPES_COORD_MAX_BARRED, sizeof *c->barred)))
        return SPES_ENOMEM;
    if (c->nbarred == SPES_COORD_MAX_BARRED)
        memmove(c->barred, c->barred + 1, (size_t)--c->nbarred * sizeof *c->barred);
    coord_barred *b = &c->barred[c->nbarred++];
    b->id = id;
    snprintf(b->name, sizeof b->name, "%s", name);
    return 0;
}

void coord_departed_add(spes_coord_sm *c, const coord_departed *d)
{
    if (c->ndeparted == SPES_COORD_MAX_DEPARTED)
        memmove(c->departed, c->departed + 1, (size_t)--c->ndeparted * sizeof *c->departed);
    c->departed[c->ndeparted++] = *d;
}

/* departed says whether m has left the run for good or for now and holds nothing of the open round. */
static int departed(const coord_member *m)
{
    return (m->state == NS(LEFT) || m->state == NS(FAILED) || m->state == NS(EVICTED)) && !m->participant;
}

int coord_reclaim(spes_coord_sm *c)
{
    if (c->validating)
        return -1; /* val_idx points into the table */
    int v = -1;
    for (int i = 0; i < c->nmem; i++)
        if (departed(&c->mem[i]) && (v < 0 || c->mem[i].last_seen_ms < c->mem[v].last_seen_ms))
            v = i;
    if (v < 0)
        return -1;
    coord_member *m = &c->mem[v];
    if (m->state == NS(EVICTED) && coord_bar(c, m->id, m->name) != 0)
        return -1;
    coord_departed d = {.id = m->id, .state = m->state, .round = m->round, .last_seen_ms = m->last_seen_ms};
    snprintf(d.name, sizeof d.name, "%s", m->name);
    coord_departed_add(c, &d);
    coord_log(c, SPES_LOG_INFO, "%s (node %u, %s) leaves the member table to make room", m->name, m->id,
              m->state == NS(LEFT)     ? "left"
              : m->state == NS(FAILED) ? "failed"
                                       : "evicted");
    for (int i = 0; i < c->nmismatch; i++) /* the list has room for one entry per row */
        if (c->mismatch[i] == m->id)
            c->mismatch[i--] = c->mismatch[--c->nmismatch];
    free(m->cols);
    free(m->cur);
    free(m->shards);
    memmove(m, m + 1, (size_t)(c->nmem - v - 1) * sizeof *m);
    c->nmem--;
    return 0;
}

coord_member *coord_find(spes_coord_sm *c, const char *name)
{
    for (int i = 0; i < c->nmem; i++)
        if (!strcmp(c->mem[i].name, name))
            return &c->mem[i];
    return NULL;
}

coord_member *coord_find_id(spes_coord_sm *c, uint32_t id)
{
    for (int i = 0; i < c->nmem; i++)
        if (c->mem[i].id == id)
            return &c->mem[i];
    return NULL;
}

void coord_member_seen(coord_member *m, spes_coord_now now)
{
    m->last_seen_ms = now.wall_ms;
    m->seen_mono_ms = now.mono_ms;
}

int coord_member_active(const coord_member *m)
{
    return m->state == NS(ACTIVE) || m->state == NS(JOINING);
}

void coord_deal_columns(spes_coord_sm *c)
{
    if (c->nmem == 0)
        return;
    int *idx = malloc((size_t)c->nmem * sizeof *idx), n = 0;
    if (!idx)
        return;
    for (int i = 0; i < c->nmem; i++)
        if (coord_member_active(&c->mem[i]))
            idx[n++] = i;
    uint8_t *own = n ? calloc((size_t)n * (size_t)c->E, 1) : NULL;
    if (!own) {
        free(idx);
        return;
    }
    for (int k = 0; k < n; k++)
        memcpy(own + (size_t)k * c->E, c->mem[idx[k]].cols, (size_t)c->E);
    spes_columns_rebalance(own, n, c->E);
    for (int i = 0; i < c->nmem; i++)
        if (!coord_member_active(&c->mem[i]))
            memset(c->mem[i].cols, 0, (size_t)c->E);
    for (int k = 0; k < n; k++)
        memcpy(c->mem[idx[k]].cols, own + (size_t)k * c->E, (size_t)c->E);
    free(own);
    free(idx);
}

void coord_rotate_columns(spes_coord_sm *c)
{
    int first = -1, prev = -1;
    uint8_t *carry = malloc((size_t)c->E);
    if (!carry)
        return;
    for (int i = 0; i < c->nmem; i++) {
        if (!coord_member_active(&c->mem[i]))
            continue;
        if (first < 0) {
            first = i;
            memcpy(carry, c->mem[i].cols, (size_t)c->E); /* the first's, for the last to hand on */
        } else {
            uint8_t t; /* member i takes the previous one's columns; carry keeps i's for the next */
            for (int e = 0; e < c->E; e++) {
                t = c->mem[i].cols[e];
                c->mem[i].cols[e] = carry[e];
                carry[e] = t;
            }
        }
        prev = i;
    }
    if (first >= 0 && prev != first)
        memcpy(c->mem[first].cols, carry, (size_t)c->E);
    free(carry);
}

/* co_owners lists in js the column_owners - 1 active members after member i (cyclic, table order)
 * whose dealt columns it trains too, and returns how many; -1 when there are fewer members than
 * owners, so that every member trains every column. */
static int co_owners(const spes_coord_sm *c, int i, int *js)
{
    int n = 0;
    for (int r = 1, j = i; r < c->run.spes.column_owners; r++) {
        do
            j = (j + 1) % c->nmem;
        while (j != i && !coord_member_active(&c->mem[j]));
        if (j == i)
            return -1;
        js[n++] = j;
    }
    return n;
}

/* trains says whether member i, with co-owners js (n of them, co_owners), trains column e. */
static int trains(const spes_coord_sm *c, int i, const int *js, int n, int e)
{
    if (n < 0 || c->mem[i].cols[e])
        return 1;
    for (int k = 0; k < n; k++)
        if (c->mem[js[k]].cols[e])
            return 1;
    return 0;
}

void coord_train_columns(const spes_coord_sm *c, int i, uint8_t *out)
{
    int js[SPES_MAX_MEMBERS], n = co_owners(c, i, js);
    for (int e = 0; e < c->E; e++)
        out[e] = (uint8_t)trains(c, i, js, n, e);
}

size_t coord_train_cols_fill(const spes_coord_sm *c, int i, uint32_t *out)
{
    int js[SPES_MAX_MEMBERS], n = co_owners(c, i, js);
    size_t k = 0;
    for (int e = 0; e < c->E; e++)
        if (trains(c, i, js, n, e))
            out[k++] = (uint32_t)e;
    return k;
}

void coord_open_round(spes_coord_sm *c, spes_coord_now now)
{
    coord_deal_columns(c);
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
        if (m->participant)
            coord_train_columns(c, i, m->cur);
        else
            memset(m->cur, 0, (size_t)c->E);
        m->announced = 0;
    }
    c->round_open_ms = now.mono_ms;
    c->validating = 0;
    c->checking = 0;
    c->nshards = coord_shards_count(c); /* fixed for the round: every node cuts its contribution so */
}

size_t coord_cols_fill(const uint8_t *cols, int E, uint32_t *out)
{
    size_t n = 0;
    for (int e = 0; e < E; e++)
        if (cols[e])
            out[n++] = (uint32_t)e;
    return n;
}

int coord_peer_is_operator(const spes_pki_identity *peer)
{
    return peer->role == SPES_ROLE_OPERATOR || (peer->role == SPES_ROLE_NONE && !peer->name[0]);
}

int coord_peer_is_local(const spes_pki_identity *peer)
{
    return peer->role == SPES_ROLE_OPERATOR && !peer->name[0];
}

int coord_any_announced(const spes_coord_sm *c)
{
    for (int i = 0; i < c->nmem; i++)
        if (c->mem[i].participant && c->mem[i].announced)
            return 1;
    return 0;
}
