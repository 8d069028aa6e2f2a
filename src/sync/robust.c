/* robust.c: the norm bound on a round's contributions and the trimmed and
 * clipped mean aggregations (robust.h). Pure computation. */
#include "sync/robust.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int spes_agg_from_name(spes_agg *g, const char *name, double trim, double clip)
{
    static const char *const names[] = {"mean", "trimmed_mean", "clipped_mean"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, names[i])) {
            *g = (spes_agg){.mode = (spes_agg_mode)i, .trim = trim, .clip = clip};
            return 0;
        }
    return spes_errf(SPES_EINVAL, "unknown aggregation \"%s\" (mean, trimmed_mean or clipped_mean)", name);
}

double spes_delta_norm(const float *v, const float *base, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        double x = (double)(v[i] - base[i]);
        double sq = x * x;
        s = s + sq;
    }
    return sqrt(s);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double spes_median(double *x, int n)
{
    if (n <= 0)
        return 0;
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    return n % 2 ? x[n / 2] : (x[n / 2 - 1] + x[n / 2]) / 2;
}

int spes_delta_norms_of(spes_delta_norms *nm, const spes_contrib *c, const float *base, const spes_layout *lo)
{
    memset(nm, 0, sizeof *nm);
    nm->cols = malloc((size_t)(c->ncols > 0 ? c->ncols : 1) * sizeof *nm->cols);
    nm->col = malloc((size_t)(c->ncols > 0 ? c->ncols : 1) * sizeof *nm->col);
    if (!nm->cols || !nm->col) {
        spes_delta_norms_fini(nm);
        return SPES_ENOMEM;
    }
    nm->ncols = c->ncols;
    nm->shared = spes_delta_norm(c->val, base, lo->shared_numel);
    for (int j = 0; j < c->ncols; j++) {
        nm->cols[j] = c->cols[j];
        nm->col[j] = spes_delta_norm(c->val + lo->shared_numel + (size_t)j * lo->column_numel,
                                     base + lo->shared_numel + (size_t)c->cols[j] * lo->column_numel,
                                     lo->column_numel);
    }
    return 0;
}

void spes_delta_norms_fini(spes_delta_norms *nm)
{
    free(nm->cols);
    free(nm->col);
    memset(nm, 0, sizeof *nm);
}

/* recent_median is the median of the entries of e (a ring of n) within
 * SPES_NORM_HISTORY_ROUNDS of round, of the shared block (col 0) or of the
 * columns (col 1, entries without columns skipped); -1 with fewer than
 * SPES_NORM_HISTORY_MIN of them. */
static double recent_median(const spes_norm_entry *e, int n, uint64_t round, int col)
{
    double x[SPES_NORM_HISTORY];
    int m = 0;
    for (int i = 0; i < n; i++) {
        double v = col ? e[i].col : e[i].shared;
        if (v >= 0 && e[i].round < round && round - e[i].round <= SPES_NORM_HISTORY_ROUNDS)
            x[m++] = v;
    }
    return m >= SPES_NORM_HISTORY_MIN ? spes_median(x, m) : -1;
}

static const spes_norm_member *find_member(const spes_norm_history *h, uint32_t id)
{
    for (int i = 0; i < SPES_NORM_HISTORY_MEMBERS; i++)
        if (h->mem[i].used && h->mem[i].id == id)
            return &h->mem[i];
    return NULL;
}

/* norm_limits is what one contribution is measured against: a bound per group
 * (< 0: none) and the words that say where it came from. */
typedef struct norm_limits {
    double shared, col;
    const char *shared_of, *col_of;
} norm_limits;

