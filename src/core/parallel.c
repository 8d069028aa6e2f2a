/* parallel.c: condition-variable worker pool; the caller works as thread 0. */
#include "core/parallel.h"
#include "core/error.h"

#include <pthread.h>
#include <stdlib.h>

struct spes_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    unsigned long gen;
    int pending;
    int stop;
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

static void *worker(void *arg)
{
    worker_arg wa = *(worker_arg *)arg;
    free(arg);
    spes_pool *p = wa.p;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->gen == seen && !p->stop)
            pthread_cond_wait(&p->go, &p->mu);
        if (p->stop)
            break;
        seen = p->gen;
        spes_range_fn fn = p->fn;
        void *ctx = p->ctx;
        size_t b, e;
        chunk(p->items, p->n, wa.tid, &b, &e);
        pthread_mutex_unlock(&p->mu);
        if (b < e)
            fn(ctx, b, e, wa.tid);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
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
    p->stop = 1;
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
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->items = n;
    p->pending = p->n - 1;
    p->gen++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    size_t b, e;
    chunk(n, p->n, 0, &b, &e);
    if (b < e)
        fn(ctx, b, e, 0);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
