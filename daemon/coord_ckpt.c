/* coord_ckpt.c: run checkpoints. `save` takes one at the next round boundary:
 * the commit carries its id, every node keeps the new agreed state and its own
 * optimizer state under it, and reports it with its digest; the coordinator
 * records which nodes hold it. `restore` rewinds the run to it; `export`
 * writes the Hugging Face files from the coordinator's own copy. */
#include "checkpoint/checkpoint.h"
#include "checkpoint/outer_file.h"
#include "core/error.h"
#include "core/log.h"
#include "core/sha256.h"
#include "daemon/coord_state.h"
#include "daemon/node.h"
#include "model/model.h"
#include "proto/proto.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define NS(x) SPES__WIRE__NODE_STATE__NODE_STATE_##x
#define CA(x) SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_##x

static void reply_list(spes_coord *c, spes_reply_fn reply, void *ctx, const char *msg, int pending)
{
    static Spes__Wire__CheckpointInfo iv[COORD_MAX_CKPTS];
    static Spes__Wire__CheckpointInfo *ip[COORD_MAX_CKPTS];
    Spes__Wire__CheckpointReply r = SPES__WIRE__CHECKPOINT_REPLY__INIT;
    for (int i = 0; i < c->nckpt; i++) {
        coord_ckpt *k = &c->ckpts[i];
        spes__wire__checkpoint_info__init(&iv[i]);
        iv[i].id = k->id;
        iv[i].round = k->round;
        iv[i].step = k->step;
        iv[i].state_hash = (ProtobufCBinaryData){k->hash_known ? 32 : 0, k->hash};
        iv[i].created_unix_ms = k->created_ms;
        iv[i].holders = k->holders;
        iv[i].n_holders = (size_t)k->nholders;
        iv[i].complete = k->complete;
        ip[i] = &iv[i];
    }
    r.checkpoints = ip;
    r.n_checkpoints = (size_t)c->nckpt;
    r.message = (char *)msg;
    r.pending = pending;
    coord_reply_msg(reply, ctx, SPES_MSG_CHECKPOINT_REPLY, &r.base);
}

static coord_ckpt *find(spes_coord *c, const char *id)
{
    for (int i = 0; i < c->nckpt; i++)
        if (!strcmp(c->ckpts[i].id, id))
            return &c->ckpts[i];
    return NULL;
}

/* add_ckpt appends a cleared record with this id, dropping the oldest when full. */
static coord_ckpt *add_ckpt(spes_coord *c, const char *id)
{
    if (c->nckpt == COORD_MAX_CKPTS) {
        memmove(&c->ckpts[0], &c->ckpts[1], sizeof c->ckpts[0] * (COORD_MAX_CKPTS - 1));
        c->nckpt--;
    }
    coord_ckpt *k = &c->ckpts[c->nckpt++];
    memset(k, 0, sizeof *k);
    snprintf(k->id, sizeof k->id, "%s", id);
    return k;
}

/* save_final checkpoints a completed run (no round will commit any more): the
 * coordinator's own node holds the final agreed state with its optimizer state. */
