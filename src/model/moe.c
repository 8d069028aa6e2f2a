/* moe.c: the expert block, forward and backward. Routed (token, slot) pairs
 * are grouped by expert; the expert-sorted rows are cut into one contiguous
 * lane per pool thread, balanced by work, and each lane runs whole expert
 * products on its own scratch: one thread packs an expert's weights once for
 * all the rows it holds, where splitting every product between the threads
 * made each of them pack the same weights for half the rows (and wait at a
 * barrier after each product). Rows' outputs land in a per-row buffer (expert
 * order) and one pass per token adds a token's rows in expert order: the
 * same sums, in the same order, as a serial scatter, for any thread count.
 *
 * An expert cut between two lanes accumulates its weight gradients lane after
 * lane: the lower lane does that expert first and then raises its flag; the
 * higher lane does it last and waits for the flag before its gradient
 * products (deterministic for a fixed thread count; the wait is short since
 * the lower lane started there). gate_proj and up_proj are adjacent in the
 * parameter and gradient layouts, so [gate | up] is one (2I, H) matrix: one
 * product for both, forward and backward.
 *
 * The forward keeps [gate | up] of the rows routed to trained experts (up to
 * their expected share of rows, p->gucap a layer) for the backward, which then
 * skips that product: 2 of a trained row's 8 units of work, and the product
 * that met the expert's weights cold. Frozen experts' rows (and rows past the
 * cap) are recomputed, so the cache grows with the columns a node trains, as
 * its gradients and moments do: 64 MiB with all 8 columns on the bench config,
 * 16 MiB with 2. Allocates nothing. */
#include "model/model_priv.h"

#include "kernels/fastmath.h"
#include "kernels/kernels.h"

#include <sched.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define CFG (&m->cfg)

/* work per routed row in units of one (H x I) product: forward 3; backward
 * 5 for a frozen expert (gate/up again, dh, dx) and 8 for a trained one */
#define COST_FWD 3
#define COST_FROZEN 5
#define COST_TRAINED 8

/* build_lists groups layer slot s's routed (token, slot) pairs by expert, tokens
 * ascending: elist, eoff, epos and the layer's counts. */
static void build_lists(spes_model *m, int s, int N)
{
    struct spes_model_priv *p = m->priv;
    int E = CFG->num_experts, K = CFG->num_experts_per_tok;
    const int32_t *ti = p->topi + (size_t)s * N * K;
    int32_t *off = p->eoff;
    memset(off, 0, sizeof(int32_t) * (E + 1));
    for (int i = 0; i < N * K; i++)
        off[ti[i] + 1]++;
    for (int e = 0; e < E; e++) {
        p->counts[(size_t)s * E + e] = (float)off[e + 1];
        off[e + 1] += off[e];
    }
    int32_t pos[SPES_KERNEL_MAX_E];
    memcpy(pos, off, sizeof(int32_t) * E);
    for (int i = 0; i < N * K; i++) {
        p->epos[i] = pos[ti[i]];
        p->elist[pos[ti[i]]++] = i;
    }
    /* the [gate | up] cache: trained experts' rows in expert order, while they fit */
    int kept = 0;
    for (int e = 0; e < E; e++) {
        int n = p->guc && m->trained[e] ? off[e + 1] - off[e] : 0;
        if (n > p->gucap - kept)
            n = p->gucap - kept;
        p->gu_first[e] = kept;
        p->gu_rows[e] = n;
        kept += n;
    }
}

/* kept_rows: how many of rows [r, r + nr) of expert e are in the [gate | up]
 * cache (they are its first ones), and in *at where the cache keeps row r of
 * layer slot s. Chunks are cut as if there were no cache, so that the weight
 * gradients sum the same chunks whatever the trained columns: the forward
 * copies the kept rows of a chunk that runs past the cache's end, and the
 * backward recomputes such a chunk whole. */
static int kept_rows(const spes_model *m, int s, int e, int r, int nr, float **at)
{
    const struct spes_model_priv *p = m->priv;
    int i = r - p->eoff[e], n = p->gu_rows[e] - i;
    if (n <= 0)
        return 0;
    *at = p->guc + ((size_t)s * p->gucap + (size_t)(p->gu_first[e] + i)) * 2 * CFG->intermediate_size;
    return n < nr ? n : nr;
}

