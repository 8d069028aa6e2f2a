/* test_node.c: the node's round protocol (src/node), driven message by
 * message with a fake clock: each reply is a real envelope, each action is
 * checked for what it sends (decoded from its bytes), which job it starts
 * and which blobs it releases. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/log.h"
#include "node/node.h"
#include "proto/proto.h"
#include "proto/spes.pb-c.h"

#define NS(x) SPES__WIRE__NODE_STATE__NODE_STATE_##x
#define ME "tls+tcp://10.0.0.2:7000"
#define COORD "tls+tcp://10.0.0.1:7000"
#define HB_MS 200
#define MAX_GOT 256

static const char *RUN_JSON =
    "{\"model\": {\"vocab_size\": 256, \"hidden_size\": 32, \"intermediate_size\": 48, "
    "\"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"num_experts\": 4, \"num_experts_per_tok\": "
    "2},"
    " \"train\": {\"seq_len\": 32, \"batch_size\": 4, \"max_steps\": 400, \"seed\": 5},"
    " \"spes\": {\"sync_interval\": 5, \"merge_interval\": 10, \"merge_alpha\": 0.0, \"merge_topk\": 1,"
    " \"codec\": \"q8ef\"}}";

/* the same run with overlap (docs/design.md, "Overlap") */
static const char *RUN_JSON_OVERLAP =
    "{\"model\": {\"vocab_size\": 256, \"hidden_size\": 32, \"intermediate_size\": 48, "
    "\"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"num_experts\": 4, \"num_experts_per_tok\": "
    "2},"
    " \"train\": {\"seq_len\": 32, \"batch_size\": 4, \"max_steps\": 400, \"seed\": 5},"
    " \"spes\": {\"sync_interval\": 5, \"merge_interval\": 10, \"merge_alpha\": 0.0, \"merge_topk\": 1,"
    " \"codec\": \"q8ef\", \"overlap\": 1}}";

static const char *run_json; /* the run config Accepts carry (RUN_JSON unless a case says otherwise) */

/* T is one node under test: its machine, its queue and a fake clock. */
typedef struct T {
    spes_node_sm sm;
    spes_node_out out;
    uint64_t now;
    spes_node_action got[MAX_GOT]; /* the actions of the last input */
    int n;
} T;

static void forget(T *t)
{
    for (int i = 0; i < t->n; i++)
        spes_node_action_fini(&t->got[i]);
    t->n = 0;
}

/* pump replaces got by the actions queued since the last pump. */
static void pump(T *t)
{
    forget(t);
    while (t->n < MAX_GOT && spes_node_out_pop(&t->out, &t->got[t->n]))
        t->n++;
}

static void setup_opts(T *t, int keep_blobs, const char *coordinator)
{
    memset(t, 0, sizeof *t);
    spes_node_opts o = {.name = "node-2",
                        .listen = ME,
                        .coordinator = coordinator,
                        .data = "",
                        .threads = 2,
                        .heartbeat_ms = HB_MS,
                        .keep_blobs = keep_blobs};
    ck_assert_int_eq(spes_node_sm_init(&t->sm, &o), 0);
    t->now = 1000000;
    run_json = RUN_JSON;
}

static void done(T *t)
{
    forget(t);
    spes_node_out_fini(&t->out);
    spes_node_sm_fini(&t->sm);
}

static int count(const T *t, int kind)
{
    int k = 0;
    for (int i = 0; i < t->n; i++)
        k += t->got[i].kind == kind;
    return k;
}

static spes_node_action *find(T *t, int kind)
{
    for (int i = 0; i < t->n; i++)
        if (t->got[i].kind == kind)
            return &t->got[i];
    return NULL;
}

/* take_job removes the JOB action's job from got (the test now owns it). */
static spes_node_job *take_job(T *t, int kind)
{
    spes_node_action *a = find(t, SPES_NODE_ACT_JOB);
    ck_assert_ptr_nonnull(a);
    ck_assert_int_eq(a->job->kind, kind);
    spes_node_job *j = a->job;
    a->job = NULL;
    return j;
}

static int logged(const T *t, const char *needle)
{
    for (int i = 0; i < t->n; i++)
        if (t->got[i].kind == SPES_NODE_ACT_LOG && strstr(t->got[i].text, needle))
            return 1;
    return 0;
}

/* sent decodes the one SEND action of got; it must be of call and type. */
static ProtobufCMessage *sent(T *t, int call, int type)
{
    ck_assert_int_eq(count(t, SPES_NODE_ACT_SEND), 1);
    spes_node_action *a = find(t, SPES_NODE_ACT_SEND);
    ck_assert_int_eq(a->call, call);
    ck_assert_int_eq(a->type, type);
    int got_type;
    ProtobufCMessage *m = NULL;
    ck_assert_int_eq(spes_proto_decode(a->data, a->len, &got_type, &m), 0);
    ck_assert_int_eq(got_type, type);
    return m;
}

static void tick(T *t, uint64_t ms)
{
    t->now += ms;
    spes_node_sm_tick(&t->sm, t->now, &t->out);
    pump(t);
}

static void reply(T *t, int call, int type, const ProtobufCMessage *m)
{
    uint8_t *buf;
    size_t len;
    ck_assert_int_eq(spes_proto_encode(type, m, &buf, &len), 0);
    spes_node_sm_reply(&t->sm, call, 0, NULL, buf, len, t->now, &t->out);
    free(buf);
    pump(t);
}

static void reply_fail(T *t, int call)
{
    spes_node_sm_reply(&t->sm, call, SPES_ENET, "connection refused", NULL, 0, t->now, &t->out);
    pump(t);
}

static void reply_ack(T *t, int call)
{
    Spes__Wire__Ack a = SPES__WIRE__ACK__INIT;
    a.message = "ok";
    reply(t, call, SPES_MSG_ACK, &a.base);
}

static void reply_reject(T *t, int call, int code, uint32_t retry_ms, const char *why)
{
    Spes__Wire__Reject r = SPES__WIRE__REJECT__INIT;
    r.code = code;
    r.reason = (char *)why;
    r.retry_after_ms = retry_ms;
    reply(t, call, SPES_MSG_REJECT, &r.base);
}

static void reply_accept_peers(T *t, int call, uint64_t round, uint64_t step, uint8_t h, const uint32_t *cols,
                               size_t ncols, Spes__Wire__Peer **peers, size_t npeers);

static void reply_accept(T *t, int call, uint64_t round, uint64_t step, uint8_t h, const uint32_t *cols,
                         size_t ncols)
{
    reply_accept_peers(t, call, round, step, h, cols, ncols, NULL, 0);
}

/* reply_accept_peers is reply_accept naming peers that hold the state. */
static void reply_accept_peers(T *t, int call, uint64_t round, uint64_t step, uint8_t h, const uint32_t *cols,
                               size_t ncols, Spes__Wire__Peer **peers, size_t npeers)
{
    uint8_t hash[32];
    memset(hash, h, 32);
    Spes__Wire__Accept a = SPES__WIRE__ACCEPT__INIT;
    a.peers = peers;
    a.n_peers = npeers;
    a.node_id = 2;
    a.columns = (uint32_t *)cols;
    a.n_columns = ncols;
    a.run_config_json = (char *)run_json;
    a.round = round;
    a.step = step;
    a.state_hash = (ProtobufCBinaryData){32, hash};
    a.run_id = "run-1";
    reply(t, call, SPES_MSG_ACCEPT, &a.base);
}

/* commit_spec describes a Commit closing a round: contributions by node ids
 * (blob hash byte = 0x40 + id, manifest byte = 0x80 + id), peers by ids. */
typedef struct commit_spec {
    uint64_t round, next_step;
    uint8_t base; /* byte of base_hash; 0: no base hash */
    int nc;
    uint32_t contrib[8];
    int np;
    uint32_t peer[8];
    int merge;
    const char *ckpt;
    int nr;
    uint32_t refused[8];
} commit_spec;

static const char *peer_url(uint32_t id, char *buf)
{
    if (id == 2)
        return ME;
    if (id == 0)
        return COORD; /* node 0 runs on the coordinator's daemon */
    sprintf(buf, "tls+tcp://10.0.0.%u:7000", 10 + id);
    return buf;
}

static void reply_commit(T *t, int call, const commit_spec *s)
{
    Spes__Wire__Commit cm = SPES__WIRE__COMMIT__INIT;
    Spes__Wire__Contribution cv[8], *cp[8];
    Spes__Wire__Peer pv[8], *pp[8];
    uint8_t hashes[8][32], mans[8][32], base[32];
    char urls[8][64], names[8][16];
    cm.round = s->round;
    cm.next_step = s->next_step;
    if (s->base)
        memset(base, s->base, 32);
    else
        memcpy(base, t->sm.hash, 32); /* 0: the state the node holds */
    cm.base_hash = (ProtobufCBinaryData){32, base};
    for (int i = 0; i < s->nc; i++) {
        spes__wire__contribution__init(&cv[i]);
        memset(hashes[i], 0x40 + (int)s->contrib[i], 32);
        memset(mans[i], 0x80 + (int)s->contrib[i], 32);
        cv[i].node_id = s->contrib[i];
        cv[i].blob_hash = (ProtobufCBinaryData){32, hashes[i]};
        cv[i].manifest_hash = (ProtobufCBinaryData){32, mans[i]};
        cp[i] = &cv[i];
    }
    cm.contributions = cp;
    cm.n_contributions = (size_t)s->nc;
    for (int i = 0; i < s->np; i++) {
        spes__wire__peer__init(&pv[i]);
        pv[i].node_id = s->peer[i];
        sprintf(names[i], "node-%u", s->peer[i]);
        pv[i].name = names[i];
        pv[i].listen_url = (char *)peer_url(s->peer[i], urls[i]);
        pp[i] = &pv[i];
    }
    cm.peers = pp;
    cm.n_peers = (size_t)s->np;
    Spes__Wire__Refusal rv[8], *rp[8];
    for (int i = 0; i < s->nr; i++) {
        spes__wire__refusal__init(&rv[i]);
        rv[i].node_id = s->refused[i];
        rv[i].reason = "delta norm beyond the bound";
        rp[i] = &rv[i];
    }
    cm.refused = rp;
    cm.n_refused = (size_t)s->nr;
    cm.merge_applied = s->merge;
    cm.checkpoint_id = (char *)(s->ckpt ? s->ckpt : "");
    reply(t, call, SPES_MSG_COMMIT, &cm.base);
}

