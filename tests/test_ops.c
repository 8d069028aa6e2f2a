/* test_ops.c: spesctl's operator verbs (status, members, checkpoint) end to end
 * against a TEST DOUBLE of the daemon: fake_daemon below is a real unix stream
 * socket speaking the real envelope (canned replies built with the real proto
 * codec), and fake_tls a real spes_net TLS server for the coordinator redirect.
 * They stand in for spesd only; integration tests run spesctl against real
 * daemons. Each case runs the built spesctl binary and checks its exit status,
 * stdout (tables, JSON) and stderr (one-line reasons) and what it sent. */
#include "core/error.h"
#include "core/log.h"
#include "net/net.h"
#include "pki/pki.h"
#include "proto/proto.h"

#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SPESCTL_PATH
#error "tests/ops.cmake defines SPESCTL_PATH"
#endif

static char tmp[128];

/* ---- fake_daemon: the unix control socket test double ---- */

typedef struct fake_daemon {
    char path[256];
    int lfd;
    pthread_t th;
    volatile int stop;
    pthread_mutex_t mu;
    uint8_t *reply; /* bytes written back to every request */
    size_t reply_len;
    int got_type; /* last request's envelope type, 0 if undecodable */
    ProtobufCMessage *got;
    int nreq;
    int delay_ms; /* wait this long before answering */
} fake_daemon;

static fake_daemon fd_;

static int read_n(int fd, uint8_t *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

static void serve_one(fake_daemon *f, int c)
{
    uint8_t head[SPES_PROTO_HEADER_LEN];
    spes_proto_header h;
    if (read_n(c, head, sizeof head) != 0 || spes_proto_header_decode(head, sizeof head, &h) != 0)
        return;
    uint8_t *buf = malloc(sizeof head + h.length);
    memcpy(buf, head, sizeof head);
    int t = 0;
    ProtobufCMessage *m = NULL;
    if (read_n(c, buf + sizeof head, h.length) == 0 &&
        spes_proto_decode(buf, sizeof head + h.length, &t, &m) != 0)
        t = 0;
    free(buf);
    if (f->delay_ms)
        poll(NULL, 0, f->delay_ms);
    pthread_mutex_lock(&f->mu);
    spes_proto_free(f->got);
    f->got = m;
    f->got_type = t;
    f->nreq++;
    size_t off = 0;
    while (off < f->reply_len) {
        ssize_t w = send(c, f->reply + off, f->reply_len - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    pthread_mutex_unlock(&f->mu);
}

static void *fake_main(void *arg)
{
    fake_daemon *f = arg;
    while (!f->stop) {
        struct pollfd p = {.fd = f->lfd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0)
            continue;
        int c = accept(f->lfd, NULL, NULL);
        if (c < 0)
            continue;
        serve_one(f, c);
        close(c);
    }
    return NULL;
}

static void fake_start(fake_daemon *f, const char *name)
{
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s/%s", tmp, name);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    ck_assert(strlen(f->path) < sizeof sa.sun_path);
    memcpy(sa.sun_path, f->path, strlen(f->path) + 1);
    f->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    ck_assert_int_ge(f->lfd, 0);
    ck_assert_int_eq(bind(f->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(f->lfd, 8), 0);
    pthread_mutex_init(&f->mu, NULL);
    ck_assert_int_eq(pthread_create(&f->th, NULL, fake_main, f), 0);
}

static void fake_stop(fake_daemon *f)
{
    f->stop = 1;
    pthread_join(f->th, NULL);
    close(f->lfd);
    unlink(f->path);
    spes_proto_free(f->got);
    free(f->reply);
    pthread_mutex_destroy(&f->mu);
}

/* fake_reply sets the canned reply to the encoding of msg. */
static void fake_reply(fake_daemon *f, int type, const ProtobufCMessage *msg)
{
    pthread_mutex_lock(&f->mu);
    free(f->reply);
    f->reply = NULL;
    ck_assert_msg(spes_proto_encode(type, msg, &f->reply, &f->reply_len) == 0, "encode: %s", spes_errmsg());
    pthread_mutex_unlock(&f->mu);
}

static void fake_reply_raw(fake_daemon *f, const void *bytes, size_t len)
{
    pthread_mutex_lock(&f->mu);
    free(f->reply);
    f->reply = malloc(len);
    memcpy(f->reply, bytes, len);
    f->reply_len = len;
    pthread_mutex_unlock(&f->mu);
}

static void fake_reply_error(fake_daemon *f, int code, const char *message)
{
    Spes__Wire__Error e = SPES__WIRE__ERROR__INIT;
    e.code = code;
    e.message = (char *)message;
    fake_reply(f, SPES_MSG_ERROR, &e.base);
}

/* ---- running spesctl ---- */

typedef struct ctl_out {
    int status;
    char out[65536], err[8192];
} ctl_out;

static void slurp(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "r");
    size_t got = f ? fread(buf, 1, n - 1, f) : 0;
    buf[got] = '\0';
    if (f)
        fclose(f);
}

/* run_ctl runs spesctl with exactly the environment env (NULL-terminated) and args. */
static void run_ctl(ctl_out *o, const char *const *env, const char *const *args)
{
    char outp[256], errp[256];
    snprintf(outp, sizeof outp, "%s/stdout", tmp);
    snprintf(errp, sizeof errp, "%s/stderr", tmp);
    const char *argv[32] = {"spesctl"};
    int n = 1;
    for (; args[n - 1]; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        FILE *fo = freopen(outp, "w", stdout), *fe = freopen(errp, "w", stderr);
        if (!fo || !fe)
            _exit(127);
        execve(SPESCTL_PATH, (char *const *)argv, (char *const *)env);
        _exit(127);
    }
    int st = 0;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st), "spesctl died");
    o->status = WEXITSTATUS(st);
    slurp(outp, o->out, sizeof o->out);
    slurp(errp, o->err, sizeof o->err);
    if (getenv("SPES_TEST_VERBOSE")) /* show what an operator would see */
        fprintf(stderr, "$ spesctl %s ...\n-> exit %d\n%s%s", args[0], o->status, o->out, o->err);
}

static const char *const no_env[] = {NULL};

/* one_line says s is exactly one non-empty line. */
static int one_line(const char *s)
{
    const char *nl = strchr(s, '\n');
    return s[0] && nl && nl[1] == '\0';
}

/* ---- canned replies ---- */

static uint8_t digests[4][32];
static unsigned long long t_now;

static unsigned long long wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (unsigned long long)ts.tv_sec * 1000ull + (unsigned long long)ts.tv_nsec / 1000000ull;
}

