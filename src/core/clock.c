/* clock.c: see clock.h. */
#include "core/clock.h"

static uint64_t ms_of(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t spes_now_ms(void)
{
    return ms_of(CLOCK_REALTIME);
}

uint64_t spes_mono_ms(void)
{
    return ms_of(CLOCK_MONOTONIC);
}

double spes_mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int spes_cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    int rv = pthread_condattr_init(&ca);
    if (rv == 0)
        rv = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (rv == 0)
        rv = pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
    return rv;
}

void spes_mono_deadline(struct timespec *ts, long ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}