static void save_final(spes_coord *c, spes_reply_fn reply, void *ctx)
{
    char src[700], dst[800], id[32];
    snprintf(id, sizeof id, "ckpt-%06llu", (unsigned long long)c->round);
    snprintf(src, sizeof src, "%.600s/node/state", c->d->cfg.state_dir);
    snprintf(dst, sizeof dst, "%.600s/node/checkpoints/%s", c->d->cfg.state_dir, id);
    spes_ckpt ck;
    int rc = spes_ckpt_load(src, &ck);
    if (!rc && (uint64_t)ck.round != c->round)
        rc = spes_errf(SPES_ESTATE, "this node holds round %lld, the run ended at round %llu", (long long)ck.round,
                       (unsigned long long)c->round);
    if (!rc)
        rc = spes_ckpt_save(dst, &ck);
    if (rc == 0 || rc == SPES_ESTATE)
        spes_ckpt_fini(&ck);
    if (rc) {
        spes_daemon_reply_error(reply, ctx, rc, SPES_MSG_CHECKPOINT_REQUEST, "%s", spes_errmsg());
        return;
    }
    coord_ckpt *k = find(c, id);
    if (k) {
        memset(k, 0, sizeof *k);
        snprintf(k->id, sizeof k->id, "%s", id);
    } else {
        k = add_ckpt(c, id);
    }
    k->round = c->round;
    k->step = c->step;
    memcpy(k->hash, c->state_hash, 32);
    k->hash_known = c->state_hash_known;
    k->created_ms = spes_now_ms();
    coord_member *own = coord_find(c, c->d->cfg.name);
    if (own)
        k->holders[k->nholders++] = own->id;
    k->complete = 1;
    coord_save(c);
    log_info("checkpoint %s of the completed run saved (round %llu)", id, (unsigned long long)c->round);
    char msg[96];
    snprintf(msg, sizeof msg, "checkpoint %s of the completed run saved", id);
    reply_list(c, reply, ctx, msg, 0);
}

static void save(spes_coord *c, int wait, spes_reply_fn reply, void *ctx)
{
    char msg[160];
    if (c->step >= (uint64_t)c->run.train.max_steps) {
        save_final(c, reply, ctx);
        return;
    }
    if (!c->pending_ckpt[0]) {
        char id[32];
        snprintf(id, sizeof id, "ckpt-%06llu", (unsigned long long)(c->round + 1));
        coord_ckpt *k = add_ckpt(c, id);
        k->round = c->round + 1;
        k->step = c->step + (uint64_t)c->run.spes.sync_interval;
        k->created_ms = spes_now_ms();
        snprintf(c->pending_ckpt, sizeof c->pending_ckpt, "%s", k->id);
        coord_save(c);
        log_info("checkpoint %s requested: taken when round %llu commits", k->id, (unsigned long long)c->round);
    }
    if (wait && c->nwaiters < COORD_MAX_WAITERS) {
        c->waiters[c->nwaiters++] = (coord_waiter){reply, ctx, ""};
        snprintf(c->waiters[c->nwaiters - 1].id, 32, "%s", c->pending_ckpt);
        return;
    }
    snprintf(msg, sizeof msg, "checkpoint %s will be taken when round %llu commits", c->pending_ckpt,
             (unsigned long long)c->round);
    reply_list(c, reply, ctx, msg, 1);
}

void coord_checkpoint_saved(spes_coord *c, coord_member *m, const char *id, const uint8_t *hash)
{
    coord_ckpt *k = find(c, id);
    if (!k)
        return;
    for (int i = 0; i < k->nholders; i++)
        if (k->holders[i] == m->id)
            return;
    if (k->nholders < COORD_MAX_MEMBERS)
        k->holders[k->nholders++] = m->id;
    if (!strcmp(m->name, c->d->cfg.name)) {
        memcpy(k->hash, hash, 32);
        k->hash_known = 1;
        k->complete = 1;
        log_info("checkpoint %s complete (round %llu)", k->id, (unsigned long long)k->round);
        for (int i = 0; i < c->nwaiters;) {
            if (!strcmp(c->waiters[i].id, id)) {
                char msg[96];
                snprintf(msg, sizeof msg, "checkpoint %s saved", id);
                reply_list(c, c->waiters[i].reply, c->waiters[i].ctx, msg, 0);
                c->waiters[i] = c->waiters[--c->nwaiters];
            } else {
                i++;
            }
        }
    }
    coord_save(c);
}