/* canned_status is the reply of a 3-node run at round 7: node-2 failed, one refusal, one mismatch. */
static void canned_status(fake_daemon *f)
{
    static uint32_t cols[3][3] = {{0, 1, 2}, {3, 4}, {5, 6, 7}};
    static size_t ncols[3] = {3, 2, 3};
    Spes__Wire__MemberInfo m[3], *mp[3];
    t_now = wall_ms();
    for (int i = 0; i < 3; i++) {
        spes__wire__member_info__init(&m[i]);
        mp[i] = &m[i];
        static char names[3][16];
        snprintf(names[i], sizeof names[i], "node-%d", i);
        m[i].node_id = (uint32_t)i;
        m[i].name = names[i];
        m[i].state =
            i == 2 ? SPES__WIRE__NODE_STATE__NODE_STATE_FAILED : SPES__WIRE__NODE_STATE__NODE_STATE_ACTIVE;
        m[i].columns = cols[i];
        m[i].n_columns = ncols[i];
        m[i].round = i == 2 ? 5 : 7;
        for (int b = 0; b < 32; b++)
            digests[i][b] = (uint8_t)(0x10 * (i + 1) + b);
        m[i].digest = (ProtobufCBinaryData){32, digests[i]};
        m[i].last_seen_unix_ms = i == 2 ? 0 : t_now - 3000;
        m[i].tokens_per_s = 1000.0 + i;
        m[i].loss = 2.5;
        m[i].listen_url = (char *)"tls+tcp://127.0.0.1:7600";
    }
    Spes__Wire__Refusal r = SPES__WIRE__REFUSAL__INIT;
    r.node_id = 2;
    r.reason = (char *)"contribution has NaN in layers.0.experts.5.gate_proj";
    Spes__Wire__Refusal *rp = &r;
    uint32_t mism[1] = {1};
    Spes__Wire__LastRound lr = SPES__WIRE__LAST_ROUND__INIT;
    lr.round = 6;
    lr.contributors = 2;
    lr.merge_applied = 1;
    for (int b = 0; b < 32; b++)
        digests[3][b] = (uint8_t)(0xa0 + b);
    lr.digest = (ProtobufCBinaryData){32, digests[3]};
    lr.refused = &rp;
    lr.n_refused = 1;
    lr.digest_mismatch = mism;
    lr.n_digest_mismatch = 1;
    Spes__Wire__StatusReply s = SPES__WIRE__STATUS_REPLY__INIT;
    s.run_id = (char *)"demo-run";
    s.round = 7;
    s.step = 175;
    s.loss = 2.25;
    s.tokens_per_s = 3003.0;
    s.members = mp;
    s.n_members = 3;
    s.last_round = &lr;
    s.coordinator = (char *)"tls+tcp://127.0.0.1:7600";
    fake_reply(f, SPES_MSG_STATUS_REPLY, &s.base);
}

