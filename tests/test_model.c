/* test_model.c: the MoE model against finite differences of its own loss
 * (every tensor, all loss terms, norm_topk_prob on/off, tied/untied, GQA),
 * frozen columns, determinism, inference = training forward, refusals. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "model/model_priv.h"

static spes_model_config tiny(int nkv, int norm, int tied)
{
    spes_model_config c = {.vocab_size = 13,
                           .hidden_size = 16,
                           .intermediate_size = 12,
                           .num_hidden_layers = 2,
                           .num_attention_heads = 4,
                           .num_key_value_heads = nkv,
                           .num_experts = 4,
                           .num_experts_per_tok = 2,
                           .rms_norm_eps = 1e-5,
                           .rope_theta = 10000.0,
                           .norm_topk_prob = norm,
                           .tie_word_embeddings = tied,
                           .max_position_embeddings = 64};
    return c;
}

static void make_batch(int32_t *tok, int32_t *tgt, int n, int V, uint64_t seed)
{
    spes_rng r;
    spes_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) {
        tok[i] = (int32_t)(spes_rng_u64(&r) % (uint64_t)V);
        tgt[i] = (int32_t)(spes_rng_u64(&r) % (uint64_t)V);
    }
}

/* scale_weights makes gradients large enough for float finite differences. */
static void scale_weights(spes_model *m, uint64_t seed)
{
    spes_model_init_weights(m, seed);
    spes_rng r;
    spes_rng_seed(&r, seed + 1);
    for (int i = 0; i < m->layout.ntensors; i++) {
        const spes_tensor *t = &m->layout.tensors[i];
        float *w = m->params + t->offset;
        for (size_t j = 0; j < t->numel; j++)
            w[j] = t->ndim == 1 ? (float)(1.0 + 0.2 * spes_rng_normal(&r)) : w[j] * 3.0f;
    }
}

enum { B = 2, T = 5 };
static const spes_loss_opts OPTS = {0.3, 0.05, 0.8};

static const char *cur_name = "";

static double loss_at(spes_model *m, const int32_t *tok, const int32_t *tgt, int32_t *topi0)
{
    ck_assert_int_eq(spes_model_forward(m, tok, tgt, B, T, &OPTS), 0);
    size_t n = (size_t)m->cfg.num_hidden_layers * B * T * m->cfg.num_experts_per_tok;
    if (topi0)
        ck_assert_msg(memcmp(topi0, m->priv->topi, n * sizeof(int32_t)) == 0, "routing flipped (%s)",
                      cur_name);
    return m->loss;
}

/* routing_gap is the smallest gap between the K-th and (K+1)-th router
 * probability over all tokens and layers of the last forward. */
static double routing_gap(spes_model *m)
{
    int E = m->cfg.num_experts, K = m->cfg.num_experts_per_tok;
    double gap = 1.0;
    for (int i = 0; i < m->cfg.num_hidden_layers * B * T; i++) {
        const float *p = m->priv->probs + (size_t)i * E;
        const int32_t *ti = m->priv->topi + (size_t)i * K;
        float kth = p[ti[K - 1]], next = -1.0f;
        for (int e = 0; e < E; e++) {
            int in = 0;
            for (int k = 0; k < K; k++)
                in |= ti[k] == e;
            if (!in && p[e] > next)
                next = p[e];
        }
        if (kth - next < gap)
            gap = kth - next;
    }
    return gap;
}

