/* ops_print.c: spesctl's rendering of daemon replies: human tables (status,
 * members, checkpoints) and the --json documents that scripts and tests read.
 * The JSON keys are a contract (`round`, `step`, `members[].id`, `.state`,
 * `.columns`, `.round`, `.digest`, `.net`, `.time`, `.rounds`): add keys, never
 * rename them. Reads only messages that the codec has already checked;
 * never does I/O but stdout. */
#include "client/ops.h"

#include "proto/proto.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const state_names[] = {"unspecified", "pending", "joining", "active",
                                          "draining",    "left",    "failed",  "evicted"};

const char *spesctl_ops_state_name(int state)
{
    if (state < 0 || state >= (int)(sizeof state_names / sizeof state_names[0]))
        return "unknown";
    return state_names[state];
}

static void hex(char *out, const ProtobufCBinaryData *b, size_t max_bytes)
{
    size_t n = b->len < max_bytes ? b->len : max_bytes;
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", b->data[i]);
    out[2 * n] = '\0';
}

/* columns_text writes "0-3,6,8" for columns {0,1,2,3,6,8} (as sent, not re-sorted). */
static void columns_text(char *out, size_t n, const uint32_t *c, size_t count)
{
    size_t used = 0;
    snprintf(out, n, "-");
    for (size_t i = 0; i < count && used + 1 < n;) {
        size_t j = i;
        while (j + 1 < count && c[j + 1] == c[j] + 1)
            j++;
        int w;
        if (j >= i + 2) {
            w = snprintf(out + used, n - used, "%s%u-%u", used ? "," : "", c[i], c[j]);
            i = j + 1;
        } else {
            w = snprintf(out + used, n - used, "%s%u", used ? "," : "", c[i]);
            i++;
        }
        used = w < 0 || (size_t)w >= n - used ? n : used + (size_t)w;
    }
}

/* ago writes "3s ago", "5m ago", "2h ago", "4d ago" or "never". */
static void ago(char *out, size_t n, unsigned long long then_ms, unsigned long long now_ms)
{
    if (then_ms == 0) {
        snprintf(out, n, "never");
        return;
    }
    unsigned long long s = now_ms > then_ms ? (now_ms - then_ms) / 1000 : 0;
    if (s < 120)
        snprintf(out, n, "%llus ago", s);
    else if (s < 7200)
        snprintf(out, n, "%llum ago", s / 60);
    else if (s < 172800)
        snprintf(out, n, "%lluh ago", s / 3600);
    else
        snprintf(out, n, "%llud ago", s / 86400);
}

