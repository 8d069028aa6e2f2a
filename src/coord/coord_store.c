/* coord_store.c: the coordinator's persisted state as JSON text (the caller
 * writes it to state_dir/coordinator.json atomically on every change that
 * matters: membership, round, digest, checkpoints), and reading it back, so
 * a coordinator restart loses nothing. The format is in docs/protocol.md. */
#include "coord/coord_priv.h"
#include "core/error.h"
#include "core/sha256.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *cols_json(const uint8_t *cols, int E)
{
    json_t *a = json_array();
    for (int e = 0; e < E; e++)
        if (cols[e])
            json_array_append_new(a, json_integer(e));
    return a;
}

char *coord_state_json(const spes_coord_sm *c)
{
    char hex[65];
    json_t *o = json_object(), *mem = json_array();
    json_object_set_new(o, "run_id", json_string(c->run_id));
    json_object_set_new(o, "round", json_integer((json_int_t)c->round));
    json_object_set_new(o, "step", json_integer((json_int_t)c->step));
    json_object_set_new(o, "next_id", json_integer(c->next_id));
    spes_hex_encode(c->state_hash, 32, hex);
    json_object_set_new(o, "state_hash", c->state_hash_known ? json_string(hex) : json_null());
    spes_hex_encode(c->prev_hash, 32, hex);
    json_object_set_new(o, "prev_state_hash", c->prev_known ? json_string(hex) : json_null());
    for (int i = 0; i < c->nmem; i++) {
        const coord_member *m = &c->mem[i];
        json_t *mo = json_object();
        json_object_set_new(mo, "id", json_integer(m->id));
        json_object_set_new(mo, "name", json_string(m->name));
        json_object_set_new(mo, "url", json_string(m->url));
        json_object_set_new(mo, "state", json_integer(m->state));
        json_object_set_new(mo, "columns", cols_json(m->cols, c->E));
        json_array_append_new(mem, mo);
    }
    json_object_set_new(o, "members", mem);
    json_t *barred = json_array();
    for (int i = 0; i < c->nbarred; i++) {
        json_t *bo = json_object();
        json_object_set_new(bo, "id", json_integer(c->barred[i].id));
        json_object_set_new(bo, "name", json_string(c->barred[i].name));
        json_array_append_new(barred, bo);
    }
    json_object_set_new(o, "evicted", barred);
    json_t *gone = json_array();
    for (int i = 0; i < c->ndeparted; i++) {
        const coord_departed *d = &c->departed[i];
        json_array_append_new(gone, json_pack("{s:I,s:s,s:i,s:I,s:I}", "id", (json_int_t)d->id, "name",
                                              d->name, "state", d->state, "round", (json_int_t)d->round,
                                              "last_seen_ms", (json_int_t)d->last_seen_ms));
    }
    json_object_set_new(o, "departed", gone);
    json_object_set_new(o, "checkpoints", coord_ckpt_json(c));
    json_object_set_new(o, "pending_checkpoint", json_string(c->pending_ckpt));
    char *text = json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(o);
    return text;
}

static int load_member(spes_coord_sm *c, json_t *mo, const char *origin)
{
    json_t *id = json_object_get(mo, "id"), *name = json_object_get(mo, "name"),
           *url = json_object_get(mo, "url"), *st = json_object_get(mo, "state"),
           *cols = json_object_get(mo, "columns");
    if (!json_is_integer(id) || !json_is_string(name) || !json_is_string(url) || !json_is_integer(st) ||
        !json_is_array(cols))
        return spes_errf(SPES_EFORMAT, "%s: a member entry lacks id, name, url, state or columns", origin);
    for (size_t i = 0; i < json_array_size(cols); i++) {
        json_int_t e = json_integer_value(json_array_get(cols, i));
        if (e < 0 || e >= c->E)
            return spes_errf(SPES_EFORMAT, "%s: member %s has column %lld outside 0..%d", origin,
                             json_string_value(name), (long long)e, c->E - 1);
    }
    uint32_t mid = (uint32_t)json_integer_value(id);
    if (coord_find_id(c, mid))
        return spes_errf(SPES_EFORMAT, "%s: member id %u appears twice", origin, mid);
    if (c->nmem >= SPES_COORD_MAX_MEMBERS)
        return spes_errf(SPES_ERANGE, "%s: too many members", origin);
    coord_member *m = coord_add_member(c);
    if (!m)
        return SPES_ENOMEM;
    for (size_t i = 0; i < json_array_size(cols); i++)
        m->cols[json_integer_value(json_array_get(cols, i))] = 1;
    m->id = mid;
    if (m->id >= c->next_id)
        c->next_id = m->id + 1; /* a new member must never reuse an id */
    snprintf(m->name, sizeof m->name, "%s", json_string_value(name));
    snprintf(m->url, sizeof m->url, "%s", json_string_value(url));
    m->state = (int)json_integer_value(st);
    return 0;
}

