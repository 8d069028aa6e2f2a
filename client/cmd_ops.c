/* cmd_ops.c: spesctl's operator verbs: status, members list|approve|drain|evict,
 * checkpoint save|list|restore|export. Each builds one request message, sends
 * it through ops_conn.c and prints the checked reply (ops_print.c). Connection
 * flags may come before the verb (`spesctl --socket PATH status`) or after it;
 * flags win over SPES_SOCKET, SPES_URL, SPES_CA, SPES_CERT, SPES_KEY. Never
 * prints a reply it has not type-checked; never exits the process itself. */
#include "client/ops.h"

#include "core/clock.h"
#include "core/error.h"
#include "proto/proto.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT_S 30
#define WAIT_TIMEOUT_S 3600

/* lead is what leading connection flags set (`spesctl --socket P status`). */
static spesctl_conn lead;

typedef struct ops_args {
    spesctl_conn conn;
    const char *json, *wait, *out, *timeout;
    const char *pos[1];
    int npos;
} ops_args;

/* parse_args parses connection flags, --json, --timeout and (when asked) --wait/--out;
 * posname names the one positional argument, NULL if the command takes none. */
static int parse_args(int argc, char **argv, const char *cmd, const char *posname, int extra_wait,
                      int extra_out, ops_args *a)
{
    memset(a, 0, sizeof *a);
    a->conn = lead;
    const char *sock = NULL, *url = NULL;
    spesctl_opt o[10] = {{"socket", 1, &sock},       {"url", 1, &url},         {"ca", 1, &a->conn.ca},
                         {"cert", 1, &a->conn.cert}, {"key", 1, &a->conn.key}, {"json", 0, &a->json},
                         {"timeout", 1, &a->timeout}};
    int k = 7;
    if (extra_wait)
        o[k++] = (spesctl_opt){"wait", 0, &a->wait};
    if (extra_out)
        o[k++] = (spesctl_opt){"out", 1, &a->out};
    a->npos = spesctl_parse(argc, argv, o, a->pos, posname ? 1 : 0, cmd);
    if (a->npos < 0)
        return -1;
    if (posname && a->npos < 1) {
        fprintf(stderr, "spesctl %s: %s is required\n", cmd, posname);
        return -1;
    }
    if (sock && url) {
        fprintf(stderr, "spesctl %s: give --socket or --url, not both\n", cmd);
        return -1;
    }
    if (sock) { /* a flag after the verb overrides one before it */
        a->conn.socket = sock, a->conn.socket_from_flag = 1;
        a->conn.url = NULL, a->conn.url_from_flag = 0;
    }
    if (url) {
        a->conn.url = url, a->conn.url_from_flag = 1;
        a->conn.socket = NULL, a->conn.socket_from_flag = 0;
    }
    int t = a->wait ? WAIT_TIMEOUT_S : DEFAULT_TIMEOUT_S;
    if (a->timeout && spesctl_parse_int(a->timeout, 1, 86400, "--timeout", &t) < 0)
        return -1;
    a->conn.timeout_ms = t * 1000;
    spesctl_conn_resolve(&a->conn);
    return 0;
}

/* put_clean prints a daemon's text on one line (newlines and controls become spaces). */
static void put_clean(FILE *f, const char *s)
{
    for (; *s; s++)
        fputc((unsigned char)*s < 0x20 ? ' ' : *s, f);
}

/* exchange sends msg, prints the reply and returns the exit status. */
static int exchange(const char *cmd, const ops_args *a, int type, const ProtobufCMessage *msg, int want)
{
    int rt = 0;
    ProtobufCMessage *rep = NULL;
    if (spesctl_ops_call(&a->conn, type, msg, want, &rt, &rep) != 0) {
        fprintf(stderr, "spesctl %s: ", cmd);
        put_clean(stderr, spes_errmsg());
        fputc('\n', stderr);
        return SPESCTL_FAIL;
    }
    int rc = SPESCTL_OK;
    if (rt == SPES_MSG_ERROR) {
        const Spes__Wire__Error *e = (const Spes__Wire__Error *)rep;
        int hint = (e->code == SPES__WIRE__ERROR_CODE__ERROR_NOT_COORDINATOR ||
                    strstr(e->message, "not the coordinator")) &&
                   !(a->conn.ca && a->conn.cert && a->conn.key);
        fprintf(stderr, "spesctl %s: the daemon refused: ", cmd);
        put_clean(stderr, e->message[0] ? e->message : "(no reason given)");
        fprintf(stderr, "%s\n",
                hint ? " (give --ca/--cert/--key or SPES_CA/SPES_CERT/SPES_KEY of an operator "
                       "certificate to follow it)"
                     : "");
        rc = SPESCTL_FAIL;
    } else if (spesctl_ops_print(rt, rep, a->json != NULL, spes_now_ms()) != 0) {
        fprintf(stderr, "spesctl %s: out of memory printing the reply\n", cmd);
        rc = SPESCTL_FAIL;
    }
    spes_proto_free(rep);
    return rc;
}