static void restore(spes_coord *c, coord_ckpt *k, spes_reply_fn reply, void *ctx)
{
    if (!k->complete) {
        spes_daemon_reply_error(reply, ctx, SPES_ESTATE, SPES_MSG_CHECKPOINT_REQUEST,
                                "checkpoint %s is not complete yet", k->id);
        return;
    }
    /* republish the checkpoint's state as a blob: peers without their own copy fetch it */
    char dir[800];
    snprintf(dir, sizeof dir, "%.600s/node/checkpoints/%.64s", c->d->cfg.state_dir, k->id);
    spes_ckpt ck;
    uint8_t h[32];
    int rc = spes_ckpt_load(dir, &ck);
    float *mom = NULL; /* the outer momentum saved with the checkpoint, when the run keeps one */
    if (!rc && c->run.spes.outer_momentum != 0 &&
        (rc = (mom = malloc(ck.nparams * sizeof *mom)) ? spes_outer_load(dir, mom, ck.nparams, (int64_t)k->round)
                                                        : SPES_ENOMEM) != 0)
        spes_ckpt_fini(&ck);
    if (!rc) {
        rc = spes_node_put_state_outer(c->d->node, ck.params, mom, ck.nparams, k->round, h);
        if (!rc && memcmp(h, k->hash, 32))
            rc = spes_errf(SPES_ESTATE, "%s: its state does not match the recorded digest", dir);
        spes_ckpt_fini(&ck);
    }
    free(mom);
    if (rc) {
        spes_daemon_reply_error(reply, ctx, rc, SPES_MSG_CHECKPOINT_REQUEST, "cannot restore %s: %s", k->id,
                                spes_errmsg());
        return;
    }
    c->round = k->round;
    c->step = k->step;
    memcpy(c->state_hash, k->hash, 32);
    c->state_hash_known = 1;
    c->prev_known = 0;
    free(c->last_commit);
    c->last_commit = NULL;
    c->last_commit_len = 0;
    c->validating = 0;
    for (int i = 0; i < c->nwaiters; i++) /* their checkpoint will not be taken now */
        spes_daemon_reply_error(c->waiters[i].reply, c->waiters[i].ctx, SPES_ESTATE, SPES_MSG_CHECKPOINT_REQUEST,
                                "checkpoint %s dropped: the run was restored to %s", c->waiters[i].id, k->id);
    c->nwaiters = 0;
    c->pending_ckpt[0] = '\0';
    for (int i = 0; i < c->nmem; i++) {
        c->mem[i].participant = 0;
        c->mem[i].announced = 0;
        if (c->mem[i].state == NS(ACTIVE))
            c->mem[i].state = NS(JOINING);
    }
    c->restored_active = 0;
    for (int i = 0; i < c->nmem; i++)
        c->restored_active += c->mem[i].state == NS(JOINING);
    c->started_ms = spes_mono_ms();
    coord_save(c);
    log_info("run restored to checkpoint %s: round %llu, step %llu", k->id, (unsigned long long)k->round,
             (unsigned long long)k->step);
    char msg[128];
    snprintf(msg, sizeof msg, "run restored to %s (round %llu)", k->id, (unsigned long long)k->round);
    reply_list(c, reply, ctx, msg, 0);
}

static void export_hf(spes_coord *c, coord_ckpt *k, const char *out, spes_reply_fn reply, void *ctx)
{
    char dir[800];
    snprintf(dir, sizeof dir, "%.600s/node/checkpoints/%.64s", c->d->cfg.state_dir, k->id);
    spes_ckpt ck;
    spes_layout lo;
    int rc = spes_ckpt_load(dir, &ck);
    if (rc) {
        spes_daemon_reply_error(reply, ctx, rc, SPES_MSG_CHECKPOINT_REQUEST, "%s", spes_errmsg());
        return;
    }
    if ((rc = spes_layout_build(&lo, &c->run.model)) == 0) {
        rc = spes_hf_export(out, &c->run.model, &lo, ck.params, 0);
        spes_layout_fini(&lo);
    }
    spes_ckpt_fini(&ck);
    if (rc) {
        spes_daemon_reply_error(reply, ctx, rc, SPES_MSG_CHECKPOINT_REQUEST, "%s", spes_errmsg());
        return;
    }
    char msg[700];
    snprintf(msg, sizeof msg, "checkpoint %s exported to %.600s", k->id, out);
    reply_list(c, reply, ctx, msg, 0);
}