/* fd_model checks each tensor's gradient along a random direction and at 2 elements. */
static void fd_model(spes_model_config c, const uint8_t *trained)
{
    spes_model *m;
    ck_assert_int_eq(spes_model_alloc(&m, &c, trained, B, T, 1, NULL), 0);
    int32_t tok[B * T], tgt[B * T];
    make_batch(tok, tgt, B * T, c.vocab_size, 3);
    /* pick weights whose routing is far from ties, so +-h never flips it */
    uint64_t best = 0;
    double bestgap = -1.0;
    for (uint64_t seed = 1; seed <= 100; seed++) {
        scale_weights(m, seed);
        loss_at(m, tok, tgt, NULL);
        double g = routing_gap(m);
        if (g > bestgap) {
            bestgap = g;
            best = seed;
        }
    }
    ck_assert_msg(bestgap > 0.01, "gap %g", bestgap);
    fprintf(stderr, "fd: routing gap %.4f\n", bestgap);
    scale_weights(m, best);
    loss_at(m, tok, tgt, NULL);
    ck_assert(m->lb_loss > 0 && m->z_loss > 0);
    size_t nti = (size_t)c.num_hidden_layers * B * T * c.num_experts_per_tok;
    int32_t *topi0 = malloc(nti * sizeof(int32_t));
    memcpy(topi0, m->priv->topi, nti * sizeof(int32_t));
    spes_model_zero_grad(m);
    spes_model_backward(m);
    spes_rng r;
    spes_rng_seed(&r, 99);
    const float h = 1e-3f;
    for (int i = 0; i < m->layout.ntensors; i++) {
        const spes_tensor *t = &m->layout.tensors[i];
        float *g = spes_model_grad_of(m, t);
        if (t->column >= 0 && trained && !trained[t->column]) {
            ck_assert_ptr_null(g);
            continue;
        }
        ck_assert_ptr_nonnull(g);
        float *w = m->params + t->offset;
        cur_name = t->name;
        float *dir = malloc(t->numel * sizeof(float)), *keep = malloc(t->numel * sizeof(float));
        /* direction: unit gradient plus half a unit random vector */
        double gn = 0.0, rn = 0.0, gd = 0.0;
        for (size_t j = 0; j < t->numel; j++) {
            dir[j] = (float)spes_rng_normal(&r);
            gn += (double)g[j] * g[j];
            rn += (double)dir[j] * dir[j];
        }
        for (size_t j = 0; j < t->numel; j++) {
            dir[j] = (float)(g[j] / sqrt(gn + 1e-30) + 0.5 * dir[j] / sqrt(rn));
            gd += (double)g[j] * dir[j];
        }
        memcpy(keep, w, t->numel * sizeof(float));
        for (size_t j = 0; j < t->numel; j++)
            w[j] = keep[j] + h * dir[j];
        double lp = loss_at(m, tok, tgt, topi0);
        for (size_t j = 0; j < t->numel; j++)
            w[j] = keep[j] - h * dir[j];
        double lm = loss_at(m, tok, tgt, topi0);
        memcpy(w, keep, t->numel * sizeof(float));
        double num = (lp - lm) / (2.0 * h);
        ck_assert_msg(fabs(gd - num) <= 5e-4 + 2e-2 * fabs(num), "%s: direction %.6g vs fd %.6g", t->name, gd,
                      num);
        for (int s = 0; s < 2; s++) {
            size_t j = (size_t)(spes_rng_u64(&r) % t->numel);
            float k0 = w[j];
            w[j] = k0 + 2 * h;
            lp = loss_at(m, tok, tgt, topi0);
            w[j] = k0 - 2 * h;
            lm = loss_at(m, tok, tgt, topi0);
            w[j] = k0;
            num = (lp - lm) / (4.0 * h);
            ck_assert_msg(fabs(g[j] - num) <= 2e-4 + 3e-2 * fabs(num), "%s[%zu]: %.6g vs fd %.6g", t->name, j,
                          g[j], num);
        }
        free(dir);
        free(keep);
    }
    free(topi0);
    spes_model_free(m);
}

START_TEST(test_fd_untied_gqa)
{
    fd_model(tiny(2, 0, 0), NULL);
}
END_TEST

START_TEST(test_fd_tied_norm)
{
    fd_model(tiny(4, 1, 1), NULL);
}
END_TEST

START_TEST(test_fd_frozen_mqa)
{
    uint8_t tr[4] = {0, 1, 0, 1};
    fd_model(tiny(1, 1, 0), tr);
}
END_TEST

/* Frozen columns: no gradient memory, and (with lb_factor 1) the shared and
 * trained-column gradients are bit-identical to the all-trained model's. */