static int cmd_status(int argc, char **argv)
{
    ops_args a;
    if (parse_args(argc, argv, "status", NULL, 0, 0, &a))
        return SPESCTL_USAGE;
    Spes__Wire__StatusRequest req = SPES__WIRE__STATUS_REQUEST__INIT;
    return exchange("status", &a, SPES_MSG_STATUS_REQUEST, &req.base, SPES_MSG_STATUS_REPLY);
}

static int members(int argc, char **argv, const char *cmd, Spes__Wire__MembersAction action)
{
    ops_args a;
    int npos = action == SPES__WIRE__MEMBERS_ACTION__MEMBERS_LIST ? 0 : 1;
    if (parse_args(argc, argv, cmd, npos ? "NAME" : NULL, 0, 0, &a))
        return SPESCTL_USAGE;
    Spes__Wire__MembersRequest req = SPES__WIRE__MEMBERS_REQUEST__INIT;
    req.action = action;
    req.target = npos ? (char *)a.pos[0] : (char *)"";
    return exchange(cmd, &a, SPES_MSG_MEMBERS_REQUEST, &req.base, SPES_MSG_MEMBERS_REPLY);
}

static int cmd_members_list(int argc, char **argv)
{
    return members(argc, argv, "members list", SPES__WIRE__MEMBERS_ACTION__MEMBERS_LIST);
}

static int cmd_members_approve(int argc, char **argv)
{
    return members(argc, argv, "members approve", SPES__WIRE__MEMBERS_ACTION__MEMBERS_APPROVE);
}

static int cmd_members_drain(int argc, char **argv)
{
    return members(argc, argv, "members drain", SPES__WIRE__MEMBERS_ACTION__MEMBERS_DRAIN);
}

static int cmd_members_evict(int argc, char **argv)
{
    return members(argc, argv, "members evict", SPES__WIRE__MEMBERS_ACTION__MEMBERS_EVICT);
}

/* absolute makes DIR absolute against our cwd: the daemon's cwd is not ours. */
static int absolute(const char *dir, char *out, size_t n)
{
    if (dir[0] == '/')
        return snprintf(out, n, "%s", dir) < (int)n ? 0 : -1;
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return -1;
    return snprintf(out, n, "%s/%s", cwd, dir) < (int)n ? 0 : -1;
}

static int checkpoint(int argc, char **argv, const char *cmd, Spes__Wire__CheckpointAction action)
{
    ops_args a;
    int is_save = action == SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_SAVE;
    int is_export = action == SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_EXPORT;
    int npos = action == SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_RESTORE || is_export;
    if (parse_args(argc, argv, cmd, npos ? "checkpoint ID" : NULL, is_save, is_export, &a))
        return SPESCTL_USAGE;
    Spes__Wire__CheckpointRequest req = SPES__WIRE__CHECKPOINT_REQUEST__INIT;
    char out[SPES_PROTO_MAX_PATH];
    req.action = action;
    req.wait = a.wait != NULL;
    req.id = npos ? (char *)a.pos[0] : (char *)"";
    if (is_export) {
        if (!a.out) {
            fprintf(stderr, "spesctl %s: --out DIR is required\n", cmd);
            return SPESCTL_USAGE;
        }
        if (a.conn.url) { /* remote: the coordinator writes exports/NAME under its state directory */
            if (snprintf(out, sizeof out, "%s", a.out) >= (int)sizeof out) {
                fprintf(stderr, "spesctl %s: --out %s: name too long\n", cmd, a.out);
                return SPESCTL_USAGE;
            }
        } else if (absolute(a.out, out, sizeof out) != 0) {
            fprintf(stderr, "spesctl %s: --out %s: path too long or working directory unknown\n", cmd, a.out);
            return SPESCTL_FAIL;
        }
        req.out_dir = out;
    }
    return exchange(cmd, &a, SPES_MSG_CHECKPOINT_REQUEST, &req.base, SPES_MSG_CHECKPOINT_REPLY);
}

static int cmd_ckpt_save(int argc, char **argv)
{
    return checkpoint(argc, argv, "checkpoint save", SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_SAVE);
}

static int cmd_ckpt_list(int argc, char **argv)
{
    return checkpoint(argc, argv, "checkpoint list", SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_LIST);
}

static int cmd_ckpt_restore(int argc, char **argv)
{
    return checkpoint(argc, argv, "checkpoint restore", SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_RESTORE);
}

