/* parallel.h: a fixed-size worker pool for data-parallel loops.
 * The split of [0, n) into chunks depends only on n and the thread count, so
 * results are bit-identical run to run for a fixed thread count. One caller
 * at a time: the pool is owned by one thread (the trainer). */
#ifndef SPES_CORE_PARALLEL_H
#define SPES_CORE_PARALLEL_H

#include <stddef.h>

typedef struct spes_pool spes_pool;

/* spes_range_fn processes items [begin, end) on worker tid (0 = caller). */
typedef void (*spes_range_fn)(void *ctx, size_t begin, size_t end, int tid);

/* spes_pool_alloc starts nthreads-1 workers (the caller is thread 0). */
int spes_pool_alloc(spes_pool **out, int nthreads);
/* spes_pool_free stops and joins the workers. */
void spes_pool_free(spes_pool *p);
/* spes_pool_threads returns the thread count, caller included. */
int spes_pool_threads(const spes_pool *p);
/* spes_parallel_for runs fn over [0, n) in nthreads contiguous chunks and
 * returns when all are done; p may be NULL (runs inline on the caller). */
void spes_parallel_for(spes_pool *p, size_t n, spes_range_fn fn, void *ctx);

#endif
