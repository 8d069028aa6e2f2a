/* metrics.c: the snapshot's helpers (histograms, refusal reasons, the round
 * history) and its Prometheus text exposition. Names carry their unit
 * (_seconds, _bytes, _ratio) and counters end in _total, as promtool wants. */
#include "metrics/metrics.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double spes_metrics_buckets_s[SPES_METRICS_NBUCKETS] = {0.1, 0.25, 0.5, 1,   2.5, 5,
                                                              10,  30,   60,  120, 300, 600};

static const char *const state_names[] = {"unspecified", "pending", "joining", "active",
                                          "draining",    "left",    "failed",  "evicted"};
#define NSTATES ((int)(sizeof state_names / sizeof state_names[0]))

static const char *const reason_names[SPES_METRICS_NREASONS] = {"non_finite", "out_of_bound", "malformed",
                                                                "unavailable", "other"};

void spes_metrics_snapshot_init(spes_metrics_snapshot *s)
{
    memset(s, 0, sizeof *s);
    s->loss = s->tps = s->run_loss = s->run_tps = s->deadline_s = s->median_announce_s = NAN;
    for (size_t i = 0; i < sizeof s->router_load / sizeof s->router_load[0]; i++)
        s->router_load[i] = NAN;
    for (int i = 0; i < SPES_METRICS_MAX_E; i++)
        s->delta_norm[i] = NAN;
}

void spes_metrics_hist_observe(spes_metrics_hist *h, double v)
{
    int b = 0;
    while (b < SPES_METRICS_NBUCKETS && v > spes_metrics_buckets_s[b])
        b++;
    h->bucket[b]++;
    h->count++;
    h->sum += v;
}

enum spes_metrics_reason spes_metrics_reason_of(const char *t)
{
    if (strstr(t, "NaN") || strstr(t, "infinite"))
        return SPES_METRICS_R_NON_FINITE;
    if (strstr(t, "beyond the bound"))
        return SPES_METRICS_R_OUT_OF_BOUND;
    if (strstr(t, "not a contribution") || strstr(t, "contribution column") ||
        strstr(t, "contribution has") || strstr(t, "contribution is") || strstr(t, "contribution sizes") ||
        strstr(t, "contribution version") || strstr(t, "codec") || strstr(t, "manifest"))
        return SPES_METRICS_R_MALFORMED;
    if (strstr(t, "fetch") || strstr(t, "timed out") || strstr(t, "no peer") || strstr(t, "unreachable") ||
        strstr(t, "not found") || strstr(t, "nobody"))
        return SPES_METRICS_R_UNAVAILABLE;
    return SPES_METRICS_R_OTHER;
}

const char *spes_metrics_reason_name(enum spes_metrics_reason r)
{
    return (int)r >= 0 && r < SPES_METRICS_NREASONS ? reason_names[r] : "other";
}

const char *spes_metrics_state_name(int state)
{
    return state >= 0 && state < NSTATES ? state_names[state] : "unknown";
}

spes_metrics_round *spes_metrics_round_at(spes_metrics_snapshot *s, uint64_t r)
{
    for (int i = s->nhist - 1; i >= 0; i--)
        if (s->hist[i].round == r)
            return &s->hist[i];
    if (s->nhist > 0 && s->hist[s->nhist - 1].round > r)
        return NULL;
    if (s->nhist == SPES_METRICS_HISTORY) {
        memmove(&s->hist[0], &s->hist[1], sizeof s->hist[0] * (SPES_METRICS_HISTORY - 1));
        s->nhist--;
    }
    spes_metrics_round *e = &s->hist[s->nhist++];
    memset(e, 0, sizeof *e);
    e->round = r;
    e->loss = e->tps = NAN;
    return e;
}

void spes_metrics_round_node(spes_metrics_round *e, const char *name, double train_s, double wait_s)
{
    int i = 0;
    while (i < e->nnodes && strcmp(e->node[i].name, name))
        i++;
    if (i == SPES_METRICS_ROUND_NODES)
        return;
    if (i == e->nnodes) {
        e->nnodes++;
        snprintf(e->node[i].name, sizeof e->node[i].name, "%s", name);
    }
    e->node[i].train_s = train_s;
    e->node[i].wait_s = wait_s;
}

size_t spes_metrics_escape_label(char *out, size_t n, const char *v)
{
    size_t k = 0;
    for (; *v; v++) {
        const char *rep = NULL;
        char one[2] = {*v, 0};
        if (*v == '\\')
            rep = "\\\\";
        else if (*v == '"')
            rep = "\\\"";
        else if (*v == '\n')
            rep = "\\n";
        else
            rep = one;
        for (; *rep; rep++, k++)
            if (k + 1 < n)
                out[k] = *rep;
    }
    if (n)
        out[k < n ? k : n - 1] = '\0';
    return k;
}

