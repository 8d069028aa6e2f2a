/* resid.c: settling the error-feedback residual (resid.h). */
#include "sync/resid.h"

#include <math.h>
#include <string.h>

/* group returns the full-layout offset of group g of c (-1: the shared block) and its size in *n. */
static size_t group(const spes_contrib *c, int g, size_t *n)
{
    *n = g < 0 ? c->shared_numel : c->column_numel;
    return g < 0 ? 0 : c->shared_numel + (size_t)c->cols[g] * c->column_numel;
}

/* value_at is where group g's values start in c->val. */
static const float *value_at(const spes_contrib *c, int g)
{
    return c->val + (g < 0 ? 0 : c->shared_numel + (size_t)g * c->column_numel);
}

double spes_contrib_delta_norm(const spes_contrib *c, const float *base)
{
    double s = 0;
    for (int g = -1; g < c->ncols; g++) {
        size_t n, at = group(c, g, &n);
        const float *v = value_at(c, g);
        for (size_t i = 0; i < n; i++) {
            double d = (double)v[i] - (double)base[at + i];
            s += d * d;
        }
    }
    return sqrt(s);
}

void spes_resid_settle(float *e, const spes_layout *lo, spes_resid_outcome o, const spes_contrib *own,
                       const float *base, double cap)
{
    if (o == SPES_RESID_REFUSED) {
        memset(e, 0, lo->total_numel * sizeof *e);
        return;
    }
    if (o != SPES_RESID_LEFT_OUT)
        return;
    double s = 0;
    for (int g = -1; g < own->ncols; g++) {
        size_t n, at = group(own, g, &n);
        const float *v = value_at(own, g);
        for (size_t i = 0; i < n; i++) {
            e[at + i] += v[i] - base[at + i];
            s += (double)e[at + i] * e[at + i];
        }
    }
    double norm = sqrt(s);
    if (!(norm > cap))
        return;
    float f = cap > 0 ? (float)(cap / norm) : 0.0f;
    for (int g = -1; g < own->ncols; g++) {
        size_t n, at = group(own, g, &n);
        for (size_t i = 0; i < n; i++)
            e[at + i] *= f;
    }
}

void spes_resid_keep_cols(float *e, const spes_layout *lo, int E, const uint8_t *cols)
{
    for (int c = 0; c < E; c++)
        if (!cols[c])
            memset(e + lo->shared_numel + (size_t)c * lo->column_numel, 0, lo->column_numel * sizeof *e);
}