static int cmd_ckpt_export(int argc, char **argv)
{
    return checkpoint(argc, argv, "checkpoint export", SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_EXPORT);
}

#define CONN_USAGE "[CONN] [--timeout S] [--json]"

/* leading takes `--FLAG VALUE ... VERB [SUB] ARGS` and runs VERB with lead set. */
static int leading(const char *flag, int argc, char **argv)
{
    for (;;) {
        if (argc < 1) {
            fprintf(stderr, "spesctl: --%s needs a value\n", flag);
            return SPESCTL_USAGE;
        }
        const char **slot = !strcmp(flag, "socket") ? &lead.socket
                            : !strcmp(flag, "url")  ? &lead.url
                            : !strcmp(flag, "ca")   ? &lead.ca
                            : !strcmp(flag, "cert") ? &lead.cert
                                                    : &lead.key;
        *slot = argv[0];
        lead.socket_from_flag |= !strcmp(flag, "socket");
        lead.url_from_flag |= !strcmp(flag, "url");
        argc--, argv++;
        if (argc < 1 || strncmp(argv[0], "--", 2) != 0)
            break;
        flag = argv[0] + 2;
        if (strcmp(flag, "socket") && strcmp(flag, "url") && strcmp(flag, "ca") && strcmp(flag, "cert") &&
            strcmp(flag, "key")) {
            fprintf(stderr, "spesctl: unknown option '%s' before the command\n", argv[0]);
            return SPESCTL_USAGE;
        }
        argc--, argv++;
    }
    if (lead.socket && lead.url) {
        fprintf(stderr, "spesctl: give --socket or --url, not both\n");
        return SPESCTL_USAGE;
    }
    if (argc < 1) {
        fprintf(stderr,
                "spesctl: a command is needed after the connection flags (status, members, checkpoint)\n");
        return SPESCTL_USAGE;
    }
    for (const spesctl_cmd *c = spesctl_ops_cmds; c->verb; c++) {
        if (c->verb[0] == '-' || strcmp(c->verb, argv[0]) != 0)
            continue;
        if (!c->sub)
            return c->run(argc - 1, argv + 1);
        if (argc >= 2 && !strcmp(c->sub, argv[1]))
            return c->run(argc - 2, argv + 2);
    }
    fprintf(stderr, "spesctl: '%s%s%s' is not an operator command (status, members ..., checkpoint ...)\n",
            argv[0], argc >= 2 ? " " : "", argc >= 2 ? argv[1] : "");
    return SPESCTL_USAGE;
}

static int cmd_top(int argc, char **argv) /* top: cmd_top.c */
{
    return spesctl_top(argc, argv, &lead);
}

static int lead_socket(int argc, char **argv)
{
    return leading("socket", argc, argv);
}
static int lead_url(int argc, char **argv)
{
    return leading("url", argc, argv);
}
static int lead_ca(int argc, char **argv)
{
    return leading("ca", argc, argv);
}
static int lead_cert(int argc, char **argv)
{
    return leading("cert", argc, argv);
}
static int lead_key(int argc, char **argv)
{
    return leading("key", argc, argv);
}

const spesctl_cmd spesctl_ops_cmds[] = {
    {"status", NULL, cmd_status, CONN_USAGE},
    {"members", "list", cmd_members_list, CONN_USAGE},
    {"members", "approve", cmd_members_approve, "NAME " CONN_USAGE},
    {"members", "drain", cmd_members_drain, "NAME " CONN_USAGE},
    {"members", "evict", cmd_members_evict, "NAME " CONN_USAGE},
    {"checkpoint", "save", cmd_ckpt_save, "[--wait] " CONN_USAGE},
    {"checkpoint", "list", cmd_ckpt_list, CONN_USAGE},
    {"checkpoint", "restore", cmd_ckpt_restore, "ID " CONN_USAGE},
    {"checkpoint", "export", cmd_ckpt_export, "ID --out DIR (with --url: NAME) " CONN_USAGE},
    {"top", NULL, cmd_top, "[CONN] [--once] [--interval S] [--no-color] [--timeout S]"},
    {"--socket", NULL, lead_socket, "PATH COMMAND ...   CONN = --socket PATH, or --url tls+tcp://H:P"},
    {"--url", NULL, lead_url, "tls+tcp://H:P --ca F --cert F --key F COMMAND ...   (operator certificate)"},
    {"--ca", NULL, lead_ca, "F ...   CONN flags go before or after the command; env: SPES_SOCKET SPES_URL"},
    {"--cert", NULL, lead_cert, "F ...   SPES_CA SPES_CERT SPES_KEY (flags win)"},
    {"--key", NULL, lead_key, "F ...   default socket " SPESCTL_DEFAULT_SOCKET},
    {NULL, NULL, NULL, NULL},
};
