/* dmetrics.c: the metrics snapshot's upkeep. The loop owns the snapshot and
 * refreshes it on every tick; the worker's notes (routing counts, column
 * deltas) go through wmu. Each tick the loop copies the snapshot into pub
 * (under pmu: a memcpy, no rendering on the loop); a request copies pub into
 * the HTTP thread's own snapshot and renders that, so a scrape costs the loop
 * nothing (bench/bench_metrics.c measures the rendering). The coordinator's
 * part is read through the same StatusRequest that `spesctl status` sends,
 * answered on the loop. */
#include "daemon/dmetrics.h"
#include "blob/blob.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "daemon/counters.h"
#include "daemon/node.h"
#include "metrics/metrics.h"
#include "net/net.h"
#include "proto/proto.h"
#include "proto/spes.pb-c.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifndef SPES_VERSION
#define SPES_VERSION "0.0.0"
#endif

#define BLOB_SCAN_MS 2000 /* the store's usage walks its directory: this often, and per round applied */

struct spes_dmetrics {
    spes_daemon *d;
    spes_metrics_snapshot *s; /* [loop] */
    uint64_t blob_scan_ms;
    uint64_t blob_scan_round; /* the node's round at that scan */
    uint64_t status_round;    /* the coordinator's round at the last tick */
    uint64_t refused_round, mm_round;
    int mm_seen;
    struct {
        uint32_t id;
        double train_s, wait_s;
    } prev[SPES_METRICS_MAX_MEMBERS]; /* members' counters at the last commit, for the timeline */
    int nprev;
    struct {
        uint32_t id;
        uint64_t rounds;
    } strag[SPES_METRICS_MAX_MEMBERS]; /* rounds each member was a straggler in (status shows the last) */
    int nstrag;
    uint64_t strag_round; /* the last round counted there */
    /* the worker's notes, guarded by wmu */
    pthread_mutex_t wmu;
    int L, E;
    double *acc; /* (L, E) rows routed since the last applied round */
    double norm[SPES_METRICS_MAX_E];
    int have_norm;
    /* the published copy, guarded by pmu; the HTTP thread's own copy */
    pthread_mutex_t pmu;
    spes_metrics_snapshot *pub;
    spes_metrics_snapshot *mine; /* [HTTP thread] (libmicrohttpd runs one: requests come one at a time) */
    void *http;
    int port;
};

int spes_dmetrics_open(spes_dmetrics **out, spes_daemon *d)
{
    *out = NULL;
    if (!d->cfg.metrics[0])
        return 0;
    spes_dmetrics *m = calloc(1, sizeof *m);
    if (!m || !(m->s = malloc(sizeof *m->s)) || !(m->pub = malloc(sizeof *m->pub)) ||
        !(m->mine = malloc(sizeof *m->mine))) {
        if (m) {
            free(m->s);
            free(m->pub);
        }
        free(m);
        return spes_errf(SPES_ENOMEM, "metrics: out of memory");
    }
    m->d = d;
    spes_metrics_snapshot_init(m->s);
    snprintf(m->s->name, sizeof m->s->name, "%s", d->cfg.name);
    snprintf(m->s->version, sizeof m->s->version, "%s", SPES_VERSION);
    m->s->protocol = SPES_PROTO_VERSION;
    m->s->coordinator = d->coord != NULL;
    m->refused_round = m->mm_round = m->strag_round = UINT64_MAX;
    pthread_mutex_init(&m->wmu, NULL);
    pthread_mutex_init(&m->pmu, NULL);
    spes_dmetrics_tick(m);
    int rc = spes_dmetrics_http_start(m, d->cfg.metrics, &m->http, &m->port);
    if (rc) {
        spes_dmetrics_close(m);
        return rc;
    }
    log_info("metrics: http://%s/metrics (port %d), dashboard at /", d->cfg.metrics, m->port);
    *out = m;
    return 0;
}