static void job_done(T *t, spes_node_job *j)
{
    spes_node_sm_job_done(&t->sm, j, t->now, &t->out);
    pump(t);
}

/* ---- scripted steps shared by the cases ---- */

/* joined runs Join -> Accept(round, cols) -> prepare done: the node holds S_round (hash byte h). */
static void joined(T *t, uint64_t round, uint8_t h, const uint32_t *cols, size_t ncols)
{
    tick(t, 0);
    spes_proto_free(sent(t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
    reply_accept(t, SPES_NODE_CALL_JOIN, round, round * 5, h, cols, ncols);
    spes_node_job *j = take_job(t, SPES_NODE_JOB_PREPARE);
    job_done(t, j);
}

/* trained finishes the train job in got with a contribution (blob byte 0x42). */
static void trained(T *t)
{
    spes_node_job *j = take_job(t, SPES_NODE_JOB_TRAIN);
    memset(j->u.train.blob, 0x42, 32);
    memset(j->u.train.manifest, 0x82, 32);
    j->u.train.size = 1234;
    j->u.train.tokens = 640;
    j->u.train.loss_mean = 2.5;
    t->now += 3000;
    job_done(t, j);
}

/* applied finishes the apply job in got: S_{round+1} has hash byte h. */
static void applied(T *t, uint8_t h)
{
    spes_node_job *j = take_job(t, SPES_NODE_JOB_APPLY);
    memset(j->u.apply.state_hash, h, 32);
    j->bytes_in = 100;
    job_done(t, j);
}

/* ---- cases ---- */

/* ---- overlap ---- */

/* overlapped joins a run with overlap at round 4 (S_4: 0x44, column 1) and
 * trains round 4 from S_4: its end announces round 4 and starts round 5's
 * training at once, from the node's own parameters. Returns that job. */
static spes_node_job *overlapped(T *t)
{
    setup_opts(t, 0, COORD);
    run_json = RUN_JSON_OVERLAP;
    uint32_t cols[] = {1};
    joined(t, 4, 0x44, cols, 1);
    spes_node_job *first = take_job(t, SPES_NODE_JOB_TRAIN);
    ck_assert_int_eq(first->u.train.overlap, 0); /* after a join: from the agreed state */
    memset(first->u.train.blob, 0x42, 32);
    memset(first->u.train.manifest, 0x82, 32);
    t->now += 3000;
    job_done(t, first);
    ck_assert_int_eq(t->sm.phase, SPES_NODE_ANNOUNCE);
    Spes__Wire__Announce *an = (Spes__Wire__Announce *)sent(t, SPES_NODE_CALL_ANNOUNCE, SPES_MSG_ANNOUNCE);
    ck_assert_uint_eq(an->round, 4);
    spes_proto_free(&an->base);
    spes_node_job *next = take_job(t, SPES_NODE_JOB_TRAIN);
    ck_assert_int_eq(next->u.train.overlap, 1);
    ck_assert_uint_eq(next->u.train.round, 5);
    ck_assert_uint_eq(next->u.train.step, 25);
    ck_assert_int_eq(next->u.train.cols[1], 1);
    ck_assert_int_eq(next->u.train.cols[0] + next->u.train.cols[2] + next->u.train.cols[3], 0);
    ck_assert(logged(t, "round 5: training columns of 1 expert(s) for 5 steps from step 25 (overlapped"));
    reply_ack(t, SPES_NODE_CALL_ANNOUNCE);
    ck_assert_int_eq(t->sm.phase, SPES_NODE_WAIT);
    return next;
}

/* commit4 delivers round 4's commit (nodes 0 and 2) while round 5 trains; returns the apply job. */
static spes_node_job *commit4(T *t)
{
    tick(t, HB_MS);
    spes_proto_free(sent(t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    commit_spec cs = {.round = 4, .next_step = 25, .nc = 2, .contrib = {0, 2}, .np = 1, .peer = {0}};
    reply_commit(t, SPES_NODE_CALL_HEARTBEAT, &cs);
    ck_assert_int_eq(count(t, SPES_NODE_ACT_CANCEL), 0); /* the training goes on */
    ck_assert_int_eq(t->sm.phase, SPES_NODE_APPLY);
    return take_job(t, SPES_NODE_JOB_APPLY);
}

/* digested applies round 4 (S_5: 0x55) and has its digest taken: the node is idle at round 5. */
static void digested(T *t, spes_node_job *ap)
{
    memset(ap->u.apply.state_hash, 0x55, 32);
    job_done(t, ap);
    spes_proto_free(sent(t, SPES_NODE_CALL_DIGEST, SPES_MSG_DIGEST));
    reply_ack(t, SPES_NODE_CALL_DIGEST);
    ck_assert_int_eq(t->sm.phase, SPES_NODE_IDLE);
    ck_assert_uint_eq(t->sm.round, 5);
}

static void finish(spes_node_job *j, uint8_t blob)
{
    memset(j->u.train.blob, blob, 32);
    memset(j->u.train.manifest, blob + 0x40, 32);
    j->u.train.size = 99;
}

START_TEST(test_overlap_trained_before_the_state)
{
    T t;
    spes_node_job *r5 = overlapped(&t);
    spes_node_job *ap = commit4(&t);
    /* round 5's training ends before S_5 is held: kept, nothing announced yet */
    finish(r5, 0x45);
    job_done(&t, r5);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_SEND) + count(&t, SPES_NODE_ACT_JOB), 0);
    ck_assert_ptr_nonnull(t.sm.ready);
    digested(&t, ap);
    /* the coordinator deals the same column for round 5: announced at once, round 6 trains */
    uint32_t cols[] = {1};
    tick(&t, HB_MS);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    reply_accept(&t, SPES_NODE_CALL_HEARTBEAT, 5, 25, 0x55, cols, 1);
    Spes__Wire__Announce *an = (Spes__Wire__Announce *)sent(&t, SPES_NODE_CALL_ANNOUNCE, SPES_MSG_ANNOUNCE);
    ck_assert_uint_eq(an->round, 5);
    ck_assert_int_eq(an->blob_hash.data[0], 0x45);
    ck_assert_uint_eq(an->size, 99);
    spes_proto_free(&an->base);
    spes_node_job *r6 = take_job(&t, SPES_NODE_JOB_TRAIN);
    ck_assert_int_eq(r6->u.train.overlap, 1);
    ck_assert_uint_eq(r6->u.train.round, 6);
    ck_assert_uint_eq(r6->u.train.step, 30);
    ck_assert_ptr_null(t.sm.ready);
    spes_node_job_free(r6);
    done(&t);
}
END_TEST

START_TEST(test_overlap_not_past_the_end)
{
    /* the round that ends at max_steps (400: round 79 from step 395) starts no round after it */
    T t;
    setup_opts(&t, 0, COORD);
    run_json = RUN_JSON_OVERLAP;
    uint32_t cols[] = {1};
    joined(&t, 79, 0x79, cols, 1);
    spes_node_job *last = take_job(&t, SPES_NODE_JOB_TRAIN);
    ck_assert_uint_eq(last->u.train.step, 395);
    memset(last->u.train.blob, 0x42, 32);
    job_done(&t, last);
    spes_proto_free(sent(&t, SPES_NODE_CALL_ANNOUNCE, SPES_MSG_ANNOUNCE));
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_JOB), 0);
    ck_assert_int_eq(t.sm.training, 0);
    done(&t);
}
END_TEST

START_TEST(test_overlap_state_before_the_training)
{
    T t;
    spes_node_job *r5 = overlapped(&t);
    digested(&t, commit4(&t));
    /* S_5 is held while round 5 still trains: the Accept confirms the column, nothing starts */
    uint32_t cols[] = {1};
    tick(&t, HB_MS);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    reply_accept(&t, SPES_NODE_CALL_HEARTBEAT, 5, 25, 0x55, cols, 1);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_JOB) + count(&t, SPES_NODE_ACT_CANCEL), 0);
    /* its end announces it without waiting for another heartbeat */
    finish(r5, 0x45);
    job_done(&t, r5);
    Spes__Wire__Announce *an = (Spes__Wire__Announce *)sent(&t, SPES_NODE_CALL_ANNOUNCE, SPES_MSG_ANNOUNCE);
    ck_assert_uint_eq(an->round, 5);
    ck_assert_int_eq(an->blob_hash.data[0], 0x45);
    spes_proto_free(&an->base);
    spes_node_job *r6 = take_job(&t, SPES_NODE_JOB_TRAIN);
    ck_assert_uint_eq(r6->u.train.round, 6);
    spes_node_job_free(r6);
    done(&t);
}
END_TEST

