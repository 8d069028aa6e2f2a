/* deadline.c: request deadlines on the monotonic clock, for nng aios.
 *
 * nng 1.5.2 as Debian builds it keeps its clock and its timers on
 * CLOCK_REALTIME: nng_clock() is wall-clock milliseconds, and its condition
 * variables wait on the wall clock (its build finds no
 * pthread_condattr_setclock). A step of the wall clock (NTP at boot, an
 * operator's `date -s`) therefore fires every pending nng timeout at once when
 * it goes forward, and delays every pending one by the step when it goes back:
 * a blob fetch in flight fails "Timed out" and its peer is dropped, or a
 * request to a dead peer waits an hour. So spes hands nng no timeout for a
 * request. spes__deadline_arm puts the aio on one list with a deadline on the
 * monotonic clock, and one thread aborts it with NNG_ETIMEDOUT once that has
 * passed. An expired entry stays on the list, and is aborted again on every
 * tick, until its owner disarms it: an abort finds nothing to cancel while the
 * aio is between two operations (a request sent, its reply not yet awaited),
 * and the next operation must not then wait for ever.
 *
 * The thread also notices steps of the wall clock (the wall clock moving
 * unlike the monotonic one between two ticks) and counts them
 * (spes__clock_steps): a dialer that was waiting to redial when the clock went
 * back waits on an nng timer that now lies the step ahead, and its owner
 * restarts it (net.c). */
#include "net/net_internal.h"

#include "core/clock.h"
#include "core/log.h"

#include <pthread.h>
#include <stdlib.h>

#define TICK_MS 50
#define STEP_MS 2000 /* wall minus monotonic moving by more than this is a step */

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv;
static spes__deadline *head; /* armed entries, unsorted: a process has a few hundred at most */
static int started;
static unsigned long steps;

static int64_t wall_minus_mono(void)
{
    return (int64_t)spes_now_ms() - (int64_t)spes_mono_ms();
}

static void *deadline_main(void *arg)
{
    (void)arg;
    int64_t offset = wall_minus_mono();
    pthread_mutex_lock(&mu);
    for (;;) {
        uint64_t now = spes_mono_ms();
        uint64_t next = now + 1000; /* wake at least every second to watch the wall clock */
        for (spes__deadline *d = head; d; d = d->next) {
            if (d->at <= now) {
                d->expired = 1;
                nng_aio_abort(d->aio, NNG_ETIMEDOUT); /* no-op when no operation is running */
                if (next > now + TICK_MS)
                    next = now + TICK_MS; /* again soon, until its owner disarms it */
            } else if (d->at < next) {
                next = d->at;
            }
        }
        int64_t off = wall_minus_mono();
        if (off - offset > STEP_MS || offset - off > STEP_MS) {
            int64_t d = off - offset;
            steps++;
            log_warnx("the wall clock stepped by %+lld s; request deadlines run on the monotonic clock, "
                      "and connections waiting to redial are restarted",
                      (long long)((d >= 0 ? d + 500 : d - 500) / 1000));
        }
        offset = off;
        struct timespec ts;
        spes_mono_deadline(&ts, (long)(next - now));
        pthread_cond_timedwait(&cv, &mu, &ts);
    }
    return NULL;
}

static void start_thread(void)
{
    pthread_t t;
    pthread_attr_t at;
    spes_cond_init_mono(&cv);
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    started = pthread_create(&t, &at, deadline_main, NULL) == 0;
    pthread_attr_destroy(&at);
    if (!started)
        log_warnx("cannot start the request deadline thread: requests fall back on nng's timeouts");
}

void spes__deadline_arm(spes__deadline *d, nng_aio *aio, int timeout_ms)
{
    pthread_once(&once, start_thread);
    if (!started) { /* nng's wall-clock timeout is better than none */
        nng_aio_set_timeout(aio, timeout_ms);
        d->aio = NULL;
        return;
    }
    nng_aio_set_timeout(aio, NNG_DURATION_INFINITE);
    pthread_mutex_lock(&mu);
    d->aio = aio;
    d->at = spes_mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    d->expired = 0;
    d->prev = NULL;
    d->next = head;
    if (head)
        head->prev = d;
    head = d;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
}

int spes__deadline_disarm(spes__deadline *d)
{
    if (!d->aio)
        return 0;
    pthread_mutex_lock(&mu);
    if (d->prev)
        d->prev->next = d->next;
    else
        head = d->next;
    if (d->next)
        d->next->prev = d->prev;
    int expired = d->expired;
    d->aio = NULL;
    d->prev = d->next = NULL;
    pthread_mutex_unlock(&mu);
    return expired;
}

unsigned long spes__clock_steps(void)
{
    pthread_once(&once, start_thread);
    pthread_mutex_lock(&mu);
    unsigned long n = steps;
    pthread_mutex_unlock(&mu);
    return n;
}
