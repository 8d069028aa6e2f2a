/* sgemm.c: measures OpenBLAS sgemm GFLOP/s on this machine, the yardstick for
 * the model-FLOPs utilisation that bench/run reports. Prints one JSON line.
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

/* best GFLOP/s of C(M,N) = A(M,K) B(K,N) over a few repetitions */
static double measure(int M, int N, int K)
{
    float *a = malloc(sizeof(float) * (size_t)M * K), *b = malloc(sizeof(float) * (size_t)K * N);
    float *c = malloc(sizeof(float) * (size_t)M * N);
    for (size_t i = 0; i < (size_t)M * K; i++)
        a[i] = (float)(i % 13) * 0.01f;
    for (size_t i = 0; i < (size_t)K * N; i++)
        b[i] = (float)(i % 7) * 0.01f;
    double best = 0;
    for (int rep = 0; rep < 7; rep++) {
        double t0 = now();
        int inner = 0;
        do {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
            inner++;
        } while (now() - t0 < 0.2);
        double g = 2.0 * M * N * K * inner / (now() - t0) / 1e9;
        if (g > best)
            best = g;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

int main(int argc, char **argv)
{
    if (spes_blas_reexec_if_generic(argv) != 0)
        fprintf(stderr, "bench_sgemm: warning: %s\n", spes_errmsg());
    printf("{\"openblas_core\": \"%s\", ", openblas_get_corename());
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    openblas_set_num_threads(threads);
    double sq = measure(1024, 1024, 1024);
    double model = measure(2048, 512, 256);
    printf("\"threads\": %d, \"sgemm_1024_gflops\": %.2f, \"sgemm_2048x512x256_gflops\": %.2f}\n", threads, sq,
           model);
    return 0;
}
