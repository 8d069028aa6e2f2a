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

/* spes__outer_step applies the outer step to n values of params (S_r on
 * entry) from the round's delta d: params + lr * d with m NULL, else the
 * Nesterov update of the momentum m and params + lr * (d + mu * m). */
void spes__outer_step(float *params, const float *d, size_t n, float *m, float lr, float mu);

/* spes__outer_seg is spes_aggregate_outer's segment function for the shared
 * walk (ctx: the spes_outer): the mean delta, then the outer step. */
void spes__outer_seg(void *ctx, float *params, size_t off, const float *const *vs, int k, size_t n,
                     float *acc);

/* spes_state_digest2 is spes_state_digest when mom is NULL; otherwise the
 * SHA-256 of "SPESSTATE2", the round (int64 LE), numel (uint64 LE), the
 * parameters and then the momentum, each as numel little-endian fp32. */
int spes_state_digest2(const float *params, const float *mom, size_t numel, int64_t round, uint8_t out[32]);

/* spes_outer_init sets o's lr and mu and, when mu != 0, makes sure o->mom
 * holds numel floats (a new buffer is zero; an existing one is kept). */
int spes_outer_init(spes_outer *o, double lr, double mu, size_t numel);

/* spes_outer_fini frees the momentum buffer. */
void spes_outer_fini(spes_outer *o);

/* spes_state_blob_size is the byte size of the state blob of numel values
 * (with_momentum: a SPESSTATE2 blob, which carries the outer momentum too). */
size_t spes_state_blob_size(size_t numel, int with_momentum);

/* spes_state_blob_make serialises a state as the blob peers fetch: exactly the
 * bytes spes_state_digest2 hashes (so the blob's name is the state digest),
 * "SPESSTATE1" without momentum, "SPESSTATE2" with it; malloc'd into *out. */
int spes_state_blob_make(const float *params, const float *mom, size_t numel, uint64_t round, uint8_t **out,
                         size_t *len);

/* spes_state_blob_parse reads a state blob from peer bytes into params (and
 * mom): it must be of round and numel, "SPESSTATE2" when mom is given and
 * "SPESSTATE1" otherwise; errors name origin. */
int spes_state_blob_parse(const uint8_t *buf, size_t len, size_t numel, uint64_t round, float *params,
                          float *mom, const char *origin);

#endif