static void utc(char *out, size_t n, unsigned long long ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (ms == 0 || !gmtime_r(&t, &tm))
        snprintf(out, n, "-");
    else
        strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static const char *member_name(Spes__Wire__MemberInfo *const *m, size_t n, uint32_t id)
{
    for (size_t i = 0; i < n; i++)
        if (m[i]->node_id == id && m[i]->name && m[i]->name[0])
            return m[i]->name;
    return NULL;
}

static void print_members(Spes__Wire__MemberInfo *const *m, size_t n, unsigned long long now_ms)
{
    printf("%-4s %-20s %-9s %-12s %7s %-12s %10s %s\n", "ID", "NAME", "STATE", "COLUMNS", "ROUND", "DIGEST",
           "TOK/S", "LAST SEEN");
    for (size_t i = 0; i < n; i++) {
        char cols[64], dg[32], seen[32];
        columns_text(cols, sizeof cols, m[i]->columns, m[i]->n_columns);
        hex(dg, &m[i]->digest, 6);
        ago(seen, sizeof seen, m[i]->last_seen_unix_ms, now_ms);
        printf("%-4u %-20s %-9s %-12s %7llu %-12s %10.1f %s%s\n", m[i]->node_id, m[i]->name,
               spesctl_ops_state_name(m[i]->state), cols, (unsigned long long)m[i]->round, dg[0] ? dg : "-",
               m[i]->tokens_per_s, seen, m[i]->listen_url[0] ? "" : " (outbound only: pushes its blobs)");
    }
    if (n == 0)
        printf("(no members)\n");
}

/* counter_bytes returns a member's payload bytes sent (sent = 1) or received, all classes. */
static uint64_t counter_bytes(const Spes__Wire__NodeCounters *c, int sent)
{
    if (!c)
        return 0;
    return sent ? c->control_sent_bytes + c->blob_sent_bytes
                : c->control_received_bytes + c->blob_received_bytes;
}

/* print_costs shows what rounds cost, from the counters each member reports
 * (docs/counters.md): the run's compute utilisation, sum of train seconds over
 * sum of train and wait seconds, and per member the MB (10^6 bytes) sent and
 * received per round contributed. */
static void print_costs(Spes__Wire__MemberInfo *const *m, size_t n)
{
    double train = 0, wait = 0, up = 0, down = 0;
    int reported = 0, with_rounds = 0;
    for (size_t i = 0; i < n; i++) {
        const Spes__Wire__NodeCounters *c = m[i]->counters;
        if (!c)
            continue;
        reported++;
        train += c->train_s;
        wait += c->wait_s;
        if (c->rounds) {
            with_rounds++;
            up += (double)counter_bytes(c, 1) / 1e6 / (double)c->rounds;
            down += (double)counter_bytes(c, 0) / 1e6 / (double)c->rounds;
        }
    }
    if (!reported)
        return;
    printf("\ncompute utilisation ");
    if (train + wait > 0)
        printf("%.1f %%", 100.0 * train / (train + wait));
    else
        printf("-");
    printf(" (train %.1f s, wait %.1f s, %d member%s reporting)\n", train, wait, reported,
           reported == 1 ? "" : "s");
    if (with_rounds)
        printf("per node per round: %.3f MB sent, %.3f MB received (mean of %d node%s)\n", up / with_rounds,
               down / with_rounds, with_rounds, with_rounds == 1 ? "" : "s");
    printf("%-4s %-20s %6s %9s %9s %6s %11s %11s\n", "ID", "NAME", "ROUNDS", "TRAIN S", "WAIT S", "UTIL",
           "MB/ROUND UP", "MB/ROUND DN");
    for (size_t i = 0; i < n; i++) {
        const Spes__Wire__NodeCounters *c = m[i]->counters;
        if (!c)
            continue;
        char util[16] = "-", mbu[24] = "-", mbd[24] = "-";
        if (c->train_s + c->wait_s > 0)
            snprintf(util, sizeof util, "%.1f%%", 100.0 * c->train_s / (c->train_s + c->wait_s));
        if (c->rounds) {
            snprintf(mbu, sizeof mbu, "%.3f", (double)counter_bytes(c, 1) / 1e6 / (double)c->rounds);
            snprintf(mbd, sizeof mbd, "%.3f", (double)counter_bytes(c, 0) / 1e6 / (double)c->rounds);
        }
        printf("%-4u %-20s %6llu %9.1f %9.1f %6s %11s %11s\n", m[i]->node_id, m[i]->name,
               (unsigned long long)c->rounds, c->train_s, c->wait_s, util, mbu, mbd);
    }
}

static void print_last_round(const Spes__Wire__LastRound *lr, Spes__Wire__MemberInfo *const *m, size_t nm)
{
    if (!lr) {
        printf("last round: none committed yet\n");
        return;
    }
    char dg[80];
    hex(dg, &lr->digest, 32);
    printf("last round %llu: %u contributor%s, merge %s, digest %s\n", (unsigned long long)lr->round,
           lr->contributors, lr->contributors == 1 ? "" : "s", lr->merge_applied ? "applied" : "no",
           dg[0] ? dg : "not agreed yet");
    for (size_t i = 0; i < lr->n_refused; i++) {
        const char *nm_ = member_name(m, nm, lr->refused[i]->node_id);
        printf("  refused node %u%s%s%s: %s\n", lr->refused[i]->node_id, nm_ ? " (" : "", nm_ ? nm_ : "",
               nm_ ? ")" : "", lr->refused[i]->reason);
    }
    if (lr->n_stragglers) {
        printf("  stragglers (median announcement %.1f s):", (double)lr->median_announce_ms / 1e3);
        for (size_t i = 0; i < lr->n_stragglers; i++) {
            const Spes__Wire__Straggler *g = lr->stragglers[i];
            const char *nm_ = member_name(m, nm, g->node_id);
            if (g->missed)
                printf("%s %s missed the deadline", i ? "," : "", nm_ ? nm_ : "?");
            else
                printf("%s %s %.1f s behind", i ? "," : "", nm_ ? nm_ : "?", (double)g->behind_ms / 1e3);
        }
        printf("\n");
    }
    if (lr->audited || lr->n_audit_mismatch) {
        printf("  audits: %u shard%s recomputed by a second node", lr->audited, lr->audited == 1 ? "" : "s");
        for (size_t i = 0; i < lr->n_audit_mismatch; i++) {
            const char *nm_ = member_name(m, nm, lr->audit_mismatch[i]);
            printf("%s %u%s%s%s", i ? "," : "; AUDIT MISMATCH from aggregator", lr->audit_mismatch[i],
                   nm_ ? " (" : "", nm_ ? nm_ : "", nm_ ? ")" : "");
        }
        printf("\n");
    }
    if (lr->n_digest_mismatch) {
        printf("  DIGEST MISMATCH from node%s", lr->n_digest_mismatch == 1 ? "" : "s");
        for (size_t i = 0; i < lr->n_digest_mismatch; i++) {
            const char *nm_ = member_name(m, nm, lr->digest_mismatch[i]);
            printf("%s %u%s%s%s", i ? "," : "", lr->digest_mismatch[i], nm_ ? " (" : "", nm_ ? nm_ : "",
                   nm_ ? ")" : "");
        }
        printf("\n");
    }
}

static void print_status(const Spes__Wire__StatusReply *s, unsigned long long now_ms)
{
    printf("run %s  round %llu  step %llu  loss %.4f  tokens/s %.1f\n", s->run_id[0] ? s->run_id : "-",
           (unsigned long long)s->round, (unsigned long long)s->step, s->loss, s->tokens_per_s);
    printf("coordinator %s  round deadline %.1f s\n\n", s->coordinator[0] ? s->coordinator : "-",
           (double)s->round_deadline_ms / 1e3);
    print_members(s->members, s->n_members, now_ms);
    print_costs(s->members, s->n_members);
    printf("\n");
    print_last_round(s->last_round, s->members, s->n_members);
    if (s->n_departed) {
        printf("departed (slots reclaimed, newest last):");
        for (size_t i = 0; i < s->n_departed; i++)
            printf("%s %s (node %u, %s)", i ? "," : "", s->departed[i]->name, s->departed[i]->node_id,
                   spesctl_ops_state_name(s->departed[i]->state));
        printf("\n");
    }
}

static void print_checkpoints(const Spes__Wire__CheckpointReply *r)
{
    if (r->message && r->message[0])
        printf("%s\n", r->message);
    if (r->pending)
        printf("(a checkpoint is pending: it is taken at the next round boundary)\n");
    if (r->n_checkpoints == 0)
        return;
    printf("%-24s %7s %8s %-12s %-20s %-9s %s\n", "ID", "ROUND", "STEP", "STATE", "CREATED", "COMPLETE",
           "HOLDERS");
    for (size_t i = 0; i < r->n_checkpoints; i++) {
        const Spes__Wire__CheckpointInfo *c = r->checkpoints[i];
        char h[32], when[32], holders[64];
        hex(h, &c->state_hash, 6);
        utc(when, sizeof when, c->created_unix_ms);
        columns_text(holders, sizeof holders, c->holders, c->n_holders);
        printf("%-24s %7llu %8llu %-12s %-20s %-9s %s\n", c->id, (unsigned long long)c->round,
               (unsigned long long)c->step, h[0] ? h : "-", when, c->complete ? "yes" : "no", holders);
    }
}

/* ---- JSON ---- */

static json_t *json_hex(const ProtobufCBinaryData *b)
{
    char buf[2 * SPES_PROTO_MAX_TEXT + 1];
    ProtobufCBinaryData t = *b;
    if (t.len > SPES_PROTO_MAX_TEXT)
        t.len = SPES_PROTO_MAX_TEXT;
    hex(buf, &t, t.len);
    return json_string(buf);
}

static json_t *json_u32s(const uint32_t *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer(v[i]));
    return a;
}

