/* opts.c: the table-driven option parser and help printer (see opts.h). */
#include "cli/opts.h"
#include "core/error.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* range_words describes [lo, hi] the way a person reads it */
static void range_words(char *buf, size_t n, double lo, double hi, int integer)
{
    const double big = 1e12;
    if (integer && lo == 1 && hi >= big)
        snprintf(buf, n, "a positive integer");
    else if (integer && lo == 0 && hi >= big)
        snprintf(buf, n, "a non-negative integer");
    else if (integer)
        snprintf(buf, n, "an integer in %.0f..%.0f", lo, hi);
    else
        snprintf(buf, n, "a number in %g..%g", lo, hi);
}

static int bad_value(const char *flag, const char *val, double lo, double hi, int integer)
{
    char want[96];
    range_words(want, sizeof want, lo, hi, integer);
    return spes_errf(SPES_EINVAL, "%s: expected %s, got '%s'", flag, want, val);
}

int spes_opts_long(const char *flag, const char *val, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(val, &end, 10);
    if (end == val || *end || errno || v < lo || v > hi)
        return bad_value(flag, val, (double)lo, (double)hi, 1);
    *out = v;
    return 0;
}

static int set_value(const spes_opt *o, const char *val)
{
    char flag[80];
    snprintf(flag, sizeof flag, "--%s", o->name);
    switch (o->kind) {
    case SPES_OPT_STR: *(const char **)o->dst = val; return 0;
    case SPES_OPT_LONG: return spes_opts_long(flag, val, (long)o->lo, (long)o->hi, (long *)o->dst);
    case SPES_OPT_DOUBLE: {
        char *end;
        errno = 0;
        double v = strtod(val, &end);
        if (end == val || *end || errno || !isfinite(v) || v < o->lo || v > o->hi)
            return bad_value(flag, val, o->lo, o->hi, 0);
        *(double *)o->dst = v;
        return 0;
    }
    case SPES_OPT_LIST: {
        spes_opt_list *l = o->dst;
        if (l->n == SPES_OPT_LIST_MAX)
            return spes_errf(SPES_EINVAL, "%s: given more than %d times", flag, SPES_OPT_LIST_MAX);
        l->v[l->n++] = val;
        return 0;
    }
    default: *(int *)o->dst = 1; return 0;
    }
}

static const spes_opt *find_long(const spes_opt *opts, const char *name, size_t len)
{
    for (const spes_opt *o = opts; o && o->name; o++)
        if (strlen(o->name) == len && !strncmp(o->name, name, len))
            return o;
    return NULL;
}

static const spes_opt *find_letter(const spes_opt *opts, char c)
{
    for (const spes_opt *o = opts; o && o->name; o++)
        if (o->letter && o->letter == c)
            return o;
    return NULL;
}

int spes_opts_parse(const spes_opt_cmd *cmd, int argc, char **argv, const char **pos, int *npos)
{
    int n = 0, rc, only_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos || a[0] != '-' || !a[1]) {
            if (n >= cmd->max_pos)
                return spes_errf(SPES_EINVAL, "unexpected argument '%s'", a);
            pos[n++] = a;
            continue;
        }
        if (!strcmp(a, "--")) {
            only_pos = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return SPES_OPTS_HELP;
        const spes_opt *o;
        const char *val = NULL;
        if (a[1] == '-') {
            const char *eq = strchr(a + 2, '=');
            o = find_long(cmd->opts, a + 2, eq ? (size_t)(eq - a - 2) : strlen(a + 2));
            if (eq && o && o->kind == SPES_OPT_FLAG)
                return spes_errf(SPES_EINVAL, "--%s: takes no value", o->name);
            val = eq ? eq + 1 : NULL;
        } else {
            o = a[2] ? NULL : find_letter(cmd->opts, a[1]);
        }
        if (!o)
            return spes_errf(SPES_EINVAL, "unknown option '%s'", a);
        if (o->kind != SPES_OPT_FLAG && !val) {
            if (i + 1 >= argc)
                return spes_errf(SPES_EINVAL, "--%s: needs a value", o->name);
            val = argv[++i];
        }
        if ((rc = set_value(o, val)) != 0)
            return rc;
    }
    if (n < cmd->min_pos)
        return spes_errf(SPES_EINVAL, "expected %s%d argument%s after the options (%s)",
                         cmd->min_pos == cmd->max_pos ? "" : "at least ", cmd->min_pos,
                         cmd->min_pos == 1 ? "" : "s", cmd->synopsis ? cmd->synopsis : "see --help");
    if (npos)
        *npos = n;
    return 0;
}

void spes_opts_usage(const spes_opt_cmd *cmd, FILE *fp)
{
    fprintf(fp, "usage: %s %s\n", cmd->name, cmd->synopsis ? cmd->synopsis : "[options]");
    if (cmd->opts && cmd->opts->name)
        fprintf(fp, "options:\n");
    for (const spes_opt *o = cmd->opts; o && o->name; o++) {
        char head[64];
        int k = o->letter ? snprintf(head, sizeof head, "-%c, --%s", o->letter, o->name)
                          : snprintf(head, sizeof head, "--%s", o->name);
        if (o->kind != SPES_OPT_FLAG && k > 0 && (size_t)k < sizeof head)
            snprintf(head + k, sizeof head - (size_t)k, " %s", o->arg ? o->arg : "VALUE");
        fprintf(fp, "  %-22s %s\n", head, o->help ? o->help : "");
    }
    if (cmd->notes)
        fprintf(fp, "%s", cmd->notes);
}