START_TEST(test_overlap_columns_dealt_anew)
{
    T t;
    spes_node_job *r5 = overlapped(&t);
    digested(&t, commit4(&t));
    /* another column for round 5 while round 5 trains on column 1: ended early, dropped */
    uint32_t cols[] = {3};
    tick(&t, HB_MS);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    reply_accept(&t, SPES_NODE_CALL_HEARTBEAT, 5, 25, 0x55, cols, 1);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_CANCEL), 1);
    ck_assert_int_eq(find(&t, SPES_NODE_ACT_CANCEL)->value, 2);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_JOB), 0);
    r5->rc = SPES_EINTR;
    job_done(&t, r5);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_SEND), 0);
    ck_assert_ptr_null(t.sm.ready);
    /* the next Accept trains round 5 from S_5 on column 3 */
    tick(&t, HB_MS);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    reply_accept(&t, SPES_NODE_CALL_HEARTBEAT, 5, 25, 0x55, cols, 1);
    spes_node_job *again = take_job(&t, SPES_NODE_JOB_TRAIN);
    ck_assert_int_eq(again->u.train.overlap, 0);
    ck_assert_uint_eq(again->u.train.round, 5);
    ck_assert_int_eq(again->u.train.cols[3], 1);
    ck_assert_int_eq(again->u.train.cols[1], 0);
    spes_node_job_free(again);
    done(&t);
}
END_TEST

/* A node waiting for its round's commit asks for it every commit_poll_ms, not every
 * heartbeat_ms (commits come with heartbeat replies); otherwise it heartbeats as usual. */
START_TEST(test_commit_poll)
{
    T t;
    spes_node_job *r5 = overlapped(&t); /* round 4 announced: the node waits for its commit */
    t.sm.o.commit_poll_ms = HB_MS / 4;
    tick(&t, HB_MS / 4);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    reply_ack(&t, SPES_NODE_CALL_HEARTBEAT); /* no commit yet */
    tick(&t, HB_MS / 4 - 1);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_SEND), 0);
    tick(&t, 1);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    reply_ack(&t, SPES_NODE_CALL_HEARTBEAT);
    digested(&t, commit4(&t)); /* idle at round 5: every heartbeat_ms again */
    tick(&t, HB_MS / 4);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_SEND), 0);
    finish(r5, 0x45);
    job_done(&t, r5);
    done(&t);
}
END_TEST

START_TEST(test_overlap_round_closed_without_us)
{
    T t;
    spes_node_job *r5 = overlapped(&t);
    digested(&t, commit4(&t));
    /* round 5 commits without us while it still trains here: ended early, the commit applied now */
    tick(&t, HB_MS);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    commit_spec cs = {.round = 5, .next_step = 30, .nc = 1, .contrib = {0}, .np = 1, .peer = {0}};
    reply_commit(&t, SPES_NODE_CALL_HEARTBEAT, &cs);
    ck_assert_int_eq(find(&t, SPES_NODE_ACT_CANCEL)->value, 2);
    spes_node_job *ap = take_job(&t, SPES_NODE_JOB_APPLY);
    ck_assert_uint_eq(ap->u.apply.round, 5);
    /* the training had finished all the same: it is never announced */
    finish(r5, 0x45);
    job_done(&t, r5);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_SEND), 0);
    memset(ap->u.apply.state_hash, 0x66, 32);
    job_done(&t, ap);
    spes_proto_free(sent(&t, SPES_NODE_CALL_DIGEST, SPES_MSG_DIGEST));
    reply_ack(&t, SPES_NODE_CALL_DIGEST);
    uint32_t cols[] = {1};
    tick(&t, HB_MS);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    reply_accept(&t, SPES_NODE_CALL_HEARTBEAT, 6, 30, 0x66, cols, 1);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_SEND), 0); /* round 5's contribution is not announced for 6 */
    spes_node_job *r6 = take_job(&t, SPES_NODE_JOB_TRAIN);
    ck_assert_int_eq(r6->u.train.overlap, 0);
    ck_assert_uint_eq(r6->u.train.round, 6);
    spes_node_job_free(r6);
    done(&t);
}
END_TEST

START_TEST(test_overlap_join_waits_for_the_training)
{
    T t;
    spes_node_job *r5 = overlapped(&t);
    spes_node_job *ap = commit4(&t);
    /* the apply fails: the node must join again, but not while round 5 still trains */
    ap->rc = SPES_EIO;
    snprintf(ap->err, sizeof ap->err, "disk full");
    job_done(&t, ap);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_JOIN);
    ck_assert_int_eq(find(&t, SPES_NODE_ACT_CANCEL)->value, 2);
    tick(&t, 60000);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_SEND), 0);
    finish(r5, 0x45); /* even a round that ended well is dropped: the state it rebased on is gone */
    job_done(&t, r5);
    ck_assert_ptr_null(t.sm.ready);
    tick(&t, 0);
    spes_proto_free(sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
    done(&t);
}
END_TEST

START_TEST(test_join_accept_prepare)
{
    T t;
    setup_opts(&t, 0, COORD);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_JOIN);
    tick(&t, 0);
    Spes__Wire__Join *jn = (Spes__Wire__Join *)sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN);
    ck_assert_str_eq(jn->node_name, "node-2");
    ck_assert_str_eq(jn->listen_url, ME);
    ck_assert_uint_eq(jn->protocol_version, SPES_PROTO_VERSION);
    ck_assert_uint_eq(jn->capabilities->threads, 2);
    ck_assert_int_eq(find(&t, SPES_NODE_ACT_SEND)->timeout_ms, SPES_NODE_CALL_TIMEOUT_MS);
    spes_proto_free(&jn->base);
    tick(&t, 5000); /* one call at a time */
    ck_assert_int_eq(t.n, 0);
    uint32_t cols[] = {1, 3};
    reply_accept(&t, SPES_NODE_CALL_JOIN, 4, 20, 0x11, cols, 2);
    ck_assert(logged(&t, "joined run run-1 as node 2 at round 4"));
    ck_assert_int_eq(t.sm.phase, SPES_NODE_PREPARE);
    ck_assert_int_eq(t.sm.E, 4);
    spes_node_job *j = take_job(&t, SPES_NODE_JOB_PREPARE);
    ck_assert_uint_eq(j->u.prepare.round, 4);
    ck_assert_uint_eq(j->u.prepare.step, 20);
    ck_assert_int_eq(j->u.prepare.hash[31], 0x11);
    ck_assert_int_eq(j->u.prepare.have_held, 0);
    ck_assert_uint_eq(j->node_id, 2);
    ck_assert_int_eq(j->npeers, 1); /* S_r comes from the coordinator */
    ck_assert_str_eq(j->peers[0].url, COORD);
    ck_assert_int_eq(j->peers[0].is_coord, 1);
    tick(&t, 10 * HB_MS); /* preparing: heartbeats */
    Spes__Wire__Heartbeat *hb =
        (Spes__Wire__Heartbeat *)sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT);
    ck_assert_int_eq(hb->state, NS(ACTIVE));
    spes_proto_free(&hb->base);
    reply_ack(&t, SPES_NODE_CALL_HEARTBEAT);
    j->bytes_in = 777; /* the state it fetched counts in the bytes received */
    job_done(&t, j);
    ck_assert_uint_eq(t.sm.bytes_in_total, 777);
    ck_assert_int_eq(t.sm.have_state, 1);
    ck_assert_uint_eq(t.sm.round, 4);
    ck_assert_uint_eq(t.sm.step, 20);
    /* the Accept's columns: training starts at once, columns 1 and 3 of 4 */
    ck_assert_int_eq(t.sm.phase, SPES_NODE_TRAIN);
    j = take_job(&t, SPES_NODE_JOB_TRAIN);
    ck_assert_int_eq(j->u.train.E, 4);
    const uint8_t want[4] = {0, 1, 0, 1};
    ck_assert_mem_eq(j->u.train.cols, want, 4);
    ck_assert_uint_eq(j->u.train.round, 4);
    ck_assert_uint_eq(j->u.train.step, 20);
    ck_assert(logged(&t, "training columns of 2 expert(s) for 5 steps from step 20"));
    spes_node_job_free(j);
    done(&t);
}
END_TEST

START_TEST(test_prepare_without_columns_then_heartbeat_accept)
{
    T t;
    setup_opts(&t, 0, COORD);
    joined(&t, 0, 0x10, NULL, 0);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_IDLE);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_JOB), 0);
    /* idle: a heartbeat at once, then every HB_MS, JOINING (the coordinator may hand us work) */
    tick(&t, 0);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    reply_ack(&t, SPES_NODE_CALL_HEARTBEAT);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_IDLE);
    tick(&t, HB_MS - 1);
    ck_assert_int_eq(t.n, 0);
    tick(&t, 1);
    spes_node_sm_progress(&t.sm, 1, 7, 3.25, 900.0);
    Spes__Wire__Heartbeat *hb =
        (Spes__Wire__Heartbeat *)sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT);
    ck_assert_int_eq(hb->state, NS(JOINING));
    ck_assert_uint_eq(hb->node_id, 2);
    ck_assert_uint_eq(hb->round, 0);
    spes_proto_free(&hb->base);
    /* the reply hands out columns: train them; an out-of-range column is ignored */
    uint32_t cols[] = {0, 9};
    reply_accept(&t, SPES_NODE_CALL_HEARTBEAT, 0, 0, 0x10, cols, 2);
    spes_node_job *j = take_job(&t, SPES_NODE_JOB_TRAIN);
    const uint8_t want[4] = {1, 0, 0, 0};
    ck_assert_mem_eq(j->u.train.cols, want, 4);
    spes_node_job_free(j);
    /* training: heartbeats say ACTIVE and carry the worker's progress */
    tick(&t, HB_MS);
    hb = (Spes__Wire__Heartbeat *)sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT);
    ck_assert_int_eq(hb->state, NS(ACTIVE));
    ck_assert_uint_eq(hb->step, 7);
    ck_assert_double_eq(hb->loss, 3.25);
    ck_assert_double_eq(hb->tokens_per_s, 900.0);
    spes_proto_free(&hb->base);
    done(&t);
}
END_TEST