static void setup(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/spes-test-ops-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmp));
    spes_log_set_level(SPES_LOG_ERROR);
    fake_start(&fd_, "control.sock");
}

static void teardown(void)
{
    fake_stop(&fd_);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(status_table)
{
    canned_status(&fd_);
    ctl_out o;
    run_ctl(&o, no_env, (const char *[]){"status", "--socket", fd_.path, NULL});
    ck_assert_msg(o.status == 0, "exit %d: %s", o.status, o.err);
    ck_assert_int_eq(fd_.got_type, SPES_MSG_STATUS_REQUEST);
    ck_assert_str_eq(o.err, "");
    ck_assert_msg(strstr(o.out, "run demo-run  round 7  step 175  loss 2.2500  tokens/s 3003.0"), "%s",
                  o.out);
    ck_assert_msg(strstr(o.out, "coordinator tls+tcp://127.0.0.1:7600"), "%s", o.out);
    /* member rows: columns compacted, digest's first 12 hex digits, last seen relative */
    const char *row0 = strstr(o.out, "\n0    node-0");
    ck_assert_msg(row0, "%s", o.out);
    ck_assert_msg(strstr(row0, "active    0-2") && strstr(row0, "101112131415 "), "%s", o.out);
    ck_assert_msg(strstr(row0, "3s ago") || strstr(row0, "4s ago"), "%s", o.out);
    const char *row1 = strstr(o.out, "\n1    node-1");
    ck_assert_msg(row1 && strstr(row1, "active    3,4 "), "%s", o.out);
    const char *row2 = strstr(o.out, "\n2    node-2");
    ck_assert_msg(row2 && strstr(row2, "failed    5-7 ") && strstr(row2, "never"), "%s", o.out);
    ck_assert_msg(strstr(o.out, "last round 6: 2 contributors, merge applied, digest a0a1a2a3"), "%s", o.out);
    ck_assert_msg(
        strstr(o.out, "refused node 2 (node-2): contribution has NaN in layers.0.experts.5.gate_proj"), "%s",
        o.out);
    ck_assert_msg(strstr(o.out, "DIGEST MISMATCH from node 1 (node-1)"), "%s", o.out);
}
END_TEST

START_TEST(top_once)
{
    canned_status(&fd_);
    ctl_out o;
    run_ctl(&o, no_env, (const char *[]){"top", "--once", "--socket", fd_.path, NULL});
    ck_assert_msg(o.status == 0, "exit %d: %s", o.status, o.err);
    ck_assert_int_eq(fd_.got_type, SPES_MSG_STATUS_REQUEST);
    ck_assert_msg(strstr(o.out, "spes top  run demo-run  round 7  step 175  loss 2.2500  tokens/s 3003"),
                  "%s", o.out);
    ck_assert_msg(strstr(o.out, "loss 2.25 .. 2.25 over rounds 6..6"), "%s", o.out);
    ck_assert_msg(
        strstr(o.out, "last round 6: 2 contributors, merge applied, 1 refused, 1 digest mismatch\n"), "%s",
        o.out);
    ck_assert_msg(strstr(o.out, "\n2    node-2           failed    5-7 "), "%s", o.out);
    ck_assert_msg(strstr(o.out, "\n0    node-0           active    0-2 "), "%s", o.out);
    /* expert map: columns 0-2 node-0, 3-4 node-1, 5-7 node-2 */
    ck_assert_msg(strstr(o.out, "  0:node-0 ") && strstr(o.out, "  4:node-1 ") &&
                      strstr(o.out, "  7:node-2 "),
                  "%s", o.out);
    ck_assert_msg(strstr(o.out, "refused: contribution has NaN in layers.0.experts.5.gate_proj\n"), "%s",
                  o.out);
    ck_assert_msg(strstr(o.out, "digest mismatch: node 1 (node-1)\n"), "%s", o.out);
    ck_assert_msg(!strchr(o.out, '\033'), "--once prints no escape sequences: %s", o.out);
}
END_TEST

START_TEST(status_json)
{
    canned_status(&fd_);
    ctl_out o;
    const char *env[] = {"SPES_SOCKET=/nonexistent/also-not-used.sock", NULL};
    run_ctl(&o, env, (const char *[]){"--socket", fd_.path, "status", "--json", NULL});
    ck_assert_msg(o.status == 0, "exit %d: %s", o.status, o.err);
    json_error_t je;
    json_t *j = json_loads(o.out, 0, &je);
    ck_assert_msg(j, "not JSON (%s): %s", je.text, o.out);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "round")), 7);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "step")), 175);
    ck_assert_double_eq_tol(json_real_value(json_object_get(j, "loss")), 2.25, 1e-12);
    ck_assert_str_eq(json_string_value(json_object_get(j, "run_id")), "demo-run");
    json_t *ms = json_object_get(j, "members");
    ck_assert_int_eq(json_array_size(ms), 3);
    json_t *m2 = json_array_get(ms, 2);
    ck_assert_str_eq(json_string_value(json_object_get(m2, "id")), "node-2");
    ck_assert_int_eq(json_integer_value(json_object_get(m2, "node_id")), 2);
    ck_assert_str_eq(json_string_value(json_object_get(m2, "state")), "failed");
    ck_assert_int_eq(json_integer_value(json_object_get(m2, "round")), 5);
    json_t *cols = json_object_get(m2, "columns");
    ck_assert_int_eq(json_array_size(cols), 3);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(json_integer_value(json_array_get(cols, (size_t)i)), 5 + i);
    char want[65];
    for (int b = 0; b < 32; b++)
        sprintf(want + 2 * b, "%02x", digests[2][b]);
    ck_assert_str_eq(json_string_value(json_object_get(m2, "digest")), want);
    ck_assert(json_is_null(json_object_get(m2, "last_seen_ago_s")));
    json_t *m0 = json_array_get(ms, 0);
    ck_assert_str_eq(json_string_value(json_object_get(m0, "state")), "active");
    double ago = json_real_value(json_object_get(m0, "last_seen_ago_s"));
    ck_assert_msg(ago >= 3.0 && ago < 60.0, "ago %f", ago);
    json_t *lr = json_object_get(j, "last_round");
    ck_assert_int_eq(json_integer_value(json_object_get(lr, "contributors")), 2);
    ck_assert(json_is_true(json_object_get(lr, "merge_applied")));
    json_t *ref = json_array_get(json_object_get(lr, "refused"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(ref, "id")), "node-2");
    ck_assert(strstr(json_string_value(json_object_get(ref, "reason")), "NaN"));
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(lr, "digest_mismatch"), 0)), 1);
    json_decref(j);
}
END_TEST