/* ---- exposition ---- */

static void head(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* num prints v as Prometheus writes floats: NaN, +Inf, -Inf or %.17g. */
static void num(FILE *f, double v)
{
    if (isnan(v))
        fputs("NaN", f);
    else if (isinf(v))
        fputs(v > 0 ? "+Inf" : "-Inf", f);
    else
        fprintf(f, "%.17g", v);
}

static void sample(FILE *f, const char *name, const char *labels, double v)
{
    fprintf(f, "%s%s%s%s ", name, labels ? "{" : "", labels ? labels : "", labels ? "}" : "");
    num(f, v);
    fputc('\n', f);
}

static void hist(FILE *f, const char *name, const char *help, const spes_metrics_hist *h)
{
    char n[128];
    head(f, name, "histogram", help);
    uint64_t cum = 0;
    for (int b = 0; b < SPES_METRICS_NBUCKETS; b++) {
        cum += h->bucket[b];
        fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, spes_metrics_buckets_s[b], (unsigned long long)cum);
    }
    fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)h->count);
    snprintf(n, sizeof n, "%s_sum", name);
    sample(f, n, NULL, h->sum);
    fprintf(f, "%s_count %llu\n", name, (unsigned long long)h->count);
}

static const char *const class_names[SPES_METRICS_NCLASS] = {"control", "blob"};

