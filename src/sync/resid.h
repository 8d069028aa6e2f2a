/* resid.h: a node's error-feedback residual for the q8ef codec (docs/design.md,
 * "Codecs"). The residual e (full layout) is what quantisation has not yet
 * delivered: a contribution encodes u = delta + e and leaves e = u - D(Q(u))
 * (spes_contrib_encode). Once the round commits, the residual is settled by
 * what became of that contribution. Pure computation; the node keeps e with its
 * optimizer state. */
#ifndef SPES_SYNC_RESID_H
#define SPES_SYNC_RESID_H

#include <stddef.h>
#include <stdint.h>

#include "sync/sync.h"

/* spes_resid_outcome is what became of a node's contribution to a round. */
typedef enum spes_resid_outcome {
    SPES_RESID_APPLIED = 0, /* in the commit: e = u - D(q) stands */
    SPES_RESID_LEFT_OUT,    /* valid but not in the commit (late): e = u, capped */
    SPES_RESID_REFUSED,     /* refused by the run: e = 0 */
} spes_resid_outcome;

/* spes_resid_settle applies outcome o to the residual e (full layout lo) after
 * the contribution own (as decoded: base + D(q) over its groups) was encoded
 * against base. Left out: each of own's groups becomes e + D(q) (= u), and if
 * their norm exceeds cap the groups are scaled down to it. */
void spes_resid_settle(float *e, const spes_layout *lo, spes_resid_outcome o, const spes_contrib *own,
                       const float *base, double cap);

/* spes_resid_keep_cols zeroes the residual of every column not set in cols (E
 * entries): a column dealt to the node starts with none. */
void spes_resid_keep_cols(float *e, const spes_layout *lo, int E, const uint8_t *cols);

/* spes_contrib_delta_norm is the L2 norm of c's delta against base over all its groups. */
double spes_contrib_delta_norm(const spes_contrib *c, const float *base);

#endif