void spes_dmetrics_close(spes_dmetrics *m)
{
    if (!m)
        return;
    if (m->http)
        spes_dmetrics_http_stop(m->http);
    pthread_mutex_destroy(&m->wmu);
    pthread_mutex_destroy(&m->pmu);
    free(m->acc);
    free(m->pub);
    free(m->mine);
    free(m->s);
    free(m);
}

int spes_dmetrics_port(const spes_dmetrics *m)
{
    return m ? m->port : 0;
}

/* ---- the worker's notes ---- */

void spes_dmetrics_note_routing(spes_dmetrics *m, const spes_model *model)
{
    if (!m)
        return;
    int L = 0, E = model->cfg.num_experts;
    const float *c = spes_model_route_counts(model, &L);
    if (L > SPES_METRICS_MAX_L)
        L = SPES_METRICS_MAX_L;
    if (E > SPES_METRICS_MAX_E || E <= 0 || L <= 0)
        return;
    pthread_mutex_lock(&m->wmu);
    if (!m->acc || m->L != L || m->E != E) {
        free(m->acc);
        m->acc = calloc((size_t)L * E, sizeof *m->acc);
        m->L = m->acc ? L : 0;
        m->E = m->acc ? E : 0;
    }
    for (size_t i = 0; m->acc && i < (size_t)L * E; i++)
        m->acc[i] += c[i];
    pthread_mutex_unlock(&m->wmu);
}

void spes_dmetrics_note_delta(spes_dmetrics *m, const spes_layout *lo, int E, const float *next,
                              const float *prev)
{
    if (!m || E <= 0 || E > SPES_METRICS_MAX_E)
        return;
    double norm[SPES_METRICS_MAX_E];
    for (int e = 0; e < E; e++) {
        size_t off = lo->shared_numel + (size_t)e * lo->column_numel;
        double sum = 0;
        for (size_t i = 0; i < lo->column_numel; i++) {
            double d = (double)next[off + i] - (double)prev[off + i];
            sum += d * d;
        }
        norm[e] = sqrt(sum);
    }
    pthread_mutex_lock(&m->wmu);
    memcpy(m->norm, norm, sizeof norm[0] * (size_t)E);
    m->have_norm = E;
    pthread_mutex_unlock(&m->wmu);
}

/* ---- the loop's side ---- */

void spes_dmetrics_round_applied(spes_dmetrics *m, uint64_t r, double train_s, double wait_s)
{
    if (!m)
        return;
    spes_metrics_snapshot *s = m->s;
    s->rounds_applied++;
    if (train_s >= 0 && wait_s >= 0) {
        spes_metrics_hist_observe(&s->train_s, train_s);
        spes_metrics_hist_observe(&s->wait_s, wait_s);
    }
    /* the routed rows of the round just trained become the published load */
    pthread_mutex_lock(&m->wmu);
    if (m->acc && train_s >= 0) {
        s->L = m->L;
        s->E = m->E;
        for (int l = 0; l < m->L; l++) {
            double tot = 0;
            for (int e = 0; e < m->E; e++)
                tot += m->acc[(size_t)l * m->E + e];
            for (int e = 0; e < m->E; e++)
                s->router_load[(size_t)l * m->E + e] = tot > 0 ? m->acc[(size_t)l * m->E + e] / tot : NAN;
        }
        memset(m->acc, 0, sizeof *m->acc * (size_t)m->L * m->E);
    }
    pthread_mutex_unlock(&m->wmu);
    double loss, tps;
    uint64_t round, step;
    spes_node_status(m->d->node, &loss, &tps, &round, &step);
    spes_metrics_round *e = spes_metrics_round_at(s, r);
    if (!e)
        return;
    if (!s->coordinator) { /* the coordinator times every member from their counters instead */
        if (train_s >= 0)
            spes_metrics_round_node(e, s->name, train_s, wait_s);
        e->loss = loss;
        e->tps = tps;
        e->step = step;
        e->committed_ms = spes_now_ms();
    }
}