/* lane_cuts splits rows [0, eoff[E]) into one range per thread of about equal work
 * (rows of trained experts weigh wt, of frozen ones wf). */
static void lane_cuts(spes_model *m, int wt, int wf)
{
    struct spes_model_priv *p = m->priv;
    int E = CFG->num_experts, nl = p->nthreads;
    const int32_t *off = p->eoff;
    int64_t total = 0;
    for (int e = 0; e < E; e++)
        total += (int64_t)(off[e + 1] - off[e]) * (m->trained[e] ? wt : wf);
    int32_t *cut = p->lane_cut;
    cut[0] = 0;
    cut[nl] = off[E];
    int e = 0;
    int64_t before = 0; /* work of experts < e */
    for (int t = 1; t < nl; t++) {
        int64_t target = total * t / nl;
        for (;;) {
            int64_t w = (int64_t)(off[e + 1] - off[e]) * (m->trained[e] ? wt : wf);
            if (e == E - 1 || before + w > target)
                break;
            before += w;
            e++;
        }
        int64_t w1 = m->trained[e] ? wt : wf;
        int64_t r = off[e] + (target - before + w1 - 1) / w1;
        if (r > off[e + 1])
            r = off[e + 1];
        cut[t] = (int32_t)(r < cut[t - 1] ? cut[t - 1] : r);
    }
}

/* expert_of returns the expert whose rows hold row r (r < eoff[E]). */
static int expert_of(const struct spes_model_priv *p, int r)
{
    int e = 0;
    while (p->eoff[e + 1] <= r)
        e++;
    return e;
}

/* gather copies rows src[token of list[r]] (H wide) to dst[r], r < nr. */
static void gather(float *dst, const float *src, const int32_t *list, int nr, int K, int H)
{
    for (int r = 0; r < nr; r++)
        memcpy(dst + (size_t)r * H, src + (size_t)(list[r] / K) * H, sizeof(float) * H);
}

typedef struct {
    spes_model *m;
    int l, s, N;
    float *dst;        /* combine: x (forward) or dn2 (backward) */
    const float *topw; /* combine: row weights (forward) or NULL */
    unsigned epoch;
} moe_ctx;

/* fwd_chunk: rows [r, r + nr) of expert e in layer l (slot s); their outputs to
 * Y rows r... [gate | up] goes to the cache when the rows are kept, h then to
 * the scratch; otherwise h overwrites gate in the scratch. */
static void fwd_chunk(spes_model *m, int l, int s, int e, int r, int nr, float *scr)
{
    struct spes_model_priv *p = m->priv;
    int H = CFG->hidden_size, I = CFG->intermediate_size, E = CFG->num_experts, K = CFG->num_experts_per_tok;
    const spes_expert_w *w = &p->ep[l * E + e];
    float *xs = scr, *gu = xs + (size_t)p->moe_chunk * H, *h = gu, *kept = NULL;
    int ldh = 2 * I, nk = kept_rows(m, s, e, r, nr, &kept);
    if (nk == nr) {
        gu = kept;
        ldh = I;
    }
    gather(xs, p->norm, p->elist + r, nr, K, H);
    spes_matmul(gu, 2 * I, xs, H, 0, w->wg, H, 1, nr, 2 * I, H, 1.0f, 0.0f);
    if (nk > 0 && nk < nr)
        memcpy(kept, gu, sizeof(float) * nk * 2 * I);
    for (int i = 0; i < nr; i++) {
        float *g = gu + (size_t)i * 2 * I;
        spes_swiglu_forward(h + (size_t)i * ldh, g, g + I, (size_t)I);
    }
    spes_matmul(p->moe_y + (size_t)r * H, H, h, ldh, 0, w->wd, I, 1, nr, H, I, 1.0f, 0.0f);
}