/* json_counters adds a member's counters (zeros if it never reported them):
 * net {sent_bytes, received_bytes, control {...}, blob {...}, messages},
 * time {train_s, wait_s}, rounds, counters_reported. */
static void json_counters(json_t *o, const Spes__Wire__NodeCounters *c)
{
    static const Spes__Wire__NodeCounters zero = SPES__WIRE__NODE_COUNTERS__INIT;
    const Spes__Wire__NodeCounters *k = c ? c : &zero;
    json_t *net = json_pack(
        "{s:I,s:I,s:{s:I,s:I},s:{s:I,s:I},s:I,s:I}", "sent_bytes", (json_int_t)counter_bytes(k, 1),
        "received_bytes", (json_int_t)counter_bytes(k, 0), "control", "sent_bytes",
        (json_int_t)k->control_sent_bytes, "received_bytes", (json_int_t)k->control_received_bytes, "blob",
        "sent_bytes", (json_int_t)k->blob_sent_bytes, "received_bytes", (json_int_t)k->blob_received_bytes,
        "sent_messages", (json_int_t)k->sent_messages, "received_messages", (json_int_t)k->received_messages);
    json_object_set_new(o, "net", net);
    json_object_set_new(o, "time", json_pack("{s:f,s:f}", "train_s", k->train_s, "wait_s", k->wait_s));
    json_object_set_new(o, "rounds", json_integer((json_int_t)k->rounds));
    json_object_set_new(o, "counters_reported", json_boolean(c != NULL));
}