static void take_status(void *ctx, const uint8_t *data, size_t len)
{
    Spes__Wire__StatusReply **out = ctx;
    int type = 0;
    ProtobufCMessage *msg = NULL;
    if (data && spes_proto_decode(data, len, &type, &msg) == 0) {
        if (type == SPES_MSG_STATUS_REPLY)
            *out = (Spes__Wire__StatusReply *)msg;
        else
            spes_proto_free(msg);
    }
}

static const char *member_name(const Spes__Wire__StatusReply *st, uint32_t id)
{
    for (size_t i = 0; i < st->n_members; i++)
        if (st->members[i]->node_id == id)
            return st->members[i]->name;
    return "?";
}

/* time_members gives round entry e each member's seconds training and waiting
 * since the previous commit, from the counters in their heartbeats. */
/* note_stragglers sets each member's lag in the last round and counts, once per round, the rounds
 * each member was a straggler in (docs/design.md, "Round deadlines"). */
static void note_stragglers(spes_dmetrics *m, const Spes__Wire__LastRound *lr)
{
    spes_metrics_snapshot *s = m->s;
    int fresh = lr->round != m->strag_round;
    m->strag_round = lr->round;
    for (size_t i = 0; i < lr->n_stragglers; i++) {
        const Spes__Wire__Straggler *g = lr->stragglers[i];
        for (int k = 0; k < s->nmembers; k++)
            if (s->members[k].id == g->node_id)
                s->members[k].behind_s = g->behind_ms / 1000.0;
        if (!fresh)
            continue;
        int k = 0;
        while (k < m->nstrag && m->strag[k].id != g->node_id)
            k++;
        if (k == m->nstrag && m->nstrag < SPES_METRICS_MAX_MEMBERS)
            m->strag[m->nstrag++].id = g->node_id;
        if (k < m->nstrag)
            m->strag[k].rounds++;
    }
    for (int k = 0; k < s->nmembers; k++)
        for (int j = 0; j < m->nstrag; j++)
            if (m->strag[j].id == s->members[k].id)
                s->members[k].straggler_rounds = m->strag[j].rounds;
}

static void time_members(spes_dmetrics *m, spes_metrics_round *e)
{
    const spes_metrics_snapshot *s = m->s;
    for (int i = 0; i < s->nmembers; i++) {
        const spes_metrics_member *mm = &s->members[i];
        if (!mm->have_counters)
            continue;
        int k = 0;
        while (k < m->nprev && m->prev[k].id != mm->id)
            k++;
        if (k == m->nprev) {
            if (k == SPES_METRICS_MAX_MEMBERS)
                continue;
            m->nprev++;
        } else if (mm->train_s >= m->prev[k].train_s && mm->wait_s >= m->prev[k].wait_s &&
                   (mm->train_s > m->prev[k].train_s || mm->wait_s > m->prev[k].wait_s)) {
            spes_metrics_round_node(e, mm->name, mm->train_s - m->prev[k].train_s,
                                    mm->wait_s - m->prev[k].wait_s);
        }
        m->prev[k].id = mm->id;
        m->prev[k].train_s = mm->train_s;
        m->prev[k].wait_s = mm->wait_s;
    }
}

