/* merge.c: expert merging. Similarities and donor means are accumulated in
 * double and rounded once to fp32, so the result does not depend on thread
 * counts or summation order (there is only one order). */
#include "merge/merge.h"
#include "core/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double spes_merge_alpha(const spes_spes_config *sc, int64_t max_steps, int64_t step)
{
    if (step <= 0 || sc->merge_interval <= 0 || step % sc->merge_interval != 0)
        return 0.0;
    int64_t decay = sc->merge_decay_steps > 0 ? sc->merge_decay_steps : max_steps;
    if (decay <= 0)
        return 0.0;
    double a = sc->merge_alpha * (1.0 - (double)step / (double)decay);
    return a > 0 ? a : 0.0;
}

/* expert_tensor returns the offset of layer l, expert e, projection p (0 gate, 1 up, 2 down). */
static size_t expert_off(const spes_layout *lo, const spes_model_config *mc, int l, int e, int p)
{
    size_t per = (size_t)mc->intermediate_size * mc->hidden_size;
    return lo->shared_numel + (size_t)e * lo->column_numel + (size_t)l * 3 * per + (size_t)p * per;
}

static double cosine(const float *a, const float *b, size_t n)
{
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    double d = sqrt(aa) * sqrt(bb);
    return d > 0 ? ab / d : 0.0;
}

/* MERGE_MAX_E bounds the experts pick_donors handles (the config's own limit). */
#define MERGE_MAX_E 1024

/* pick_donors writes the topk most similar j != i into donors (ties: lower index). */
static void pick_donors(const double *sim, int E, int i, int topk, int *donors)
{
    uint8_t used[MERGE_MAX_E] = {0};
    used[i] = 1;
    for (int k = 0; k < topk; k++) {
        int best = -1;
        for (int j = 0; j < E; j++)
            if (!used[j] && (best < 0 || sim[(size_t)i * E + j] > sim[(size_t)i * E + best]))
                best = j;
        donors[k] = best;
        used[best] = 1;
    }
}

int spes_merge_apply(float *params, const spes_layout *lo, const spes_model_config *mc, int topk,
                     double alpha)
{
    int E = mc->num_experts;
    if (alpha <= 0 || E < 2)
        return 0;
    if (E > MERGE_MAX_E) /* the config refuses more; a config from a peer is validated too */
        return spes_errf(SPES_EINVAL, "merge: %d experts, at most %d supported", E, MERGE_MAX_E);
    if (topk > E - 1)
        topk = E - 1;
    size_t per = (size_t)mc->intermediate_size * mc->hidden_size;
    double *sim = malloc((size_t)E * E * sizeof *sim);
    int *donors = malloc((size_t)E * topk * sizeof *donors);
    float *old = malloc((size_t)E * 3 * per * sizeof *old); /* one layer's experts, pre-merge */
    if (!sim || !donors || !old) {
        free(sim);
        free(donors);
        free(old);
        return spes_errf(SPES_ENOMEM, "merge: cannot allocate %zu floats", (size_t)E * 3 * per);
    }
    for (int l = 0; l < mc->num_hidden_layers; l++) {
        for (int e = 0; e < E; e++)
            memcpy(old + (size_t)e * 3 * per, params + expert_off(lo, mc, l, e, 0), 3 * per * sizeof(float));
        for (int i = 0; i < E; i++) { /* symmetric: cosine(a, b) and cosine(b, a) are the same bits */
            sim[(size_t)i * E + i] = 1.0;
            for (int j = i + 1; j < E; j++)
                sim[(size_t)i * E + j] = sim[(size_t)j * E + i] =
                    cosine(old + (size_t)i * 3 * per, old + (size_t)j * 3 * per, per);
        }
        for (int i = 0; i < E; i++)
            pick_donors(sim, E, i, topk, donors + (size_t)i * topk);
        for (int i = 0; i < E; i++) {
            const float *oi = old + (size_t)i * 3 * per;
            float *dst = params + expert_off(lo, mc, l, i, 0);
            for (size_t x = 0; x < 3 * per; x++) {
                double acc = 0;
                for (int k = 0; k < topk; k++)
                    acc += (double)old[(size_t)donors[(size_t)i * topk + k] * 3 * per + x] - oi[x];
                dst[x] = (float)(oi[x] + alpha * (acc / topk));
            }
        }
    }
    free(sim);
    free(donors);
    free(old);
    return 0;
}