START_TEST(error_reply)
{
    fake_reply_error(&fd_, SPES__WIRE__ERROR_CODE__ERROR_UNAUTHORIZED,
                     "evict needs the operator role\nsecond line");
    ctl_out o;
    run_ctl(&o, no_env, (const char *[]){"members", "evict", "node-1", "--socket", fd_.path, NULL});
    ck_assert_int_eq(o.status, 1);
    ck_assert_str_eq(o.out, "");
    ck_assert_msg(one_line(o.err), "%s", o.err);
    ck_assert_msg(
        strstr(o.err, "members evict: the daemon refused: evict needs the operator role second line"), "%s",
        o.err);
}
END_TEST

START_TEST(wrong_reply_type)
{
    Spes__Wire__CheckpointReply r = SPES__WIRE__CHECKPOINT_REPLY__INIT;
    fake_reply(&fd_, SPES_MSG_CHECKPOINT_REPLY, &r.base);
    ctl_out o;
    run_ctl(&o, no_env, (const char *[]){"status", "--socket", fd_.path, NULL});
    ck_assert_int_eq(o.status, 1);
    ck_assert_str_eq(o.out, "");
    ck_assert_msg(one_line(o.err) && strstr(o.err, "unexpected reply CheckpointReply (expected StatusReply)"),
                  "%s", o.err);
}
END_TEST