/* coordinator_view reads the run's status from the coordinator on this loop. */
static void coordinator_view(spes_dmetrics *m)
{
    spes_metrics_snapshot *s = m->s;
    Spes__Wire__StatusRequest req = SPES__WIRE__STATUS_REQUEST__INIT;
    uint8_t *env = NULL;
    size_t len = 0;
    if (spes_proto_encode(SPES_MSG_STATUS_REQUEST, &req.base, &env, &len) != 0)
        return;
    Spes__Wire__StatusReply *st = NULL;
    spes_pki_identity local;
    memset(&local, 0, sizeof local);
    spes_daemon_handle(m->d, env, len, &local, take_status, &st);
    free(env);
    if (!st)
        return;
    snprintf(s->run_id, sizeof s->run_id, "%s", st->run_id);
    s->round = st->round;
    s->step = st->step;
    s->run_loss = st->loss > 0 ? st->loss : NAN;
    s->run_tps = st->tokens_per_s;
    int E = s->E;
    s->nmembers = 0;
    for (size_t i = 0; i < st->n_members && i < SPES_METRICS_MAX_MEMBERS; i++) {
        const Spes__Wire__MemberInfo *mi = st->members[i];
        spes_metrics_member *mm = &s->members[s->nmembers++];
        memset(mm, 0, sizeof *mm);
        mm->id = mi->node_id;
        snprintf(mm->name, sizeof mm->name, "%s", mi->name);
        mm->state = mi->state;
        mm->round = mi->round;
        mm->loss = mi->loss > 0 ? mi->loss : NAN;
        mm->tps = mi->tokens_per_s;
        mm->last_seen_ms = mi->last_seen_unix_ms;
        mm->behind_s = st->last_round ? 0.0 : NAN; /* a straggler's below */
        if (mi->counters) {
            const Spes__Wire__NodeCounters *nc = mi->counters;
            mm->have_counters = 1;
            mm->train_s = nc->train_s;
            mm->wait_s = nc->wait_s;
            mm->sent_bytes = nc->control_sent_bytes + nc->blob_sent_bytes;
            mm->received_bytes = nc->control_received_bytes + nc->blob_received_bytes;
            mm->rounds = nc->rounds;
        }
        for (size_t k = 0; k < mi->n_columns; k++)
            if (mi->columns[k] < SPES_METRICS_MAX_E) {
                mm->cols[mi->columns[k]] = 1;
                if ((int)mi->columns[k] >= E)
                    E = (int)mi->columns[k] + 1;
            }
    }
    s->E = E;
    s->deadline_s = st->round_deadline_ms ? st->round_deadline_ms / 1000.0 : NAN;
    const Spes__Wire__LastRound *lr = st->last_round;
    s->median_announce_s = lr ? lr->median_announce_ms / 1000.0 : NAN;
    if (lr)
        note_stragglers(m, lr);
    s->have_last_round = lr != NULL;
    if (lr) {
        s->last_round = lr->round;
        s->last_contributors = lr->contributors;
        s->nlast_refused = 0;
        for (size_t i = 0; i < lr->n_refused && i < 8; i++)
            snprintf(s->last_refused[s->nlast_refused++], sizeof s->last_refused[0], "%s",
                     lr->refused[i]->reason);
        s->nlast_mismatch = 0;
        for (size_t i = 0; i < lr->n_digest_mismatch && i < 8; i++)
            snprintf(s->last_mismatch[s->nlast_mismatch++], sizeof s->last_mismatch[0], "%s",
                     member_name(st, lr->digest_mismatch[i]));
        /* refusals are fixed at the commit; digest mismatches arrive after it */
        if (lr->round != m->refused_round) {
            for (size_t i = 0; i < lr->n_refused; i++)
                s->refusals[spes_metrics_reason_of(lr->refused[i]->reason)]++;
            m->refused_round = lr->round;
        }
        int n = (int)lr->n_digest_mismatch;
        if (lr->round != m->mm_round) {
            s->digest_mismatches += (uint64_t)n;
            m->mm_round = lr->round;
        } else if (n > m->mm_seen) {
            s->digest_mismatches += (uint64_t)(n - m->mm_seen);
        }
        m->mm_seen = n;
        if (st->round > m->status_round) {
            spes_metrics_round *e = spes_metrics_round_at(s, lr->round);
            if (e)
                time_members(m, e);
            if (e) {
                e->loss = s->run_loss;
                e->tps = s->run_tps;
                e->step = st->step;
                e->committed_ms = lr->committed_unix_ms;
            }
        }
    }
    m->status_round = st->round;
    spes_proto_free(&st->base);
}