/* over refuses contribution k (ok[k] = 0, its reason written) when a group exceeds l. */
static void over(const spes_delta_norms *nm, int k, const norm_limits *l, double bound, const char *who,
                 int *ok, char *why, size_t reason_size)
{
    if (l->shared >= 0 && nm[k].shared > l->shared) {
        ok[k] = 0;
        snprintf(why, reason_size,
                 "%sthe shared block's delta norm %.6g exceeds the norm bound %.6g (%g x %s %.6g)", who,
                 nm[k].shared, l->shared, bound, l->shared_of, l->shared / bound);
        return;
    }
    for (int j = 0; l->col >= 0 && j < nm[k].ncols; j++)
        if (nm[k].col[j] > l->col) {
            ok[k] = 0;
            snprintf(why, reason_size,
                     "%scolumn %d's delta norm %.6g exceeds the norm bound %.6g (%g x %s %.6g)", who,
                     (int)nm[k].cols[j], nm[k].col[j], l->col, bound, l->col_of, l->col / bound);
            return;
        }
}

/* gather collects the norms of the contributions with ok[k] set, in order:
 * their shared-block norms into *sh (*counted of them) and every column norm
 * they carry into *co (*ncol); the caller frees both (NULL with none counted). */
static int gather(const spes_delta_norms *nm, int n, const int *ok, double **sh, int *counted, double **co,
                  int *ncol)
{
    *sh = *co = NULL;
    *counted = *ncol = 0;
    for (int k = 0; k < n; k++)
        if (ok[k]) {
            (*counted)++;
            *ncol += nm[k].ncols;
        }
    if (!*counted)
        return 0;
    *sh = malloc((size_t)*counted * sizeof **sh);
    *co = malloc((size_t)(*ncol > 0 ? *ncol : 1) * sizeof **co);
    if (!*sh || !*co) {
        free(*sh);
        free(*co);
        *sh = *co = NULL;
        return SPES_ENOMEM;
    }
    int a = 0, b = 0;
    for (int k = 0; k < n; k++)
        if (ok[k]) {
            (*sh)[a++] = nm[k].shared;
            for (int j = 0; j < nm[k].ncols; j++)
                (*co)[b++] = nm[k].col[j];
        }
    return 0;
}

int spes_norm_bound_check(const spes_delta_norms *nm, int n, double bound, const spes_norm_history *h,
                          uint64_t round, const uint32_t *ids, const char *const *names, int *ok,
                          char *reasons, size_t reason_size)
{
    if (bound <= 0)
        return 0;
    double *sh, *co;
    int counted, ncol;
    int rc = gather(nm, n, ok, &sh, &counted, &co, &ncol);
    if (rc || !counted)
        return rc;
    norm_limits run = {-1, -1, "the round's median", "the round's median column norm"};
    if (counted >= 3) {
        run.shared = bound * spes_median(sh, counted);
        run.col = ncol ? bound * spes_median(co, ncol) : -1;
    } else if (h && ids) {
        double ms = recent_median(h->run, h->n, round, 0), mc = recent_median(h->run, h->n, round, 1);
        run = (norm_limits){ms >= 0 ? bound * ms : -1, mc >= 0 ? bound * mc : -1,
                            "the median of recent rounds' medians",
                            "the median of recent rounds' column medians"};
    }
    /* the bounds are fixed before anyone is refused: refusing moves no median */
    int *was = malloc((size_t)n * sizeof *was);
    if (!was) {
        free(sh);
        free(co);
        return SPES_ENOMEM;
    }
    memcpy(was, ok, (size_t)n * sizeof *was);
    for (int k = 0; k < n; k++) {
        if (!was[k])
            continue;
        char who[80] = "";
        if (names && names[k] && names[k][0])
            snprintf(who, sizeof who, "%.64s: ", names[k]);
        char *why = reasons + (size_t)k * reason_size;
        over(nm, k, &run, bound, who, ok, why, reason_size);
        const spes_norm_member *m = h && ids && ok[k] ? find_member(h, ids[k]) : NULL;
        if (m) {
            double ms = recent_median(m->e, m->n, round, 0), mc = recent_median(m->e, m->n, round, 1);
            norm_limits own = {ms >= 0 ? bound * ms : -1, mc >= 0 ? bound * mc : -1,
                               "the median of its own recent shared-block norms",
                               "the median of its own recent column norms"};
            over(nm, k, &own, bound, who, ok, why, reason_size);
        }
    }
    free(was);
    free(sh);
    free(co);
    return 0;
}

