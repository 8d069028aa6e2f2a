/* coord_ckpt.c: run checkpoints. `save` takes one at the next round boundary:
 * the commit carries its id, every node keeps the new agreed state and its own
 * optimizer state under it, and reports it with its digest; the coordinator
 * records which nodes hold it. `restore` rewinds the run to it; `export`
 * writes the Hugging Face files from the coordinator's own copy. The file work
 * (copy, republish, export) is the caller's: it leaves as a CKPT_* action and
 * comes back through spes_coord_sm_final_saved / _restored / _exported. */
#include "coord/coord_priv.h"
#include "core/error.h"
#include "core/log.h"
#include "core/sha256.h"
#include "proto/proto.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CA(x) SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_##x

void coord_ckpt_clear(coord_ckpt *k)
{
    free(k->holders);
    memset(k, 0, sizeof *k);
}

int coord_ckpt_add_holder(coord_ckpt *k, uint32_t id)
{
    for (int i = 0; i < k->nholders; i++)
        if (k->holders[i] == id)
            return 0;
    uint32_t *h = realloc(k->holders, sizeof *h * (size_t)(k->nholders + 1));
    if (!h)
        return SPES_ENOMEM;
    k->holders = h;
    k->holders[k->nholders++] = id;
    return 0;
}

static void reply_list(spes_coord_sm *c, spes_coord_to to, const char *msg, int pending)
{
    Spes__Wire__CheckpointInfo iv[SPES_COORD_MAX_CKPTS], *ip[SPES_COORD_MAX_CKPTS];
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
    coord_reply_msg(c, to, SPES_MSG_CHECKPOINT_REPLY, &r.base);
}

static coord_ckpt *find(spes_coord_sm *c, const char *id)
{
    for (int i = 0; i < c->nckpt; i++)
        if (!strcmp(c->ckpts[i].id, id))
            return &c->ckpts[i];
    return NULL;
}

/* add_ckpt appends a cleared record with this id, dropping the oldest when full. */
static coord_ckpt *add_ckpt(spes_coord_sm *c, const char *id)
{
    if (c->nckpt == SPES_COORD_MAX_CKPTS) {
        coord_ckpt_clear(&c->ckpts[0]);
        memmove(&c->ckpts[0], &c->ckpts[1], sizeof c->ckpts[0] * (SPES_COORD_MAX_CKPTS - 1));
        c->nckpt--;
    }
    coord_ckpt *k = &c->ckpts[c->nckpt++];
    memset(k, 0, sizeof *k);
    snprintf(k->id, sizeof k->id, "%s", id);
    return k;
}

static void push_ckpt_action(spes_coord_sm *c, int kind, spes_coord_to to, const coord_ckpt *k,
                             const char *out_dir)
{
    spes_coord_action a = {.kind = kind, .to = to, .round = k->round};
    snprintf(a.id, sizeof a.id, "%s", k->id);
    memcpy(a.hash, k->hash, 32);
    if (out_dir && !(a.out_dir = strdup(out_dir))) {
        coord_reply_error(c, to, SPES_ENOMEM, SPES_MSG_CHECKPOINT_REQUEST, "out of memory");
        return;
    }
    coord_push(c, &a);
}

void spes_coord_sm_final_saved(spes_coord_sm *c, spes_coord_now now, spes_coord_to to, const char *id, int rc,
                               const char *err)
{
    if (rc) {
        coord_reply_error(c, to, rc, SPES_MSG_CHECKPOINT_REQUEST, "%s", err);
        return;
    }
    coord_ckpt *k = find(c, id);
    if (k)
        coord_ckpt_clear(k);
    else
        k = add_ckpt(c, id);
    snprintf(k->id, sizeof k->id, "%s", id);
    k->round = c->round;
    k->step = c->step;
    memcpy(k->hash, c->state_hash, 32);
    k->hash_known = c->state_hash_known;
    k->created_ms = now.wall_ms;
    coord_member *own = coord_find(c, c->set.name);
    if (own)
        coord_ckpt_add_holder(k, own->id);
    k->complete = 1;
    coord_save(c);
    coord_log(c, SPES_LOG_INFO, "checkpoint %s of the completed run saved (round %llu)", id,
              (unsigned long long)c->round);
    char msg[96];
    snprintf(msg, sizeof msg, "checkpoint %s of the completed run saved", id);
    reply_list(c, to, msg, 0);
}