START_TEST(truncated_and_garbage_replies)
{
    canned_status(&fd_);
    size_t full = fd_.reply_len;
    uint8_t *copy = malloc(full);
    memcpy(copy, fd_.reply, full);
    fake_reply_raw(&fd_, copy, full - 5); /* the header promises 5 bytes more than come */
    ctl_out o;
    run_ctl(&o, no_env, (const char *[]){"status", "--socket", fd_.path, NULL});
    ck_assert_int_eq(o.status, 1);
    ck_assert_msg(one_line(o.err) && strstr(o.err, "closed the connection after"), "%s", o.err);
    copy[0] = 'X'; /* bad magic */
    fake_reply_raw(&fd_, copy, full);
    run_ctl(&o, no_env, (const char *[]){"status", "--socket", fd_.path, NULL});
    ck_assert_int_eq(o.status, 1);
    ck_assert_msg(one_line(o.err) && strstr(o.err, "bad reply envelope"), "%s", o.err);
    memcpy(copy, "SPES", 4);
    copy[SPES_PROTO_HEADER_LEN] ^= 0xff; /* payload no longer parses */
    fake_reply_raw(&fd_, copy, full);
    run_ctl(&o, no_env, (const char *[]){"status", "--socket", fd_.path, "--json", NULL});
    ck_assert_int_eq(o.status, 1);
    ck_assert_str_eq(o.out, "");
    ck_assert_msg(one_line(o.err) && strstr(o.err, "bad reply"), "%s", o.err);
    free(copy);
}
END_TEST

START_TEST(slow_daemon_times_out)
{
    canned_status(&fd_);
    fd_.delay_ms = 2500;
    ctl_out o;
    run_ctl(&o, no_env, (const char *[]){"status", "--timeout", "1", "--socket", fd_.path, NULL});
    ck_assert_int_eq(o.status, 1);
    ck_assert_str_eq(o.out, "");
    ck_assert_msg(one_line(o.err) && strstr(o.err, "no reply from the daemon in time"), "%s", o.err);
    run_ctl(&o, no_env, (const char *[]){"status", "--timeout", "0", "--socket", fd_.path, NULL});
    ck_assert_int_eq(o.status, 2);
}
END_TEST

START_TEST(no_daemon)
{
    char path[256];
    snprintf(path, sizeof path, "%s/nobody-here.sock", tmp);
    ctl_out o;
    run_ctl(&o, no_env, (const char *[]){"status", "--socket", path, NULL});
    ck_assert_int_eq(o.status, 1);
    ck_assert_msg(one_line(o.err) && strstr(o.err, path) && strstr(o.err, "the daemon may not be running"),
                  "%s", o.err);
    const char *env[] = {"SPES_SOCKET=/nonexistent/x.sock", NULL};
    run_ctl(&o, env, (const char *[]){"checkpoint", "list", NULL});
    ck_assert_int_eq(o.status, 1);
    ck_assert_msg(strstr(o.err, "/nonexistent/x.sock"), "%s", o.err);
}
END_TEST