/* ring_add appends v, or replaces the newest entry when it is of the same round (a round validated again) */
static void ring_add(spes_norm_entry *e, int *n, int *next, spes_norm_entry v)
{
    int last = (*next + SPES_NORM_HISTORY - 1) % SPES_NORM_HISTORY;
    if (*n > 0 && e[last].round == v.round) {
        e[last] = v;
        return;
    }
    e[*next] = v;
    *next = (*next + 1) % SPES_NORM_HISTORY;
    if (*n < SPES_NORM_HISTORY)
        (*n)++;
}

int spes_norm_history_add(spes_norm_history *h, uint64_t round, const spes_delta_norms *nm,
                          const uint32_t *ids, const int *ok, int n)
{
    double *sh, *co;
    int counted, ncol;
    int rc = gather(nm, n, ok, &sh, &counted, &co, &ncol);
    if (rc || !counted)
        return rc;
    int c0 = 0; /* where contribution k's columns start in co */
    for (int k = 0; k < n; k++) {
        if (!ok[k])
            continue;
        /* sorting this member's slice in place leaves the round's median below unchanged */
        spes_norm_entry v = {round, nm[k].shared, nm[k].ncols ? spes_median(co + c0, nm[k].ncols) : -1};
        c0 += nm[k].ncols;
        spes_norm_member *slot = (spes_norm_member *)find_member(h, ids[k]);
        if (!slot) { /* a free slot, else the member seen longest ago */
            slot = &h->mem[0];
            for (int i = 0; i < SPES_NORM_HISTORY_MEMBERS && slot->used; i++)
                if (!h->mem[i].used || h->mem[i].seen < slot->seen)
                    slot = &h->mem[i];
            memset(slot, 0, sizeof *slot);
            slot->used = 1;
            slot->id = ids[k];
        }
        slot->seen = round;
        ring_add(slot->e, &slot->n, &slot->next, v);
    }
    spes_norm_entry r = {round, spes_median(sh, counted), ncol ? spes_median(co, ncol) : -1};
    ring_add(h->run, &h->n, &h->next, r);
    free(sh);
    free(co);
    return 0;
}

/* robust_ctx is what the robust segment function needs besides the walk's arguments. */
typedef struct robust_ctx {
    const spes_agg *g;
    const spes_outer *o;
    size_t shared_numel;
    double tau_shared, tau_col; /* clipped: the norm bounds of the shared block and of a column */
    float *sorted;              /* (n) trimmed: one coordinate's deltas */
    double *norm;               /* (n) clipped: the segment's delta norms */
} robust_ctx;

/* before is the ascending total order of the trimmed mean: by value, -0 before +0. */
static int before(float a, float b)
{
    return a < b || (a == b && signbit(a) && !signbit(b));
}

/* trimmed_delta writes the trimmed mean delta into acc; 0 when nothing would be trimmed. */
static int trimmed_delta(robust_ctx *r, const float *params, const float *const *vs, int k, size_t n,
                         float *acc)
{
    int t = (int)floor(r->g->trim * (double)k);
    if (t <= 0 || 2 * t >= k)
        return 0;
    float *s = r->sorted;
    for (size_t i = 0; i < n; i++) {
        for (int j = 0; j < k; j++) {
            float d = vs[j][i] - params[i];
            int q = j;
            for (; q > 0 && before(d, s[q - 1]); q--)
                s[q] = s[q - 1];
            s[q] = d;
        }
        float sum = 0.0f;
        for (int j = t; j < k - t; j++)
            sum += s[j];
        acc[i] = sum / (float)(k - 2 * t);
    }
    return 1;
}

/* clipped_delta writes the clipped mean delta into acc; 0 when no delta would be scaled. */
static int clipped_delta(robust_ctx *r, const float *params, size_t off, const float *const *vs, int k,
                         size_t n, float *acc)
{
    double tau = off < r->shared_numel ? r->tau_shared : r->tau_col;
    int any = 0;
    for (int j = 0; j < k; j++) {
        r->norm[j] = spes_delta_norm(vs[j], params, n);
        any |= r->norm[j] > tau;
    }
    if (!any)
        return 0;
    memset(acc, 0, n * sizeof *acc);
    for (int j = 0; j < k; j++) {
        float s = r->norm[j] > tau ? (float)(tau / r->norm[j]) : 1.0f;
        for (size_t i = 0; i < n; i++) {
            float d = vs[j][i] - params[i];
            acc[i] += d * s;
        }
    }
    for (size_t i = 0; i < n; i++)
        acc[i] = acc[i] / (float)k;
    return 1;
}

