/* metrics_json.c: the snapshot as the dashboard's JSON document (/api/status,
 * `spesctl top`). Unknown numbers (NaN) are null. Names are JSON strings
 * (jansson escapes them); the page escapes them again for HTML. */
#include "core/error.h"
#include "metrics/metrics.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static json_t *real(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

static json_t *u64(uint64_t v)
{
    return json_integer((json_int_t)v);
}

static json_t *hist_json(const spes_metrics_hist *h)
{
    json_t *o = json_object(), *b = json_array();
    for (int i = 0; i <= SPES_METRICS_NBUCKETS; i++)
        json_array_append_new(b, u64(h->bucket[i]));
    json_object_set_new(o, "buckets", b);
    json_object_set_new(o, "count", u64(h->count));
    json_object_set_new(o, "sum", real(h->sum));
    return o;
}

static json_t *members_json(const spes_metrics_snapshot *s)
{
    json_t *a = json_array();
    for (int i = 0; i < s->nmembers; i++) {
        const spes_metrics_member *m = &s->members[i];
        json_t *o = json_object(), *cols = json_array();
        for (int e = 0; e < s->E && e < SPES_METRICS_MAX_E; e++)
            if (m->cols[e])
                json_array_append_new(cols, json_integer(e));
        json_object_set_new(o, "id", json_integer(m->id));
        json_object_set_new(o, "name", json_string(m->name));
        json_object_set_new(o, "state", json_string(spes_metrics_state_name(m->state)));
        json_object_set_new(o, "columns", cols);
        json_object_set_new(o, "round", u64(m->round));
        json_object_set_new(o, "loss", real(m->loss));
        json_object_set_new(o, "tokens_per_s", real(m->tps));
        json_object_set_new(o, "last_seen_unix_ms", u64(m->last_seen_ms));
        json_object_set_new(o, "behind_s", real(m->behind_s));
        json_object_set_new(o, "straggler_rounds", u64(m->straggler_rounds));
        if (m->have_counters) {
            json_object_set_new(o, "train_s", real(m->train_s));
            json_object_set_new(o, "wait_s", real(m->wait_s));
            json_object_set_new(o, "sent_bytes", u64(m->sent_bytes));
            json_object_set_new(o, "received_bytes", u64(m->received_bytes));
            json_object_set_new(o, "rounds_contributed", u64(m->rounds));
        }
        json_array_append_new(a, o);
    }
    return a;
}

static json_t *experts_json(const spes_metrics_snapshot *s)
{
    json_t *o = json_object(), *owners = json_array(), *load = json_array(), *norm = json_array();
    for (int e = 0; e < s->E; e++) {
        json_t *w = json_array();
        for (int i = 0; i < s->nmembers; i++)
            if (s->members[i].cols[e])
                json_array_append_new(w, json_string(s->members[i].name));
        json_array_append_new(owners, w);
        json_array_append_new(norm, real(s->delta_norm[e]));
    }
    for (int l = 0; l < s->L; l++) {
        json_t *row = json_array();
        for (int e = 0; e < s->E; e++)
            json_array_append_new(row, real(s->router_load[(size_t)l * s->E + e]));
        json_array_append_new(load, row);
    }
    json_object_set_new(o, "count", json_integer(s->E));
    json_object_set_new(o, "layers", json_integer(s->L));
    json_object_set_new(o, "owners", owners);
    json_object_set_new(o, "router_load", load);
    json_object_set_new(o, "delta_norm", norm);
    return o;
}

static json_t *history_json(const spes_metrics_snapshot *s)
{
    json_t *a = json_array();
    for (int i = 0; i < s->nhist; i++) {
        const spes_metrics_round *r = &s->hist[i];
        json_t *o = json_object(), *nodes = json_array();
        for (int k = 0; k < r->nnodes; k++) {
            json_t *n = json_object();
            json_object_set_new(n, "name", json_string(r->node[k].name));
            json_object_set_new(n, "train_s", real(r->node[k].train_s));
            json_object_set_new(n, "wait_s", real(r->node[k].wait_s));
            json_array_append_new(nodes, n);
        }
        json_object_set_new(o, "round", u64(r->round));
        json_object_set_new(o, "step", u64(r->step));
        json_object_set_new(o, "loss", real(r->loss));
        json_object_set_new(o, "tokens_per_s", real(r->tps));
        json_object_set_new(o, "committed_unix_ms", u64(r->committed_ms));
        json_object_set_new(o, "nodes", nodes);
        json_array_append_new(a, o);
    }
    return a;
}