START_TEST(test_frozen_columns)
{
    spes_model_config c = tiny(2, 0, 0);
    uint8_t tr[4] = {1, 0, 0, 1};
    spes_model *a, *f;
    ck_assert_int_eq(spes_model_alloc(&a, &c, NULL, B, T, 1, NULL), 0);
    ck_assert_int_eq(spes_model_alloc(&f, &c, tr, B, T, 1, NULL), 0);
    ck_assert_uint_eq(f->grads_numel, a->layout.shared_numel + 2 * a->layout.column_numel);
    ck_assert_uint_eq(a->grads_numel, a->layout.total_numel);
    scale_weights(a, 5);
    scale_weights(f, 5);
    int32_t tok[B * T], tgt[B * T];
    make_batch(tok, tgt, B * T, c.vocab_size, 8);
    spes_loss_opts o = {0.3, 0.05, 1.0};
    ck_assert_int_eq(spes_model_forward(a, tok, tgt, B, T, &o), 0);
    ck_assert_int_eq(spes_model_forward(f, tok, tgt, B, T, &o), 0);
    ck_assert_float_eq(a->loss, f->loss);
    spes_model_zero_grad(a);
    spes_model_zero_grad(f);
    spes_model_backward(a);
    spes_model_backward(f);
    ck_assert_mem_eq(a->grads, f->grads, a->layout.shared_numel * sizeof(float));
    ck_assert_ptr_null(spes_model_grad_column(f, 1));
    ck_assert_ptr_null(spes_model_grad_column(f, 2));
    for (int e = 0; e < 4; e += 3)
        ck_assert_mem_eq(spes_model_grad_column(a, e), spes_model_grad_column(f, e),
                         a->layout.column_numel * sizeof(float));
    double s = 0.0;
    for (size_t i = 0; i < a->layout.shared_numel; i++)
        s += fabs(a->grads[i]);
    ck_assert(s > 0.0);
    spes_model_free(a);
    spes_model_free(f);
}
END_TEST

/* train_twice: two forward+backward passes (gradients accumulate) of a model with
 * trained columns (NULL: all), capacity 4 x 70, on a b x t batch, with threads
 * threads and experts in chunks of chunk rows (0: the default); returns the
 * model's gradient count. */
static int gu_rows = -1; /* train_twice: rows per layer of the [gate | up] cache (-1: default) */

static size_t train_twice(int threads, const uint8_t *trained, int chunk, int b, int t, float *grads,
                          float *loss)
{
    spes_model_config c = tiny(2, 1, 0);
    c.hidden_size = 32;
    spes_pool *pool;
    ck_assert_int_eq(spes_pool_alloc(&pool, threads), 0);
    spes_model *m;
    ck_assert_int_eq(spes_model_alloc(&m, &c, trained, 4, 70, 1, pool), 0);
    if (chunk)
        spes__model_set_moe_chunk(m, chunk);
    if (gu_rows >= 0)
        spes__model_set_gu_cache(m, gu_rows);
    spes_model_init_weights(m, 11);
    int32_t tok[4 * 70], tgt[4 * 70];
    make_batch(tok, tgt, 4 * 70, c.vocab_size, 12);
    spes_model_zero_grad(m);
    for (int it = 0; it < 2; it++) {
        ck_assert_int_eq(spes_model_forward(m, tok, tgt, b, t, &OPTS), 0);
        spes_model_backward(m);
    }
    *loss = m->loss;
    size_t n = m->grads_numel;
    memcpy(grads, m->grads, n * sizeof(float));
    spes_model_free(m);
    spes_pool_free(pool);
    return n;
}

/* max_diff is max |a[i] - b[i]| over n floats; with b NULL, max |a[i]|. */
static double max_diff(const float *a, const float *b, size_t n)
{
    double d = 0;
    for (size_t i = 0; i < n; i++)
        d = fmax(d, fabs(a[i] - (b ? b[i] : 0.0f)));
    return d;
}

/* run_once: train_twice on all columns and the whole 4 x 70 batch. */
static void run_once(int threads, float *grads_out, size_t n, float *loss, int chunk)
{
    ck_assert_uint_eq(train_twice(threads, NULL, chunk, 4, 70, grads_out, loss), n);
}

/* run_numel is the parameter count of run_once's model. */
static size_t run_numel(void)
{
    spes_model_config c = tiny(2, 1, 0);
    c.hidden_size = 32;
    spes_layout lo;
    ck_assert_int_eq(spes_layout_build(&lo, &c), 0);
    size_t n = lo.total_numel;
    spes_layout_fini(&lo);
    return n;
}