/* robust_seg is the shared walk's segment function for a robust rule (ctx: robust_ctx). */
static void robust_seg(void *ctx, float *params, size_t off, const float *const *vs, int k, size_t n,
                       float *acc)
{
    robust_ctx *r = ctx;
    int robust = r->g->mode == SPES_AGG_TRIMMED ? trimmed_delta(r, params, vs, k, n, acc)
                                                : clipped_delta(r, params, off, vs, k, n, acc);
    if (!robust) {
        if (spes_outer_plain(r->o))
            spes__mean_segment(params, vs, k, n, acc);
        else
            spes__outer_seg((void *)r->o, params, off, vs, k, n, acc);
        return;
    }
    if (spes_outer_plain(r->o)) {
        spes__outer_step(params, acc, n, NULL, 1.0f, 0.0f);
        return;
    }
    float *m = r->o->mu != 0.0f ? r->o->mom + off : NULL;
    spes__outer_step(params, acc, n, m, r->o->lr, r->o->mu);
}

/* clip_bounds sets r's clipping norms from the round's contributions against params (S_r). */
static int clip_bounds(robust_ctx *r, const float *params, const spes_layout *lo,
                       const spes_contrib *const *cs, int n)
{
    int ncol = 0;
    for (int k = 0; k < n; k++)
        ncol += cs[k]->ncols;
    double *sh = malloc((size_t)(n > 0 ? n : 1) * sizeof *sh),
           *co = malloc((size_t)(ncol > 0 ? ncol : 1) * sizeof *co);
    if (!sh || !co) {
        free(sh);
        free(co);
        return SPES_ENOMEM;
    }
    int b = 0;
    for (int k = 0; k < n; k++) {
        sh[k] = spes_delta_norm(cs[k]->val, params, lo->shared_numel);
        for (int j = 0; j < cs[k]->ncols; j++)
            co[b++] = spes_delta_norm(cs[k]->val + lo->shared_numel + (size_t)j * lo->column_numel,
                                      params + lo->shared_numel + (size_t)cs[k]->cols[j] * lo->column_numel,
                                      lo->column_numel);
    }
    r->tau_shared = r->g->clip * spes_median(sh, n);
    r->tau_col = r->g->clip * spes_median(co, ncol);
    free(sh);
    free(co);
    return 0;
}

int spes_aggregate_robust(float *params, const spes_layout *lo, int E, const spes_contrib *const *cs, int n,
                          const spes_agg *g, const spes_outer *o)
{
    if (!g || g->mode == SPES_AGG_MEAN)
        return spes_aggregate_outer(params, lo, E, cs, n, o);
    if (!spes_outer_plain(o) && o->mu != 0.0f && !o->mom)
        return spes_errf(SPES_EINVAL, "aggregate: outer momentum %g without a momentum buffer",
                         (double)o->mu);
    if (g->mode != SPES_AGG_TRIMMED && g->mode != SPES_AGG_CLIPPED)
        return spes_errf(SPES_EINVAL, "aggregate: unknown aggregation mode %d", (int)g->mode);
    robust_ctx r = {.g = g, .o = o, .shared_numel = lo->shared_numel};
    r.sorted = malloc((size_t)(n > 0 ? n : 1) * sizeof *r.sorted);
    r.norm = malloc((size_t)(n > 0 ? n : 1) * sizeof *r.norm);
    int rc = !r.sorted || !r.norm ? SPES_ENOMEM : 0;
    if (!rc && g->mode == SPES_AGG_CLIPPED)
        rc = clip_bounds(&r, params, lo, cs, n);
    if (!rc)
        rc = spes__aggregate_walk(params, lo, E, cs, n, robust_seg, &r);
    free(r.sorted);
    free(r.norm);
    return rc;
}