static json_t *json_member(const Spes__Wire__MemberInfo *m, unsigned long long now_ms)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(m->name));
    json_object_set_new(o, "node_id", json_integer(m->node_id));
    json_object_set_new(o, "name", json_string(m->name));
    json_object_set_new(o, "state", json_string(spesctl_ops_state_name(m->state)));
    json_object_set_new(o, "columns", json_u32s(m->columns, m->n_columns));
    json_object_set_new(o, "round", json_integer((json_int_t)m->round));
    json_object_set_new(o, "digest", json_hex(&m->digest));
    json_object_set_new(o, "tokens_per_s", json_real(m->tokens_per_s));
    json_object_set_new(o, "loss", json_real(m->loss));
    json_object_set_new(o, "listen_url", json_string(m->listen_url));
    json_object_set_new(o, "reachable", json_boolean(m->listen_url[0] != '\0')); /* dialled, or pushes */
    json_object_set_new(o, "last_seen_unix_ms", json_integer((json_int_t)m->last_seen_unix_ms));
    json_object_set_new(o, "last_seen_ago_s",
                        m->last_seen_unix_ms == 0
                            ? json_null()
                            : json_real(now_ms > m->last_seen_unix_ms
                                            ? (double)(now_ms - m->last_seen_unix_ms) / 1000.0
                                            : 0.0));
    json_counters(o, m->counters);
    return o;
}

static json_t *json_members(Spes__Wire__MemberInfo *const *m, size_t n, unsigned long long now_ms)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_member(m[i], now_ms));
    return a;
}

static json_t *json_last_round(const Spes__Wire__LastRound *lr, Spes__Wire__MemberInfo *const *m, size_t nm)
{
    if (!lr)
        return json_null();
    json_t *o = json_object(), *ref = json_array();
    json_object_set_new(o, "round", json_integer((json_int_t)lr->round));
    json_object_set_new(o, "contributors", json_integer(lr->contributors));
    json_object_set_new(o, "merge_applied", json_boolean(lr->merge_applied));
    json_object_set_new(o, "digest", json_hex(&lr->digest));
    for (size_t i = 0; i < lr->n_refused; i++) {
        const char *name = member_name(m, nm, lr->refused[i]->node_id);
        json_array_append_new(ref, json_pack("{s:I,s:s?,s:s}", "node_id", (json_int_t)lr->refused[i]->node_id,
                                             "id", name, "reason", lr->refused[i]->reason));
    }
    json_object_set_new(o, "refused", ref);
    json_object_set_new(o, "digest_mismatch", json_u32s(lr->digest_mismatch, lr->n_digest_mismatch));
    json_object_set_new(o, "audited", json_integer(lr->audited));
    json_object_set_new(o, "audit_mismatch", json_u32s(lr->audit_mismatch, lr->n_audit_mismatch));
    json_object_set_new(o, "committed_unix_ms", json_integer((json_int_t)lr->committed_unix_ms));
    json_t *st = json_array();
    for (size_t i = 0; i < lr->n_stragglers; i++) {
        const Spes__Wire__Straggler *g = lr->stragglers[i];
        json_array_append_new(st, json_pack("{s:I,s:s?,s:I,s:b}", "node_id", (json_int_t)g->node_id, "id",
                                            member_name(m, nm, g->node_id), "behind_ms",
                                            (json_int_t)g->behind_ms, "missed", g->missed));
    }
    json_object_set_new(o, "stragglers", st);
    json_object_set_new(o, "median_announce_ms", json_integer(lr->median_announce_ms));
    return o;
}