START_TEST(test_accept_for_diverged_state_joins_again)
{
    T t;
    setup_opts(&t, 0, COORD);
    joined(&t, 3, 0x33, NULL, 0);
    tick(&t, HB_MS);
    uint32_t cols[] = {2};
    reply_accept(&t, SPES_NODE_CALL_HEARTBEAT, 3, 15, 0x34, cols, 1); /* the run's S_3 is not ours */
    ck_assert(logged(&t, "is not the run's agreed one"));
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_JOB), 0);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_JOIN);
    tick(&t, 0);
    spes_proto_free(sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
    done(&t);
}
END_TEST

START_TEST(test_too_far_behind_rejoins_and_keeps_the_run)
{
    T t;
    setup_opts(&t, 0, COORD);
    joined(&t, 2, 0x22, NULL, 0);
    tick(&t, HB_MS);
    reply_reject(&t, SPES_NODE_CALL_HEARTBEAT, SPES__WIRE__ERROR_CODE__ERROR_WRONG_ROUND, 0,
                 "too far behind: join again");
    ck_assert(logged(&t, "coordinator: too far behind: join again; joining again"));
    ck_assert_int_eq(t.sm.phase, SPES_NODE_JOIN);
    tick(&t, 0);
    spes_proto_free(sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
    reply_accept(&t, SPES_NODE_CALL_JOIN, 6, 30, 0x66, NULL, 0);
    spes_node_job *j = take_job(&t, SPES_NODE_JOB_PREPARE);
    /* the worker is told which state it already holds, to fetch only what changed */
    ck_assert_int_eq(j->u.prepare.have_held, 1);
    ck_assert_uint_eq(j->u.prepare.held_round, 2);
    ck_assert_int_eq(j->u.prepare.held_hash[0], 0x22);
    ck_assert_uint_eq(j->u.prepare.round, 6);
    job_done(&t, j);
    ck_assert_uint_eq(t.sm.round, 6);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_IDLE);
    /* a WRONG_ROUND while training is not acted on: the train job's end decides */
    uint32_t cols[] = {1};
    tick(&t, HB_MS);
    reply_accept(&t, SPES_NODE_CALL_HEARTBEAT, 6, 30, 0x66, cols, 1);
    spes_node_job_free(take_job(&t, SPES_NODE_JOB_TRAIN));
    tick(&t, HB_MS);
    reply_reject(&t, SPES_NODE_CALL_HEARTBEAT, SPES__WIRE__ERROR_CODE__ERROR_WRONG_ROUND, 0,
                 "too far behind");
    ck_assert_int_eq(t.sm.phase, SPES_NODE_TRAIN);
    /* other rejects are only logged nowhere: nothing changes */
    tick(&t, HB_MS);
    reply_reject(&t, SPES_NODE_CALL_HEARTBEAT, SPES__WIRE__ERROR_CODE__ERROR_BUSY, 0, "busy");
    ck_assert_int_eq(t.sm.phase, SPES_NODE_TRAIN);
    ck_assert_int_eq(t.n, 0);
    done(&t);
}
END_TEST

START_TEST(test_prepare_failure_retries_join)
{
    T t;
    setup_opts(&t, 0, COORD);
    tick(&t, 0);
    spes_proto_free(sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
    reply_accept(&t, SPES_NODE_CALL_JOIN, 5, 25, 0x55, NULL, 0);
    spes_node_job *j = take_job(&t, SPES_NODE_JOB_PREPARE);
    j->rc = SPES_ENOENT;
    snprintf(j->err, sizeof j->err, "no peer offered it");
    job_done(&t, j);
    ck_assert(logged(&t, "cannot get the agreed state of round 5: no peer offered it"));
    ck_assert_int_eq(t.sm.phase, SPES_NODE_JOIN);
    ck_assert_int_eq(t.sm.have_state, 0);
    tick(&t, 1999);
    ck_assert_int_eq(t.n, 0);
    tick(&t, 1);
    spes_proto_free(sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
    done(&t);
}
END_TEST

START_TEST(test_join_backoff_and_unreachable_coordinator)
{
    T t;
    setup_opts(&t, 0, COORD);
    for (int i = 0; i < 3; i++) { /* unreachable: one Join a second */
        tick(&t, 0);
        spes_proto_free(sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
        reply_fail(&t, SPES_NODE_CALL_JOIN);
        ck_assert(logged(&t, "join: connection refused"));
        tick(&t, 999);
        ck_assert_int_eq(t.n, 0);
        t.now += 1;
    }
    /* the coordinator asks us to come back later */
    tick(&t, 0);
    spes_proto_free(sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
    reply_reject(&t, SPES_NODE_CALL_JOIN, SPES__WIRE__ERROR_CODE__ERROR_BUSY, 3000, "awaiting approval");
    ck_assert(logged(&t, "join: awaiting approval"));
    tick(&t, 2999);
    ck_assert_int_eq(t.n, 0);
    tick(&t, 1);
    spes_proto_free(sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
    /* an Error reply and an unparsable reply are failures too */
    Spes__Wire__Error e = SPES__WIRE__ERROR__INIT;
    e.message = "internal";
    reply(&t, SPES_NODE_CALL_JOIN, SPES_MSG_ERROR, &e.base);
    ck_assert(logged(&t, "join: internal"));
    tick(&t, 1000);
    spes_proto_free(sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
    const uint8_t junk[5] = {1, 2, 3, 4, 5};
    spes_node_sm_reply(&t.sm, SPES_NODE_CALL_JOIN, 0, NULL, junk, sizeof junk, t.now, &t.out);
    pump(&t);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_JOIN);
    tick(&t, 999);
    ck_assert_int_eq(t.n, 0);
    /* a heartbeat that fails changes nothing: the next one goes an interval later */
    tick(&t, 1);
    spes_proto_free(sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
    reply_accept(&t, SPES_NODE_CALL_JOIN, 0, 0, 0x01, NULL, 0);
    job_done(&t, take_job(&t, SPES_NODE_JOB_PREPARE));
    tick(&t, HB_MS);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    reply_fail(&t, SPES_NODE_CALL_HEARTBEAT);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_IDLE);
    tick(&t, HB_MS - 1);
    ck_assert_int_eq(t.n, 0);
    tick(&t, 1);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    done(&t);
}
END_TEST

START_TEST(test_bad_run_config_retries)
{
    T t;
    setup_opts(&t, 0, COORD);
    tick(&t, 0);
    spes_proto_free(sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
    Spes__Wire__Accept a = SPES__WIRE__ACCEPT__INIT;
    uint8_t hash[32] = {0};
    a.run_config_json = "{\"model\": {\"num_experts\": 0}}";
    a.run_id = "r";
    a.state_hash = (ProtobufCBinaryData){32, hash};
    reply(&t, SPES_NODE_CALL_JOIN, SPES_MSG_ACCEPT, &a.base);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_LOG), 1);
    ck_assert_int_eq(find(&t, SPES_NODE_ACT_LOG)->level, SPES_LOG_ERROR);
    ck_assert_int_eq(t.sm.have_run, 0);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_JOIN);
    tick(&t, 4999);
    ck_assert_int_eq(t.n, 0);
    tick(&t, 1);
    spes_proto_free(sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
    done(&t);
}
END_TEST

START_TEST(test_round_train_announce_commit_digest)
{
    T t;
    setup_opts(&t, 0, COORD);
    uint32_t cols[] = {2, 3};
    joined(&t, 1, 0x11, cols, 2);
    t.sm.loss = 2.75; /* the worker's last step, as published */
    trained(&t);
    /* the contribution is announced at once */
    ck_assert_int_eq(t.sm.phase, SPES_NODE_ANNOUNCE);
    Spes__Wire__Announce *an = (Spes__Wire__Announce *)sent(&t, SPES_NODE_CALL_ANNOUNCE, SPES_MSG_ANNOUNCE);
    ck_assert_uint_eq(an->node_id, 2);
    ck_assert_uint_eq(an->round, 1);
    ck_assert_int_eq(an->blob_hash.data[0], 0x42);
    ck_assert_int_eq(an->manifest_hash.data[31], 0x82);
    ck_assert_uint_eq(an->size, 1234);
    ck_assert_uint_eq(an->tokens_trained, 640);
    ck_assert_double_eq(an->loss->mean, 2.5);
    ck_assert_double_eq(an->loss->last, 2.75);
    ck_assert_uint_eq(an->loss->count, 5);
    ck_assert_int_eq(an->codec, SPES__WIRE__CODEC__CODEC_Q8EF); /* the run's codec */
    spes_proto_free(&an->base);
    /* a failed announce is retried after 500 ms */
    reply_fail(&t, SPES_NODE_CALL_ANNOUNCE);
    ck_assert(logged(&t, "announce failed (connection refused); retrying"));
    tick(&t, 499);
    ck_assert_int_eq(t.n, 0);
    tick(&t, 1);
    spes_proto_free(sent(&t, SPES_NODE_CALL_ANNOUNCE, SPES_MSG_ANNOUNCE));
    reply_ack(&t, SPES_NODE_CALL_ANNOUNCE);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_WAIT);
    /* waiting: a heartbeat brings the commit of another round (ignored), then ours */
    tick(&t, HB_MS);
    Spes__Wire__Heartbeat *hb =
        (Spes__Wire__Heartbeat *)sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT);
    ck_assert_int_eq(hb->state, NS(JOINING));
    spes_proto_free(&hb->base);
    commit_spec other = {.round = 7, .next_step = 40, .base = 0x77};
    reply_commit(&t, SPES_NODE_CALL_HEARTBEAT, &other);
    ck_assert_int_eq(t.n, 0);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_WAIT);
    tick(&t, HB_MS);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    commit_spec cs = {.round = 1,
                      .next_step = 10,
                      .base = 0x11,
                      .nc = 3,
                      .contrib = {0, 2, 5},
                      .np = 3,
                      .peer = {0, 2, 5},
                      .merge = 1,
                      .ckpt = "ck-10"};
    reply_commit(&t, SPES_NODE_CALL_HEARTBEAT, &cs);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_APPLY);
    spes_node_job *j = take_job(&t, SPES_NODE_JOB_APPLY);
    const spes_node_job_apply *a = &j->u.apply;
    ck_assert_uint_eq(a->round, 1);
    ck_assert_uint_eq(a->next_step, 10);
    ck_assert_int_eq(a->merge, 1);
    ck_assert_str_eq(a->ckpt_id, "ck-10");
    ck_assert_int_eq(a->ncontrib, 3);
    ck_assert_uint_eq(a->contribs[2].node, 5);
    ck_assert_int_eq(a->contribs[2].hash[0], 0x45);
    ck_assert_int_eq(a->contribs[2].manifest[0], 0x85);
    /* peers: the coordinator (also node 0), node 5; never ourselves */
    ck_assert_int_eq(j->npeers, 2);
    ck_assert_str_eq(j->peers[0].url, COORD);
    ck_assert_int_eq(j->peers[0].is_coord, 1);
    ck_assert_uint_eq(j->peers[0].id, 0);
    ck_assert_str_eq(j->peers[0].name, "node-0");
    ck_assert_uint_eq(j->peers[1].id, 5);
    ck_assert_int_eq(j->peers[1].is_coord, 0);
    ck_assert_str_eq(j->peers[1].name, "node-5");
    /* applying: heartbeats go on, ACTIVE */
    tick(&t, HB_MS);
    hb = (Spes__Wire__Heartbeat *)sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT);
    ck_assert_int_eq(hb->state, NS(ACTIVE));
    spes_proto_free(&hb->base);
    reply_ack(&t, SPES_NODE_CALL_HEARTBEAT);
    /* applied: S_2, the digest goes at once with the checkpoint id */
    memset(j->u.apply.state_hash, 0x12, 32);
    j->bytes_in = 4096;
    j->u.apply.bytes_served = 777;
    t.now += 1000;
    job_done(&t, j);
    ck_assert(
        logged(&t, "round 1 applied: state digest 1212121212121212 (blob bytes received 4096, served 777 in "
                   "all; train 3.00 s, sync 2.10 s)"));
    ck_assert_uint_eq(t.sm.round, 2);
    ck_assert_uint_eq(t.sm.step, 10);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_DIGEST);
    Spes__Wire__Digest *dg = (Spes__Wire__Digest *)sent(&t, SPES_NODE_CALL_DIGEST, SPES_MSG_DIGEST);
    ck_assert_uint_eq(dg->round, 2);
    ck_assert_int_eq(dg->state_hash.data[5], 0x12);
    ck_assert_str_eq(dg->checkpoint_id, "ck-10");
    spes_proto_free(&dg->base);
    /* a digest refused with an Error is retried after 500 ms; then an Ack: idle */
    Spes__Wire__Error e = SPES__WIRE__ERROR__INIT;
    e.message = "busy";
    reply(&t, SPES_NODE_CALL_DIGEST, SPES_MSG_ERROR, &e.base);
    ck_assert(logged(&t, "digest report failed: busy"));
    tick(&t, 499);
    ck_assert_int_eq(t.n, 0);
    tick(&t, 1);
    spes_proto_free(sent(&t, SPES_NODE_CALL_DIGEST, SPES_MSG_DIGEST));
    reply_ack(&t, SPES_NODE_CALL_DIGEST);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_IDLE);
    done(&t);
}
END_TEST