START_TEST(test_determinism)
{
    size_t n = run_numel();
    float *g1 = malloc(n * sizeof(float)), *g2 = malloc(n * sizeof(float)), l1, l2;
    for (int th = 1; th <= 2; th++) {
        run_once(th, g1, n, &l1, 0);
        run_once(th, g2, n, &l2, 0);
        ck_assert_mem_eq(&l1, &l2, sizeof l1);
        ck_assert_mem_eq(g1, g2, n * sizeof(float));
    }
    free(g1);
    free(g2);
}
END_TEST

/* Experts run in chunks of rows: 280 tokens x top-2 over 4 experts in one chunk
 * each (the default) or in chunks of 7 and of 1 (many chunks and a remainder)
 * give the same loss and gradients up to summation order. */
START_TEST(test_moe_chunking)
{
    size_t n = run_numel();
    float *g0 = malloc(n * sizeof(float)), *g1 = malloc(n * sizeof(float));
    float l0, l1;
    run_once(2, g0, n, &l0, 0);
    double gmax = max_diff(g0, NULL, n);
    ck_assert(gmax > 0);
    int rows[] = {7, 1};
    for (int k = 0; k < 2; k++) {
        run_once(2, g1, n, &l1, rows[k]);
        ck_assert_msg(fabs(l1 - l0) <= 1e-6 * fabs(l0), "loss %.9g vs %.9g with chunks of %d", l1, l0,
                      rows[k]);
        double d = max_diff(g1, g0, n);
        ck_assert_msg(d <= 1e-5 * gmax, "gradients differ by %.3g (max %.3g) with chunks of %d", d, gmax,
                      rows[k]);
    }
    free(g0);
    free(g1);
}
END_TEST

/* The expert block cuts the expert-sorted rows into one lane per thread, so
 * with 3 and 7 threads experts are cut between lanes (with 7, some lane lies
 * inside one expert; with a 2-token batch most lanes are empty) and their
 * weight gradients are summed lane after lane. Every thread count and chunk
 * size gives the one-thread loss and gradients up to summation order, frozen
 * columns or not, and the same bits when run again. */
START_TEST(test_lanes_agree)
{
    size_t n = run_numel();
    float *g0 = malloc(n * sizeof(float)), *g1 = malloc(n * sizeof(float)), l0, l1;
    static const uint8_t half[4] = {1, 0, 1, 0};
    const uint8_t *masks[2] = {NULL, half};
    int shapes[2][2] = {{4, 70}, {1, 2}};
    for (int mi = 0; mi < 2; mi++)
        for (int si = 0; si < 2; si++) {
            int b = shapes[si][0], t = shapes[si][1];
            size_t ng = train_twice(1, masks[mi], 0, b, t, g0, &l0);
            double gmax = max_diff(g0, NULL, ng);
            ck_assert(gmax > 0);
            int threads[3] = {2, 3, 7}, chunks[2] = {0, 7};
            for (int ti = 0; ti < 3; ti++)
                for (int ci = 0; ci < 2; ci++) {
                    train_twice(threads[ti], masks[mi], chunks[ci], b, t, g1, &l1);
                    ck_assert_msg(fabs(l1 - l0) <= 1e-6 * fabs(l0), "loss %.9g vs %.9g (%d threads, mask %d)",
                                  l1, l0, threads[ti], mi);
                    double d = max_diff(g1, g0, ng);
                    ck_assert_msg(d <= 1e-5 * gmax,
                                  "gradients differ by %.3g (max %.3g): %d threads, chunk %d, "
                                  "mask %d, batch %dx%d",
                                  d, gmax, threads[ti], chunks[ci], mi, b, t);
                }
            train_twice(7, masks[mi], 7, b, t, g0, &l0);
            train_twice(7, masks[mi], 7, b, t, g1, &l1);
            ck_assert_mem_eq(&l0, &l1, sizeof l0);
            ck_assert_mem_eq(g0, g1, ng * sizeof(float));
        }
    free(g0);
    free(g1);
}
END_TEST

