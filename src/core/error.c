/* error.c: error names and the per-thread last-error message buffer. */
#include "core/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char errbuf[1024];

const char *spes_strerror(int err)
{
    switch (err) {
    case SPES_OK: return "ok";
    case SPES_ENOMEM: return "out of memory";
    case SPES_EINVAL: return "invalid argument";
    case SPES_EIO: return "I/O error";
    case SPES_EFORMAT: return "malformed input";
    case SPES_ERANGE: return "value out of range";
    case SPES_ENOENT: return "not found";
    case SPES_EEXIST: return "already exists";
    case SPES_ESTATE: return "invalid state";
    case SPES_ENET: return "network error";
    case SPES_EAUTH: return "not authorised";
    case SPES_ETIMEDOUT: return "timed out";
    case SPES_EINTR: return "interrupted";
    case SPES_EVERSION: return "unsupported protocol version";
    default: return "unknown error";
    }
}

int spes_errf(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof errbuf, fmt, ap);
    va_end(ap);
    return err;
}

int spes_errf_errno(int err, const char *fmt, ...)
{
    int saved = errno;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(errbuf, sizeof errbuf, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof errbuf)
        snprintf(errbuf + n, sizeof errbuf - (size_t)n, ": %s", strerror(saved));
    return err;
}

const char *spes_errmsg(void)
{
    return errbuf[0] ? errbuf : "no error message recorded";
}

void spes_errclear(void)
{
    errbuf[0] = '\0';
}