START_TEST(test_announce_not_taken_and_lost)
{
    T t;
    setup_opts(&t, 0, COORD);
    uint32_t cols[] = {0};
    joined(&t, 1, 0x11, cols, 1);
    trained(&t);
    spes_proto_free(sent(&t, SPES_NODE_CALL_ANNOUNCE, SPES_MSG_ANNOUNCE));
    reply_reject(&t, SPES_NODE_CALL_ANNOUNCE, SPES__WIRE__ERROR_CODE__ERROR_REFUSED, 0,
                 "NaN in contribution");
    ck_assert(logged(&t, "round 1: contribution not taken: NaN in contribution"));
    ck_assert_int_eq(t.sm.phase, SPES_NODE_WAIT);
    /* the coordinator restarted and lost our announcement: it hands us the round again */
    tick(&t, HB_MS);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    reply_accept(&t, SPES_NODE_CALL_HEARTBEAT, 1, 5, 0x11, cols, 1);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_ANNOUNCE);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_JOB), 0); /* no training again */
    tick(&t, 0);
    Spes__Wire__Announce *an = (Spes__Wire__Announce *)sent(&t, SPES_NODE_CALL_ANNOUNCE, SPES_MSG_ANNOUNCE);
    ck_assert_int_eq(an->blob_hash.data[0], 0x42);
    spes_proto_free(&an->base);
    /* an Accept while waiting but for a round we did not train is ignored */
    reply_ack(&t, SPES_NODE_CALL_ANNOUNCE);
    tick(&t, HB_MS);
    reply_accept(&t, SPES_NODE_CALL_HEARTBEAT, 2, 5, 0x11, cols, 1);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_WAIT);
    /* NOT_MEMBER while waiting: join again */
    tick(&t, HB_MS);
    reply_reject(&t, SPES_NODE_CALL_HEARTBEAT, SPES__WIRE__ERROR_CODE__ERROR_NOT_MEMBER, 0, "evicted");
    ck_assert_int_eq(t.sm.phase, SPES_NODE_JOIN);
    done(&t);
}
END_TEST

START_TEST(test_commit_that_left_us_out)
{
    T t;
    setup_opts(&t, 0, COORD);
    uint32_t cols[] = {0};
    joined(&t, 4, 0x44, cols, 1);
    spes_node_job *train = take_job(&t, SPES_NODE_JOB_TRAIN);
    /* the round closes without us while we train: abandon the job, keep the commit */
    tick(&t, HB_MS);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    commit_spec cs = {
        .round = 4, .next_step = 25, .base = 0x44, .nc = 1, .contrib = {0}, .np = 1, .peer = {0}};
    reply_commit(&t, SPES_NODE_CALL_HEARTBEAT, &cs);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_CANCEL), 1);
    ck_assert_int_eq(find(&t, SPES_NODE_ACT_CANCEL)->value, 2);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_JOB), 0);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_TRAIN);
    /* the same commit again (the next heartbeat) only replaces the kept one */
    tick(&t, HB_MS);
    reply_commit(&t, SPES_NODE_CALL_HEARTBEAT, &cs);
    /* the worker stops early: the cancel flag is cleared, the kept commit is applied, nothing announced */
    train->rc = SPES_EINTR;
    snprintf(train->err, sizeof train->err, "round abandoned");
    job_done(&t, train);
    ck_assert(!logged(&t, "training failed"));
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_SEND), 0);
    ck_assert_int_eq(find(&t, SPES_NODE_ACT_CANCEL)->value, 0);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_APPLY);
    ck_assert_uint_eq(t.sm.train_round, UINT64_MAX);
    spes_node_job *j = take_job(&t, SPES_NODE_JOB_APPLY);
    ck_assert_int_eq(j->u.apply.ncontrib, 1);
    ck_assert_uint_eq(j->u.apply.contribs[0].node, 0);
    memset(j->u.apply.state_hash, 0x45, 32);
    job_done(&t, j);
    ck_assert(logged(&t, "train 0.00 s, sync 0.00 s")); /* our training was not part of it */
    Spes__Wire__Digest *dg = (Spes__Wire__Digest *)sent(&t, SPES_NODE_CALL_DIGEST, SPES_MSG_DIGEST);
    ck_assert_uint_eq(dg->round, 5);
    ck_assert_str_eq(dg->checkpoint_id, "");
    spes_proto_free(&dg->base);
    done(&t);
}
END_TEST

START_TEST(test_commit_while_training_that_finished)
{
    T t;
    setup_opts(&t, 0, COORD);
    uint32_t cols[] = {1};
    joined(&t, 4, 0x44, cols, 1);
    spes_node_job *j = take_job(&t, SPES_NODE_JOB_TRAIN);
    tick(&t, HB_MS);
    commit_spec cs = {
        .round = 4, .next_step = 25, .base = 0x44, .nc = 1, .contrib = {0}, .np = 1, .peer = {0}};
    reply_commit(&t, SPES_NODE_CALL_HEARTBEAT, &cs);
    /* the job finished anyway: its contribution is too late, the commit is applied */
    job_done(&t, j);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_SEND), 0);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_APPLY);
    spes_node_job_free(take_job(&t, SPES_NODE_JOB_APPLY));
    done(&t);
}
END_TEST

START_TEST(test_training_failure_and_diverged_commit)
{
    T t;
    setup_opts(&t, 0, COORD);
    uint32_t cols[] = {1};
    joined(&t, 2, 0x22, cols, 1);
    spes_node_job *j = take_job(&t, SPES_NODE_JOB_TRAIN);
    j->rc = SPES_EIO;
    snprintf(j->err, sizeof j->err, "disk full");
    job_done(&t, j);
    ck_assert(logged(&t, "round 2: training failed: disk full"));
    ck_assert_int_eq(t.sm.phase, SPES_NODE_WAIT);
    /* the commit's base is not our S_2: join again instead of applying */
    tick(&t, HB_MS);
    commit_spec cs = {.round = 2, .next_step = 15, .base = 0x23};
    reply_commit(&t, SPES_NODE_CALL_HEARTBEAT, &cs);
    ck_assert(logged(&t, "is not the run's agreed one"));
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_JOB), 0);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_JOIN);
    done(&t);
}
END_TEST