/* The forward keeps [gate | up] of trained experts' rows for the backward, up to
 * a number of rows per layer (default: their expected share of the routed
 * rows): all kept, none kept (all recomputed) and 37 kept (the cache ends
 * inside an expert and inside a chunk, which the forward copies in part and
 * the backward recomputes whole) give the same loss and gradients, frozen
 * columns or not, on 1 and 3 threads (the backward's chunks then differ from
 * the forward's), in chunks of 7 rows and whole. */
START_TEST(test_gu_cache)
{
    size_t n = run_numel();
    float *g0 = malloc(n * sizeof(float)), *g1 = malloc(n * sizeof(float)), l0, l1;
    static const uint8_t half[4] = {1, 0, 1, 0};
    const uint8_t *masks[2] = {NULL, half};
    int threads[2] = {1, 3}, chunks[2] = {0, 7}, rows[2] = {-1, 37};
    for (int mi = 0; mi < 2; mi++)
        for (int ti = 0; ti < 2; ti++)
            for (int ci = 0; ci < 2; ci++) {
                gu_rows = 0;
                size_t ng = train_twice(threads[ti], masks[mi], chunks[ci], 4, 70, g0, &l0);
                double gmax = max_diff(g0, NULL, ng);
                ck_assert(gmax > 0);
                for (int ri = 0; ri < 2; ri++) {
                    gu_rows = rows[ri];
                    train_twice(threads[ti], masks[mi], chunks[ci], 4, 70, g1, &l1);
                    ck_assert_msg(fabs(l1 - l0) <= 1e-6 * fabs(l0), "loss %.9g vs %.9g", l1, l0);
                    double d = max_diff(g1, g0, ng);
                    ck_assert_msg(d <= 1e-5 * gmax,
                                  "gradients differ by %.3g (max %.3g): cache %d rows, %d threads, chunk %d, "
                                  "mask %d",
                                  d, gmax, rows[ri], threads[ti], chunks[ci], mi);
                }
            }
    gu_rows = -1;
    free(g0);
    free(g1);
}
END_TEST

/* big_batch: two forward+backward passes of tiny MHA on a 16 x 64 batch with
 * threads threads; says whether [dq | dk | dv] ran on past the span into slot 0. */
static int big_batch(int threads, float *grads, size_t n, float *loss)
{
    enum { BB = 16, BT = 64 };
    spes_model_config c = tiny(4, 1, 0);
    spes_pool *pool;
    ck_assert_int_eq(spes_pool_alloc(&pool, threads), 0);
    spes_model *m;
    ck_assert_int_eq(spes_model_alloc(&m, &c, NULL, BB, BT, 1, pool), 0);
    ck_assert_uint_eq(m->grads_numel, n);
    struct spes_model_priv *p = m->priv;
    int spills = p->dqkv + (size_t)BB * BT * p->ldqkv > p->norm;
    spes_model_init_weights(m, 21);
    static int32_t tok[BB * BT], tgt[BB * BT];
    make_batch(tok, tgt, BB * BT, c.vocab_size, 22);
    spes_model_zero_grad(m);
    for (int it = 0; it < 2; it++) {
        ck_assert_int_eq(spes_model_forward(m, tok, tgt, BB, BT, &OPTS), 0);
        spes_model_backward(m);
    }
    *loss = m->loss;
    memcpy(grads, m->grads, n * sizeof(float));
    spes_model_free(m);
    spes_pool_free(pool);
    return spills;
}

/* With 1024 tokens and one thread the span holds just [q | k | v] and the
 * start of [dq | dk | dv], which runs on into slots 0 and 4 (the tight layout
 * of the bench config); with 7 threads the lanes' scratch makes the span big
 * enough to hold it all. Both give the same loss and gradients up to
 * summation order. */