static void save(spes_coord_sm *c, spes_coord_now now, int wait, spes_coord_to to)
{
    if (c->step >= (uint64_t)c->run.train.max_steps) {
        /* no round will commit any more: the own node's final agreed state is the checkpoint */
        coord_ckpt k = {.round = c->round};
        snprintf(k.id, sizeof k.id, "ckpt-%06llu", (unsigned long long)c->round);
        push_ckpt_action(c, SPES_COORD_CKPT_FINAL, to, &k, NULL);
        return;
    }
    if (!c->pending_ckpt[0]) {
        char id[SPES_COORD_ID_LEN];
        snprintf(id, sizeof id, "ckpt-%06llu", (unsigned long long)(c->round + 1));
        coord_ckpt *k = add_ckpt(c, id);
        k->round = c->round + 1;
        k->step = c->step + (uint64_t)c->run.spes.sync_interval;
        k->created_ms = now.wall_ms;
        snprintf(c->pending_ckpt, sizeof c->pending_ckpt, "%s", k->id);
        coord_save(c);
        coord_log(c, SPES_LOG_INFO, "checkpoint %s requested: taken when round %llu commits", k->id,
                  (unsigned long long)c->round);
    }
    if (wait && c->nwaiters < SPES_COORD_MAX_WAITERS) {
        coord_waiter *w = &c->waiters[c->nwaiters++];
        w->to = to;
        snprintf(w->id, sizeof w->id, "%s", c->pending_ckpt);
        return;
    }
    char msg[160];
    snprintf(msg, sizeof msg, "checkpoint %s will be taken when round %llu commits", c->pending_ckpt,
             (unsigned long long)c->round);
    reply_list(c, to, msg, 1);
}

void coord_checkpoint_saved(spes_coord_sm *c, coord_member *m, const char *id, const uint8_t *hash)
{
    coord_ckpt *k = find(c, id);
    if (!k)
        return;
    for (int i = 0; i < k->nholders; i++)
        if (k->holders[i] == m->id)
            return;
    coord_ckpt_add_holder(k, m->id);
    if (!strcmp(m->name, c->set.name)) {
        memcpy(k->hash, hash, 32);
        k->hash_known = 1;
        k->complete = 1;
        coord_log(c, SPES_LOG_INFO, "checkpoint %s complete (round %llu)", k->id,
                  (unsigned long long)k->round);
        for (int i = 0; i < c->nwaiters;) {
            if (!strcmp(c->waiters[i].id, id)) {
                char msg[96];
                snprintf(msg, sizeof msg, "checkpoint %s saved", id);
                reply_list(c, c->waiters[i].to, msg, 0);
                c->waiters[i] = c->waiters[--c->nwaiters];
            } else {
                i++;
            }
        }
    }
    coord_save(c);
}

void spes_coord_sm_restored(spes_coord_sm *c, spes_coord_now now, spes_coord_to to, const char *id, int rc,
                            const char *err)
{
    coord_ckpt *k = find(c, id);
    if (!rc && !k)
        rc = SPES_ENOENT, err = "the checkpoint record is gone";
    if (rc) {
        coord_reply_error(c, to, rc, SPES_MSG_CHECKPOINT_REQUEST, "cannot restore %s: %s", id, err);
        return;
    }
    c->round = k->round;
    c->step = k->step;
    memcpy(c->state_hash, k->hash, 32);
    c->state_hash_known = 1;
    c->prev_known = 0;
    coord_commits_forget(c); /* none of them applies to the restored state */
    c->validating = 0;
    for (int i = 0; i < c->nwaiters; i++) /* their checkpoint will not be taken now */
        coord_reply_error(c, c->waiters[i].to, SPES_ESTATE, SPES_MSG_CHECKPOINT_REQUEST,
                          "checkpoint %s dropped: the run was restored to %s", c->waiters[i].id, k->id);
    c->nwaiters = 0;
    c->pending_ckpt[0] = '\0';
    c->restored_active = 0;
    for (int i = 0; i < c->nmem; i++) {
        c->mem[i].participant = 0;
        c->mem[i].announced = 0;
        if (c->mem[i].state == NS(ACTIVE))
            c->mem[i].state = NS(JOINING);
        c->restored_active += c->mem[i].state == NS(JOINING);
    }
    c->started_ms = now.mono_ms;
    coord_save(c);
    coord_log(c, SPES_LOG_INFO, "run restored to checkpoint %s: round %llu, step %llu", k->id,
              (unsigned long long)k->round, (unsigned long long)k->step);
    char msg[128];
    snprintf(msg, sizeof msg, "run restored to %s (round %llu)", k->id, (unsigned long long)k->round);
    reply_list(c, to, msg, 0);
}

void spes_coord_sm_exported(spes_coord_sm *c, spes_coord_to to, const char *id, const char *out_dir, int rc,
                            const char *err)
{
    if (rc) {
        coord_reply_error(c, to, rc, SPES_MSG_CHECKPOINT_REQUEST, "%s", err);
        return;
    }
    char msg[700];
    snprintf(msg, sizeof msg, "checkpoint %s exported to %.600s", id, out_dir);
    reply_list(c, to, msg, 0);
}