START_TEST(test_apply_failure_forgets_state)
{
    T t;
    setup_opts(&t, 0, COORD);
    joined(&t, 2, 0x22, NULL, 0);
    tick(&t, HB_MS);
    commit_spec cs = {
        .round = 2, .next_step = 15, .base = 0x22, .nc = 1, .contrib = {3}, .np = 1, .peer = {3}};
    reply_commit(&t, SPES_NODE_CALL_HEARTBEAT, &cs);
    spes_node_job *j = take_job(&t, SPES_NODE_JOB_APPLY);
    j->rc = SPES_ENET;
    snprintf(j->err, sizeof j->err, "no peer offered it");
    job_done(&t, j);
    ck_assert(logged(&t, "round 2: cannot apply the commit: no peer offered it"));
    ck_assert_int_eq(t.sm.have_state, 0);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_JOIN);
    tick(&t, 999);
    ck_assert_int_eq(t.n, 0);
    tick(&t, 1);
    spes_proto_free(sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
    reply_accept(&t, SPES_NODE_CALL_JOIN, 3, 15, 0x33, NULL, 0);
    j = take_job(&t, SPES_NODE_JOB_PREPARE);
    ck_assert_int_eq(j->u.prepare.have_held, 0); /* our copy is not trusted any more */
    spes_node_job_free(j);
    done(&t);
}
END_TEST

START_TEST(test_state_from_every_holder)
{
    T t;
    setup_opts(&t, 0, COORD);
    tick(&t, 0);
    spes_proto_free(sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
    /* the Accept names who holds S_4 (itself among them, by mistake): the state comes from all the
     * others and the coordinator, never from itself */
    Spes__Wire__Peer pv[3], *pp[3];
    const char *urls[3] = {"tls+tcp://10.0.0.13:7000", ME, "tls+tcp://10.0.0.14:7000"};
    for (int i = 0; i < 3; i++) {
        spes__wire__peer__init(&pv[i]);
        pv[i].node_id = (uint32_t)(3 + i);
        pv[i].name = i == 1 ? "node-2" : i == 0 ? "node-3" : "node-5";
        pv[i].listen_url = (char *)urls[i];
        pp[i] = &pv[i];
    }
    reply_accept_peers(&t, SPES_NODE_CALL_JOIN, 4, 20, 0x11, NULL, 0, pp, 3);
    spes_node_job *j = take_job(&t, SPES_NODE_JOB_PREPARE);
    ck_assert_int_eq(j->npeers, 3);
    ck_assert_str_eq(j->peers[0].url, COORD);
    ck_assert_int_eq(j->peers[0].is_coord, 1);
    ck_assert_str_eq(j->peers[1].url, urls[0]);
    ck_assert_str_eq(j->peers[1].name, "node-3");
    ck_assert_str_eq(j->peers[2].url, urls[2]);
    spes_node_job_free(j);
    done(&t);
}
END_TEST

START_TEST(test_apply_knows_refusal)
{
    T t;
    setup_opts(&t, 0, COORD);
    joined(&t, 2, 0x22, NULL, 0);
    /* another member refused: this node's residual stands */
    tick(&t, HB_MS);
    commit_spec cs = {
        .round = 2, .next_step = 15, .base = 0x22, .nc = 1, .contrib = {3}, .nr = 1, .refused = {5}};
    reply_commit(&t, SPES_NODE_CALL_HEARTBEAT, &cs);
    spes_node_job *j = take_job(&t, SPES_NODE_JOB_APPLY);
    ck_assert_int_eq(j->u.apply.refused_self, 0);
    memset(j->u.apply.state_hash, 0x23, 32);
    job_done(&t, j);
    spes_proto_free(sent(&t, SPES_NODE_CALL_DIGEST, SPES_MSG_DIGEST));
    reply_ack(&t, SPES_NODE_CALL_DIGEST);
    /* this node (id 2) refused: the worker is told, so that it drops its residual */
    tick(&t, HB_MS);
    commit_spec c2 = {
        .round = 3, .next_step = 20, .base = 0x23, .nc = 1, .contrib = {3}, .nr = 2, .refused = {1, 2}};
    reply_commit(&t, SPES_NODE_CALL_HEARTBEAT, &c2);
    j = take_job(&t, SPES_NODE_JOB_APPLY);
    ck_assert_int_eq(j->u.apply.refused_self, 1);
    spes_node_job_free(j);
    done(&t);
}
END_TEST

START_TEST(test_checkpoint_ids)
{
    T t;
    setup_opts(&t, 0, COORD);
    joined(&t, 8, 0x08, NULL, 0);
    /* an id that names a path is refused; the state is applied without a checkpoint */
    tick(&t, HB_MS);
    commit_spec cs = {.round = 8, .next_step = 45, .base = 0x08, .ckpt = "../etc"};
    reply_commit(&t, SPES_NODE_CALL_HEARTBEAT, &cs);
    ck_assert(logged(&t, "checkpoint id \"../etc\" refused"));
    spes_node_job *j = take_job(&t, SPES_NODE_JOB_APPLY);
    ck_assert_str_eq(j->u.apply.ckpt_id, "");
    memset(j->u.apply.state_hash, 0x09, 32);
    job_done(&t, j);
    Spes__Wire__Digest *dg = (Spes__Wire__Digest *)sent(&t, SPES_NODE_CALL_DIGEST, SPES_MSG_DIGEST);
    ck_assert_str_eq(dg->checkpoint_id, "");
    spes_proto_free(&dg->base);
    reply_ack(&t, SPES_NODE_CALL_DIGEST);
    /* the worker could not save the checkpoint: it clears the id, and the digest says none */
    tick(&t, HB_MS);
    commit_spec c2 = {.round = 9, .next_step = 50, .base = 0x09, .ckpt = "ck-9"};
    reply_commit(&t, SPES_NODE_CALL_HEARTBEAT, &c2);
    j = take_job(&t, SPES_NODE_JOB_APPLY);
    ck_assert_str_eq(j->u.apply.ckpt_id, "ck-9");
    j->u.apply.ckpt_id[0] = '\0';
    job_done(&t, j);
    dg = (Spes__Wire__Digest *)sent(&t, SPES_NODE_CALL_DIGEST, SPES_MSG_DIGEST);
    ck_assert_str_eq(dg->checkpoint_id, "");
    spes_proto_free(&dg->base);
    reply_ack(&t, SPES_NODE_CALL_DIGEST);
    /* saved: the digest carries it */
    tick(&t, HB_MS);
    commit_spec c3 = {.round = 10, .next_step = 55, .ckpt = "ck-10"};
    reply_commit(&t, SPES_NODE_CALL_HEARTBEAT, &c3);
    applied(&t, 0x0b);
    dg = (Spes__Wire__Digest *)sent(&t, SPES_NODE_CALL_DIGEST, SPES_MSG_DIGEST);
    ck_assert_str_eq(dg->checkpoint_id, "ck-10");
    ck_assert_uint_eq(dg->round, 11);
    spes_proto_free(&dg->base);
    done(&t);
}
END_TEST

/* run_rounds applies rounds first..last, each with contributions of nodes 1 and 3. */
static void run_rounds(T *t, uint64_t first, uint64_t last, int *released)
{
    for (uint64_t r = first; r <= last; r++) {
        tick(t, HB_MS);
        commit_spec cs = {
            .round = r, .next_step = 5 * (r + 1), .nc = 2, .contrib = {1, 3}, .np = 2, .peer = {1, 3}};
        reply_commit(t, SPES_NODE_CALL_HEARTBEAT, &cs);
        applied(t, (uint8_t)(0xa0 + r));
        released[r] = count(t, SPES_NODE_ACT_RELEASE);
        if (r >= 3 && released[r]) {
            /* round r - 3's contributions and the state it made, S_{r-2} */
            ck_assert_int_eq(released[r], 3);
            int seen_state = 0;
            for (int i = 0; i < t->n; i++)
                if (t->got[i].kind == SPES_NODE_ACT_RELEASE)
                    seen_state += t->got[i].hash[0] == 0xa0 + r - 3;
            ck_assert_int_eq(seen_state, 1);
        }
        spes_proto_free(sent(t, SPES_NODE_CALL_DIGEST, SPES_MSG_DIGEST));
        reply_ack(t, SPES_NODE_CALL_DIGEST);
    }
}

START_TEST(test_blob_retention)
{
    T t;
    setup_opts(&t, 0, COORD);
    joined(&t, 0, 0x01, NULL, 0);
    int released[8] = {0};
    run_rounds(&t, 0, 6, released);
    /* rounds 0..2 release nothing; from round 3 on, each applied round releases round r-3's three blobs */
    ck_assert_int_eq(released[0] + released[1] + released[2], 0);
    for (int r = 3; r <= 6; r++)
        ck_assert_int_eq(released[r], 3);
    ck_assert_uint_eq(t.sm.round, 7);
    done(&t);

    setup_opts(&t, 1, COORD); /* keep_blobs: nothing is ever released */
    joined(&t, 0, 0x01, NULL, 0);
    memset(released, 0, sizeof released);
    run_rounds(&t, 0, 6, released);
    for (int r = 0; r <= 6; r++)
        ck_assert_int_eq(released[r], 0);
    done(&t);
}
END_TEST

START_TEST(test_stop_idle_leaves)
{
    T t;
    setup_opts(&t, 0, COORD);
    joined(&t, 1, 0x11, NULL, 0);
    spes_node_sm_stop(&t.sm, &t.out);
    pump(&t);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_STOP);
    ck_assert_int_eq(find(&t, SPES_NODE_ACT_CANCEL)->value, 1);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_ABORT_CALLS), 0);
    Spes__Wire__Leave *l = (Spes__Wire__Leave *)sent(&t, SPES_NODE_CALL_LEAVE, SPES_MSG_LEAVE);
    ck_assert_uint_eq(l->node_id, 2);
    ck_assert_str_eq(l->reason, "shutting down");
    ck_assert_int_eq(find(&t, SPES_NODE_ACT_SEND)->timeout_ms, SPES_NODE_LEAVE_TIMEOUT_MS);
    spes_proto_free(&l->base);
    tick(&t, 10 * HB_MS); /* stopping: no heartbeats */
    ck_assert_int_eq(t.n, 0);
    reply_fail(&t, SPES_NODE_CALL_LEAVE); /* the goodbye's answer does not matter */
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_STOPPED), 1);
    ck_assert_int_eq(t.sm.phase, SPES_NODE_DONE);
    spes_node_sm_stop(&t.sm, &t.out); /* a second stop does nothing */
    pump(&t);
    ck_assert_int_eq(t.n, 0);
    done(&t);
}
END_TEST