START_TEST(test_tight_span)
{
    spes_layout lo;
    spes_model_config c = tiny(4, 1, 0);
    ck_assert_int_eq(spes_layout_build(&lo, &c), 0);
    size_t n = lo.total_numel;
    spes_layout_fini(&lo);
    float *g0 = malloc(n * sizeof(float)), *g1 = malloc(n * sizeof(float)), l0, l1;
    ck_assert_int_eq(big_batch(1, g0, n, &l0), 1);
    ck_assert_int_eq(big_batch(7, g1, n, &l1), 0);
    ck_assert_msg(fabs(l1 - l0) <= 1e-6 * fabs(l0), "loss %.9g vs %.9g", l1, l0);
    double gmax = max_diff(g0, NULL, n), d = max_diff(g1, g0, n);
    ck_assert(gmax > 0);
    ck_assert_msg(d <= 1e-5 * gmax, "gradients differ by %.3g (max %.3g)", d, gmax);
    free(g0);
    free(g1);
}
END_TEST

START_TEST(test_refusals_and_inference)
{
    spes_model_config c = tiny(2, 0, 1);
    spes_model *m, *inf;
    ck_assert_int_eq(spes_model_alloc(&m, &c, NULL, B, T, 1, NULL), 0);
    ck_assert_int_eq(spes_model_alloc(&inf, &c, NULL, B, T, 0, NULL), 0);
    ck_assert_ptr_null(inf->grads);
    ck_assert_uint_lt(spes_model_activation_numel(inf), spes_model_activation_numel(m));
    spes_model_init_weights(m, 4);
    spes_model_init_weights(inf, 4);
    ck_assert_mem_eq(m->params, inf->params, m->layout.total_numel * sizeof(float));
    int32_t tok[B * T], tgt[B * T];
    make_batch(tok, tgt, B * T, c.vocab_size, 1);
    ck_assert_int_eq(spes_model_forward(m, tok, tgt, B, T, &OPTS), 0);
    ck_assert_int_eq(spes_model_forward(inf, tok, tgt, B, T, &OPTS), 0);
    ck_assert_float_eq(m->loss, inf->loss);
    ck_assert_float_eq(m->lb_loss, inf->lb_loss);
    ck_assert_mem_eq(spes_model_logits(m), spes_model_logits(inf), sizeof(float) * B * T * c.vocab_size);
    ck_assert(fabs(m->ce_loss - log(13.0)) < 0.05); /* init loss is about ln V */
    spes_model_backward(inf);                       /* no-op on an inference model */
    /* a smaller batch than the capacity */
    ck_assert_int_eq(spes_model_forward(m, tok, NULL, 1, 3, NULL), 0);
    tok[3] = 13;
    ck_assert_int_eq(spes_model_forward(m, tok, tgt, B, T, &OPTS), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "token id 13"));
    tok[3] = -1;
    ck_assert_int_eq(spes_model_forward(m, tok, tgt, B, T, &OPTS), SPES_ERANGE);
    tok[3] = 0;
    tgt[9] = 99;
    ck_assert_int_eq(spes_model_forward(m, tok, tgt, B, T, &OPTS), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "target id 99"));
    ck_assert_int_eq(spes_model_forward(m, tok, tgt, B, T + 1, &OPTS), SPES_EINVAL);
    spes_model_free(m);
    spes_model_free(inf);
}
END_TEST

