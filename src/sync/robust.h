/* robust.h: defences of a SPES round against a poisoning contributor. The
 * norm bound refuses, at validation, a contribution whose delta (value - agreed
 * state) is far larger than the round's others, per group: the shared block,
 * and each column it carries. The robust aggregation modes replace the mean
 * delta of spes_aggregate by a coordinate-wise trimmed mean or by the mean of
 * deltas clipped to a multiple of the round's median norm. Pure computation,
 * deterministic to the bit: every node computes the same state. The norm
 * bound also remembers recent rounds (spes_norm_history), so a round with
 * fewer than 3 contributions, and a member that jumps above its own past, are
 * bounded too. See
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

#define SPES_NORM_HISTORY 16          /* entries a norm history keeps: the run's, and each member's */
#define SPES_NORM_HISTORY_ROUNDS 32   /* an entry older than this many rounds no longer counts */
#define SPES_NORM_HISTORY_MEMBERS 256 /* members remembered; the one seen longest ago makes room */
#define SPES_NORM_HISTORY_MIN 3       /* entries a history bound needs before it acts */

/* spes_norm_entry is one round's norms: of the shared block and of the
 * columns (col < 0: no column carried). */
typedef struct spes_norm_entry {
    uint64_t round;
    double shared, col;
} spes_norm_entry;

/* spes_norm_member is one member's accepted contributions, newest last (a ring). */
typedef struct spes_norm_member {
    uint32_t id;
    int used, n, next;
    uint64_t seen; /* the newest round recorded */
    spes_norm_entry e[SPES_NORM_HISTORY];
} spes_norm_member;

/* spes_norm_history is what the norm bound remembers of earlier rounds: the
 * medians of each round's accepted contributions (the run's history), and
 * each member's own norms (its shared block's, and the median of its
 * columns'). Zeroed memory is an empty history. */
typedef struct spes_norm_history {
    int n, next;
    spes_norm_entry run[SPES_NORM_HISTORY];
    spes_norm_member mem[SPES_NORM_HISTORY_MEMBERS];
} spes_norm_history;

/* spes_norm_bound_check decides the norm bound for a round's n contributions
 * (nm[k], by member ids[k]; those with ok[k] == 0 on entry are left out of
 * every median and stay refused), with bound > 0 (0: no check):
 * - the round: with at least 3 counted, contribution k is refused (ok[k] = 0)
 *   when its shared-block norm exceeds bound x the median of the counted
 *   shared-block norms, or one of its column norms exceeds bound x the median
 *   over every column carried by the counted contributions;
 * - the run's history (h and ids given): with fewer than 3 counted, the same
 *   against bound x the median of the medians of the history's recent rounds
 *   (at least SPES_NORM_HISTORY_MIN of them, within SPES_NORM_HISTORY_ROUNDS
 *   of round);
 * - the member's own history (h and ids given): its shared-block norm against
 *   bound x the median of its own recent accepted shared-block norms, its
 *   column norms against bound x the median of its own recent column medians
 *   (at least SPES_NORM_HISTORY_MIN recent entries each).
 * A refusal's reason (reasons + k * reason_size) names the group, the norm, the
 * bound and what it was measured against, after "names[k]: " when names is
 * given. SPES_ENOMEM is the only error. */
int spes_norm_bound_check(const spes_delta_norms *nm, int n, double bound, const spes_norm_history *h,
                          uint64_t round, const uint32_t *ids, const char *const *names, int *ok,
                          char *reasons, size_t reason_size);

/* spes_norm_history_add records round's accepted contributions (ok[k] != 0)
 * in h: the medians of their groups as the run's entry, and each one's norms
 * in its member's entries. SPES_ENOMEM is the only error. */
int spes_norm_history_add(spes_norm_history *h, uint64_t round, const spes_delta_norms *nm,
                          const uint32_t *ids, const int *ok, int n);

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
