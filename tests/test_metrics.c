/* test_metrics.c: the metrics snapshot's renderings: Prometheus exposition
 * (escaping, histograms, families with HELP/TYPE before their samples),
 * refusal reasons, the round history and the dashboard JSON. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics/metrics.h"

static spes_metrics_snapshot *coord_snapshot(void)
{
    spes_metrics_snapshot *s = malloc(sizeof *s);
    ck_assert_ptr_nonnull(s);
    spes_metrics_snapshot_init(s);
    snprintf(s->name, sizeof s->name, "coord");
    snprintf(s->version, sizeof s->version, "0.1.0");
    s->protocol = 1;
    s->coordinator = 1;
    s->round = 7;
    s->step = 56;
    s->loss = 5.25;
    s->E = 4;
    s->L = 2;
    s->nmembers = 3;
    const char *names[3] = {"coord", "evil\"\\\nname", "<b>x</b>"};
    int states[3] = {3, 3, 6};
    for (int i = 0; i < 3; i++) {
        spes_metrics_member *m = &s->members[i];
        m->id = (uint32_t)i + 1;
        snprintf(m->name, sizeof m->name, "%s", names[i]);
        m->state = states[i];
        m->loss = 5 + i;
        m->tps = 100 * (i + 1);
        m->last_seen_ms = 1700000000000ull;
    }
    s->members[0].cols[0] = s->members[0].cols[1] = 1;
    s->members[1].cols[2] = s->members[1].cols[3] = 1;
    s->members[2].cols[3] = 1;
    for (int i = 0; i < 8; i++)
        s->router_load[i] = i / 10.0;
    s->delta_norm[1] = 0.5;
    return s;
}

static char *prom(const spes_metrics_snapshot *s)
{
    char *out = NULL;
    size_t len = 0;
    ck_assert_int_eq(spes_metrics_render_prom(s, &out, &len), 0);
    ck_assert_uint_eq(strlen(out), len);
    return out;
}

START_TEST(test_escape_label)
{
    char out[64];
    size_t n = spes_metrics_escape_label(out, sizeof out, "a\"b\\c\nd");
    ck_assert_str_eq(out, "a\\\"b\\\\c\\nd");
    ck_assert_uint_eq(n, strlen("a\\\"b\\\\c\\nd"));
    char small[4];
    n = spes_metrics_escape_label(small, sizeof small, "\"\"\"");
    ck_assert_uint_eq(n, 6);
    ck_assert_str_eq(small, "\\\"\\");
}
END_TEST

START_TEST(test_histogram_cumulative)
{
    spes_metrics_snapshot *s = coord_snapshot();
    double v[] = {0.05, 1, 7, 1000};
    for (int i = 0; i < 4; i++)
        spes_metrics_hist_observe(&s->train_s, v[i]);
    char *t = prom(s);
    ck_assert_ptr_nonnull(strstr(t, "spes_round_train_seconds_bucket{le=\"0.1\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_round_train_seconds_bucket{le=\"1\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_round_train_seconds_bucket{le=\"5\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_round_train_seconds_bucket{le=\"10\"} 3\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_round_train_seconds_bucket{le=\"600\"} 3\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_round_train_seconds_bucket{le=\"+Inf\"} 4\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_round_train_seconds_sum 1008.05"));
    ck_assert_ptr_nonnull(strstr(t, "spes_round_train_seconds_count 4\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_round_wait_seconds_count 0\n"));
    free(t);
    free(s);
}
END_TEST

/* every sample's family was announced by HELP and TYPE lines, once, before it */
START_TEST(test_exposition_shape)
{
    spes_metrics_snapshot *s = coord_snapshot();
    char *t = prom(s);
    char typed[128][96];
    int ntyped = 0, nsamples = 0;
    char *save = NULL;
    for (char *line = strtok_r(t, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (!strncmp(line, "# HELP ", 7))
            continue;
        char name[96];
        if (!strncmp(line, "# TYPE ", 7)) {
            ck_assert_int_eq(sscanf(line + 7, "%95s", name), 1);
            for (int i = 0; i < ntyped; i++)
                ck_assert_msg(strcmp(typed[i], name), "family %s typed twice", name);
            ck_assert_int_lt(ntyped, 128);
            snprintf(typed[ntyped++], sizeof typed[0], "%s", name);
            continue;
        }
        size_t k = strcspn(line, "{ ");
        ck_assert_uint_lt(k, sizeof name);
        memcpy(name, line, k);
        name[k] = '\0';
        const char *last = typed[ntyped - 1];
        size_t ll = strlen(last);
        ck_assert_msg(ntyped > 0 && !strncmp(name, last, ll) &&
                          (name[ll] == '\0' || !strcmp(name + ll, "_bucket") || !strcmp(name + ll, "_sum") ||
                           !strcmp(name + ll, "_count")),
                      "sample %s outside its family (last TYPE %s)", name, last);
        const char *val = strrchr(line, ' ');
        ck_assert_ptr_nonnull(val);
        char *end;
        strtod(val + 1, &end);
        ck_assert_msg(*end == '\0', "bad value in %s", line);
        nsamples++;
    }
    ck_assert_int_gt(nsamples, 40);
    free(t);
    free(s);
}
END_TEST

START_TEST(test_coordinator_families)
{
    spes_metrics_snapshot *s = coord_snapshot();
    s->refusals[SPES_METRICS_R_NON_FINITE] = 2;
    s->digest_mismatches = 3;
    s->deadline_s = 12.5;
    s->median_announce_s = 4.25;
    s->members[1].behind_s = 3.5; /* a straggler of the last round, for the third time */
    s->members[1].straggler_rounds = 3;
    char *t = prom(s);
    ck_assert_ptr_nonnull(strstr(t, "spes_round_deadline_seconds 12.5\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_round_median_announce_seconds 4.25\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_member_behind_seconds{node=\"evil\\\"\\\\\\nname\"} 3.5\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_member_behind_seconds{node=\"coord\"} 0\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_member_straggler_rounds_total{node=\"evil\\\"\\\\\\nname\"} 3\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_members{state=\"active\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_members{state=\"failed\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_members{state=\"pending\"} 0\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_member_loss{node=\"evil\\\"\\\\\\nname\"} 6\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_expert_owners{expert=\"3\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_expert_owners{expert=\"0\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_expert_owner_info{expert=\"2\",node=\"evil\\\"\\\\\\nname\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_contributions_refused_total{reason=\"non_finite\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_digest_mismatches_total 3\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "spes_expert_router_load_ratio{layer=\"1\",expert=\"2\"} 0.59999999999999998\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_expert_delta_norm{expert=\"1\"} 0.5\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_expert_delta_norm{expert=\"0\"} NaN\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_rounds_committed_total 7\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_build_info{version=\"0.1.0\",protocol=\"1\"} 1\n"));
    ck_assert_ptr_null(strstr(t, "class=\"control\""));
    ck_assert_ptr_null(strstr(t, "spes_train_seconds_total "));
    ck_assert_ptr_null(strstr(t, "spes_member_train_seconds_total{"));
    free(t);
    /* with the daemon's counters: control bytes, messages, seconds; members' reported counters */
    s->have_control_bytes = 1;
    s->sent[SPES_METRICS_CONTROL] = 1234;
    s->received_msgs[SPES_METRICS_BLOB] = 9;
    s->train_total_s = 12.5;
    s->members[0].have_counters = 1;
    s->members[0].train_s = 2.5;
    s->members[0].received_bytes = 77;
    t = prom(s);
    ck_assert_ptr_nonnull(strstr(t, "spes_payload_sent_bytes_total{class=\"control\"} 1234\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_payload_received_messages_total{class=\"blob\"} 9\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_train_seconds_total 12.5\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_member_train_seconds_total{node=\"coord\"} 2.5\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_member_payload_received_bytes_total{node=\"coord\"} 77\n"));
    ck_assert_ptr_null(strstr(t, "spes_member_train_seconds_total{node=\"<b>")); /* never reported */
    free(t);
    /* a plain node exposes no coordinator family */
    s->coordinator = 0;
    t = prom(s);
    ck_assert_ptr_null(strstr(t, "spes_members"));
    ck_assert_ptr_null(strstr(t, "spes_contributions_refused_total"));
    ck_assert_ptr_nonnull(strstr(t, "spes_payload_sent_bytes_total{class=\"blob\"} 0\n"));
    free(t);
    free(s);
}
END_TEST

START_TEST(test_listener_families)
{
    spes_metrics_snapshot *s = coord_snapshot();
    char *t = prom(s);
    ck_assert_ptr_null(strstr(t, "spes_listener_")); /* no listener known: no family */
    free(t);
    s->have_listener = 1;
    s->conns_over_cap = 4;
    s->handshakes_expired = 2;
    s->conns_idle_closed = 9;
    s->listener_restarts = 1;
    t = prom(s);
    ck_assert_ptr_nonnull(strstr(t, "# TYPE spes_listener_connections_ended_total counter\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_listener_connections_ended_total{why=\"over_cap\"} 4\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_listener_connections_ended_total{why=\"handshake_deadline\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_listener_connections_ended_total{why=\"idle\"} 9\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_listener_restarts_total 1\n"));
    ck_assert_ptr_null(strstr(t, "spes_blob_push")); /* takes no pushes: no family */
    free(t);
    s->have_pushes = 1;
    s->pushes_completed = 7;
    s->pushes_refused = 2;
    s->push_bytes = 123456;
    s->pushes_in_progress = 1;
    t = prom(s);
    ck_assert_ptr_nonnull(strstr(t, "# TYPE spes_blob_pushes_total counter\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_blob_pushes_total{outcome=\"held\"} 7\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_blob_pushes_total{outcome=\"refused\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_blob_push_bytes_total 123456\n"));
    ck_assert_ptr_nonnull(strstr(t, "# TYPE spes_blob_pushes_in_progress gauge\n"));
    ck_assert_ptr_nonnull(strstr(t, "spes_blob_pushes_in_progress 1\n"));
    free(t);
    free(s);
}
END_TEST

START_TEST(test_reasons)
{
    ck_assert_int_eq(spes_metrics_reason_of("contribution of node 2: contribution value 0 is NaN"),
                     SPES_METRICS_R_NON_FINITE);
    ck_assert_int_eq(spes_metrics_reason_of("x: contribution value 5 moved by 9, beyond the bound 4"),
                     SPES_METRICS_R_OUT_OF_BOUND);
    ck_assert_int_eq(spes_metrics_reason_of("x: not a contribution (bad magic or 3 bytes)"),
                     SPES_METRICS_R_MALFORMED);
    ck_assert_int_eq(spes_metrics_reason_of("cannot fetch blob 12ab from 2 peers"),
                     SPES_METRICS_R_UNAVAILABLE);
    ck_assert_int_eq(spes_metrics_reason_of("something else"), SPES_METRICS_R_OTHER);
    ck_assert_str_eq(spes_metrics_reason_name(SPES_METRICS_R_OUT_OF_BOUND), "out_of_bound");
}
END_TEST

START_TEST(test_history)
{
    spes_metrics_snapshot *s = coord_snapshot();
    for (uint64_t r = 0; r < SPES_METRICS_HISTORY + 5; r++) {
        spes_metrics_round *e = spes_metrics_round_at(s, r);
        ck_assert_ptr_nonnull(e);
        e->loss = (double)r;
    }
    ck_assert_int_eq(s->nhist, SPES_METRICS_HISTORY);
    ck_assert_uint_eq(s->hist[0].round, 5);
    ck_assert_ptr_eq(spes_metrics_round_at(s, 30), &s->hist[25]);
    ck_assert_ptr_null(spes_metrics_round_at(s, 2));
    spes_metrics_round *e = spes_metrics_round_at(s, 30);
    spes_metrics_round_node(e, "a", 1, 2);
    spes_metrics_round_node(e, "b", 3, 4);
    spes_metrics_round_node(e, "a", 5, 6);
    ck_assert_int_eq(e->nnodes, 2);
    ck_assert(e->node[0].train_s == 5 && e->node[0].wait_s == 6);
    free(s);
}
END_TEST

START_TEST(test_json)
{
    spes_metrics_snapshot *s = coord_snapshot();
    spes_metrics_round *e = spes_metrics_round_at(s, 6);
    e->loss = 5.5;
    spes_metrics_round_node(e, "<b>x</b>", 1.5, 0.25);
    s->have_last_round = 1;
    s->last_round = 6;
    s->nlast_refused = 1;
    snprintf(s->last_refused[0], sizeof s->last_refused[0], "evil: contribution value 0 is NaN");
    char *txt = NULL;
    size_t len = 0;
    ck_assert_int_eq(spes_metrics_render_json(s, 42, &txt, &len), 0);
    json_error_t err;
    json_t *o = json_loadb(txt, len, 0, &err);
    ck_assert_msg(o != NULL, "%s", err.text);
    ck_assert_int_eq(json_integer_value(json_object_get(o, "round")), 7);
    ck_assert_int_eq(json_integer_value(json_object_get(o, "now_unix_ms")), 42);
    ck_assert(json_is_null(json_object_get(o, "tokens_per_s")));
    json_t *m = json_array_get(json_object_get(o, "members"), 1);
    ck_assert_str_eq(json_string_value(json_object_get(m, "name")), "evil\"\\\nname");
    ck_assert_str_eq(json_string_value(json_object_get(m, "state")), "active");
    ck_assert_int_eq(json_array_size(json_object_get(m, "columns")), 2);
    json_t *ex = json_object_get(o, "experts");
    json_t *own3 = json_array_get(json_object_get(ex, "owners"), 3);
    ck_assert_int_eq(json_array_size(own3), 2);
    ck_assert_str_eq(json_string_value(json_array_get(own3, 1)), "<b>x</b>");
    ck_assert_int_eq(json_array_size(json_object_get(ex, "router_load")), 2);
    ck_assert(json_real_value(json_array_get(json_array_get(json_object_get(ex, "router_load"), 1), 0)) ==
              0.4);
    ck_assert(json_is_null(json_array_get(json_object_get(ex, "delta_norm"), 0)));
    json_t *h = json_array_get(json_object_get(o, "history"), 0);
    ck_assert(json_real_value(json_object_get(h, "loss")) == 5.5);
    ck_assert_str_eq(
        json_string_value(json_object_get(json_array_get(json_object_get(h, "nodes"), 0), "name")),
        "<b>x</b>");
    ck_assert_int_eq(json_array_size(json_object_get(json_object_get(o, "last_round"), "refused")), 1);
    json_decref(o);
    free(txt);
    free(s);
}
END_TEST

static Suite *metrics_suite(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("render");
    tcase_add_test(tc, test_escape_label);
    tcase_add_test(tc, test_histogram_cumulative);
    tcase_add_test(tc, test_exposition_shape);
    tcase_add_test(tc, test_coordinator_families);
    tcase_add_test(tc, test_listener_families);
    tcase_add_test(tc, test_reasons);
    tcase_add_test(tc, test_history);
    tcase_add_test(tc, test_json);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(metrics_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
