/* sgemm.c: measures OpenBLAS sgemm GFLOP/s on this machine, the yardstick for
 * the model-FLOPs utilisation that bench/run reports. Each shape runs seven
 * windows of 0.2 s; it prints the median window (the statistic bench/run takes
 * for spesd's steps too) and the best one, as one JSON line.
 * usage: bench_sgemm THREADS */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/error.h"
#include "kernels/kernels.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* GFLOP/s of C(M,N) = A(M,K) B(K,N) in seven windows: *best and the median (returned) */
static double measure(int M, int N, int K, double *best)
{
    float *a = malloc(sizeof(float) * (size_t)M * K), *b = malloc(sizeof(float) * (size_t)K * N);
    float *c = malloc(sizeof(float) * (size_t)M * N);
    for (size_t i = 0; i < (size_t)M * K; i++)
        a[i] = (float)(i % 13) * 0.01f;
    for (size_t i = 0; i < (size_t)K * N; i++)
        b[i] = (float)(i % 7) * 0.01f;
    double g[7];
    for (int rep = 0; rep < 7; rep++) {
        double t0 = now();
        int inner = 0;
        do {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
            inner++;
        } while (now() - t0 < 0.2);
        g[rep] = 2.0 * M * N * K * inner / (now() - t0) / 1e9;
    }
    free(a);
    free(b);
    free(c);
    qsort(g, 7, sizeof g[0], cmp_double);
    *best = g[6];
    return g[3];
}

int main(int argc, char **argv)
{
    if (spes_blas_reexec_if_generic(argv) != 0)
        fprintf(stderr, "bench_sgemm: warning: %s\n", spes_errmsg());
    printf("{\"openblas_core\": \"%s\", ", openblas_get_corename());
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    openblas_set_num_threads(threads);
    double sq_best, model_best;
    double sq = measure(1024, 1024, 1024, &sq_best);
    double model = measure(2048, 512, 256, &model_best);
    printf("\"threads\": %d, \"sgemm_1024_gflops\": %.2f, \"sgemm_2048x512x256_gflops\": %.2f, "
           "\"sgemm_1024_best_gflops\": %.2f, \"sgemm_2048x512x256_best_gflops\": %.2f}\n",
           threads, sq, model, sq_best, model_best);
    return 0;
}
