/* cli.c: option-value parsing with messages that name the option. */
#include "daemon/cli.h"
#include "core/error.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>

int spes_cli_long(const char *opt, const char *val, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(val, &end, 10);
    if (end == val || *end || errno)
        return spes_errf(SPES_EINVAL, "%s \"%s\" is not an integer", opt, val);
    if (v < lo || v > hi)
        return spes_errf(SPES_ERANGE, "%s %ld is outside [%ld, %ld]", opt, v, lo, hi);
    *out = v;
    return 0;
}

int spes_cli_bad_option(char **argv, int ind)
{
    const char *arg = argv[ind - 1];
    if (optopt)
        return spes_errf(SPES_EINVAL, "option \"%s\" needs a value", arg);
    return spes_errf(SPES_EINVAL, "unknown option \"%s\"", arg);
}