static void fwd_lane(void *vctx, size_t b, size_t e_, int tid)
{
    moe_ctx *c = vctx;
    spes_model *m = c->m;
    struct spes_model_priv *p = m->priv;
    (void)tid;
    for (size_t ln = b; ln < e_; ln++) {
        float *scr = p->moe_scr + ln * p->lane_numel;
        int a = p->lane_cut[ln], z = p->lane_cut[ln + 1];
        for (int e = a < z ? expert_of(p, a) : 0; a < z; e++) {
            int end = p->eoff[e + 1] < z ? p->eoff[e + 1] : z;
            while (a < end) {
                int nr = end - a < p->moe_chunk ? end - a : p->moe_chunk;
                fwd_chunk(m, c->l, c->s, e, a, nr, scr);
                a += nr;
            }
        }
    }
}

/* combine_range: for tokens [b, e), over the token's rows r in ascending order
 * (= expert order): forward dst[t] += topw * Y[r]; backward (no topw) dst[t] =
 * the sum of its Y[r] (dst is not read, so it needs no zeroing first). */
static void combine_range(void *vctx, size_t b, size_t e, int tid)
{
    moe_ctx *c = vctx;
    spes_model *m = c->m;
    struct spes_model_priv *p = m->priv;
    int H = CFG->hidden_size, K = CFG->num_experts_per_tok;
    (void)tid;
    for (size_t t = b; t < e; t++) {
        int32_t rows[SPES_KERNEL_MAX_E];
        for (int k = 0; k < K; k++) {
            int32_t r = p->epos[t * K + k], j = k;
            for (; j > 0 && rows[j - 1] > r; j--)
                rows[j] = rows[j - 1];
            rows[j] = r;
        }
        float *dst = c->dst + t * H;
        for (int k = 0; k < K; k++) {
            const float *y = p->moe_y + (size_t)rows[k] * H;
            if (!c->topw && k == 0)
                memcpy(dst, y, sizeof(float) * H);
            else if (!c->topw)
                for (int i = 0; i < H; i++)
                    dst[i] += y[i];
            else {
                float wt = c->topw[p->elist[rows[k]]];
                for (int i = 0; i < H; i++)
                    dst[i] += wt * y[i];
            }
        }
    }
}

void spes__model_moe_forward(spes_model *m, int l, int s, float *x, int N)
{
    struct spes_model_priv *p = m->priv;
    int K = CFG->num_experts_per_tok;
    build_lists(m, s, N);
    lane_cuts(m, COST_FWD, COST_FWD);
    moe_ctx c = {.m = m, .l = l, .s = s, .N = N, .dst = x, .topw = p->topw + (size_t)s * N * K};
    spes_parallel_for(p->pool, (size_t)p->nthreads, fwd_lane, &c);
    spes_parallel_for(p->pool, (size_t)N, combine_range, &c);
}

static void lane_signal(struct spes_model_priv *p, int ln, unsigned epoch)
{
    atomic_store_explicit(&p->lane_flag[ln], epoch, memory_order_release);
}

static void lane_wait(struct spes_model_priv *p, int ln, unsigned epoch)
{
    for (unsigned i = 0; atomic_load_explicit(&p->lane_flag[ln], memory_order_acquire) != epoch; i++)
        if ((i & 1023) == 1023)
            sched_yield();
        else
            CPU_RELAX();
}

/* bwd_chunk: rows [r, r + nr) of expert e in layer l: dtopw of the rows, input
 * gradients to Y rows r.., and (trained) weight gradients, which first wait for
 * lane ln - 1 when wait is set. */