void spes_dmetrics_tick(spes_dmetrics *m)
{
    if (!m)
        return;
    spes_metrics_snapshot *s = m->s;
    double loss, tps;
    uint64_t round, step;
    spes_node_status(m->d->node, &loss, &tps, &round, &step);
    s->loss = loss > 0 ? loss : NAN;
    s->tps = tps > 0 ? tps : NAN;
    s->round = round;
    s->step = step;
    spes_daemon_counters dc;
    spes_daemon_counters_get(&dc);
    for (int c = 0; c < SPES_METRICS_NCLASS; c++) {
        spes_net_class nc = c == SPES_METRICS_CONTROL ? SPES_NET_CONTROL : SPES_NET_BLOB;
        s->sent[c] = dc.net.sent_bytes[nc];
        s->received[c] = dc.net.received_bytes[nc];
        s->sent_msgs[c] = dc.net.sent_msgs[nc];
        s->received_msgs[c] = dc.net.received_msgs[nc];
    }
    s->have_control_bytes = 1;
    s->train_total_s = dc.train_s;
    s->wait_total_s = dc.wait_s;
    s->rounds_contributed = dc.rounds;
    if (m->d->server) {
        spes_net_server_stats st;
        spes_net_server_get_stats(m->d->server, &st);
        s->have_listener = 1;
        s->conns_over_cap = st.conns_refused;
        s->handshakes_expired = st.handshakes_expired;
        s->conns_idle_closed = st.idle_closed;
        s->listener_restarts = st.listener_restarts;
    }
    if (m->d->push) {
        spes_blob_push_stats ps;
        spes_blob_push_rx_stats(m->d->push, &ps);
        s->have_pushes = 1;
        s->pushes_completed = ps.completed;
        s->pushes_refused = ps.refused;
        s->push_bytes = ps.bytes;
        s->pushes_in_progress = ps.in_progress;
    }
    spes_blob_store *b = spes_node_blobs(m->d->node);
    if (b) {
        uint64_t now = spes_mono_ms();
        /* a round applied wrote and deleted blobs: look again then */
        if (now - m->blob_scan_ms >= BLOB_SCAN_MS || !m->blob_scan_ms || round != m->blob_scan_round) {
            m->blob_scan_ms = now;
            m->blob_scan_round = round;
            uint64_t bytes = 0;
            uint32_t nb = 0;
            if (spes_blob_store_usage(b, &bytes, &nb) == 0) {
                s->blob_store_bytes = bytes;
                s->blob_store_blobs = nb;
            }
        }
    }
    pthread_mutex_lock(&m->wmu);
    if (m->have_norm) {
        if (s->E < m->have_norm)
            s->E = m->have_norm;
        memcpy(s->delta_norm, m->norm, sizeof m->norm[0] * (size_t)m->have_norm);
    }
    if (s->E < m->E)
        s->E = m->E;
    if (s->L < m->L)
        s->L = m->L;
    pthread_mutex_unlock(&m->wmu);
    if (m->d->coord)
        coordinator_view(m);
    pthread_mutex_lock(&m->pmu);
    memcpy(m->pub, s, sizeof *s);
    pthread_mutex_unlock(&m->pmu);
}

int spes_dmetrics_get(spes_dmetrics *m, const char *path, char **out, size_t *len)
{
    int which = !strcmp(path, "/metrics") ? 1 : !strcmp(path, "/api/status") ? 2 : 0;
    if (!which)
        return SPES_ENOENT;
    pthread_mutex_lock(&m->pmu);
    memcpy(m->mine, m->pub, sizeof *m->mine);
    pthread_mutex_unlock(&m->pmu);
    return which == 1 ? spes_metrics_render_prom(m->mine, out, len)
                      : spes_metrics_render_json(m->mine, spes_now_ms(), out, len);
}
