/* cmd_top.c: `spesctl top`, the run at a glance in a terminal: the run's
 * round, step, loss and tokens/s with a loss sparkline over the rounds seen,
 * the members (state, columns, rate, share of time training, bytes, last
 * seen), the expert map (owner of each column) and the last round's
 * refusals and digest mismatches. One StatusRequest per frame, the same as
 * `spesctl status`; plain ANSI (clear screen, colours), no curses. --once
 * prints one frame without escapes (scripts, tests). Text from the daemon
 * (names come from certificates) is printed with control bytes replaced, so a
 * name cannot move the cursor or retitle the terminal. */
#include "client/ops.h"

#include "core/clock.h"
#include "core/error.h"
#include "proto/proto.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define HIST 64

typedef struct top_hist {
    uint64_t round[HIST];
    double loss[HIST];
    int n;
} top_hist;

static volatile sig_atomic_t stop_flag;

static void on_sigint(int sig)
{
    (void)sig;
    stop_flag = 1;
}

/* put_safe prints at most width characters of s with control bytes as '?', padded to width (0: no padding). */
static void put_safe(FILE *f, const char *s, int width)
{
    int n = 0;
    for (; s && *s && (width <= 0 || n < width); s++, n++)
        fputc((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f ? '?' : *s, f);
    for (; n < width; n++)
        fputc(' ', f);
}

static const char *col(int color, const char *code)
{
    return color ? code : "";
}

static void human_bytes(char *out, size_t n, double b)
{
    const char *u[] = {"B", "kB", "MB", "GB", "TB"};
    int i = 0;
    while (b >= 1000 && i < 4)
        b /= 1000, i++;
    snprintf(out, n, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

static void note_round(top_hist *h, uint64_t round, double loss)
{
    if (loss <= 0 || (h->n && h->round[h->n - 1] >= round))
        return;
    if (h->n == HIST) {
        memmove(h->round, h->round + 1, sizeof h->round[0] * (HIST - 1));
        memmove(h->loss, h->loss + 1, sizeof h->loss[0] * (HIST - 1));
        h->n--;
    }
    h->round[h->n] = round;
    h->loss[h->n++] = loss;
}

static void sparkline(FILE *f, const top_hist *h)
{
    static const char *const bars[] = {"\u2581", "\u2582", "\u2583", "\u2584",
                                       "\u2585", "\u2586", "\u2587", "\u2588"};
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < h->n; i++)
        lo = fmin(lo, h->loss[i]), hi = fmax(hi, h->loss[i]);
    for (int i = 0; i < h->n; i++) {
        int k = hi > lo ? (int)lround((h->loss[i] - lo) / (hi - lo) * 7) : 3;
        fputs(bars[k < 0 ? 0 : k > 7 ? 7 : k], f);
    }
    if (h->n)
        fprintf(f, "  loss %.4g .. %.4g over rounds %llu..%llu", lo, hi, (unsigned long long)h->round[0],
                (unsigned long long)h->round[h->n - 1]);
    else
        fputs("(no loss reported yet)", f);
}

static const char *state_color(int color, int state)
{
    if (!color)
        return "";
    switch (state) {
    case SPES__WIRE__NODE_STATE__NODE_STATE_ACTIVE: return "\033[32m";
    case SPES__WIRE__NODE_STATE__NODE_STATE_FAILED:
    case SPES__WIRE__NODE_STATE__NODE_STATE_EVICTED: return "\033[31m";
    default: return "\033[33m";
    }
}

/* render writes one frame for status s. */
static void render(FILE *f, const Spes__Wire__StatusReply *s, const top_hist *h, unsigned long long now_ms,
                   int color)
{
    const char *B = col(color, "\033[1m"), *R = col(color, "\033[0m"), *D = col(color, "\033[2m");
    time_t t = (time_t)(now_ms / 1000);
    struct tm tm;
    char when[32] = "";
    if (gmtime_r(&t, &tm))
        strftime(when, sizeof when, "%H:%M:%S UTC", &tm);
    fprintf(f, "%sspes top%s  run ", B, R);
    put_safe(f, s->run_id, 0);
    fprintf(f, "  round %s%llu%s  step %s%llu%s  loss %s%.4f%s  tokens/s %s%.0f%s  %s%s%s\n", B,
            (unsigned long long)s->round, R, B, (unsigned long long)s->step, R, B, s->loss, R, B,
            s->tokens_per_s, R, D, when, R);
    fputs("loss   ", f);
    sparkline(f, h);
    fputc('\n', f);
    const Spes__Wire__LastRound *lr = s->last_round;
    if (lr)
        fprintf(f,
                "last round %llu: %u contributor%s, merge %s, %s%zu refused%s, %s%zu digest mismatch%s%s\n",
                (unsigned long long)lr->round, lr->contributors, lr->contributors == 1 ? "" : "s",
                lr->merge_applied ? "applied" : "no", lr->n_refused ? col(color, "\033[31m") : "",
                lr->n_refused, R, lr->n_digest_mismatch ? col(color, "\033[31m") : "", lr->n_digest_mismatch,
                lr->n_digest_mismatch == 1 ? "" : "es", R);
    else
        fputs("last round: none committed yet\n", f);
    fprintf(f, "\n%s%-4s %-16s %-9s %-12s %6s %8s %10s %6s %10s %10s %9s%s\n", B, "ID", "NAME", "STATE",
            "COLUMNS", "ROUND", "LOSS", "TOK/S", "TRAIN%", "SENT", "RECEIVED", "SEEN", R);
    for (size_t i = 0; i < s->n_members; i++) {
        const Spes__Wire__MemberInfo *m = s->members[i];
        char cols[64] = "-", sent[16] = "-", recv[16] = "-", share[16] = "-", seen[32] = "never";
        size_t used = 0;
        for (size_t k = 0; k < m->n_columns && used + 12 < sizeof cols; k++) {
            size_t j = k;
            while (j + 1 < m->n_columns && m->columns[j + 1] == m->columns[j] + 1)
                j++;
            used += (size_t)snprintf(cols + used, sizeof cols - used, j >= k + 2 ? "%s%u-%u" : "%s%u",
                                     used ? "," : "", m->columns[k], m->columns[j]);
            k = j >= k + 2 ? j : k;
        }
        const Spes__Wire__NodeCounters *c = m->counters;
        if (c) {
            human_bytes(sent, sizeof sent, (double)(c->control_sent_bytes + c->blob_sent_bytes));
            human_bytes(recv, sizeof recv, (double)(c->control_received_bytes + c->blob_received_bytes));
            if (c->train_s + c->wait_s > 0)
                snprintf(share, sizeof share, "%.0f", 100 * c->train_s / (c->train_s + c->wait_s));
        }
        if (m->last_seen_unix_ms)
            snprintf(seen, sizeof seen, "%llus ago",
                     now_ms > m->last_seen_unix_ms ? (now_ms - m->last_seen_unix_ms) / 1000 : 0ull);
        fprintf(f, "%-4u ", m->node_id);
        put_safe(f, m->name, 16);
        fprintf(f, " %s%-9s%s %-12s %6llu %8.4f %10.1f %6s %10s %10s %9s\n", state_color(color, m->state),
                spesctl_ops_state_name(m->state), R, cols, (unsigned long long)m->round, m->loss,
                m->tokens_per_s, share, sent, recv, seen);
    }
    if (!s->n_members)
        fputs("(no members)\n", f);
    /* the expert map: owner of each column, eight to a line */
    uint32_t E = 0;
    for (size_t i = 0; i < s->n_members; i++)
        for (size_t k = 0; k < s->members[i]->n_columns; k++)
            if (s->members[i]->columns[k] + 1 > E)
                E = s->members[i]->columns[k] + 1;
    fprintf(f, "\n%sEXPERTS%s (owner of each column)\n", B, R);
    for (uint32_t e = 0; e < E; e++) {
        const char *owner = NULL;
        int owners = 0;
        for (size_t i = 0; i < s->n_members; i++)
            for (size_t k = 0; k < s->members[i]->n_columns; k++)
                if (s->members[i]->columns[k] == e) {
                    owner = owner ? owner : s->members[i]->name;
                    owners++;
                }
        fprintf(f, "%3u:", e);
        if (owner)
            put_safe(f, owner, 12);
        else
            fprintf(f, "%s%-12s%s", col(color, "\033[31m"), "(none)", R);
        fputs(owners > 1 ? "+ " : "  ", f);
        if (e % 6 == 5 || e + 1 == E)
            fputc('\n', f);
    }
    if (lr) {
        for (size_t i = 0; i < lr->n_refused; i++) {
            fprintf(f, "%srefused%s: ", col(color, "\033[31m"), R);
            put_safe(f, lr->refused[i]->reason, 0);
            fputc('\n', f);
        }
        for (size_t i = 0; i < lr->n_digest_mismatch; i++) {
            const char *nm = "?";
            for (size_t k = 0; k < s->n_members; k++)
                if (s->members[k]->node_id == lr->digest_mismatch[i])
                    nm = s->members[k]->name;
            fprintf(f, "%sdigest mismatch%s: node %u (", col(color, "\033[31m"), R, lr->digest_mismatch[i]);
            put_safe(f, nm, 0);
            fputs(")\n", f);
        }
    }
}

int spesctl_top(int argc, char **argv, const spesctl_conn *lead)
{
    spesctl_conn conn = *lead;
    const char *sock = NULL, *url = NULL, *once = NULL, *interval = NULL, *timeout = NULL, *nocolor = NULL;
    spesctl_opt o[] = {
        {"socket", 1, &sock},      {"url", 1, &url},   {"ca", 1, &conn.ca},        {"cert", 1, &conn.cert},
        {"key", 1, &conn.key},     {"once", 0, &once}, {"interval", 1, &interval}, {"timeout", 1, &timeout},
        {"no-color", 0, &nocolor}, {NULL, 0, NULL}};
    if (spesctl_parse(argc, argv, o, NULL, 0, "top") < 0)
        return SPESCTL_USAGE;
    if (sock && url) {
        fprintf(stderr, "spesctl top: give --socket or --url, not both\n");
        return SPESCTL_USAGE;
    }
    if (sock)
        conn.socket = sock, conn.socket_from_flag = 1, conn.url = NULL, conn.url_from_flag = 0;
    if (url)
        conn.url = url, conn.url_from_flag = 1, conn.socket = NULL, conn.socket_from_flag = 0;
    int every = 2, t = 10;
    if ((interval && spesctl_parse_int(interval, 1, 3600, "--interval", &every) < 0) ||
        (timeout && spesctl_parse_int(timeout, 1, 3600, "--timeout", &t) < 0))
        return SPESCTL_USAGE;
    conn.timeout_ms = t * 1000;
    spesctl_conn_resolve(&conn);
    int color = !once && !nocolor && isatty(STDOUT_FILENO) && !getenv("NO_COLOR");
    signal(SIGINT, on_sigint);
    top_hist h = {0};
    int rc = SPESCTL_OK;
    while (!stop_flag) {
        Spes__Wire__StatusRequest req = SPES__WIRE__STATUS_REQUEST__INIT;
        int rt = 0;
        ProtobufCMessage *rep = NULL;
        if (spesctl_ops_call(&conn, SPES_MSG_STATUS_REQUEST, &req.base, SPES_MSG_STATUS_REPLY, &rt, &rep) !=
            0) {
            if (once)
                return spesctl_fail("top");
            printf("%s", color ? "\033[H\033[2J" : "\n");
            printf("spesctl top: ");
            put_safe(stdout, spes_errmsg(), 0);
            printf(" (retrying every %d s)\n", every);
        } else if (rt == SPES_MSG_ERROR) {
            fprintf(stderr, "spesctl top: the daemon refused: ");
            put_safe(stderr, ((const Spes__Wire__Error *)rep)->message, 0);
            fputc('\n', stderr);
            spes_proto_free(rep);
            rc = SPESCTL_FAIL;
            break;
        } else {
            const Spes__Wire__StatusReply *s = (const Spes__Wire__StatusReply *)rep;
            if (s->last_round)
                note_round(&h, s->last_round->round, s->loss);
            if (!once)
                printf("%s", color ? "\033[H\033[2J" : "\n");
            render(stdout, s, &h, spes_now_ms(), color);
            spes_proto_free(rep);
        }
        fflush(stdout);
        if (once)
            break;
        for (int i = 0; i < every * 10 && !stop_flag; i++)
            usleep(100000);
    }
    return rc;
}
