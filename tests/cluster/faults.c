/* tests/cluster/faults.c: an LD_PRELOAD library that brings a daemon the
 * faults of a real machine, for the cluster test's scenarios.
 *
 * A slow disk: when the file named by SPES_TEST_STALL_FILE exists and the
 * descriptor being synced is a file whose path contains SPES_TEST_STALL_MATCH,
 * the fsync sleeps for the milliseconds written in the trigger file, which it
 * removes first (a stall happens once per trigger).
 *
 * A stepped wall clock: while the file named by SPES_TEST_CLOCK_FILE exists,
 * CLOCK_REALTIME reads the seconds written in it later (negative: earlier),
 * as after an NTP step or an operator's `date -s`. Other clocks are untouched.
 * A timed wait on a condition variable of the wall clock (nng's timer threads
 * wait so) takes its deadline on that stepped clock too: it waits as long as it
 * would on a machine whose clock really stepped, instead of an hour more or
 * less (the kernel's clock has not moved). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void maybe_stall(int fd)
{
    const char *trigger = getenv("SPES_TEST_STALL_FILE"), *match = getenv("SPES_TEST_STALL_MATCH");
    if (!trigger || !match || access(trigger, F_OK) != 0)
        return;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return;
    path[n] = '\0';
    if (!strstr(path, match))
        return;
    FILE *f = fopen(trigger, "r");
    long ms = 0;
    if (!f)
        return;
    if (fscanf(f, "%ld", &ms) != 1)
        ms = 0;
    fclose(f);
    if (unlink(trigger) != 0) /* another thread took this trigger */
        return;
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

typedef int (*sync_fn)(int);

static int stalled_sync(sync_fn *real, const char *name, int fd)
{
    if (!*real)
        *real = (sync_fn)dlsym(RTLD_NEXT, name);
    maybe_stall(fd);
    return (*real)(fd);
}

int fsync(int fd)
{
    static sync_fn real;
    return stalled_sync(&real, "fsync", fd);
}

int fdatasync(int fd)
{
    static sync_fn real;
    return stalled_sync(&real, "fdatasync", fd);
}

/* clock_offset is the step in force: the seconds in SPES_TEST_CLOCK_FILE, 0 without it. */
static long long clock_offset(void)
{
    const char *file = getenv("SPES_TEST_CLOCK_FILE");
    FILE *f = file ? fopen(file, "r") : NULL;
    long long off = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%lld", &off) != 1)
        off = 0;
    fclose(f);
    return off;
}

int clock_gettime(clockid_t id, struct timespec *ts)
{
    static int (*real)(clockid_t, struct timespec *);
    if (!real)
        real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(id, ts);
    if (rc == 0 && id == CLOCK_REALTIME)
        ts->tv_sec += (time_t)clock_offset();
    return rc;
}

int pthread_cond_timedwait(pthread_cond_t *cv, pthread_mutex_t *mu, const struct timespec *at)
{
    static int (*real)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
    if (!real)
        real = (int (*)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *))dlsym(
            RTLD_NEXT, "pthread_cond_timedwait");
    /* glibc keeps a condition variable's clock in bit 1 of __wrefs (0: CLOCK_REALTIME) */
    long long off = (cv->__data.__wrefs & 2) == 0 ? clock_offset() : 0;
    if (!off)
        return real(cv, mu, at);
    struct timespec kernel = *at; /* the deadline on the clock the kernel keeps */
    kernel.tv_sec -= (time_t)off;
    return real(cv, mu, &kernel);
}
