/* robust.h: defences of a SPES round against a poisoning contributor. The
 * norm bound refuses, at validation, a contribution whose delta (value - agreed
 * state) is far larger than the round's others, per group: the shared block,
 * and each column it carries. The robust aggregation modes replace the mean
 * delta of spes_aggregate by a coordinate-wise trimmed mean or by the mean of
 * deltas clipped to a multiple of the round's median norm. Pure computation,
 * deterministic to the bit: every node computes the same state. See
 * docs/design.md ("Robust aggregation"). */
#ifndef SPES_SYNC_ROBUST_H
#define SPES_SYNC_ROBUST_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "sync/outer.h"
#include "sync/sync.h"

/* spes_agg_mode is how a round's deltas are combined per coordinate. */
typedef enum spes_agg_mode {
    SPES_AGG_MEAN = 0,    /* the mean, as spes_aggregate forms it */
    SPES_AGG_TRIMMED = 1, /* coordinate-wise trimmed mean */
    SPES_AGG_CLIPPED = 2, /* mean of deltas clipped per group to clip x the median norm */
} spes_agg_mode;

/* spes_agg is a run's aggregation rule. */
typedef struct spes_agg {
    spes_agg_mode mode;
    double trim; /* trimmed: the fraction dropped at each end, in [0, 0.5) */
    double clip; /* clipped: the bound on a delta's norm, in medians of its group */
} spes_agg;

/* spes_agg_from_name sets g from a mode name ("mean", "trimmed_mean",
 * "clipped_mean") and its parameters; an unknown name is SPES_EINVAL. */
int spes_agg_from_name(spes_agg *g, const char *name, double trim, double clip);

/* spes_delta_norm is the L2 norm of v - base over n floats: each difference
 * in fp32, squared and summed in fp64 in index order, then the square root. */
double spes_delta_norm(const float *v, const float *base, size_t n);

/* spes_median sorts the n values of x ascending and returns the middle one
 * (the mean of the two middle ones for even n; 0 for n = 0). */
double spes_median(double *x, int n);

/* spes_delta_norms is one contribution's delta norms per group. */
typedef struct spes_delta_norms {
    double shared; /* the shared block's */
    int ncols;
    int32_t *cols; /* (ncols) the columns carried */
    double *col;   /* (ncols) each carried column's */
} spes_delta_norms;

/* spes_delta_norms_of measures contribution c against the agreed state base
 * (full layout lo); nm owns its arrays. */
int spes_delta_norms_of(spes_delta_norms *nm, const spes_contrib *c, const float *base,
                        const spes_layout *lo);

/* spes_delta_norms_fini frees what nm owns. */
void spes_delta_norms_fini(spes_delta_norms *nm);

/* spes_norm_bound_check decides the norm bound for a round's n contributions
 * (nm[k]; those with ok[k] == 0 on entry are left out of every median and
 * stay refused). With at least 3 counted and bound > 0, contribution k is
 * refused (ok[k] = 0) when its shared-block norm exceeds bound x the median of
 * the counted shared-block norms, or one of its column norms exceeds bound x
 * the median over every column carried by the counted contributions; its
 * reason (reasons + k * reason_size) then names the group, the norm and the
 * bound, after "names[k]: " when names is given. SPES_ENOMEM is the only error. */
int spes_norm_bound_check(const spes_delta_norms *nm, int n, double bound, const char *const *names, int *ok,
                          char *reasons, size_t reason_size);

/* spes_aggregate_robust turns S_r (params, in place) into S_{r+1} as
 * spes_aggregate_outer does, with the round's delta per segment formed by
 * g's rule: mean (or g NULL): spes_aggregate_outer exactly; trimmed: per
 * coordinate with k contributions, t = floor(trim * k) of the smallest and of
 * the largest deltas are dropped (ascending order, -0 before +0) and the rest
 * summed in fp32 in ascending order and divided by k - 2t; clipped: each
 * contribution's delta whose norm exceeds tau = clip x the round's median norm
 * of its group (shared: over the contributions; columns: over every carried
 * column) is scaled by (float)(tau / norm), then summed in fp32 in node-id
 * order and divided by k. A segment where nothing is dropped or scaled gets
 * the mean exactly. The result then goes through the outer step o. */
int spes_aggregate_robust(float *params, const spes_layout *lo, int E, const spes_contrib *const *cs, int n,
                          const spes_agg *g, const spes_outer *o);

#endif
