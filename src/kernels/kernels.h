/* kernels.h: the tensor kernels of the model, forward and backward, in fp32.
 * Conventions (llm.c style): op_forward(out, in..., dims) and
 * op_backward(dinp..., dout, in..., dims); every backward ACCUMULATES (+=) into
 * its input gradients, so callers zero them first. Rows are tokens.
 * Threads: kernels that take a pool split rows (or columns) with
 * spes_parallel_for, whose partition depends only on the size and the thread
 * count, and reduce per-thread partial sums in thread order: results are
 * bit-identical run to run for a fixed thread count. Kernels never allocate;
 * scratch comes from the caller. Big matrix products go through cblas_sgemm. */
#ifndef SPES_KERNELS_KERNELS_H
#define SPES_KERNELS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "core/parallel.h"

/* spes_matmul computes C = alpha * op(A) op(B) + beta * C, row-major, with
 * op(A) (m,k), op(B) (k,n), C (m,n) and leading dimensions lda, ldb, ldc. */
void spes_matmul(float *c, int ldc, const float *a, int lda, int ta, const float *b, int ldb, int tb, int m,
                 int n, int k, float alpha, float beta);

/* spes_matmul_pool is spes_matmul split over the pool's threads by rows of C
 * (or by columns when C has few rows), each block one single-threaded sgemm:
 * no split of k (deterministic for a fixed thread count). Call it between
 * spes_blas_threads_push and _pop when the pool has several threads. */
void spes_matmul_pool(spes_pool *pool, float *c, int ldc, const float *a, int lda, int ta, const float *b,
                      int ldb, int tb, int m, int n, int k, float alpha, float beta);

/* spes_blas_threads_push sets OpenBLAS to one thread while our own pool runs
 * sgemm inside parallel tasks and returns the previous count; _pop restores it. */
int spes_blas_threads_push(void);
void spes_blas_threads_pop(int saved);

/* spes_blas_reexec_if_generic fixes a slow OpenBLAS start: when OpenBLAS's
 * DYNAMIC_ARCH did not recognise the CPU (it then runs its SSE3 "Prescott"
 * kernels, 5x slower here) and OPENBLAS_CORETYPE is unset, it sets
 * OPENBLAS_CORETYPE (SkylakeX with AVX-512, Haswell with AVX2) and re-executes
 * /proc/self/exe with argv. Call it first thing in main(); it returns 0 when
 * nothing needed fixing, or a negative code if the re-exec failed. */
int spes_blas_reexec_if_generic(char **argv);

/* spes_blas_corename returns OpenBLAS's kernel family name (for logs and benches). */
const char *spes_blas_corename(void);

/* spes_copy_pool copies n floats (src NULL: zeroes them) in one block per thread. */
void spes_copy_pool(spes_pool *pool, float *dst, const float *src, size_t n);

/* spes_embedding_forward copies rows: out (N,C) = wte[tokens[i]] (V,C). */
void spes_embedding_forward(float *out, const int32_t *tokens, const float *wte, int N, int C,
                            spes_pool *pool);
/* spes_embedding_backward adds dout rows into dwte rows (threads split C). */
void spes_embedding_backward(float *dwte, const float *dout, const int32_t *tokens, int N, int C,
                             spes_pool *pool);

/* spes_rmsnorm_forward: out (N,C) = x * rstd * w with rstd (N) = 1/sqrt(mean(x^2)+eps).
 * out may equal x. */
void spes_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int N, int C, float eps,
                          spes_pool *pool);
/* spes_rmsnorm_apply recomputes out from x and a stored rstd (same bits as forward). */
void spes_rmsnorm_apply(float *out, const float *x, const float *rstd, const float *w, int N, int C,
                        spes_pool *pool);
/* spes_rmsnorm_backward: dx (N,C) += d/dx, dw (C) += d/dw (NULL to skip);
 * dx may equal dout (then it is overwritten, not accumulated); partial is
 * scratch of 2*nthreads*C floats. */
void spes_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                           const float *rstd, int N, int C, float *partial, spes_pool *pool);
/* The _ld forms take rows ld floats apart (ld >= C) in every (N, C) operand: the
 * model normalises q and k in place inside rows of [q | k | v]. */
void spes_rmsnorm_forward_ld(float *out, float *rstd, const float *x, int ld, const float *w, int N, int C,
                             float eps, spes_pool *pool);
