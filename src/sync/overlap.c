/* overlap.c: the rebase of a round trained beside its sync (overlap.h). */
#include "sync/overlap.h"

double spes_overlap_carry_of(double c1, int stale, int steps, int k)
{
    if (stale <= 0 || steps <= 0 || k == 1)
        return 1.0; /* nothing was trained on an old state */
    if (c1 <= 0)
        return 0.0;
    double share = stale >= steps ? 1.0 : (double)stale / steps;
    double others = k > 1 ? 1.0 - 1.0 / k : 1.0;
    return 1.0 / (1.0 + others * share * (1.0 / c1 - 1.0));
}

void spes_overlap_rebase(float *p, const float *base, const float *x, size_t n, float c)
{
    for (size_t i = 0; i < n; i++)
        p[i] = base[i] + c * (p[i] - x[i]);
}
