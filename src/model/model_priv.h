/* model_priv.h: the private state of spes_model shared by model.c (layout,
 * allocation), forward.c and backward.c. Not part of the public API. */
#ifndef SPES_MODEL_MODEL_PRIV_H
#define SPES_MODEL_MODEL_PRIV_H

#include "model/model.h"

/* SPES_MOE_CHUNK is the most tokens one expert sgemm handles at a time (bounds scratch:
 * 2 x (CH, H) + 4 x (CH, I) floats, 5 MiB on the bench config). 512 rather than 256:
 * each of two threads then multiplies 256 rows against a packed weight, which runs
 * sgemm nearer its peak; the scratch costs 2.6 MiB more on every node alike. */
#define SPES_MOE_CHUNK 512

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
    float *logits;                        /* (N, V); training: on slots 4-6 when it fits (dlogits in place) */
    float *losses;                        /* (N) */
    int32_t *tokens, *targets;            /* (N) of the last forward */
    /* attention output before o_proj, (nkeep, N, H): kept per layer when training,
     * because recomputing it in the backward (QK^T, softmax, PV per head) cost ~3.5 %
     * of a step on the bench config, against 6 MiB more on every node alike */
    float *att;
    /* scratch: slots of (N, H) floats; forward uses slots 0-3, backward all 7 */
    float *slot[7];
    float *norm;                        /* slot 0 (N, H) */
    float *q, *k, *v;                   /* slots 1-3: (N, H), (N, NKV*D), (N, NKV*D) */
    float *rlog;                        /* (N, E) router logits / their gradient */
    int32_t *elist;                     /* (N*K) token*K+slot, grouped by expert */
    int32_t *eoff;                      /* (E+1) */
    int moe_chunk;                      /* rows per expert chunk: min(SPES_MOE_CHUNK, N) (tests: fewer) */
    float *cx, *cy, *cg, *cu, *ch, *cd; /* MoE chunk: (CH,H) x2, (CH,I) x4 */
    float *tscr;                        /* (nthreads, per-thread attention scratch) */
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
/* spes__model_build_lists groups layer slot's routed (token, slot) pairs by expert, tokens ascending. */
void spes__model_build_lists(spes_model *m, int slot, int N);
/* spes__model_gather copies rows src[token of list[r]] (H wide) to dst[r], r < nr. */
void spes__model_gather(spes_model *m, float *dst, const float *src, const int32_t *list, int nr);
/* spes__model_scatter adds w[list[r]] * src[r] (w NULL: 1) to dst[token of list[r]]. */
void spes__model_scatter(spes_model *m, float *dst, const float *src, const float *w, const int32_t *list,
                         int nr);
/* spes__model_attn_forward runs the attention block of layer l (slot s) on p->norm. */
void spes__model_attn_forward(spes_model *m, int l, int s, int B, int T);

#endif
