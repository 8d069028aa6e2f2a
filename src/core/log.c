/* log.c: one mutex-protected line per call, so threads never interleave. */
#include "core/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static int log_level = SPES_LOG_INFO;
static char log_prefix[64];
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

void spes_log_set_level(int level)
{
    log_level = level;
}

int spes_log_parse_level(const char *name)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

void spes_log_set_prefix(const char *prefix)
{
    snprintf(log_prefix, sizeof log_prefix, "%s", prefix ? prefix : "");
}

void spes_log(int level, int errno_too, const char *fmt, ...)
{
    static const char *tags[] = {"error", "warn", "info", "debug"};
    if (level > log_level)
        return;
    int saved = errno;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (errno_too && n >= 0 && (size_t)n < sizeof line)
        snprintf(line + n, sizeof line - (size_t)n, ": %s", strerror(saved));
    pthread_mutex_lock(&log_mu);
    if (log_prefix[0])
        fprintf(stderr, "%s %s: %s\n", log_prefix, tags[level], line);
    else
        fprintf(stderr, "%s: %s\n", tags[level], line);
    pthread_mutex_unlock(&log_mu);
    errno = saved;
}
