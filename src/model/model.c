/* model.c: parameter layout, allocation (one block each for params, grads,
 * activations), initialisation and gradient accessors of the MoE model.
 * Never does I/O. Forward is in forward.c, backward in backward.c. */
#include "model/model_priv.h"

#include "core/error.h"
#include "core/rng.h"
#include "kernels/kernels.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int push(spes_layout *lo, int cap, size_t *off, const char *name, int64_t r, int64_t c, int column,
                int layer)
{
    if (lo->ntensors >= cap)
        return SPES_EINVAL;
    spes_tensor *t = &lo->tensors[lo->ntensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = c > 0 ? 2 : 1;
    t->shape[0] = r;
    t->shape[1] = c > 0 ? c : 0;
    t->numel = (size_t)r * (size_t)(c > 0 ? c : 1);
    t->offset = *off;
    t->column = column;
    t->layer = layer;
    *off += t->numel;
    return 0;
}

static int check_config(const spes_model_config *c)
{
    if (c->vocab_size <= 0 || c->hidden_size <= 0 || c->intermediate_size <= 0 || c->num_hidden_layers <= 0 ||
        c->num_attention_heads <= 0 || c->num_key_value_heads <= 0 || c->num_experts <= 0 ||
        c->num_experts_per_tok <= 0)
        return spes_errf(SPES_EINVAL, "model config: every size must be positive");
    if (c->hidden_size % c->num_attention_heads != 0)
        return spes_errf(SPES_EINVAL, "model config: hidden_size %d not divisible by %d heads",
                         c->hidden_size, c->num_attention_heads);
    if ((c->hidden_size / c->num_attention_heads) % 2 != 0)
        return spes_errf(SPES_EINVAL, "model config: head dim must be even for RoPE");
    if (c->num_attention_heads % c->num_key_value_heads != 0)
        return spes_errf(SPES_EINVAL, "model config: num_key_value_heads %d does not divide %d",
                         c->num_key_value_heads, c->num_attention_heads);
    if (c->num_experts_per_tok > c->num_experts || c->num_experts > SPES_KERNEL_MAX_E)
        return spes_errf(SPES_EINVAL, "model config: need experts_per_tok <= num_experts <= %d",
                         SPES_KERNEL_MAX_E);
    if (!(c->rms_norm_eps > 0.0) || !(c->rope_theta > 0.0))
        return spes_errf(SPES_EINVAL, "model config: rms_norm_eps and rope_theta must be > 0");
    return 0;
}

int spes_layout_build(spes_layout *lo, const spes_model_config *c)
{
    memset(lo, 0, sizeof *lo);
    int rc = check_config(c);
    if (rc)
        return rc;
    int L = c->num_hidden_layers, E = c->num_experts;
    int64_t V = c->vocab_size, H = c->hidden_size, I = c->intermediate_size;
    int64_t D = H / c->num_attention_heads, QD = D * c->num_attention_heads, KVD = D * c->num_key_value_heads;
    int cap = 3 + 9 * L + 3 * L * E;
    lo->tensors = calloc((size_t)cap, sizeof *lo->tensors);
    if (!lo->tensors)
        return SPES_ENOMEM;
    size_t off = 0;
    char n[SPES_TENSOR_NAME_MAX];
    push(lo, cap, &off, "model.embed_tokens.weight", V, H, -1, -1);
    /* q_proj, k_proj, v_proj adjacent: forward.c and backward.c multiply by
     * [q | k | v] as one (QD + 2 KVD, H) matrix */
    static const char *an[9] = {"input_layernorm",  "self_attn.q_proj",         "self_attn.k_proj",
                                "self_attn.v_proj", "self_attn.o_proj",         "self_attn.q_norm",
                                "self_attn.k_norm", "post_attention_layernorm", "mlp.gate"};
    for (int l = 0; l < L; l++) {
        int64_t r[9] = {H, QD, KVD, KVD, H, QD, KVD, H, E};
        int64_t cc[9] = {0, H, H, H, QD, 0, 0, 0, H};
        for (int j = 0; j < 9; j++) {
            snprintf(n, sizeof n, "model.layers.%d.%s.weight", l, an[j]);
            push(lo, cap, &off, n, r[j], cc[j], -1, l);
        }
    }
    push(lo, cap, &off, "model.norm.weight", H, 0, -1, -1);
    if (!c->tie_word_embeddings)
        push(lo, cap, &off, "lm_head.weight", V, H, -1, -1);
    lo->shared_numel = off;
    /* gate_proj then up_proj, adjacent: moe.c multiplies by [gate | up] as one (2I, H) matrix */
    static const char *en[3] = {"gate_proj", "up_proj", "down_proj"};
    for (int e = 0; e < E; e++)
        for (int l = 0; l < L; l++)
            for (int j = 0; j < 3; j++) {
                snprintf(n, sizeof n, "model.layers.%d.mlp.experts.%d.%s.weight", l, e, en[j]);
                push(lo, cap, &off, n, j == 2 ? H : I, j == 2 ? I : H, e, l);
            }
    lo->column_numel = (size_t)L * 3 * (size_t)(I * H);
    lo->total_numel = off;
    return 0;
}

void spes_layout_fini(spes_layout *lo)
{
    free(lo->tensors);
    memset(lo, 0, sizeof *lo);
}

const spes_tensor *spes_layout_find(const spes_layout *lo, const char *name)
{
    for (int i = 0; i < lo->ntensors; i++)
        if (strcmp(lo->tensors[i].name, name) == 0)
            return &lo->tensors[i];
    return NULL;
}

const float *spes_model_route_counts(const spes_model *m, int *layers)
{
    *layers = m->priv->nkeep;
    return m->priv->counts;
}

float *spes_model_grad_column(spes_model *m, int e)
{
    if (!m->grads || e < 0 || e >= m->cfg.num_experts || !m->trained[e])
        return NULL;
    int rank = 0;
    for (int i = 0; i < e; i++)
        rank += m->trained[i];
    return m->grads + m->layout.shared_numel + (size_t)rank * m->layout.column_numel;
}

float *spes_model_grad_of(spes_model *m, const spes_tensor *t)
{
    if (!m->grads)
        return NULL;
    if (t->column < 0)
        return m->grads + t->offset;
    float *col = spes_model_grad_column(m, t->column);
    if (!col)
        return NULL;
    return col + (t->offset - m->layout.shared_numel - (size_t)t->column * m->layout.column_numel);
}

/* Shared tensor j of layer l sits at table index 1 + 9l + j; expert e's
 * projection j of layer l at nshared + 3(eL + l) + j. */
static void set_pointers(spes_model *m)
{
    struct spes_model_priv *p = m->priv;
    const spes_layout *lo = &m->layout;
    int L = m->cfg.num_hidden_layers, E = m->cfg.num_experts;
    int nsh = 2 + 9 * L + (m->cfg.tie_word_embeddings ? 0 : 1);
    float *G = m->grads;
    for (int l = 0; l < L; l++) {
        float **dst[9] = {&p->lp[l].ln1, &p->lp[l].wq, &p->lp[l].wk,  &p->lp[l].wv, &p->lp[l].wo,
                          &p->lp[l].qn,  &p->lp[l].kn, &p->lp[l].ln2, &p->lp[l].wr};
        float **gdst[9] = {&p->lg[l].ln1, &p->lg[l].wq, &p->lg[l].wk,  &p->lg[l].wv, &p->lg[l].wo,
                           &p->lg[l].qn,  &p->lg[l].kn, &p->lg[l].ln2, &p->lg[l].wr};
        for (int j = 0; j < 9; j++) {
            size_t off = lo->tensors[1 + 9 * l + j].offset;
            *dst[j] = m->params + off;
            *gdst[j] = G ? G + off : NULL;
        }
        for (int e = 0; e < E; e++) {
            const spes_tensor *t = &lo->tensors[nsh + 3 * (e * L + l)];
            spes_expert_w *ep = &p->ep[l * E + e], *eg = &p->eg[l * E + e];
            ep->wg = m->params + t[0].offset;
            ep->wu = m->params + t[1].offset;
            ep->wd = m->params + t[2].offset;
            eg->wg = spes_model_grad_of(m, &t[0]);
            eg->wu = spes_model_grad_of(m, &t[1]);
            eg->wd = spes_model_grad_of(m, &t[2]);
        }
    }
    p->embed = m->params;
    p->gembed = G;
    size_t nf = lo->tensors[1 + 9 * L].offset;
    p->normf = m->params + nf;
    p->gnormf = G ? G + nf : NULL;
    size_t lm = m->cfg.tie_word_embeddings ? 0 : lo->tensors[2 + 9 * L].offset;
    p->lm = m->params + lm;
    p->glm = G ? G + lm : NULL;
}

typedef struct {
    float *base;
    size_t used;
} carver;

/* round16 rounds a float count up to 64 bytes */
static size_t round16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* take reserves n floats (64-byte aligned); with base NULL it only counts. */
static float *take(carver *c, size_t n)
{
    float *r = c->base ? c->base + c->used : NULL;
    c->used += round16(n);
    return r;
}

/* gu_capacity: the [gate | up] cache's rows per layer, the trained experts'
 * expected share of the N K routed rows, rounded up. */
static int gu_capacity(const spes_model *m)
{
    size_t M = (size_t)m->priv->N * m->cfg.num_experts_per_tok, E = m->cfg.num_experts;
    return (int)((M * (size_t)m->ntrained + E - 1) / E);
}

static void carve(spes_model *m, carver *c)
{
    struct spes_model_priv *p = m->priv;
    const spes_model_config *cf = &m->cfg;
    size_t N = (size_t)p->N, H = cf->hidden_size, I = cf->intermediate_size, E = cf->num_experts,
           K = cf->num_experts_per_tok, V = cf->vocab_size, NH = cf->num_attention_heads;
    size_t D = H / NH, KVD = cf->num_key_value_heads * D, T = m->T, CH = SPES_MOE_CHUNK;
    size_t nk = (size_t)p->nkeep, nt = (size_t)p->nthreads;
    if (CH > N)
        CH = N;
    p->xres = take(c, (p->training ? nk + 1 : 1) * N * H);
    p->rstd1 = take(c, nk * N);
    p->rstd2 = take(c, nk * N);
    p->qrstd = take(c, nk * N);
    p->krstd = take(c, nk * N);
    p->lse = take(c, nk * N * NH);
    p->probs = take(c, nk * N * E);
    p->rlse = take(c, nk * N);
    p->topi = (int32_t *)take(c, nk * N * K);
    p->topw = take(c, nk * N * K);
    p->counts = take(c, nk * E);
    p->rstdf = take(c, N);
    p->att = take(c, nk * N * H);
    p->losses = take(c, N);
    p->tokens = (int32_t *)take(c, N);
    p->targets = (int32_t *)take(c, N);
    /* the span holds by turns the raw [q | k | v] rows (N, QD + 2 KVD); the expert
     * block (every routed row's output, then one scratch per lane: training x, dy
     * rows (CH, H) and [gate | up], h, dh (CH, 2I + 2I), inference x rows and
     * [gate | up]); the logits between forward and backward (training). Training
     * lays out [dbuf][span][norm][xmid] so that [dq | dk | dv], right after
     * [q | k | v], may run on into norm and xmid (see model_priv.h). */
    size_t NH_ = round16(N * H), M = N * K, QKV = H + 2 * KVD, qkv = round16(N * QKV);
    p->lane_numel = round16(CH * (p->training ? 2 * H + 4 * I : H + 2 * I));
    size_t ys = round16(M * H), span = qkv;
    if (p->training && qkv > 2 * NH_) /* [dq | dk | dv] needs more than norm and xmid give */
        span = 2 * qkv - 2 * NH_;
    if (span < ys + nt * p->lane_numel)
        span = ys + nt * p->lane_numel;
    if (p->training && span < N * V)
        span = N * V;
    if (p->training)
        p->dbuf = take(c, NH_);
    p->span = take(c, span);
    p->norm = take(c, NH_);
    if (p->training)
        p->xmid = take(c, NH_);
    p->ldqkv = (int)QKV;
    p->q = p->span;
    p->k = p->span ? p->span + H : NULL;
    p->v = p->span ? p->span + H + KVD : NULL;
    p->dqkv = p->training && p->span ? p->span + qkv : NULL;
    /* [dq | dk | dv] must end inside xmid: the span, norm and xmid are adjacent */
    assert(!p->dqkv || (p->norm == p->span + round16(span) && p->xmid == p->norm + NH_ &&
                        p->dqkv + N * QKV <= p->xmid + NH_));
    p->moe_y = p->span;
    p->moe_scr = p->span ? p->span + ys : NULL;
    p->logits = p->training ? p->span : take(c, N * V);
    p->rlog = take(c, N * E);
    p->elist = (int32_t *)take(c, N * K);
    p->epos = (int32_t *)take(c, N * K);
    p->eoff = (int32_t *)take(c, E + 1);
    p->gu_first = (int32_t *)take(c, E);
    p->gu_rows = (int32_t *)take(c, E);
    if (p->training) {
        p->gucap = gu_capacity(m);
        p->guc = take(c, nk * (size_t)p->gucap * 2 * I);
    }
    p->lane_cut = (int32_t *)take(c, nt + 1);
    p->moe_chunk = (int)CH;
    p->tscr_numel = p->training ? 2 * SPES_ATTN_RB * T + SPES_ATTN_RB + 3 * T * D : SPES_ATTN_RB * T;
    p->tscr_numel = round16(p->tscr_numel);
    p->tscr = take(c, nt * p->tscr_numel);
    p->partial = take(c, 2 * nt * H);
    if (p->training) {
        p->dresid = take(c, N * H);
        p->dtopw = take(c, N * K);
        p->lbc = take(c, E);
    }
}

void spes_model_free(spes_model *m)
{
    if (!m)
        return;
    if (m->priv) {
        free(m->priv->lp);
        free(m->priv->lg);
        free(m->priv->ep);
        free(m->priv->eg);
        free(m->priv->rope_cos);
        free(m->priv->rope_sin);
        free(m->priv->acts);
        free(m->priv->lane_flag);
        free(m->priv);
    }
    free(m->params);
    free(m->grads);
    free(m->trained);
    spes_layout_fini(&m->layout);
    free(m);
}

int spes_model_alloc(spes_model **out, const spes_model_config *c, const uint8_t *trained, int B, int T,
                     int training, spes_pool *pool)
{
    *out = NULL;
    if (B <= 0 || T <= 0 || (int64_t)B * T > (1 << 28))
        return spes_errf(SPES_EINVAL, "model: bad batch capacity %d x %d", B, T);
    spes_model *m = calloc(1, sizeof *m);
    if (!m)
        return SPES_ENOMEM;
    m->cfg = *c;
    int rc = spes_layout_build(&m->layout, c);
    if (rc) {
        free(m);
        return rc;
    }
    if ((int64_t)B * T * c->num_experts_per_tok > INT32_MAX) { /* routed rows are indexed by int32 */
        spes_model_free(m);
        return spes_errf(SPES_EINVAL, "model: %d x %d tokens x top-%d routed rows exceed 2^31", B, T,
                         c->num_experts_per_tok);
    }
    int L = c->num_hidden_layers, E = c->num_experts, D = c->hidden_size / c->num_attention_heads;
    m->B = B;
    m->T = T;
    m->trained = calloc((size_t)E, 1);
    m->priv = calloc(1, sizeof *m->priv);
    m->params = calloc(m->layout.total_numel, sizeof(float));
    if (!m->trained || !m->priv || !m->params)
        goto nomem;
    for (int e = 0; e < E; e++) {
        m->trained[e] = trained ? (trained[e] != 0) : 1;
        m->ntrained += m->trained[e];
    }
    struct spes_model_priv *p = m->priv;
    p->pool = pool;
    p->training = training != 0;
    p->nthreads = spes_pool_threads(pool);
    p->N = B * T;
    p->nkeep = training ? L : 1;
    if (training) {
        m->grads_numel = m->layout.shared_numel + (size_t)m->ntrained * m->layout.column_numel;
        m->grads = calloc(m->grads_numel, sizeof(float));
        if (!m->grads)
            goto nomem;
    }
    p->lp = calloc((size_t)L, sizeof *p->lp);
    p->lg = calloc((size_t)L, sizeof *p->lg);
    p->ep = calloc((size_t)L * E, sizeof *p->ep);
    p->eg = calloc((size_t)L * E, sizeof *p->eg);
    p->rope_cos = malloc(sizeof(float) * (size_t)T * (D / 2));
    p->rope_sin = malloc(sizeof(float) * (size_t)T * (D / 2));
    p->lane_flag = calloc((size_t)p->nthreads, sizeof *p->lane_flag);
    if (!p->lp || !p->lg || !p->ep || !p->eg || !p->rope_cos || !p->rope_sin || !p->lane_flag)
        goto nomem;
    carver cv = {NULL, 0};
    carve(m, &cv);
    p->acts_numel = cv.used;
    p->acts = aligned_alloc(64, cv.used * sizeof(float));
    if (!p->acts)
        goto nomem;
    memset(p->acts, 0, cv.used * sizeof(float));
    cv.base = p->acts;
    cv.used = 0;
    carve(m, &cv);
    set_pointers(m);
    spes_rope_table(p->rope_cos, p->rope_sin, T, D, c->rope_theta);
    *out = m;
    return 0;
nomem:
    spes_model_free(m);
    return spes_errf(SPES_ENOMEM, "model: out of memory allocating a %d x %d model", B, T);
}

static int is_norm(const spes_tensor *t)
{
    return t->ndim == 1;
}

void spes_model_init_weights(spes_model *m, uint64_t seed)
{
    spes_rng r;
    spes_rng_seed(&r, seed);
    for (int i = 0; i < m->layout.ntensors; i++) {
        const spes_tensor *t = &m->layout.tensors[i];
        float *w = m->params + t->offset;
        if (is_norm(t)) {
            for (size_t j = 0; j < t->numel; j++)
                w[j] = 1.0f;
        } else {
            for (size_t j = 0; j < t->numel; j++)
                w[j] = (float)(0.02 * spes_rng_normal(&r));
        }
    }
}

void spes__model_set_moe_chunk(spes_model *m, int rows)
{
    int cap = SPES_MOE_CHUNK < m->priv->N ? SPES_MOE_CHUNK : m->priv->N;
    m->priv->moe_chunk = rows < 1 ? 1 : rows > cap ? cap : rows;
}

void spes__model_set_gu_cache(spes_model *m, int rows)
{
    struct spes_model_priv *p = m->priv;
    int cap = gu_capacity(m);
    if (p->guc)
        p->gucap = rows < 0 ? 0 : rows > cap ? cap : rows;
}

void spes_model_zero_grad(spes_model *m)
{
    if (m->grads)
        spes_copy_pool(m->priv->pool, m->grads, NULL, m->grads_numel);
}

const float *spes_model_logits(const spes_model *m)
{
    return m->priv->logits;
}

size_t spes_model_activation_numel(const spes_model *m)
{
    return m->priv->acts_numel;
}

double spes_model_flops_per_token(const spes_model *m)
{
    const spes_model_config *c = &m->cfg;
    double H = c->hidden_size, I = c->intermediate_size, E = c->num_experts, K = c->num_experts_per_tok,
           V = c->vocab_size, L = c->num_hidden_layers;
    double D = H / c->num_attention_heads, QD = D * c->num_attention_heads, KVD = D * c->num_key_value_heads,
           T = m->T;
    double shared = 2.0 * H * (2 * QD + 2 * KVD) + 2.0 * H * E; /* q,k,v,o, router */
    double attn = 2.0 * 2.0 * QD * (T + 1) / 2.0;               /* QK^T and PV, causal */
    double expert = K * 3.0 * 2.0 * H * I;
    double frac = m->ntrained / E;
    double fwd = L * (shared + attn + expert) + 2.0 * H * V;
    double bwd = L * (2 * shared + 2 * attn + expert * (1.0 + frac)) + 2 * 2.0 * H * V;
    return fwd + bwd;
}
