/* parallel.c: a worker pool; the caller works as thread 0. A step of training
 * issues thousands of short parallel loops, so waking a sleeping thread for
 * each (a futex round trip, tens of microseconds on a virtual machine) would
 * cost more than some loops take. Workers and the caller therefore spin for a
 * short while (SPIN_NS) on an atomic generation counter before they sleep on
 * a condition variable; an idle pool (a daemon between rounds) sleeps. */
#include "core/parallel.h"
#include "core/error.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* how long a thread spins for the next loop (or the end of this one) before it sleeps */
#define SPIN_NS 100000L

struct spes_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    atomic_ulong gen;   /* bumped (release) after fn/ctx/items are set */
    atomic_int pending; /* workers still running the current loop */
    atomic_int stop;
    int sleepers;       /* workers waiting on go (under mu) */
    int caller_waiting; /* the caller waits on done (under mu) */
    spes_range_fn fn;
    void *ctx;
    size_t items;
};

typedef struct {
    spes_pool *p;
    int tid;
} worker_arg;

static void chunk(size_t n, int parts, int i, size_t *b, size_t *e)
{
    size_t q = n / (size_t)parts, r = n % (size_t)parts;
    *b = (size_t)i * q + ((size_t)i < r ? (size_t)i : r);
    *e = *b + q + ((size_t)i < r ? 1 : 0);
}

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* spin_spent is called on every spin iteration i: it pauses, and says (1) when
 * SPIN_NS have passed since *t0 was first set (the clock is read every 64). */
static int spin_spent(unsigned i, long *t0)
{
    CPU_RELAX();
    if ((i & 63) != 63)
        return 0;
    long t = now_ns();
    if (!*t0)
        *t0 = t;
    return t - *t0 > SPIN_NS;
}

/* spin_until_changed spins while gen == seen (and not stopping), up to SPIN_NS;
 * returns 1 when it saw a change. */
static int spin_until_changed(spes_pool *p, unsigned long seen)
{
    long t0 = 0;
    for (unsigned i = 0; !spin_spent(i, &t0); i++)
        if (atomic_load_explicit(&p->gen, memory_order_acquire) != seen || atomic_load(&p->stop))
            return 1;
    return 0;
}

static void *worker(void *arg)
{
    worker_arg wa = *(worker_arg *)arg;
    free(arg);
    spes_pool *p = wa.p;
    unsigned long seen = 0;
    for (;;) {
        if (!spin_until_changed(p, seen)) {
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->go, &p->mu);
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            break;
        seen = atomic_load_explicit(&p->gen, memory_order_acquire);
        size_t b, e;
        chunk(p->items, p->n, wa.tid, &b, &e);
        if (b < e)
            p->fn(p->ctx, b, e, wa.tid);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            if (p->caller_waiting)
                pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

int spes_pool_alloc(spes_pool **out, int nthreads)
{
    if (nthreads < 1)
        nthreads = 1;
    spes_pool *p = calloc(1, sizeof *p);
    if (!p)
        return SPES_ENOMEM;
    p->n = nthreads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->stop, 0);
    p->threads = calloc((size_t)nthreads, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return SPES_ENOMEM;
    }
    for (int i = 1; i < nthreads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) {
            wa->p = p;
            wa->tid = i;
        }
        if (!wa || pthread_create(&p->threads[i], NULL, worker, wa) != 0) {
            free(wa);
            p->n = i; /* only workers 1..i-1 exist */
            spes_pool_free(p);
            return spes_errf(SPES_ENOMEM, "cannot start worker thread %d", i);
        }
    }
    *out = p;
    return 0;
}

void spes_pool_free(spes_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p);
}

int spes_pool_threads(const spes_pool *p)
{
    return p ? p->n : 1;
}

void spes_parallel_for(spes_pool *p, size_t n, spes_range_fn fn, void *ctx)
{
    if (n == 0)
        return;
    if (!p || p->n == 1 || n == 1) {
        fn(ctx, 0, n, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->items = n;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    /* a worker that decided to sleep did so under mu, having seen the old gen */
    pthread_mutex_lock(&p->mu);
    if (p->sleepers)
        pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    size_t b, e;
    chunk(n, p->n, 0, &b, &e);
    if (b < e)
        fn(ctx, b, e, 0);
    long t0 = 0;
    for (unsigned i = 0; atomic_load_explicit(&p->pending, memory_order_acquire) > 0; i++)
        if (spin_spent(i, &t0))
            break;
    if (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) {
        pthread_mutex_lock(&p->mu);
        p->caller_waiting = 1;
        while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0)
            pthread_cond_wait(&p->done, &p->mu);
        p->caller_waiting = 0;
        pthread_mutex_unlock(&p->mu);
    }
}
