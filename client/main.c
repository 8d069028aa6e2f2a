/* main.c: spesctl, the operator's client: dispatches `spesctl VERB [SUB] ...` through
 * the verb-group tables in spesctl.h. Adding a verb group = one file with a table
 * plus one line in `groups` below. Never links the model; exits with 0, 1
 * (failure, one-line reason on stderr) or 2 (usage). */
#include "client/spesctl.h"
#include "client/ops.h"

#include "cli/opts.h"
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
    long v;
    if (spes_opts_long(flag, s ? s : "", lo, hi, &v) != 0) {
        fprintf(stderr, "spesctl: %s\n", spes_errmsg());
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* spesctl_parse reads the command's options through the shared parser (cli/opts.h):
 * a flag stores "1" in its slot, a value option the argument itself. */
int spesctl_parse(int argc, char **argv, const spesctl_opt *opts, const char **pos, int max_pos,
                  const char *cmdname)
{
    spes_opt table[SPESCTL_MAX_OPTS + 1];
    int flags[SPESCTL_MAX_OPTS] = {0}, n = 0, npos = 0;
    for (const spesctl_opt *o = opts; o && o->name; o++) {
        if (n == SPESCTL_MAX_OPTS) {
            fprintf(stderr, "spesctl %s: more than %d options in its table\n", cmdname, SPESCTL_MAX_OPTS);
            return -1;
        }
        table[n] = (spes_opt){o->name,
                              0,
                              o->has_arg ? SPES_OPT_STR : SPES_OPT_FLAG,
                              o->has_arg ? (void *)o->val : (void *)&flags[n],
                              0,
                              0,
                              "VALUE",
                              NULL};
        n++;
    }
    table[n] = (spes_opt){0};
    char name[96];
    snprintf(name, sizeof name, "spesctl %s", cmdname);
    const spes_opt_cmd cmd = {name, NULL, table, 0, max_pos, NULL};
    /* the shared parser skips argv[0]; spesctl hands over the words after the command */
    char *args[argc + 2];
    args[0] = name;
    for (int i = 0; i < argc; i++)
        args[i + 1] = argv[i];
    args[argc + 1] = NULL;
    int rc = spes_opts_parse(&cmd, argc + 1, args, pos, &npos);
    if (rc == SPES_OPTS_HELP) {
        spes_opts_usage(&cmd, stdout);
        return -1;
    }
    if (rc) {
        fprintf(stderr, "%s: %s\n", name, spes_errmsg());
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (flags[i])
            *opts[i].val = "1";
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