static void bwd_chunk(moe_ctx *c, int ln, int e, int r, int nr, float *scr, int wait)
{
    spes_model *m = c->m;
    struct spes_model_priv *p = m->priv;
    int H = CFG->hidden_size, I = CFG->intermediate_size, E = CFG->num_experts, K = CFG->num_experts_per_tok,
        l = c->l;
    size_t CH = (size_t)p->moe_chunk;
    const spes_expert_w *w = &p->ep[l * E + e], *g = &p->eg[l * E + e];
    const float *topw = p->topw + (size_t)l * c->N * K;
    const int32_t *list = p->elist + r;
    float *xs = scr, *dys = xs + CH * H, *gu = dys + CH * H, *hb = gu + CH * 2 * I, *dh = hb + CH * I;
    float *kept = NULL;
    int nk = kept_rows(m, l, e, r, nr, &kept);
    gather(xs, p->norm, list, nr, K, H);
    gather(dys, p->dresid, list, nr, K, H);
    if (nk == nr) /* the forward's rows; swiglu's backward below overwrites them */
        gu = kept;
    else
        spes_matmul(gu, 2 * I, xs, H, 0, w->wg, H, 1, nr, 2 * I, H, 1.0f, 0.0f);
    spes_matmul(dh, I, dys, H, 0, w->wd, I, 0, nr, I, H, 1.0f, 0.0f);
    /* one pass a row: d(loss)/d(routing weight) = <dh_unweighted, h>; h scaled by
     * the routing weight (for down_proj's gradient); [gate | up] becomes its
     * gradient through swiglu, of the weighted dh */
    for (int i = 0; i < nr; i++) {
        float *gi = gu + (size_t)i * 2 * I;
        p->dtopw[list[i]] = spes_swiglu_backward(hb + (size_t)i * I, gi, gi + I, dh + (size_t)i * I,
                                                 topw[list[i]], (size_t)I);
    }
    if (g->wd && wait)
        lane_wait(p, ln - 1, c->epoch);
    if (g->wd)
        spes_matmul(g->wd, I, dys, H, 1, hb, I, 0, H, I, nr, 1.0f, 1.0f);
    if (g->wg) /* [gate | up] gradient: (2I, H) += [dg | du]^T x */
        spes_matmul(g->wg, H, gu, 2 * I, 1, xs, H, 0, 2 * I, H, nr, 1.0f, 1.0f);
    spes_matmul(p->moe_y + (size_t)r * H, H, gu, 2 * I, 0, w->wg, H, 0, nr, H, 2 * I, 1.0f, 0.0f);
}

/* bwd_segment runs rows [a, z) of expert e in chunks; wait: see bwd_chunk */
static void bwd_segment(moe_ctx *c, int ln, int e, int a, int z, float *scr, int wait)
{
    int ch = c->m->priv->moe_chunk;
    for (; a < z; a += ch, wait = 0)
        bwd_chunk(c, ln, e, a, z - a < ch ? z - a : ch, scr, wait);
}

static void bwd_lane(void *vctx, size_t b, size_t e_, int tid)
{
    moe_ctx *c = vctx;
    struct spes_model_priv *p = c->m->priv;
    (void)tid;
    for (size_t lu = b; lu < e_; lu++) {
        int ln = (int)lu, a = p->lane_cut[ln], z = p->lane_cut[ln + 1];
        float *scr = p->moe_scr + lu * p->lane_numel;
        if (a == z) { /* nothing here: pass the lower lanes' flag on */
            if (ln > 0)
                lane_wait(p, ln - 1, c->epoch);
            lane_signal(p, ln, c->epoch);
            continue;
        }
        int first = expert_of(p, a), last = expert_of(p, z - 1);
        int shared_prev = ln > 0 && a > p->eoff[first], shared_next = z < p->eoff[last + 1];
        if (first == last) {
            bwd_segment(c, ln, first, a, z, scr, shared_prev);
            lane_signal(p, ln, c->epoch);
            continue;
        }
        if (shared_next)
            bwd_segment(c, ln, last, p->eoff[last], z, scr, 0);
        lane_signal(p, ln, c->epoch);
        for (int e = first + 1; e < last + !shared_next; e++)
            bwd_segment(c, ln, e, p->eoff[e], p->eoff[e + 1], scr, 0);
        bwd_segment(c, ln, first, a, p->eoff[first + 1], scr, shared_prev);
    }
}

void spes__model_moe_backward(spes_model *m, int l, float *dn2)
{
    struct spes_model_priv *p = m->priv;
    int N = p->B * p->T;
    build_lists(m, l, N);
    lane_cuts(m, COST_TRAINED, COST_FROZEN);
    if (++p->lane_epoch == 0)
        p->lane_epoch = 1;
    moe_ctx c = {.m = m, .l = l, .s = l, .N = N, .dst = dn2, .topw = NULL, .epoch = p->lane_epoch};
    spes_parallel_for(p->pool, (size_t)p->nthreads, bwd_lane, &c);
    spes_parallel_for(p->pool, (size_t)N, combine_range, &c);
}
