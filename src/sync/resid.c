/* resid.c: the error-feedback residual (resid.h). */
#include "sync/resid.h"
#include "core/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int spes_resid_init(spes_resid *r, const spes_layout *lo, int E)
{
    memset(r, 0, sizeof *r);
    r->shared_numel = lo->shared_numel;
    r->column_numel = lo->column_numel;
    r->E = E;
    r->cols = calloc((size_t)(E > 0 ? E : 1), 1);
    r->val = calloc(r->shared_numel ? r->shared_numel : 1, sizeof *r->val);
    if (!r->cols || !r->val) {
        spes_resid_fini(r);
        return SPES_ENOMEM;
    }
    return 0;
}

void spes_resid_fini(spes_resid *r)
{
    free(r->cols);
    free(r->val);
    memset(r, 0, sizeof *r);
}

size_t spes_resid_numel(const spes_resid *r)
{
    return r->shared_numel + (size_t)r->ncols * r->column_numel;
}

void spes_resid_zero(spes_resid *r)
{
    memset(r->val, 0, spes_resid_numel(r) * sizeof *r->val);
}

int spes_resid_hold(spes_resid *r, const uint8_t *want)
{
    int n = 0;
    for (int e = 0; e < r->E; e++)
        n += want[e] != 0;
    size_t S = r->shared_numel, C = r->column_numel, total = S + (size_t)n * C;
    float *v = calloc(total ? total : 1, sizeof *v);
    if (!v)
        return SPES_ENOMEM;
    memcpy(v, r->val, S * sizeof *v);
    float *dst = v + S;
    const float *src = r->val + S;
    for (int e = 0; e < r->E; e++) {
        if (want[e] && r->cols[e])
            memcpy(dst, src, C * sizeof *v);
        dst += want[e] ? C : 0;
        src += r->cols[e] ? C : 0;
        r->cols[e] = want[e] != 0;
    }
    free(r->val);
    r->val = v;
    r->ncols = n;
    return 0;
}

int spes_resid_matches(const spes_resid *r, const spes_contrib *c)
{
    if (c->shared_numel != r->shared_numel || c->column_numel != r->column_numel || c->ncols != r->ncols)
        return 0;
    for (int i = 0; i < c->ncols; i++)
        if (c->cols[i] < 0 || c->cols[i] >= r->E || !r->cols[c->cols[i]])
            return 0;
    return 1;
}

double spes_contrib_delta_norm(const spes_contrib *c, const float *base)
{
    double s = 0;
    size_t i = 0;
    for (int g = -1; g < c->ncols; g++) {
        size_t n;
        const float *b = spes_contrib_group_base(c, base, g, &n);
        for (size_t k = 0; k < n; k++, i++) {
            double d = (double)c->val[i] - (double)b[k];
            s += d * d;
        }
    }
    return sqrt(s);
}

int spes_resid_settle(spes_resid *r, spes_resid_outcome o, const spes_contrib *own, const float *base,
                      double cap)
{
    if (o == SPES_RESID_REFUSED) {
        spes_resid_zero(r);
        return 0;
    }
    if (o != SPES_RESID_LEFT_OUT)
        return 0;
    if (!spes_resid_matches(r, own))
        return spes_errf(SPES_EINVAL, "residual: the contribution's columns are not the residual's");
    double s = 0;
    size_t i = 0;
    for (int g = -1; g < own->ncols; g++) {
        size_t n;
        const float *b = spes_contrib_group_base(own, base, g, &n);
        for (size_t k = 0; k < n; k++, i++) {
            r->val[i] += own->val[i] - b[k];
            s += (double)r->val[i] * r->val[i];
        }
    }
    double norm = sqrt(s);
    if (!(norm > cap))
        return 0;
    float f = cap > 0 ? (float)(cap / norm) : 0.0f;
    for (size_t k = 0; k < i; k++)
        r->val[k] *= f;
    return 0;
}
