/* model_priv.h: the private state of spes_model shared by model.c (layout,
 * allocation), forward.c and backward.c. Not part of the public API. */
#ifndef SPES_MODEL_MODEL_PRIV_H
#define SPES_MODEL_MODEL_PRIV_H

#include "model/model.h"

#include <stdatomic.h>

/* SPES_MOE_CHUNK is the most rows one lane's expert products handle at a time:
 * each lane's scratch is 2 x (CH, H) + 4 x (CH, I) floats (2.5 MiB on the bench
 * config). 256 rather than 512: the span then shrinks from 14 to 9 MiB (5.6 MiB
 * off every node's peak, which is what the 2-of-8 memory ratio needs) at no
 * step time we could measure, though an average expert (512 rows there: 2048
 * tokens x top-2 over 8) now has its weights packed twice per pass. */
#define SPES_MOE_CHUNK 256

/* MM is a matrix product on the model's pool (p in scope); the model sets
 * OpenBLAS to one thread for the whole pass when the pool has several. */
#define MM(...) spes_matmul_pool(p->pool, __VA_ARGS__)

/* spes_layer_w points at one layer's shared tensors (in params or grads). */
typedef struct spes_layer_w {
    float *ln1; /* (H) */
    float *wq;  /* (NH*D, H) */
    float *wk;  /* (NKV*D, H) */
    float *wv;  /* (NKV*D, H) */
    float *wo;  /* (H, NH*D) */
    float *qn;  /* (NH*D) */
    float *kn;  /* (NKV*D) */
    float *ln2; /* (H) */
    float *wr;  /* (E, H) */
} spes_layer_w;

/* spes_expert_w points at one expert of one layer. */
typedef struct spes_expert_w {
    float *wg; /* (I, H) */
    float *wu; /* (I, H) */
    float *wd; /* (H, I) */
} spes_expert_w;

struct spes_model_priv {
    spes_pool *pool;
    int training;
    int nthreads;
    int N;                     /* B*T capacity */
    int nkeep;                 /* layers of kept activations: L when training, else 1 */
    spes_layer_w *lp, *lg;     /* (L) params, grads */
    spes_expert_w *ep, *eg;    /* (L*E) params, grads (NULL members: frozen) */
    float *embed, *normf, *lm; /* params */
    float *gembed, *gnormf, *glm;
    float *rope_cos, *rope_sin; /* (T, D/2) */
    float *acts;                /* the one activation allocation */
    size_t acts_numel;
    /* kept for backward (nkeep layers), shapes per layer: */
    float *xres; /* (nkeep+1 or 1, N, H) residual stream at each layer input, last = final */
    float *rstd1, *rstd2, *qrstd, *krstd; /* (nkeep, N) */
    float *lse;                           /* (nkeep, B, NH, T) */
    float *probs;                         /* (nkeep, N, E) */
    float *rlse;                          /* (nkeep, N) */
    int32_t *topi;                        /* (nkeep, N, K) */
    float *topw;                          /* (nkeep, N, K) */
    float *counts;                        /* (nkeep, E) tokens routed to each expert */
    float *rstdf;                         /* (N) */
    float *logits;                        /* (N, V); training: on the span (dlogits in place) */
    float *losses;                        /* (N) */
    int32_t *tokens, *targets;            /* (N) of the last forward */
    /* attention output before o_proj, (nkeep, N, H): kept per layer when training,
     * because recomputing it in the backward (QK^T, softmax, PV per head) cost ~3.5 %
     * of a step on the bench config, against 6 MiB more on every node alike */
    float *att;
    /* scratch: three (N, H) buffers, and the span, which holds by turns the raw
     * [q | k | v] rows, the expert block's scratch (forward: after attention;
     * backward: q/k/v are recomputed after it) and the logits between forward and
     * backward. Training lays out [dbuf][span][norm][xmid]: [dq | dk | dv]
     * (p->dqkv) starts right after [q | k | v] and runs on over the span's end into
     * norm and xmid, both dead while attention's backward runs. */
    float *norm; /* (N, H) every RMSNorm output a product reads */
    float *xmid; /* (N, H) backward: the recomputed mid-layer residual */
    float *dbuf; /* (N, H) backward: d(normed2), then d(attention output), then normed1 */
    float *span;
    float *q, *k, *v; /* span: (N, ldqkv) rows [q (QD) | k (KVD) | v (KVD)] */
    float *dqkv;      /* (N, ldqkv) [dq | dk | dv] (training), see above */
    int ldqkv;        /* QD + 2 KVD */
    float *rlog;      /* (N, E) router logits / their gradient */
    int32_t *elist;   /* (N*K) token*K+slot, grouped by expert */
    int32_t *epos;    /* (N*K) position of token*K+slot in elist */
    int32_t *eoff;    /* (E+1) */
    int moe_chunk;    /* rows per lane chunk: min(SPES_MOE_CHUNK, N) (tests: fewer) */
    float *moe_y;     /* span: (N*K, H) each routed row's output, elist order */
    float *moe_scr;   /* span: nthreads x lane_numel, one scratch per lane (one lane per thread) */
    size_t lane_numel;
    /* the forward's [gate | up] rows of routed rows that go to trained experts,
     * (L, gucap, 2I) in elist order of those experts, up to gucap rows per layer
     * (their expected share, N K ntrained / E): the backward reads them instead of
     * recomputing them, and rows past gucap are recomputed (see moe.c) */
    float *guc;
    int gucap;
    int32_t *gu_first, *gu_rows; /* (E) of the layer in hand: cache row of expert e's first row, rows kept */
    int32_t *lane_cut;           /* (nthreads+1) row ranges of the lanes */
    atomic_uint *lane_flag;      /* (nthreads) see moe.c */
    unsigned lane_epoch;
    float *tscr; /* (nthreads, per-thread attention scratch) */
    size_t tscr_numel;
    float *partial; /* (nthreads, H) */
    float *dresid;  /* (N, H) */
    float *dtopw;   /* (N, K) */
    float *lbc;     /* (E) */
    /* last forward */
    int B, T, have_targets;
    spes_loss_opts opts;
};

/* spes__model_set_moe_chunk sets the rows per expert chunk (clamped to [1, capacity]);
 * tests use it to run the multi-chunk paths on tiny batches. */
void spes__model_set_moe_chunk(spes_model *m, int rows);
/* spes__model_set_gu_cache sets how many rows per layer the [gate | up] cache keeps
 * (clamped to [0, what was allocated]); tests use it to run the recompute paths. */
void spes__model_set_gu_cache(spes_model *m, int rows);
/* spes__model_moe_forward adds layer l's (slot s) expert outputs of p->norm to x. */
void spes__model_moe_forward(spes_model *m, int l, int s, float *x, int N);
/* spes__model_moe_backward writes d(loss)/d(norm2) of layer l's experts to dn2, routing
 * weights' gradients to p->dtopw and the trained experts' weight gradients. */
void spes__model_moe_backward(spes_model *m, int l, float *dn2);
/* spes__model_attn_forward runs the attention block of layer l (slot s) on p->norm. */
void spes__model_attn_forward(spes_model *m, int l, int s, int B, int T);

#endif