static json_t *json_status(const Spes__Wire__StatusReply *s, unsigned long long now_ms)
{
    json_t *o = json_object();
    json_object_set_new(o, "run_id", json_string(s->run_id));
    json_object_set_new(o, "round", json_integer((json_int_t)s->round));
    json_object_set_new(o, "step", json_integer((json_int_t)s->step));
    json_object_set_new(o, "loss", json_real(s->loss));
    json_object_set_new(o, "tokens_per_s", json_real(s->tokens_per_s));
    json_object_set_new(o, "coordinator", json_string(s->coordinator));
    json_object_set_new(o, "round_deadline_ms", json_integer(s->round_deadline_ms));
    json_object_set_new(o, "members", json_members(s->members, s->n_members, now_ms));
    json_object_set_new(o, "last_round", json_last_round(s->last_round, s->members, s->n_members));
    json_t *gone = json_array();
    for (size_t i = 0; i < s->n_departed; i++) {
        const Spes__Wire__MemberInfo *d = s->departed[i];
        json_array_append_new(gone, json_pack("{s:I,s:s,s:s,s:I,s:I}", "node_id", (json_int_t)d->node_id,
                                              "id", d->name, "state", spesctl_ops_state_name(d->state),
                                              "round", (json_int_t)d->round, "last_seen_unix_ms",
                                              (json_int_t)d->last_seen_unix_ms));
    }
    json_object_set_new(o, "departed", gone);
    return o;
}

static json_t *json_checkpoints(const Spes__Wire__CheckpointReply *r)
{
    json_t *o = json_object(), *a = json_array();
    for (size_t i = 0; i < r->n_checkpoints; i++) {
        const Spes__Wire__CheckpointInfo *c = r->checkpoints[i];
        json_t *e = json_object();
        json_object_set_new(e, "id", json_string(c->id));
        json_object_set_new(e, "round", json_integer((json_int_t)c->round));
        json_object_set_new(e, "step", json_integer((json_int_t)c->step));
        json_object_set_new(e, "state_hash", json_hex(&c->state_hash));
        json_object_set_new(e, "created_unix_ms", json_integer((json_int_t)c->created_unix_ms));
        json_object_set_new(e, "holders", json_u32s(c->holders, c->n_holders));
        json_object_set_new(e, "complete", json_boolean(c->complete));
        json_array_append_new(a, e);
    }
    json_object_set_new(o, "checkpoints", a);
    json_object_set_new(o, "message", json_string(r->message));
    json_object_set_new(o, "pending", json_boolean(r->pending));
    return o;
}

static json_t *to_json(int type, const ProtobufCMessage *msg, unsigned long long now_ms)
{
    switch (type) {
    case SPES_MSG_STATUS_REPLY: return json_status((const Spes__Wire__StatusReply *)msg, now_ms);
    case SPES_MSG_MEMBERS_REPLY: {
        const Spes__Wire__MembersReply *r = (const Spes__Wire__MembersReply *)msg;
        return json_pack("{s:o,s:s}", "members", json_members(r->members, r->n_members, now_ms), "message",
                         r->message);
    }
    case SPES_MSG_CHECKPOINT_REPLY: return json_checkpoints((const Spes__Wire__CheckpointReply *)msg);
    case SPES_MSG_ACK: return json_pack("{s:s}", "message", ((const Spes__Wire__Ack *)msg)->message);
    default: return NULL;
    }
}

int spesctl_ops_print(int type, const ProtobufCMessage *msg, int json, unsigned long long now_ms)
{
    if (json) {
        json_t *o = to_json(type, msg, now_ms);
        char *s = o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10)) : NULL;
        json_decref(o);
        if (!s)
            return -1;
        printf("%s\n", s);
        free(s);
        return 0;
    }
    switch (type) {
    case SPES_MSG_STATUS_REPLY: print_status((const Spes__Wire__StatusReply *)msg, now_ms); break;
    case SPES_MSG_MEMBERS_REPLY: {
        const Spes__Wire__MembersReply *r = (const Spes__Wire__MembersReply *)msg;
        if (r->message[0])
            printf("%s\n", r->message);
        if (r->n_members)
            print_members(r->members, r->n_members, now_ms);
        break;
    }
    case SPES_MSG_CHECKPOINT_REPLY: print_checkpoints((const Spes__Wire__CheckpointReply *)msg); break;
    case SPES_MSG_ACK:
        printf("%s\n",
               ((const Spes__Wire__Ack *)msg)->message[0] ? ((const Spes__Wire__Ack *)msg)->message : "ok");
        break;
    default: return -1;
    }
    return 0;
}