/* export_name_ok says whether out is one plain path component: not empty, no '/', not "." or "..". */
static int export_name_ok(const char *out)
{
    return out[0] && !strchr(out, '/') && strcmp(out, ".") && strcmp(out, "..") &&
           strlen(out) <= SPES_COORD_EXPORT_NAME_MAX;
}

/* queue_export queues the export of k: to an absolute directory only for the local
 * control socket, else to exports/NAME under the coordinator's state
 * directory (docs/security.md). */
static void queue_export(spes_coord_sm *c, spes_coord_to to, const coord_ckpt *k, const char *out, int local)
{
    if (local && out[0] == '/') {
        push_ckpt_action(c, SPES_COORD_CKPT_EXPORT, to, k, out);
        return;
    }
    if (!export_name_ok(out)) {
        coord_reply_error(c, to, SPES_EAUTH, SPES_MSG_CHECKPOINT_REQUEST,
                          "export --out \"%.200s\" refused: %s one name (no '/', not \".\" or "
                          "\"..\", at most %d bytes), written to exports/NAME in the coordinator's state "
                          "directory",
                          out,
                          local ? "the control socket takes an absolute path or" : "a remote export takes",
                          SPES_COORD_EXPORT_NAME_MAX);
        return;
    }
    char dir[16 + SPES_COORD_EXPORT_NAME_MAX];
    snprintf(dir, sizeof dir, "exports/%s", out);
    push_ckpt_action(c, SPES_COORD_CKPT_EXPORT, to, k, dir);
}

void coord_checkpoint(spes_coord_sm *c, spes_coord_now now, const Spes__Wire__CheckpointRequest *r,
                      const spes_pki_identity *peer, spes_coord_to to)
{
    if (r->action != CA(LIST) && !coord_peer_is_operator(peer)) {
        coord_reply_error(c, to, SPES_EAUTH, SPES_MSG_CHECKPOINT_REQUEST,
                          "checkpoints need an operator certificate (%s is a %s)", peer->name,
                          spes_pki_role_name(peer->role));
        return;
    }
    if (r->action == CA(SAVE)) {
        save(c, now, r->wait, to);
        return;
    }
    if (r->action == CA(LIST)) {
        reply_list(c, to, "", 0);
        return;
    }
    coord_ckpt *k = find(c, r->id);
    if (!k) {
        coord_reply_error(c, to, SPES_ENOENT, SPES_MSG_CHECKPOINT_REQUEST, "no checkpoint %s", r->id);
        return;
    }
    if (r->action == CA(RESTORE)) {
        if (!k->complete)
            coord_reply_error(c, to, SPES_ESTATE, SPES_MSG_CHECKPOINT_REQUEST,
                              "checkpoint %s is not complete yet", k->id);
        else
            push_ckpt_action(c, SPES_COORD_CKPT_RESTORE, to, k, NULL);
    } else if (r->action == CA(EXPORT)) {
        queue_export(c, to, k, r->out_dir, coord_peer_is_local(peer));
    } else {
        coord_reply_error(c, to, SPES_EINVAL, SPES_MSG_CHECKPOINT_REQUEST, "unknown checkpoint action");
    }
}

struct json_t *coord_ckpt_json(const spes_coord_sm *c)
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

int coord_ckpt_load(spes_coord_sm *c, struct json_t *arr, const char *origin)
{
    c->nckpt = 0;
    for (size_t i = 0; json_is_array(arr) && i < json_array_size(arr) && c->nckpt < SPES_COORD_MAX_CKPTS;
         i++) {
        json_t *o = json_array_get(arr, i), *id = json_object_get(o, "id"), *h = json_object_get(o, "hash"),
               *holders = json_object_get(o, "holders");
        if (!json_is_string(id))
            return spes_errf(SPES_EFORMAT, "%s: a checkpoint record has no id", origin);
        coord_ckpt *k = &c->ckpts[c->nckpt++];
        memset(k, 0, sizeof *k);
        snprintf(k->id, sizeof k->id, "%s", json_string_value(id));
        k->round = (uint64_t)json_integer_value(json_object_get(o, "round"));
        k->step = (uint64_t)json_integer_value(json_object_get(o, "step"));
        k->created_ms = (uint64_t)json_integer_value(json_object_get(o, "created_ms"));
        k->complete = json_is_true(json_object_get(o, "complete"));
        if (json_is_string(h) && spes_hex_decode(json_string_value(h), k->hash, 32) == 0)
            k->hash_known = 1;
        for (size_t j = 0;
             json_is_array(holders) && j < json_array_size(holders) && j < SPES_COORD_MAX_MEMBERS; j++) {
            /* the record keeps every id it lists, in order, duplicates too */
            uint32_t *hv = realloc(k->holders, sizeof *hv * (size_t)(k->nholders + 1));
            if (!hv)
                return SPES_ENOMEM;
            k->holders = hv;
            k->holders[k->nholders++] = (uint32_t)json_integer_value(json_array_get(holders, j));
        }
    }
    return 0;
}