void coord_checkpoint(spes_coord *c, const Spes__Wire__CheckpointRequest *r, const spes_pki_identity *peer,
                      spes_reply_fn reply, void *ctx)
{
    if (r->action != CA(LIST) && !coord_peer_is_operator(peer)) {
        spes_daemon_reply_error(reply, ctx, SPES_EAUTH, SPES_MSG_CHECKPOINT_REQUEST,
                                "checkpoints need an operator certificate (%s is a %s)", peer->name,
                                spes_pki_role_name(peer->role));
        return;
    }
    if (r->action == CA(SAVE)) {
        save(c, r->wait, reply, ctx);
        return;
    }
    if (r->action == CA(LIST)) {
        reply_list(c, reply, ctx, "", 0);
        return;
    }
    coord_ckpt *k = find(c, r->id);
    if (!k) {
        spes_daemon_reply_error(reply, ctx, SPES_ENOENT, SPES_MSG_CHECKPOINT_REQUEST, "no checkpoint %s", r->id);
        return;
    }
    if (r->action == CA(RESTORE))
        restore(c, k, reply, ctx);
    else if (r->action == CA(EXPORT))
        export_hf(c, k, r->out_dir, reply, ctx);
    else
        spes_daemon_reply_error(reply, ctx, SPES_EINVAL, SPES_MSG_CHECKPOINT_REQUEST, "unknown checkpoint action");
}

struct json_t *coord_ckpt_json(const spes_coord *c)
{
    json_t *a = json_array();
    char hex[65];
    for (int i = 0; i < c->nckpt; i++) {
        const coord_ckpt *k = &c->ckpts[i];
        json_t *o = json_object(), *h = json_array();
        json_object_set_new(o, "id", json_string(k->id));
        json_object_set_new(o, "round", json_integer((json_int_t)k->round));
        json_object_set_new(o, "step", json_integer((json_int_t)k->step));
        spes_hex_encode(k->hash, 32, hex);
        json_object_set_new(o, "hash", k->hash_known ? json_string(hex) : json_null());
        json_object_set_new(o, "created_ms", json_integer((json_int_t)k->created_ms));
        for (int j = 0; j < k->nholders; j++)
            json_array_append_new(h, json_integer(k->holders[j]));
        json_object_set_new(o, "holders", h);
        json_object_set_new(o, "complete", json_boolean(k->complete));
        json_array_append_new(a, o);
    }
    return a;
}

int coord_ckpt_load(spes_coord *c, struct json_t *arr)
{
    c->nckpt = 0;
    for (size_t i = 0; json_is_array(arr) && i < json_array_size(arr) && c->nckpt < COORD_MAX_CKPTS; i++) {
        json_t *o = json_array_get(arr, i), *id = json_object_get(o, "id"), *h = json_object_get(o, "hash"),
               *holders = json_object_get(o, "holders");
        if (!json_is_string(id))
            return spes_errf(SPES_EFORMAT, "%s: a checkpoint record has no id", c->state_path);
        coord_ckpt *k = &c->ckpts[c->nckpt++];
        memset(k, 0, sizeof *k);
        snprintf(k->id, sizeof k->id, "%s", json_string_value(id));
        k->round = (uint64_t)json_integer_value(json_object_get(o, "round"));
        k->step = (uint64_t)json_integer_value(json_object_get(o, "step"));
        k->created_ms = (uint64_t)json_integer_value(json_object_get(o, "created_ms"));
        k->complete = json_is_true(json_object_get(o, "complete"));
        if (json_is_string(h) && spes_hex_decode(json_string_value(h), k->hash, 32) == 0)
            k->hash_known = 1;
        for (size_t j = 0; json_is_array(holders) && j < json_array_size(holders) && j < COORD_MAX_MEMBERS; j++)
            k->holders[k->nholders++] = (uint32_t)json_integer_value(json_array_get(holders, j));
    }
    return 0;
}