void spes_rmsnorm_backward_ld(float *dx, float *dw, const float *dout, const float *x, int ld, const float *w,
                              const float *rstd, int N, int C, float *partial, spes_pool *pool);

/* spes_rope_table fills cos/sin (T, D/2) for positions 0..T-1, inv_freq = theta^(-2j/D). */
void spes_rope_table(float *cosv, float *sinv, int T, int D, double theta);
/* spes_rope_forward rotates rows of x (T rows of D, row stride ld) in place,
 * rotate_half form; spes_rope_backward applies the inverse rotation to a gradient. */
void spes_rope_forward(float *x, int ld, const float *cosv, const float *sinv, int T, int D);
void spes_rope_backward(float *dx, int ld, const float *cosv, const float *sinv, int T, int D);

/* SPES_KERNEL_MAX_E bounds the expert count of the router kernels. */
#define SPES_KERNEL_MAX_E 256

/* SPES_ATTN_RB is the query row block of the attention kernels. */
#define SPES_ATTN_RB 64

/* spes_attn_head_forward: causal softmax attention of one head, q/k/v/out
 * (T,D) with row strides ldq/ldk/ldv/ldo; lse (T) keeps each row's
 * log-sum-exp of the scaled scores; scratch holds RB*T floats. */
void spes_attn_head_forward(float *out, int ldo, float *lse, const float *q, int ldq, const float *k, int ldk,
                            const float *v, int ldv, int T, int D, float *scratch);
/* spes_attn_head_backward recomputes the probabilities row-block-wise from
 * q, k and lse: dq (T,D) is OVERWRITTEN, dk and dv accumulate; scratch holds
 * 2*RB*T + RB floats. */
void spes_attn_head_backward(float *dq, int lddq, float *dk, int lddk, float *dv, int lddv, const float *dout,
                             int lddo, const float *q, int ldq, const float *k, int ldk, const float *v,
                             int ldv, const float *out, int ldo, const float *lse, int T, int D,
                             float *scratch);

/* spes_swiglu_forward: h (n) = silu(g) * u. */
void spes_swiglu_forward(float *h, const float *g, const float *u, size_t n);
/* spes_swiglu_backward is the backward of y = wt * (silu(g) * u) . W for one
 * routed row, in one pass. In: g, u (n), dh = d(loss)/d(h) before the routing
 * weight wt. Out: h = wt * silu(g) * u (for W's gradient), g and u OVERWRITTEN
 * with d(loss)/dg and d(loss)/du (of the weighted row, dh * wt), and the return
 * value <dh, silu(g) * u> = d(loss)/d(wt), summed in spes__dot's fixed lanes.
 * h is bit for bit wt times spes_swiglu_forward's. */
float spes_swiglu_backward(float *h, float *g, float *u, const float *dh, float wt, size_t n);

/* spes_softmax_row: p (n) = softmax(x), returns logsumexp(x) (double internally). */
float spes_softmax_row(float *p, const float *x, int n);

/* spes_crossentropy_forward: per-row losses (N) = lse(logits) - logits[target];
 * logits (N,V); rows processed in parallel. */
void spes_crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V,
                               spes_pool *pool);
/* spes_crossentropy_backward: dlogits (N,V) = scale * (softmax(logits) - onehot);
 * dlogits may equal logits. */
void spes_crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets, float scale,
                                int N, int V, spes_pool *pool);

/* spes_router_forward: per token, probs (N,E) = softmax(logits), rlse (N) its
 * log-sum-exp, topi/topw (N,K) the K largest probs (ties: lower index first),
 * renormalised to sum 1 if norm. */
void spes_router_forward(float *probs, float *rlse, int32_t *topi, float *topw, const float *logits, int N,
                         int E, int K, int norm, spes_pool *pool);
/* spes_router_backward: dlogits (N,E) (overwritten) from dtopw (N,K), the
 * per-(expert) load-balance coefficient lbc (E) (d loss / d p[t][e], same for
 * every token) and the z-loss coefficient zc (d loss / d lse[t] = zc * lse[t]). */
void spes_router_backward(float *dlogits, const float *dtopw, const float *probs, const float *rlse,
                          const int32_t *topi, const float *lbc, float zc, int N, int E, int K, int norm,
                          spes_pool *pool);

#endif