START_TEST(members_actions)
{
    Spes__Wire__MembersReply r = SPES__WIRE__MEMBERS_REPLY__INIT;
    r.message = (char *)"node-3 approved";
    fake_reply(&fd_, SPES_MSG_MEMBERS_REPLY, &r.base);
    char env0[300];
    snprintf(env0, sizeof env0, "SPES_SOCKET=%s", fd_.path);
    const char *env[] = {env0, NULL};
    ctl_out o;
    run_ctl(&o, env, (const char *[]){"members", "approve", "node-3", NULL});
    ck_assert_msg(o.status == 0, "%s", o.err);
    ck_assert_str_eq(o.out, "node-3 approved\n");
    ck_assert_int_eq(fd_.got_type, SPES_MSG_MEMBERS_REQUEST);
    Spes__Wire__MembersRequest *q = (Spes__Wire__MembersRequest *)fd_.got;
    ck_assert_int_eq(q->action, SPES__WIRE__MEMBERS_ACTION__MEMBERS_APPROVE);
    ck_assert_str_eq(q->target, "node-3");
    run_ctl(&o, env, (const char *[]){"members", "drain", "node-1", "--json", NULL});
    ck_assert_int_eq(o.status, 0);
    q = (Spes__Wire__MembersRequest *)fd_.got;
    ck_assert_int_eq(q->action, SPES__WIRE__MEMBERS_ACTION__MEMBERS_DRAIN);
    json_t *j = json_loads(o.out, 0, NULL);
    ck_assert_msg(j && json_is_array(json_object_get(j, "members")), "%s", o.out);
    json_decref(j);
    run_ctl(&o, env, (const char *[]){"members", "list", NULL});
    ck_assert_int_eq(((Spes__Wire__MembersRequest *)fd_.got)->action,
                     SPES__WIRE__MEMBERS_ACTION__MEMBERS_LIST);
    int before = fd_.nreq;
    run_ctl(&o, env, (const char *[]){"members", "evict", NULL}); /* NAME missing: usage, nothing sent */
    ck_assert_int_eq(o.status, 2);
    ck_assert_int_eq(fd_.nreq, before);
}
END_TEST

START_TEST(checkpoint_verbs)
{
    Spes__Wire__CheckpointInfo ci = SPES__WIRE__CHECKPOINT_INFO__INIT, *cip = &ci;
    uint32_t holders[3] = {0, 1, 2};
    ci.id = (char *)"ckpt-000007";
    ci.round = 7;
    ci.step = 175;
    ci.state_hash = (ProtobufCBinaryData){32, digests[0]};
    ci.created_unix_ms = 1700000000000ull;
    ci.holders = holders;
    ci.n_holders = 3;
    ci.complete = 1;
    Spes__Wire__CheckpointReply r = SPES__WIRE__CHECKPOINT_REPLY__INIT;
    r.checkpoints = &cip;
    r.n_checkpoints = 1;
    r.message = (char *)"checkpoint ckpt-000007 written";
    fake_reply(&fd_, SPES_MSG_CHECKPOINT_REPLY, &r.base);
    ctl_out o;
    run_ctl(&o, no_env, (const char *[]){"checkpoint", "save", "--wait", "--socket", fd_.path, NULL});
    ck_assert_msg(o.status == 0, "%s", o.err);
    Spes__Wire__CheckpointRequest *q = (Spes__Wire__CheckpointRequest *)fd_.got;
    ck_assert_int_eq(q->action, SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_SAVE);
    ck_assert(q->wait);
    ck_assert_msg(strstr(o.out, "checkpoint ckpt-000007 written") && strstr(o.out, "ckpt-000007") &&
                      strstr(o.out, "2023-11-14T22:13:20Z") && strstr(o.out, "0-2"),
                  "%s", o.out);
    run_ctl(&o, no_env,
            (const char *[]){"checkpoint", "export", "ckpt-000007", "--out", "rel/hf", "--socket", fd_.path,
                             NULL});
    ck_assert_int_eq(o.status, 0);
    q = (Spes__Wire__CheckpointRequest *)fd_.got;
    ck_assert_int_eq(q->action, SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_EXPORT);
    ck_assert_str_eq(q->id, "ckpt-000007");
    size_t n = strlen(q->out_dir);
    ck_assert_msg(q->out_dir[0] == '/' && n > 7 && !strcmp(q->out_dir + n - 7, "/rel/hf"), "%s", q->out_dir);
    run_ctl(&o, no_env, (const char *[]){"checkpoint", "restore", "ckpt-000007", "--socket", fd_.path, NULL});
    ck_assert_int_eq(((Spes__Wire__CheckpointRequest *)fd_.got)->action,
                     SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_RESTORE);
    run_ctl(&o, no_env, (const char *[]){"checkpoint", "list", "--json", "--socket", fd_.path, NULL});
    ck_assert_int_eq(o.status, 0);
    json_t *j = json_loads(o.out, 0, NULL);
    json_t *c0 = json_array_get(json_object_get(j, "checkpoints"), 0);
    ck_assert_msg(c0, "%s", o.out);
    ck_assert_str_eq(json_string_value(json_object_get(c0, "id")), "ckpt-000007");
    ck_assert_int_eq(json_integer_value(json_object_get(c0, "step")), 175);
    ck_assert_int_eq(json_array_size(json_object_get(c0, "holders")), 3);
    ck_assert(json_is_true(json_object_get(c0, "complete")));
    json_decref(j);
    run_ctl(&o, no_env, (const char *[]){"checkpoint", "export", "ckpt-000007", "--socket", fd_.path, NULL});
    ck_assert_int_eq(o.status, 2); /* --out missing */
}
END_TEST

