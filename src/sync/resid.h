/* resid.h: a node's error-feedback residual for the q8ef and topk codecs
 * (docs/design.md, "Codecs"). The residual e is what the codec has not yet
 * delivered: a contribution encodes u = delta + e and leaves e = u - D(u)
 * (spes_contrib_encode). Once the round commits, the residual is settled by
 * what became of that contribution. It is held for the shared block and for
 * the columns the node trains only, packed in the order of its contribution's
 * values. Pure computation; the node keeps it with its optimizer state. */
#ifndef SPES_SYNC_RESID_H
#define SPES_SYNC_RESID_H

#include <stddef.h>
#include <stdint.h>

#include "sync/sync.h"

/* spes_resid is a residual: the shared block, then each held column in ascending order. */
typedef struct spes_resid {
    size_t shared_numel, column_numel;
    int E;
    uint8_t *cols; /* (E) 1: the column's residual is held */
    int ncols;
    float *val; /* (shared_numel + ncols * column_numel) */
} spes_resid;

/* spes_resid_init makes a zero residual holding no column for a model of layout lo with E experts. */
int spes_resid_init(spes_resid *r, const spes_layout *lo, int E);

/* spes_resid_fini frees what r owns. */
void spes_resid_fini(spes_resid *r);

/* spes_resid_numel is how many values r holds. */
size_t spes_resid_numel(const spes_resid *r);

/* spes_resid_zero sets every value to 0 (the columns held stay). */
void spes_resid_zero(spes_resid *r);

/* spes_resid_hold makes r hold exactly the columns set in want (E entries): a column newly held
 * starts at 0 (a column dealt to the node), one no longer held is dropped. */
int spes_resid_hold(spes_resid *r, const uint8_t *want);

/* spes_resid_matches says whether r holds exactly the columns c carries (its values line up with c's). */
int spes_resid_matches(const spes_resid *r, const spes_contrib *c);

/* spes_resid_outcome is what became of a node's contribution to a round. */
typedef enum spes_resid_outcome {
    SPES_RESID_APPLIED = 0, /* in the commit: e = u - D(u) stands */
    SPES_RESID_LEFT_OUT,    /* valid but not in the commit (late): e = u, capped */
    SPES_RESID_REFUSED,     /* refused by the run: e = 0 */
} spes_resid_outcome;

/* spes_resid_settle applies outcome o to r after the contribution own (as decoded: base + D(u)
 * over its groups, the columns r holds) was encoded against base (full layout). Left out: each
 * value becomes e + D(u) (= u), and if their norm exceeds cap they are scaled down to it.
 * SPES_EINVAL if own's columns are not r's. */
int spes_resid_settle(spes_resid *r, spes_resid_outcome o, const spes_contrib *own, const float *base,
                      double cap);

/* spes_contrib_delta_norm is the L2 norm of c's delta against base over all its groups. */
double spes_contrib_delta_norm(const spes_contrib *c, const float *base);

#endif
