/* test_counters.c: the daemon's round clock and contributed rounds
 * (daemon/counters.c): which stretches count as training and as waiting,
 * that a snapshot counts open intervals up to now, that a round counts once
 * and only with this node among its contributors, the wire form, and
 * heartbeats without counters for a coordinator that refuses them. Times
 * are checked from below by the sleeps that make them, and from above only
 * loosely, so that a loaded machine cannot fail the test. */
#include "core/clock.h"
#include "daemon/counters.h"
#include "proto/proto.h"

#include <check.h>
#include <stdlib.h>
#include <unistd.h>

static void nap(int ms)
{
    usleep((useconds_t)ms * 1000);
}

static spes_daemon_counters snap(void)
{
    spes_daemon_counters c;
    spes_daemon_counters_get(&c);
    return c;
}

START_TEST(test_round_clock)
{
    spes_daemon_counters c = snap();
    ck_assert(c.train_s == 0 && c.wait_s == 0 && c.rounds == 0);
    /* joining: the first state is held before any training; no wait yet */
    spes_counters_state_held();
    nap(30);
    ck_assert(snap().wait_s == 0);
    /* round 0: train 60 ms; a snapshot during it counts up to now */
    double t0 = spes_mono_s();
    spes_counters_train_begin();
    nap(30);
    c = snap();
    ck_assert_msg(c.train_s >= 0.03 && c.wait_s == 0, "train %g wait %g", c.train_s, c.wait_s);
    nap(30);
    spes_counters_train_end();
    /* then wait 50 ms for S_1, and 40 ms more until training starts again */
    nap(50);
    c = snap();
    ck_assert_msg(c.train_s >= 0.06 && c.wait_s >= 0.05, "train %g wait %g", c.train_s, c.wait_s);
    spes_counters_state_held();
    double held = snap().wait_s;
    nap(40);
    ck_assert_msg(snap().wait_s == held, "idle after the new state is not counted until training resumes");
    spes_counters_train_begin();
    c = snap();
    ck_assert_msg(c.wait_s >= 0.09, "wait %g", c.wait_s);
    nap(20);
    spes_counters_train_end();
    spes_counters_state_held();
    /* the run is over: nothing grows while the node idles */
    c = snap();
    nap(30);
    spes_daemon_counters d = snap();
    ck_assert(d.train_s == c.train_s && d.wait_s == c.wait_s);
    double wall = spes_mono_s() - t0;
    ck_assert_msg(d.train_s >= 0.08 && d.train_s + d.wait_s <= wall, "train %g wait %g wall %g", d.train_s,
                  d.wait_s, wall);
}
END_TEST

START_TEST(test_rounds_contributed)
{
    Spes__Wire__Contribution a = SPES__WIRE__CONTRIBUTION__INIT, b = SPES__WIRE__CONTRIBUTION__INIT;
    Spes__Wire__Contribution *cs[2] = {&a, &b};
    Spes__Wire__Commit cm = SPES__WIRE__COMMIT__INIT;
    a.node_id = 1, b.node_id = 3;
    cm.contributions = cs;
    cm.n_contributions = 2;
    cm.round = 0;
    spes_counters_commit_seen(&cm, 3);
    spes_counters_commit_seen(&cm, 3); /* the same commit again (a retried heartbeat) */
    ck_assert_uint_eq(snap().rounds, 1);
    cm.round = 1;
    spes_counters_commit_seen(&cm, 2); /* not among the contributors */
    ck_assert_uint_eq(snap().rounds, 1);
    cm.round = 2;
    spes_counters_commit_seen(&cm, 3);
    cm.round = 1; /* an older commit seen late */
    spes_counters_commit_seen(&cm, 3);
    ck_assert_uint_eq(snap().rounds, 2);
    cm.n_contributions = 0, cm.round = 3;
    spes_counters_commit_seen(&cm, 3);
    ck_assert_uint_eq(snap().rounds, 2);
}
END_TEST

START_TEST(test_wire_form)
{
    spes_daemon_counters c = {.train_s = 2.5, .wait_s = 1.25, .rounds = 7};
    c.net.sent_bytes[SPES_NET_CONTROL] = 100, c.net.received_bytes[SPES_NET_CONTROL] = 200;
    c.net.sent_bytes[SPES_NET_BLOB] = 3000, c.net.received_bytes[SPES_NET_BLOB] = 4000;
    c.net.sent_msgs[SPES_NET_CONTROL] = 5, c.net.sent_msgs[SPES_NET_BLOB] = 6;
    c.net.received_msgs[SPES_NET_CONTROL] = 7, c.net.received_msgs[SPES_NET_BLOB] = 8;
    Spes__Wire__NodeCounters w;
    spes_counters_to_wire(&c, &w);
    ck_assert_uint_eq(w.control_sent_bytes, 100);
    ck_assert_uint_eq(w.control_received_bytes, 200);
    ck_assert_uint_eq(w.blob_sent_bytes, 3000);
    ck_assert_uint_eq(w.blob_received_bytes, 4000);
    ck_assert_uint_eq(w.sent_messages, 11);
    ck_assert_uint_eq(w.received_messages, 15);
    ck_assert(w.train_s == 2.5 && w.wait_s == 1.25 && w.rounds == 7);
    ck_assert_uint_eq(spes_net_counters_sent(&c.net), 3100);
    ck_assert_uint_eq(spes_net_counters_received(&c.net), 4200);
}
END_TEST

/* A coordinator that predates the counters refuses a heartbeat carrying them
 * as a bad message (unknown field): later heartbeats go without them. */
START_TEST(test_heartbeat_fallback)
{
    Spes__Wire__Heartbeat h = SPES__WIRE__HEARTBEAT__INIT;
    Spes__Wire__NodeCounters w;
    spes_counters_heartbeat(&h, &w);
    ck_assert_ptr_eq(h.counters, &w);
    Spes__Wire__Error e = SPES__WIRE__ERROR__INIT;
    e.code = SPES__WIRE__ERROR_CODE__ERROR_NOT_MEMBER;
    e.message = "unknown node id";
    spes_counters_heartbeat_reply(SPES_MSG_REJECT, &e.base); /* not an Error envelope */
    spes_counters_heartbeat_reply(SPES_MSG_ERROR, &e.base);  /* an Error of another kind */
    spes_counters_heartbeat_reply(SPES_MSG_ACK, NULL);
    spes_counters_heartbeat(&h, &w);
    ck_assert_ptr_eq(h.counters, &w);
    e.code = SPES__WIRE__ERROR_CODE__ERROR_BAD_MESSAGE;
    e.message = "Heartbeat: unknown field 7 (wire type 2); this node speaks protocol 1";
    spes_counters_heartbeat_reply(SPES_MSG_ERROR, &e.base);
    spes_counters_heartbeat(&h, &w);
    ck_assert_ptr_null(h.counters);
    /* the node still counts: only the report stops */
    spes_counters_train_begin();
    spes_counters_train_end();
    spes_counters_wire_now(&w);
    ck_assert(w.train_s >= 0 && w.base.descriptor == &spes__wire__node_counters__descriptor);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("counters");
    TCase *tc = tcase_create("counters");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_round_clock);
    tcase_add_test(tc, test_rounds_contributed);
    tcase_add_test(tc, test_wire_form);
    tcase_add_test(tc, test_heartbeat_fallback);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