START_TEST(test_layout_init)
{
    spes_model_config c = tiny(2, 0, 0);
    spes_layout lo;
    ck_assert_int_eq(spes_layout_build(&lo, &c), 0);
    size_t off = 0;
    for (int i = 0; i < lo.ntensors; i++) {
        ck_assert_uint_eq(lo.tensors[i].offset, off);
        off += lo.tensors[i].numel;
    }
    ck_assert_uint_eq(off, lo.total_numel);
    const spes_tensor *t = spes_layout_find(&lo, "model.layers.1.mlp.experts.2.down_proj.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->column, 2);
    ck_assert_int_eq(t->shape[0], 16);
    ck_assert_int_eq(t->shape[1], 12);
    ck_assert_uint_eq(t->offset, lo.shared_numel + 2 * lo.column_numel + lo.column_numel / 2 + 2 * 16 * 12);
    t = spes_layout_find(&lo, "model.layers.0.self_attn.k_proj.weight");
    ck_assert_int_eq(t->shape[0], 8);
    ck_assert_ptr_nonnull(spes_layout_find(&lo, "lm_head.weight"));
    spes_layout_fini(&lo);
    c.tie_word_embeddings = 1;
    ck_assert_int_eq(spes_layout_build(&lo, &c), 0);
    ck_assert_ptr_null(spes_layout_find(&lo, "lm_head.weight"));
    spes_layout_fini(&lo);
    c.num_key_value_heads = 3;
    ck_assert_int_eq(spes_layout_build(&lo, &c), SPES_EINVAL);
    c = tiny(2, 0, 0);
    c.num_experts_per_tok = 5;
    ck_assert_int_eq(spes_layout_build(&lo, &c), SPES_EINVAL);
    /* init: norms 1, weights N(0, 0.02), reproducible */
    spes_model *m;
    c = tiny(2, 0, 0);
    c.num_experts = c.num_experts_per_tok = 8; /* 2^28 tokens x top-8 routed rows overflow int32 */
    ck_assert_int_eq(spes_model_alloc(&m, &c, NULL, 1 << 14, 1 << 14, 1, NULL), SPES_EINVAL);
    ck_assert_ptr_null(m);
    c = tiny(2, 0, 0);
    ck_assert_int_eq(spes_model_alloc(&m, &c, NULL, 1, 4, 0, NULL), 0);
    spes_model_init_weights(m, 42);
    const spes_tensor *qn = spes_layout_find(&m->layout, "model.layers.1.self_attn.q_norm.weight");
    for (size_t j = 0; j < qn->numel; j++)
        ck_assert_float_eq(m->params[qn->offset + j], 1.0f);
    double ss = 0.0;
    size_t cnt = 0;
    for (size_t j = m->layout.shared_numel; j < m->layout.total_numel; j++, cnt++)
        ss += (double)m->params[j] * m->params[j];
    ck_assert(fabs(sqrt(ss / cnt) - 0.02) < 0.002);
    spes_rng r;
    spes_rng_seed(&r, 42);
    ck_assert_float_eq(m->params[0], (float)(0.02 * spes_rng_normal(&r)));
    ck_assert(spes_model_flops_per_token(m) > 0.0);
    spes_model_free(m);
}
END_TEST

/* a batch smaller than the capacity gives the same loss and gradients as a
 * model allocated for exactly that batch */
START_TEST(test_smaller_batch)
{
    spes_model_config c = tiny(2, 1, 0);
    spes_model *big, *exact;
    ck_assert_int_eq(spes_model_alloc(&big, &c, NULL, 3, 9, 1, NULL), 0);
    ck_assert_int_eq(spes_model_alloc(&exact, &c, NULL, B, T, 1, NULL), 0);
    spes_model_init_weights(big, 21);
    spes_model_init_weights(exact, 21);
    int32_t tok[B * T], tgt[B * T];
    make_batch(tok, tgt, B * T, c.vocab_size, 22);
    spes_model_zero_grad(big);
    spes_model_zero_grad(exact);
    ck_assert_int_eq(spes_model_forward(big, tok, tgt, B, T, &OPTS), 0);
    spes_model_backward(big);
    ck_assert_int_eq(spes_model_forward(exact, tok, tgt, B, T, &OPTS), 0);
    spes_model_backward(exact);
    ck_assert_float_eq(big->loss, exact->loss);
    ck_assert_mem_eq(big->grads, exact->grads, big->grads_numel * sizeof(float));
    spes_model_free(big);
    spes_model_free(exact);
}
END_TEST

static Suite *model_suite(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_layout_init);
    tcase_add_test(tc, test_fd_untied_gqa);
    tcase_add_test(tc, test_fd_tied_norm);
    tcase_add_test(tc, test_fd_frozen_mqa);
    tcase_add_test(tc, test_frozen_columns);
    tcase_add_test(tc, test_determinism);
    tcase_add_test(tc, test_moe_chunking);
    tcase_add_test(tc, test_gu_cache);
    tcase_add_test(tc, test_lanes_agree);
    tcase_add_test(tc, test_tight_span);
    tcase_add_test(tc, test_refusals_and_inference);
    tcase_add_test(tc, test_smaller_batch);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    spes_blas_reexec_if_generic(argv); /* fast OpenBLAS kernels on CPUs it misdetects */
    SRunner *sr = srunner_create(model_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