/* ---- the coordinator redirect over TLS ---- */

typedef struct fake_tls {
    spes_net_tls *tls;
    spes_net_server *srv;
    char url[128];
    char peer[64];
    int peer_role;
} fake_tls;

/* fake_tls_handler answers every MembersRequest with one member, recording the peer. */
static void fake_tls_handler(void *arg, spes_net_request *req)
{
    fake_tls *f = arg;
    const spes_pki_identity *p = spes_net_request_peer(req);
    snprintf(f->peer, sizeof f->peer, "%s", p->name);
    f->peer_role = p->role;
    size_t len = 0;
    const void *data = spes_net_request_data(req, &len);
    int t = 0;
    ProtobufCMessage *m = NULL;
    uint8_t *out = NULL;
    size_t olen = 0;
    if (spes_proto_decode(data, len, &t, &m) == 0 && t == SPES_MSG_MEMBERS_REQUEST) {
        Spes__Wire__MemberInfo mi = SPES__WIRE__MEMBER_INFO__INIT, *mp = &mi;
        mi.name = (char *)"node-0";
        mi.state = SPES__WIRE__NODE_STATE__NODE_STATE_ACTIVE;
        Spes__Wire__MembersReply r = SPES__WIRE__MEMBERS_REPLY__INIT;
        r.members = &mp;
        r.n_members = 1;
        r.message = (char *)"answered by the coordinator";
        spes_proto_encode(SPES_MSG_MEMBERS_REPLY, &r.base, &out, &olen);
    } else {
        spes_proto_encode_error(SPES_EINVAL, "fake_tls expects a MembersRequest", t, &out, &olen);
    }
    spes_proto_free(m);
    spes_net_reply(req, out, olen);
    free(out);
}