static void render(FILE *f, const spes_metrics_snapshot *s)
{
    char lab[512], esc[256];
    spes_metrics_escape_label(esc, sizeof esc, s->version);
    head(f, "spes_build_info", "gauge",
         "Software version and wire protocol version of this daemon (always 1).");
    snprintf(lab, sizeof lab, "version=\"%s\",protocol=\"%d\"", esc, s->protocol);
    sample(f, "spes_build_info", lab, 1);
    head(f, "spes_coordinator", "gauge", "1 if this daemon coordinates the run, else 0.");
    sample(f, "spes_coordinator", NULL, s->coordinator);
    head(f, "spes_rounds_committed_total", "counter",
         "Rounds the run has committed (this daemon holds S_round).");
    sample(f, "spes_rounds_committed_total", NULL, (double)s->round);
    head(f, "spes_rounds_applied_total", "counter", "Rounds this daemon applied since it started.");
    sample(f, "spes_rounds_applied_total", NULL, (double)s->rounds_applied);
    head(f, "spes_step", "gauge", "Optimizer steps done in the agreed state.");
    sample(f, "spes_step", NULL, (double)s->step);
    head(f, "spes_training_loss", "gauge",
         "Training loss of this daemon's last step (NaN before the first).");
    sample(f, "spes_training_loss", NULL, s->loss);
    head(f, "spes_tokens_per_second", "gauge",
         "Training throughput of this daemon's last step, in tokens per second.");
    sample(f, "spes_tokens_per_second", NULL, s->tps);
    hist(f, "spes_round_train_seconds", "Seconds this daemon trained per round.", &s->train_s);
    hist(f, "spes_round_wait_seconds", "Seconds from the end of training to the applied commit, per round.",
         &s->wait_s);
    head(f, "spes_payload_sent_bytes_total", "counter",
         "Payload bytes this daemon sent, by class of traffic.");
    for (int c = 0; c < SPES_METRICS_NCLASS; c++)
        if (c != SPES_METRICS_CONTROL || s->have_control_bytes) {
            snprintf(lab, sizeof lab, "class=\"%s\"", class_names[c]);
            sample(f, "spes_payload_sent_bytes_total", lab, (double)s->sent[c]);
        }
    head(f, "spes_payload_received_bytes_total", "counter",
         "Payload bytes this daemon received, by class of traffic.");
    for (int c = 0; c < SPES_METRICS_NCLASS; c++)
        if (c != SPES_METRICS_CONTROL || s->have_control_bytes) {
            snprintf(lab, sizeof lab, "class=\"%s\"", class_names[c]);
            sample(f, "spes_payload_received_bytes_total", lab, (double)s->received[c]);
        }
    if (s->have_control_bytes) {
        head(f, "spes_payload_sent_messages_total", "counter",
             "Messages this daemon sent, by class of traffic.");
        for (int c = 0; c < SPES_METRICS_NCLASS; c++) {
            snprintf(lab, sizeof lab, "class=\"%s\"", class_names[c]);
            sample(f, "spes_payload_sent_messages_total", lab, (double)s->sent_msgs[c]);
        }
        head(f, "spes_payload_received_messages_total", "counter",
             "Messages this daemon received, by class of traffic.");
        for (int c = 0; c < SPES_METRICS_NCLASS; c++) {
            snprintf(lab, sizeof lab, "class=\"%s\"", class_names[c]);
            sample(f, "spes_payload_received_messages_total", lab, (double)s->received_msgs[c]);
        }
        head(f, "spes_train_seconds_total", "counter",
             "Seconds this daemon spent training since it started.");
        sample(f, "spes_train_seconds_total", NULL, s->train_total_s);
        head(f, "spes_wait_seconds_total", "counter",
             "Seconds this daemon spent between the end of training and holding the next state.");
        sample(f, "spes_wait_seconds_total", NULL, s->wait_total_s);
        head(f, "spes_rounds_contributed_total", "counter",
             "Rounds committed with this daemon among the contributors.");
        sample(f, "spes_rounds_contributed_total", NULL, (double)s->rounds_contributed);
    }
    head(f, "spes_blob_store_bytes", "gauge",
         "Bytes held in the blob store (blobs, manifests, partial fetches).");
    sample(f, "spes_blob_store_bytes", NULL, (double)s->blob_store_bytes);
    head(f, "spes_blob_store_blobs", "gauge", "Blobs held in the blob store.");
    sample(f, "spes_blob_store_blobs", NULL, (double)s->blob_store_blobs);
    if (s->have_listener) {
        head(f, "spes_listener_connections_ended_total", "counter",
             "Connections this daemon's listener ended, by why: over a connection cap, not through the "
             "handshake in time, or idle.");
        sample(f, "spes_listener_connections_ended_total", "why=\"over_cap\"", (double)s->conns_over_cap);
        sample(f, "spes_listener_connections_ended_total", "why=\"handshake_deadline\"",
               (double)s->handshakes_expired);
        sample(f, "spes_listener_connections_ended_total", "why=\"idle\"", (double)s->conns_idle_closed);
        head(f, "spes_listener_restarts_total", "counter",
             "Times this daemon listened again because its listener had stopped taking connections.");
        sample(f, "spes_listener_restarts_total", NULL, (double)s->listener_restarts);
    }
    if (s->have_pushes) {
        head(
            f, "spes_blob_pushes_total", "counter",
            "Blobs pushed to this daemon by nodes nobody can dial: held (checked against their manifest), or "
            "requests refused.");
        sample(f, "spes_blob_pushes_total", "outcome=\"held\"", (double)s->pushes_completed);
        sample(f, "spes_blob_pushes_total", "outcome=\"refused\"", (double)s->pushes_refused);
        head(f, "spes_blob_push_bytes_total", "counter", "Bytes of pushed blobs this daemon wrote.");
        sample(f, "spes_blob_push_bytes_total", NULL, (double)s->push_bytes);
        head(f, "spes_blob_pushes_in_progress", "gauge", "Pushes begun and not finished.");
        sample(f, "spes_blob_pushes_in_progress", NULL, (double)s->pushes_in_progress);
    }
    if (s->E > 0) {
        head(f, "spes_expert_delta_norm", "gauge", "L2 norm of each expert column's last committed change.");
        for (int e = 0; e < s->E; e++) {
            snprintf(lab, sizeof lab, "expert=\"%d\"", e);
            sample(f, "spes_expert_delta_norm", lab, s->delta_norm[e]);
        }
        head(f, "spes_expert_router_load_ratio", "gauge",
             "Share of this daemon's routed rows that went to each expert in its last trained round, per "
             "layer.");
        for (int l = 0; l < s->L; l++)
            for (int e = 0; e < s->E; e++) {
                snprintf(lab, sizeof lab, "layer=\"%d\",expert=\"%d\"", l, e);
                sample(f, "spes_expert_router_load_ratio", lab, s->router_load[(size_t)l * s->E + e]);
            }
    }
    if (!s->coordinator)
        return;
    head(f, "spes_run_loss", "gauge", "The run's loss: mean of the active members' last reported losses.");
    sample(f, "spes_run_loss", NULL, s->run_loss);
    head(f, "spes_run_tokens_per_second", "gauge",
         "The run's throughput: sum of the active members' tokens per second.");
    sample(f, "spes_run_tokens_per_second", NULL, s->run_tps);
    head(f, "spes_contributions_refused_total", "counter",
         "Contributions the coordinator refused, by reason.");
    for (int r = 0; r < SPES_METRICS_NREASONS; r++) {
        snprintf(lab, sizeof lab, "reason=\"%s\"", reason_names[r]);
        sample(f, "spes_contributions_refused_total", lab, (double)s->refusals[r]);
    }
    head(f, "spes_digest_mismatches_total", "counter",
         "Members' state digests that differed from the agreed one.");
    sample(f, "spes_digest_mismatches_total", NULL, (double)s->digest_mismatches);
    head(f, "spes_round_deadline_seconds", "gauge",
         "The open round's deadline after its opening (it adapts to recent rounds).");
    sample(f, "spes_round_deadline_seconds", NULL, s->deadline_s);
    head(f, "spes_round_median_announce_seconds", "gauge",
         "When the last round's participants announced their contributions, median, after its opening.");
    sample(f, "spes_round_median_announce_seconds", NULL, s->median_announce_s);
    head(f, "spes_members", "gauge", "Members of the run by state.");
    for (int st = 1; st < NSTATES; st++) {
        int n = 0;
        for (int i = 0; i < s->nmembers; i++)
            n += s->members[i].state == st;
        snprintf(lab, sizeof lab, "state=\"%s\"", state_names[st]);
        sample(f, "spes_members", lab, n);
    }
    static const struct {
        const char *name, *type, *help;
        int counters; /* a value of the member's reported counters: absent until it reports them */
    } per[] = {
        {"spes_member_loss", "gauge", "Last loss each member reported.", 0},
        {"spes_member_tokens_per_second", "gauge",
         "Last throughput each member reported, in tokens per second.", 0},
        {"spes_member_last_seen_timestamp_seconds", "gauge",
         "When each member was last heard from (Unix time).", 0},
        {"spes_member_train_seconds_total", "counter",
         "Seconds each member spent training, as it last reported.", 1},
        {"spes_member_wait_seconds_total", "counter",
         "Seconds each member spent waiting for rounds, as it last reported.", 1},
        {"spes_member_payload_sent_bytes_total", "counter",
         "Payload bytes each member sent, as it last reported.", 1},
        {"spes_member_payload_received_bytes_total", "counter",
         "Payload bytes each member received, as it last reported.", 1},
        {"spes_member_rounds_contributed_total", "counter",
         "Rounds committed with each member among the contributors.", 1},
        {"spes_member_behind_seconds", "gauge",
         "How far behind the last round's median announcement each member announced (0: on time; a member "
         "that missed the round: the deadline after the median).",
         0},
        {"spes_member_straggler_rounds_total", "counter",
         "Rounds in which each member was a straggler, since this coordinator's daemon started.", 0},
    };
    for (size_t k = 0; k < sizeof per / sizeof per[0]; k++) {
        head(f, per[k].name, per[k].type, per[k].help);
        for (int i = 0; i < s->nmembers; i++) {
            const spes_metrics_member *mm = &s->members[i];
            if (per[k].counters && !mm->have_counters)
                continue;
            double v[] = {mm->loss,
                          mm->tps,
                          (double)mm->last_seen_ms / 1000.0,
                          mm->train_s,
                          mm->wait_s,
                          (double)mm->sent_bytes,
                          (double)mm->received_bytes,
                          (double)mm->rounds,
                          mm->behind_s,
                          (double)mm->straggler_rounds};
            spes_metrics_escape_label(esc, sizeof esc, mm->name);
            snprintf(lab, sizeof lab, "node=\"%s\"", esc);
            sample(f, per[k].name, lab, v[k]);
        }
    }
    if (s->E > 0) {
        head(f, "spes_expert_owners", "gauge", "Members that own each expert column.");
        for (int e = 0; e < s->E; e++) {
            int n = 0;
            for (int i = 0; i < s->nmembers; i++)
                n += s->members[i].cols[e] != 0;
            snprintf(lab, sizeof lab, "expert=\"%d\"", e);
            sample(f, "spes_expert_owners", lab, n);
        }
        head(f, "spes_expert_owner_info", "gauge", "1 for each (expert column, owning member) pair.");
        for (int e = 0; e < s->E; e++)
            for (int i = 0; i < s->nmembers; i++)
                if (s->members[i].cols[e]) {
                    spes_metrics_escape_label(esc, sizeof esc, s->members[i].name);
                    snprintf(lab, sizeof lab, "expert=\"%d\",node=\"%s\"", e, esc);
                    sample(f, "spes_expert_owner_info", lab, 1);
                }
    }
}

int spes_metrics_render_prom(const spes_metrics_snapshot *s, char **out, size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f)
        return spes_errf(SPES_ENOMEM, "metrics: cannot open a memory stream");
    render(f, s);
    if (fclose(f) != 0 || !buf) {
        free(buf);
        return spes_errf(SPES_ENOMEM, "metrics: out of memory rendering the exposition");
    }
    *out = buf;
    *len = n;
    return 0;
}
