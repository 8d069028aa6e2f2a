/* outer.h: the outer optimizer of a SPES round. The round's mean delta (the
 * average of the contributors' deltas against the agreed state S_r, per
 * segment, as spes_aggregate forms it) is treated as an outer gradient and
 * applied with Nesterov momentum:
 *     d = mean delta;  m = mu * m + d;  S_{r+1} = S_r + lr * (d + mu * m)
 * in fp32, one rounding per operation, in that order, so that every node
 * (and a numpy recomputation) gets the same bytes. Segments nobody
 * contributed to (a column with no contributing owner, or everything in a
 * round without contributors) are left unchanged, momentum included. With
 * lr = 1 and mu = 0 the aggregation is spes_aggregate's, bit for bit. The
 * momentum is agreed state: it travels in the state blob and is covered by
 * the state digest ("SPESSTATE2") whenever mu != 0. See docs/convergence.md. */
#ifndef SPES_SYNC_OUTER_H
#define SPES_SYNC_OUTER_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "sync/sync.h"

/* spes_outer is the outer optimizer's settings and state for one run. */
typedef struct spes_outer {
    float lr;   /* outer learning rate (1: plain averaging) */
    float mu;   /* Nesterov momentum (0: none, and no state) */
    float *mom; /* (total_numel) momentum buffer when mu != 0, else NULL; owned by the caller */
} spes_outer;

/* spes_outer_plain says whether o is plain averaging (NULL, or lr 1 and mu 0). */
int spes_outer_plain(const spes_outer *o);

/* spes_outer_has_state says whether o keeps a momentum buffer (mu != 0). */
int spes_outer_has_state(const spes_outer *o);

/* spes_aggregate_outer turns S_r (params, in place) into S_{r+1} as
 * spes_aggregate does, then applies the outer step to every segment with a
 * contributor; with spes_outer_plain(o) it is spes_aggregate exactly. The
 * momentum o->mom (total_numel floats) is updated in place. */
int spes_aggregate_outer(float *params, const spes_layout *lo, int E, const spes_contrib *const *cs, int n,
                         const spes_outer *o);

/* spes_state_digest2 is spes_state_digest when mom is NULL; otherwise the
 * SHA-256 of "SPESSTATE2", the round (int64 LE), numel (uint64 LE), the
 * parameters and then the momentum, each as numel little-endian fp32. */
int spes_state_digest2(const float *params, const float *mom, size_t numel, int64_t round, uint8_t out[32]);

#endif