int coord_state_load(spes_coord_sm *c, const char *json, const char *origin)
{
    json_error_t jerr;
    json_t *o = json_loads(json, 0, &jerr);
    if (!o)
        return spes_errf(SPES_EFORMAT, "%s:%d: %s", origin, jerr.line, jerr.text);
    int rc = 0;
    json_t *rid = json_object_get(o, "run_id"), *round = json_object_get(o, "round"),
           *step = json_object_get(o, "step"), *nid = json_object_get(o, "next_id"),
           *hash = json_object_get(o, "state_hash"), *mem = json_object_get(o, "members");
    if (!json_is_string(rid) || !json_is_integer(round) || !json_is_integer(step) || !json_is_integer(nid) ||
        !json_is_array(mem)) {
        rc = spes_errf(SPES_EFORMAT, "%s: missing run_id, round, step, next_id or members", origin);
        goto out;
    }
    snprintf(c->run_id, sizeof c->run_id, "%s", json_string_value(rid));
    c->round = (uint64_t)json_integer_value(round);
    c->step = (uint64_t)json_integer_value(step);
    c->next_id = (uint32_t)json_integer_value(nid);
    c->state_hash_known = 0;
    if (json_is_string(hash)) {
        if ((rc = spes_hex_decode(json_string_value(hash), c->state_hash, 32)) != 0)
            goto out;
        c->state_hash_known = 1;
    }
    json_t *prev = json_object_get(o, "prev_state_hash");
    if (json_is_string(prev) && (rc = spes_hex_decode(json_string_value(prev), c->prev_hash, 32)) == 0)
        c->prev_known = 1;
    for (size_t i = 0; i < json_array_size(mem) && !rc; i++)
        rc = load_member(c, json_array_get(mem, i), origin);
    json_t *barred =
        json_object_get(o, "evicted"); /* absent in a state written before slots were reclaimed */
    for (size_t i = 0; json_is_array(barred) && i < json_array_size(barred) && !rc; i++) {
        json_t *bo = json_array_get(barred, i), *bid = json_object_get(bo, "id"),
               *bname = json_object_get(bo, "name");
        if (!json_is_integer(bid) || !json_is_string(bname))
            rc = spes_errf(SPES_EFORMAT, "%s: an evicted entry lacks id or name", origin);
        else if ((rc = coord_bar(c, (uint32_t)json_integer_value(bid), json_string_value(bname))) == 0 &&
                 (uint32_t)json_integer_value(bid) >= c->next_id)
            c->next_id = (uint32_t)json_integer_value(bid) + 1; /* never reuse an id */
    }
    json_t *gone = json_object_get(o, "departed"); /* absent in a state written before it was kept */
    for (size_t i = 0; json_is_array(gone) && i < json_array_size(gone) && !rc; i++) {
        json_t *g = json_array_get(gone, i);
        json_int_t id = 0, state = 0, round = 0, seen = 0;
        const char *name = NULL;
        if (json_unpack(g, "{s:I,s:s,s:I,s:I,s:I}", "id", &id, "name", &name, "state", &state, "round",
                        &round, "last_seen_ms", &seen) != 0 ||
            id < 0 || round < 0 || seen < 0) {
            rc = spes_errf(SPES_EFORMAT, "%s: a departed entry lacks id, name, state, round or last_seen_ms",
                           origin);
            break;
        }
        coord_departed d = {.id = (uint32_t)id,
                            .state = (int)state,
                            .round = (uint64_t)round,
                            .last_seen_ms = (uint64_t)seen};
        snprintf(d.name, sizeof d.name, "%s", name);
        coord_departed_add(c, &d);
    }
    if (!rc)
        rc = coord_ckpt_load(c, json_object_get(o, "checkpoints"), origin);
    json_t *pc = json_object_get(o, "pending_checkpoint");
    if (!rc && json_is_string(pc))
        snprintf(c->pending_ckpt, sizeof c->pending_ckpt, "%s", json_string_value(pc));
out:
    json_decref(o);
    return rc;
}
