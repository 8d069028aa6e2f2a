/* main.c: spesctl, the operator's client: dispatches `spesctl VERB [SUB] ...` through
 * the verb-group tables in spesctl.h. Adding a verb group = one file with a table
 * plus one line in `groups` below. Never links the model; exits with 0, 1
 * (failure, one-line reason on stderr) or 2 (usage). */
#include "client/spesctl.h"
#include "client/ops.h"

#include "core/error.h"
#include "proto/proto.h"

#ifndef SPES_VERSION
#define SPES_VERSION "0.0.0"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const spesctl_cmd *const groups[] = {
    spesctl_pki_cmds,
    spesctl_ops_cmds,
    NULL,
};

static void usage(FILE *f)
{
    fprintf(f, "usage: spesctl COMMAND [ARGS]\n       spesctl --version\ncommands:\n");
    for (int g = 0; groups[g]; g++)
        for (const spesctl_cmd *c = groups[g]; c->verb; c++)
            fprintf(f, "  spesctl %s%s%s %s\n", c->verb, c->sub ? " " : "", c->sub ? c->sub : "", c->usage);
}

int spesctl_fail(const char *what)
{
    fprintf(stderr, "spesctl: %s: %s\n", what, spes_errmsg());
    return SPESCTL_FAIL;
}

int spesctl_parse_int(const char *s, int lo, int hi, const char *flag, int *out)
{
    char *end = NULL;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || !*s || *end || v < lo || v > hi) {
        fprintf(stderr, "spesctl: %s must be an integer in %d..%d, not '%s'\n", flag, lo, hi, s ? s : "");
        return -1;
    }
    *out = (int)v;
    return 0;
}

static const spesctl_opt *find_opt(const spesctl_opt *opts, const char *name, size_t len)
{
    for (const spesctl_opt *o = opts; o && o->name; o++)
        if (strlen(o->name) == len && strncmp(o->name, name, len) == 0)
            return o;
    return NULL;
}

int spesctl_parse(int argc, char **argv, const spesctl_opt *opts, const char **pos, int max_pos,
                  const char *cmdname)
{
    int npos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            if (npos >= max_pos) {
                fprintf(stderr, "spesctl %s: unexpected argument '%s'\n", cmdname, a);
                return -1;
            }
            pos[npos++] = a;
            continue;
        }
        const char *eq = strchr(a + 2, '=');
        size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        const spesctl_opt *o = find_opt(opts, a + 2, len);
        if (!o) {
            fprintf(stderr, "spesctl %s: unknown option '%s'\n", cmdname, a);
            return -1;
        }
        if (!o->has_arg) {
            *o->val = "1";
        } else if (eq) {
            *o->val = eq + 1;
        } else if (i + 1 < argc) {
            *o->val = argv[++i];
        } else {
            fprintf(stderr, "spesctl %s: option '%s' needs a value\n", cmdname, a);
            return -1;
        }
    }
    return npos;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? SPESCTL_USAGE : SPESCTL_OK;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf("spesctl %s (protocol %d)\n", SPES_VERSION, SPES_PROTO_VERSION);
        return SPESCTL_OK;
    }
    int verb_known = 0;
    for (int g = 0; groups[g]; g++) {
        for (const spesctl_cmd *c = groups[g]; c->verb; c++) {
            if (strcmp(c->verb, argv[1]) != 0)
                continue;
            verb_known = 1;
            if (!c->sub)
                return c->run(argc - 2, argv + 2);
            if (argc >= 3 && strcmp(c->sub, argv[2]) == 0)
                return c->run(argc - 3, argv + 3);
        }
    }
    if (verb_known)
        fprintf(stderr, "spesctl: '%s' needs a known sub-command (see spesctl help)\n", argv[1]);
    else
        fprintf(stderr, "spesctl: unknown command '%s' (see spesctl help)\n", argv[1]);
    return SPESCTL_USAGE;
}