START_TEST(redirect_to_coordinator)
{
    char pki[256], cap[300], crt[300], key[300], ocrt[300], okey[300];
    snprintf(pki, sizeof pki, "%s/pki", tmp);
    ck_assert_msg(spes_pki_ca_init(pki, "ops-test", NULL) == 0, "%s", spes_errmsg());
    spes_pki_validity v;
    spes_pki_validity_days(&v, 2);
    ck_assert(spes_pki_cert_issue(pki, "node-0", SPES_ROLE_NODE, &v, pki) == 0);
    ck_assert(spes_pki_cert_issue(pki, "alice", SPES_ROLE_OPERATOR, &v, pki) == 0);
    snprintf(cap, sizeof cap, "%s/ca.crt", pki);
    snprintf(crt, sizeof crt, "%s/node-0.crt", pki);
    snprintf(key, sizeof key, "%s/node-0.key", pki);
    snprintf(ocrt, sizeof ocrt, "%s/alice.crt", pki);
    snprintf(okey, sizeof okey, "%s/alice.key", pki);
    fake_tls ft = {0};
    spes_net_tls_files tf = {cap, crt, key, NULL};
    ck_assert_msg(spes_net_tls_alloc(&ft.tls, &tf) == 0, "%s", spes_errmsg());
    spes_net_server_opts so = {.url = "tls+tcp://127.0.0.1:0",
                               .tls = ft.tls,
                               .peer_roles = SPES_ROLE_MASK(SPES_ROLE_OPERATOR),
                               .handler = fake_tls_handler,
                               .arg = &ft};
    ck_assert_msg(spes_net_server_open(&ft.srv, &so) == 0, "%s", spes_errmsg());
    snprintf(ft.url, sizeof ft.url, "tls+tcp://127.0.0.1:%d", spes_net_server_port(ft.srv));
    char msg[256];
    snprintf(msg, sizeof msg, "this daemon is not the coordinator; it is at %s", ft.url);
    fake_reply_error(&fd_, SPES__WIRE__ERROR_CODE__ERROR_NOT_COORDINATOR, msg);

    ctl_out o; /* without TLS material: the message is shown, exit 1 */
    run_ctl(&o, no_env, (const char *[]){"members", "list", "--socket", fd_.path, NULL});
    ck_assert_int_eq(o.status, 1);
    ck_assert_msg(one_line(o.err) && strstr(o.err, ft.url) && strstr(o.err, "to follow it"), "%s", o.err);

    char e1[320], e2[320], e3[320], e4[320];
    snprintf(e1, sizeof e1, "SPES_CA=%s", cap);
    snprintf(e2, sizeof e2, "SPES_CERT=%s", ocrt);
    snprintf(e3, sizeof e3, "SPES_KEY=%s", okey);
    snprintf(e4, sizeof e4, "SPES_SOCKET=%s", fd_.path);
    const char *env[] = {e1, e2, e3, e4, NULL};
    run_ctl(&o, env, (const char *[]){"members", "list", NULL});
    ck_assert_msg(o.status == 0, "exit %d: %s", o.status, o.err);
    ck_assert_msg(strstr(o.out, "answered by the coordinator") && strstr(o.out, "node-0"), "%s", o.out);
    ck_assert_str_eq(ft.peer, "alice");
    ck_assert_int_eq(ft.peer_role, SPES_ROLE_OPERATOR);

    /* straight to the TLS URL with flags (env socket ignored: --url wins) */
    ft.peer[0] = '\0';
    run_ctl(&o, env, (const char *[]){"--url", ft.url, "members", "list", "--json", NULL});
    ck_assert_msg(o.status == 0, "exit %d: %s", o.status, o.err);
    ck_assert_str_eq(ft.peer, "alice");
    json_t *j = json_loads(o.out, 0, NULL);
    ck_assert_msg(j, "%s", o.out);
    ck_assert_str_eq(
        json_string_value(json_object_get(json_array_get(json_object_get(j, "members"), 0), "id")), "node-0");
    json_decref(j);

    /* a node certificate is refused by this operator-only endpoint: a clear failure, exit 1 */
    const char *envn[] = {e1, NULL};
    run_ctl(&o, envn,
            (const char *[]){"members", "list", "--url", ft.url, "--cert", crt, "--key", key, "--timeout",
                             "2", NULL});
    ck_assert_int_eq(o.status, 1);
    ck_assert_msg(one_line(o.err) && strstr(o.err, ft.url), "%s", o.err);

    spes_net_server_close(ft.srv);
    spes_net_tls_free(ft.tls);
    /* nobody listening at the URL any more */
    run_ctl(&o, env, (const char *[]){"status", "--url", ft.url, NULL});
    ck_assert_int_eq(o.status, 1);
    ck_assert_msg(one_line(o.err) && strstr(o.err, ft.url) && strstr(o.err, "may not be running"), "%s",
                  o.err);
}
END_TEST

static Suite *ops_suite(void)
{
    Suite *s = suite_create("ops");
    TCase *tc = tcase_create("spesctl");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, status_table);
    tcase_add_test(tc, status_json);
    tcase_add_test(tc, top_once);
    tcase_add_test(tc, error_reply);
    tcase_add_test(tc, wrong_reply_type);
    tcase_add_test(tc, truncated_and_garbage_replies);
    tcase_add_test(tc, slow_daemon_times_out);
    tcase_add_test(tc, no_daemon);
    tcase_add_test(tc, members_actions);
    tcase_add_test(tc, checkpoint_verbs);
    tcase_add_test(tc, redirect_to_coordinator);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(ops_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