START_TEST(test_stop_before_joining)
{
    T t;
    setup_opts(&t, 0, COORD);
    spes_node_sm_stop(&t.sm, &t.out);
    pump(&t);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_SEND), 0);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_STOPPED), 1);
    done(&t);

    /* stop with the Join in flight: abort it, then stop without a goodbye */
    setup_opts(&t, 0, COORD);
    tick(&t, 0);
    spes_node_sm_stop(&t.sm, &t.out);
    pump(&t);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_ABORT_CALLS), 1);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_STOPPED), 0);
    reply_fail(&t, SPES_NODE_CALL_JOIN);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_STOPPED), 1);
    done(&t);
}
END_TEST

START_TEST(test_stop_with_a_job_and_a_call)
{
    T t;
    setup_opts(&t, 0, COORD);
    uint32_t cols[] = {1};
    joined(&t, 1, 0x11, cols, 1);
    spes_node_job *train = take_job(&t, SPES_NODE_JOB_TRAIN);
    tick(&t, HB_MS); /* a heartbeat in flight */
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    spes_node_sm_stop(&t.sm, &t.out);
    pump(&t);
    ck_assert_int_eq(find(&t, SPES_NODE_ACT_CANCEL)->value, 1);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_ABORT_CALLS), 1);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_SEND), 0);
    /* the aborted heartbeat comes back: still a job out, no goodbye yet */
    reply_fail(&t, SPES_NODE_CALL_HEARTBEAT);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_SEND), 0);
    /* the job ends (cancelled): now the goodbye, and nothing is announced */
    train->rc = SPES_EINTR;
    job_done(&t, train);
    Spes__Wire__Leave *l = (Spes__Wire__Leave *)sent(&t, SPES_NODE_CALL_LEAVE, SPES_MSG_LEAVE);
    spes_proto_free(&l->base);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_CANCEL), 0); /* the flag stays set while stopping */
    reply_ack(&t, SPES_NODE_CALL_LEAVE);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_STOPPED), 1);
    /* replies and jobs after the end are ignored */
    reply_ack(&t, SPES_NODE_CALL_HEARTBEAT);
    ck_assert_int_eq(t.n, 0);
    done(&t);
}
END_TEST

START_TEST(test_not_member_on_join_stops)
{
    T t;
    setup_opts(&t, 0, COORD);
    tick(&t, 0);
    reply_reject(&t, SPES_NODE_CALL_JOIN, SPES__WIRE__ERROR_CODE__ERROR_NOT_MEMBER, 0, "evicted");
    ck_assert(logged(&t, "coordinator: evicted; stopping this daemon"));
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_SEND), 0); /* evicted: nothing to leave */
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_STOPPED), 1);
    done(&t);
}
END_TEST

/* ---- sharded rounds (docs/design.md, "The sharded round") ---- */

START_TEST(test_sharded_announce_aggregate_apply)
{
    T t;
    setup_opts(&t, 0, COORD);
    uint32_t cols[] = {1};
    tick(&t, 0);
    spes_proto_free(sent(&t, SPES_NODE_CALL_JOIN, SPES_MSG_JOIN));
    uint8_t h11[32];
    memset(h11, 0x11, 32);
    Spes__Wire__Accept ac = SPES__WIRE__ACCEPT__INIT;
    ac.node_id = 2, ac.columns = cols, ac.n_columns = 1, ac.run_config_json = (char *)run_json;
    ac.round = 1, ac.step = 5, ac.state_hash = (ProtobufCBinaryData){32, h11}, ac.run_id = "run-1";
    ac.shards = 2;
    reply(&t, SPES_NODE_CALL_JOIN, SPES_MSG_ACCEPT, &ac.base);
    job_done(&t, take_job(&t, SPES_NODE_JOB_PREPARE));
    /* the train job is told the round's shards; its shards go out with the announcement */
    spes_node_job *j = take_job(&t, SPES_NODE_JOB_TRAIN);
    ck_assert_int_eq(j->u.train.shards, 2);
    j->u.train.shard = calloc(2, sizeof *j->u.train.shard);
    j->u.train.nshards = 2;
    for (int s = 0; s < 2; s++) {
        memset(j->u.train.shard[s].hash, 0x60 + s, 32);
        memset(j->u.train.shard[s].manifest, 0x70 + s, 32);
        j->u.train.shard[s].size = 1000 + (uint64_t)s;
    }
    memset(j->u.train.blob, 0x42, 32);
    memset(j->u.train.manifest, 0x82, 32);
    job_done(&t, j);
    Spes__Wire__Announce *an = (Spes__Wire__Announce *)sent(&t, SPES_NODE_CALL_ANNOUNCE, SPES_MSG_ANNOUNCE);
    ck_assert_uint_eq(an->n_shards, 2);
    ck_assert_int_eq(an->shards[1]->blob_hash.data[0], 0x61);
    ck_assert_int_eq(an->shards[1]->manifest_hash.data[0], 0x71);
    ck_assert_uint_eq(an->shards[1]->size, 1001);
    spes_proto_free(&an->base);
    reply_ack(&t, SPES_NODE_CALL_ANNOUNCE);
    /* a heartbeat's reply hands it shard 1 of nodes 0 and 2 to aggregate */
    tick(&t, HB_MS);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    Spes__Wire__Group g[2];
    Spes__Wire__ShardInput in[2], *ip[2];
    uint8_t gh[2][32];
    for (int k = 0; k < 2; k++) {
        spes__wire__group__init(&g[k]);
        memset(gh[k], 0x90 + k, 32);
        g[k].blob_hash = g[k].manifest_hash = (ProtobufCBinaryData){32, gh[k]};
        g[k].size = 1000;
        spes__wire__shard_input__init(&in[k]);
        in[k].node_id = k ? 2 : 0;
        in[k].blob = &g[k];
        in[k].name = k ? "node-2" : "node-0";
        in[k].listen_url = k ? ME : COORD;
        ip[k] = &in[k];
    }
    Spes__Wire__ShardTask st = SPES__WIRE__SHARD_TASK__INIT, *stp = &st;
    st.shard = 1, st.attempt = 1, st.inputs = ip, st.n_inputs = 2;
    Spes__Wire__AggregateTask at = SPES__WIRE__AGGREGATE_TASK__INIT;
    at.round = 1, at.shards = 2, at.base_hash = (ProtobufCBinaryData){32, h11}, at.tasks = &stp,
    at.n_tasks = 1;
    reply(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_AGGREGATE_TASK, &at.base);
    spes_node_job *ag = take_job(&t, SPES_NODE_JOB_AGGREGATE);
    ck_assert_int_eq(ag->u.aggregate.shards, 2);
    ck_assert_int_eq(ag->u.aggregate.ntasks, 1);
    ck_assert_int_eq(ag->u.aggregate.task[0].n, 2);
    ck_assert_int_eq(ag->u.aggregate.task[0].in[1].hash[0], 0x91);
    ck_assert_int_eq(ag->npeers, 1); /* the coordinator, also node 0; never ourselves */
    /* asked again while it runs: no second job */
    tick(&t, HB_MS);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    reply(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_AGGREGATE_TASK, &at.base);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_JOB), 0);
    /* done: node 0's shard passed, ours was refused; the report goes at once */
    spes_node_shard_task *tk = &ag->u.aggregate.task[0];
    tk->ok[0] = 1;
    snprintf(tk->why[1], sizeof tk->why[1], "value 3 is not finite");
    job_done(&t, ag);
    Spes__Wire__AggregateReport *rp =
        (Spes__Wire__AggregateReport *)sent(&t, SPES_NODE_CALL_REPORT, SPES_MSG_AGGREGATE_REPORT);
    ck_assert_uint_eq(rp->round, 1);
    ck_assert_uint_eq(rp->n_results, 1);
    ck_assert_uint_eq(rp->results[0]->shard, 1);
    ck_assert_uint_eq(rp->results[0]->n_verdicts, 2);
    ck_assert(rp->results[0]->verdicts[0]->ok && !rp->results[0]->verdicts[1]->ok);
    ck_assert_str_eq(rp->results[0]->verdicts[1]->reason, "value 3 is not finite");
    ck_assert_ptr_null(rp->results[0]->aggregate);
    spes_proto_free(&rp->base);
    reply_ack(&t, SPES_NODE_CALL_REPORT);
    /* the commit names each shard's aggregate: the apply job gets them and the next round's cut */
    tick(&t, HB_MS);
    spes_proto_free(sent(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_HEARTBEAT));
    Spes__Wire__Commit cm = SPES__WIRE__COMMIT__INIT;
    Spes__Wire__Aggregate av[2], *ap[2];
    for (int s = 0; s < 2; s++) {
        spes__wire__aggregate__init(&av[s]);
        av[s].shard = (uint32_t)s, av[s].node_id = (uint32_t)s * 2, av[s].blob = &g[s];
        ap[s] = &av[s];
    }
    cm.round = 1, cm.next_step = 10, cm.base_hash = (ProtobufCBinaryData){32, h11};
    cm.shards = 2, cm.aggregates = ap, cm.n_aggregates = 2, cm.next_shards = 3;
    reply(&t, SPES_NODE_CALL_HEARTBEAT, SPES_MSG_COMMIT, &cm.base);
    spes_node_job *apj = take_job(&t, SPES_NODE_JOB_APPLY);
    ck_assert_int_eq(apj->u.apply.shards, 2);
    ck_assert_int_eq(apj->u.apply.next_shards, 3);
    ck_assert_int_eq(apj->u.apply.nagg, 2);
    ck_assert_uint_eq(apj->u.apply.agg[1].node, 2);
    ck_assert_int_eq(apj->u.apply.agg[1].hash[0], 0x91);
    spes_node_job_free(apj);
    done(&t);
}
END_TEST