int spes_metrics_render_json(const spes_metrics_snapshot *s, uint64_t now_ms, char **out, size_t *len)
{
    static const char *const cls[SPES_METRICS_NCLASS] = {"control", "blob"};
    json_t *o = json_object();
    if (!o)
        return spes_errf(SPES_ENOMEM, "metrics: out of memory");
    json_object_set_new(o, "name", json_string(s->name));
    json_object_set_new(o, "version", json_string(s->version));
    json_object_set_new(o, "protocol", json_integer(s->protocol));
    json_object_set_new(o, "run_id", json_string(s->run_id));
    json_object_set_new(o, "coordinator", json_boolean(s->coordinator));
    json_object_set_new(o, "now_unix_ms", u64(now_ms));
    json_object_set_new(o, "round", u64(s->round));
    json_object_set_new(o, "step", u64(s->step));
    json_object_set_new(o, "rounds_applied", u64(s->rounds_applied));
    json_object_set_new(o, "loss", real(s->loss));
    json_object_set_new(o, "tokens_per_s", real(s->tps));
    json_object_set_new(o, "run_loss", real(s->run_loss));
    json_object_set_new(o, "run_tokens_per_s", real(s->run_tps));
    json_object_set_new(o, "round_deadline_s", real(s->deadline_s));
    json_object_set_new(o, "median_announce_s", real(s->median_announce_s));
    json_object_set_new(o, "round_train_seconds", hist_json(&s->train_s));
    json_object_set_new(o, "round_wait_seconds", hist_json(&s->wait_s));
    json_t *sent = json_object(), *recv = json_object();
    for (int c = 0; c < SPES_METRICS_NCLASS; c++)
        if (c != SPES_METRICS_CONTROL || s->have_control_bytes) {
            json_object_set_new(sent, cls[c], u64(s->sent[c]));
            json_object_set_new(recv, cls[c], u64(s->received[c]));
        }
    json_object_set_new(o, "sent_bytes", sent);
    json_object_set_new(o, "received_bytes", recv);
    json_object_set_new(o, "train_seconds_total", real(s->train_total_s));
    json_object_set_new(o, "wait_seconds_total", real(s->wait_total_s));
    json_object_set_new(o, "rounds_contributed", u64(s->rounds_contributed));
    json_object_set_new(o, "blob_store_bytes", u64(s->blob_store_bytes));
    json_object_set_new(o, "blob_store_blobs", u64(s->blob_store_blobs));
    json_t *ref = json_object();
    for (int r = 0; r < SPES_METRICS_NREASONS; r++)
        json_object_set_new(ref, spes_metrics_reason_name((enum spes_metrics_reason)r), u64(s->refusals[r]));
    json_object_set_new(o, "refusals", ref);
    json_object_set_new(o, "digest_mismatches", u64(s->digest_mismatches));
    json_object_set_new(o, "members", members_json(s));
    if (s->have_last_round) {
        json_t *lr = json_object(), *rf = json_array(), *mm = json_array();
        for (int i = 0; i < s->nlast_refused; i++)
            json_array_append_new(rf, json_string(s->last_refused[i]));
        for (int i = 0; i < s->nlast_mismatch; i++)
            json_array_append_new(mm, json_string(s->last_mismatch[i]));
        json_object_set_new(lr, "round", u64(s->last_round));
        json_object_set_new(lr, "contributors", json_integer(s->last_contributors));
        json_object_set_new(lr, "refused", rf);
        json_object_set_new(lr, "digest_mismatch", mm);
        json_object_set_new(o, "last_round", lr);
    } else {
        json_object_set_new(o, "last_round", json_null());
    }
    json_object_set_new(o, "experts", experts_json(s));
    json_object_set_new(o, "history", history_json(s));
    char *txt = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!txt)
        return spes_errf(SPES_ENOMEM, "metrics: out of memory rendering JSON");
    *out = txt;
    *len = strlen(txt);
    return 0;
}