START_TEST(test_validate_for_the_coordinator)
{
    T t;
    setup_opts(&t, 0, ""); /* the coordinator's own node: no coordinator URL */
    /* asked before its Accept (it joined late): refused, no job that would hold its join back */
    ck_assert_int_eq(spes_node_sm_validate(&t.sm, 0, 0, NULL, NULL, NULL, NULL, NULL, NULL, &t.out),
                     SPES_ESTATE);
    ck_assert_int_eq(t.sm.busy, 0);
    joined(&t, 3, 0x33, NULL, 0);
    uint8_t hashes[2][32], mans[2][32];
    memset(hashes, 0x51, sizeof hashes);
    memset(mans, 0x61, sizeof mans);
    const char *urls[] = {"tls+tcp://a:1", "tls+tcp://b:1"};
    const char *names[] = {"node-a", "node-b"};
    const uint32_t ids[] = {4, 9};
    int E = t.sm.E;
    ck_assert_int_ge(E, 2);
    uint8_t cols[2 * 64] = {0};
    cols[0] = 1;         /* node-a owns column 0 */
    cols[E + E - 1] = 1; /* node-b the last one */
    ck_assert_int_eq(spes_node_sm_validate(&t.sm, 3, 2, (const uint8_t(*)[32])hashes,
                                           (const uint8_t(*)[32])mans, urls, names, ids, cols, &t.out),
                     0);
    pump(&t);
    spes_node_job *j = take_job(&t, SPES_NODE_JOB_VALIDATE);
    ck_assert_int_eq(j->u.validate.n, 2);
    ck_assert_int_eq(j->npeers, 2); /* contribution k's author is peer k */
    ck_assert_str_eq(j->peers[1].url, "tls+tcp://b:1");
    ck_assert_str_eq(j->peers[1].name, "node-b");
    ck_assert_int_eq(j->u.validate.contribs[1].manifest[0], 0x61);
    /* what each author was told to train goes with the job: the worker holds the blob to it */
    ck_assert_uint_eq(j->u.validate.contribs[0].node, 4);
    ck_assert_uint_eq(j->u.validate.contribs[1].node, 9);
    ck_assert_int_eq(j->u.validate.E, E);
    ck_assert_int_eq(memcmp(j->u.validate.cols, cols, 2 * (size_t)E), 0);
    j->u.validate.ok[0] = 1;
    snprintf(j->u.validate.reasons[1], SPES_NODE_REASON_MAX, "NaN");
    j->bytes_in = 50;
    job_done(&t, j);
    spes_node_action *v = find(&t, SPES_NODE_ACT_VALIDATED);
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_eq(v->job->u.validate.round, 3);
    ck_assert_int_eq(v->job->u.validate.ok[0], 1);
    ck_assert_int_eq(v->job->u.validate.ok[1], 0);
    ck_assert_str_eq(v->job->u.validate.reasons[1], "NaN");
    ck_assert_uint_eq(t.sm.bytes_in_total, 50);
    ck_assert_int_eq(t.sm.busy, 0);
    ck_assert_int_eq(spes_node_sm_validate(&t.sm, 3, -1, NULL, NULL, NULL, NULL, NULL, NULL, &t.out),
                     SPES_EINVAL);
    /* a validation still out when the node stops holds the goodbye back */
    ck_assert_int_eq(spes_node_sm_validate(&t.sm, 4, 0, NULL, NULL, NULL, NULL, NULL, NULL, &t.out), 0);
    pump(&t);
    j = take_job(&t, SPES_NODE_JOB_VALIDATE);
    spes_node_sm_stop(&t.sm, &t.out);
    pump(&t);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_SEND), 0);
    job_done(&t, j);
    spes_proto_free(sent(&t, SPES_NODE_CALL_LEAVE, SPES_MSG_LEAVE));
    done(&t);
}
END_TEST

START_TEST(test_queue_and_names)
{
    spes_node_out o;
    memset(&o, 0, sizeof o);
    T t;
    setup_opts(&t, 0, COORD);
    joined(&t, 0, 0x01, NULL, 0);
    /* many inputs without draining: the queue grows and keeps their order */
    for (int i = 0; i < 40; i++) {
        t.now += HB_MS;
        spes_node_sm_tick(&t.sm, t.now, &o);
        spes_node_sm_reply(&t.sm, SPES_NODE_CALL_HEARTBEAT, SPES_ENET, "", NULL, 0, t.now, &o);
    }
    spes_node_action a;
    int n = 0;
    while (spes_node_out_pop(&o, &a)) {
        if (n % 2 == 0)
            ck_assert_int_eq(a.kind, SPES_NODE_ACT_SEND);
        else
            ck_assert_int_eq(a.kind, SPES_NODE_ACT_LOG);
        spes_node_action_fini(&a);
        if (++n == 30)
            break;
    }
    ck_assert_uint_eq(o.n, 50);
    spes_node_out_fini(&o); /* frees what is left */
    ck_assert_str_eq(spes_node_phase_name(SPES_NODE_APPLY), "apply");
    ck_assert_str_eq(spes_node_phase_name(SPES_NODE_DONE), "done");
    ck_assert_str_eq(spes_node_phase_name(42), "?");
    for (int p = SPES_NODE_JOIN; p <= SPES_NODE_DONE; p++)
        ck_assert_str_ne(spes_node_phase_name(p), "?");
    spes_node_opts bad = {0};
    spes_node_sm s;
    ck_assert_int_eq(spes_node_sm_init(&s, &bad), SPES_EINVAL);
    done(&t);
}
END_TEST

START_TEST(test_message_that_cannot_be_encoded)
{
    T t;
    setup_opts(&t, 0, COORD);
    char longname[300];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    t.sm.o.name = longname; /* longer than a node name may be on the wire */
    tick(&t, 0);
    ck_assert_int_eq(count(&t, SPES_NODE_ACT_SEND), 0);
    ck_assert(logged(&t, "cannot encode message type 1"));
    ck_assert(logged(&t, "join: cannot encode"));
    ck_assert_int_eq(t.sm.calls, 0);
    tick(&t, 999);
    ck_assert_int_eq(t.n, 0);
    tick(&t, 1);
    ck_assert(logged(&t, "cannot encode message type 1"));
    done(&t);
}
END_TEST

static Suite *node_suite(void)
{
    Suite *s = suite_create("node");
    TCase *tc = tcase_create("protocol");
    tcase_add_test(tc, test_join_accept_prepare);
    tcase_add_test(tc, test_prepare_without_columns_then_heartbeat_accept);
    tcase_add_test(tc, test_accept_for_diverged_state_joins_again);
    tcase_add_test(tc, test_too_far_behind_rejoins_and_keeps_the_run);
    tcase_add_test(tc, test_prepare_failure_retries_join);
    tcase_add_test(tc, test_join_backoff_and_unreachable_coordinator);
    tcase_add_test(tc, test_bad_run_config_retries);
    tcase_add_test(tc, test_apply_knows_refusal);
    tcase_add_test(tc, test_state_from_every_holder);
    tcase_add_test(tc, test_round_train_announce_commit_digest);
    tcase_add_test(tc, test_announce_not_taken_and_lost);
    tcase_add_test(tc, test_commit_that_left_us_out);
    tcase_add_test(tc, test_commit_while_training_that_finished);
    tcase_add_test(tc, test_training_failure_and_diverged_commit);
    tcase_add_test(tc, test_apply_failure_forgets_state);
    tcase_add_test(tc, test_checkpoint_ids);
    tcase_add_test(tc, test_blob_retention);
    tcase_add_test(tc, test_stop_idle_leaves);
    tcase_add_test(tc, test_stop_before_joining);
    tcase_add_test(tc, test_stop_with_a_job_and_a_call);
    tcase_add_test(tc, test_not_member_on_join_stops);
    tcase_add_test(tc, test_validate_for_the_coordinator);
    tcase_add_test(tc, test_sharded_announce_aggregate_apply);
    tcase_add_test(tc, test_queue_and_names);
    tcase_add_test(tc, test_message_that_cannot_be_encoded);
    tcase_add_test(tc, test_overlap_trained_before_the_state);
    tcase_add_test(tc, test_overlap_state_before_the_training);
    tcase_add_test(tc, test_overlap_not_past_the_end);
    tcase_add_test(tc, test_overlap_columns_dealt_anew);
    tcase_add_test(tc, test_overlap_round_closed_without_us);
    tcase_add_test(tc, test_commit_poll);
    tcase_add_test(tc, test_overlap_join_waits_for_the_training);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(node_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
