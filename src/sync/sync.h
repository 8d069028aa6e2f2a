/* sync.h: SPES round state: contributions (deltas against the agreed state),
 * their wire codec (fp32, bf16 or q8ef), deterministic aggregation, and the state
 * digest. Pure computation and byte codecs; no I/O. Aggregation is in node-id
 * order with fp32 accumulation, so every node computes the same bytes. */
#ifndef SPES_SYNC_SYNC_H
#define SPES_SYNC_SYNC_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

/* spes_codec is how a contribution's deltas travel. */
typedef enum spes_codec {
    SPES_CODEC_FP32 = 1,
    SPES_CODEC_BF16 = 2,
    SPES_CODEC_Q8EF = 3, /* int8 blocks of SPES_Q8_BLOCK with an fp32 scale, error feedback */
    SPES_CODEC_TOPK = 4, /* per chunk the SPES_TOPK_K largest values on a 2-bit codebook, error feedback */
} spes_codec;

/* SPES_Q8_BLOCK is the q8ef codec's block: 128 values share one scale. */
#define SPES_Q8_BLOCK 128

/* The topk codec keeps SPES_TOPK_K values of every chunk of SPES_TOPK_CHUNK (all of a shorter one's
 * up to K): their 12-bit indices and 2-bit codes into 4 fp32 levels. */
#define SPES_TOPK_CHUNK 4096
#define SPES_TOPK_K 64

/* spes_codec_from_name maps "fp32", "bf16", "q8ef", "topk" to the codec (0: unknown). */
spes_codec spes_codec_from_name(const char *name);

/* spes_contrib is one node's decoded contribution to one round. It holds the
 * node's NEW values of what it trained (shared block, then owned columns);
 * the delta against the base is what aggregation averages. On the wire the
 * fp32 codec carries the values themselves (so a single contributor's values
 * arrive bit for bit, and one node is exactly standalone training); the bf16
 * codec carries bf16(value - base), since bf16 values would lose too much;
 * q8ef carries the delta plus the node's error-feedback residual quantised to
 * int8 blocks (docs/design.md, "Codecs"). Decoded values are base + delta. */
typedef struct spes_contrib {
    int64_t round;
    int32_t node;    /* node id (aggregation order) */
    uint64_t tokens; /* tokens trained this round */
    float loss_mean; /* mean training CE over the round's steps */
    uint32_t codec;  /* spes_codec it arrived in (decode), 0 when made here */
    int ncols;
    int32_t *cols; /* (ncols) owned columns, strictly increasing */
    size_t shared_numel, column_numel;
    float *val;       /* (shared_numel + ncols * column_numel): shared, then columns */
    int columns_only; /* the shared block travels apart (sharded rounds): encoding leaves it out, and a
                       * decoded one holds base's values there; aggregation leaves it alone */
} spes_contrib;

/* spes_contrib_make copies the node's values cur over the shared block and the
 * columns set in owned (E entries); the contribution owns its arrays. */
int spes_contrib_make(spes_contrib *c, const spes_layout *lo, int E, const uint8_t *owned, const float *cur,
                      int64_t round, int32_t node, uint64_t tokens, float loss_mean);

/* spes_contrib_fini frees what the contribution owns. */
void spes_contrib_fini(spes_contrib *c);

/* spes_contrib_group_base returns the agreed values (in base, the full layout) matching group g of
 * c's values (-1: the shared block, else its column cols[g]) and their count in *n. */
const float *spes_contrib_group_base(const spes_contrib *c, const float *base, int g, size_t *n);

/* spes_contrib_encode serialises c with the codec into a malloc'd buffer;
 * base (the agreed state, full layout) is needed by the bf16 and q8ef codecs.
 * ef (may be NULL: zero) is the node's error-feedback residual in the order of
 * c's values (shared, then c's columns; sync/resid.h), used by q8ef and topk:
 * each value encodes u = (value - base) + ef, and ef becomes u - D(u). A
 * non-finite u is refused (SPES_ERANGE) and leaves ef untouched. */
int spes_contrib_encode(const spes_contrib *c, spes_codec codec, const float *base, float *ef, uint8_t **out,
                        size_t *len);

/* spes_q8_encode quantises n values of u into dst (per block of SPES_Q8_BLOCK:
 * f32 scale = max|u| / 127, then int8 q = clamp(rint(u / scale), -127, 127),
 * 0 when the scale is 0) and, when resid is not NULL, writes u - q * scale to
 * it; dst holds spes_q8_size(n) bytes. SPES_ERANGE on a non-finite value. */
int spes_q8_encode(const float *u, size_t n, uint8_t *dst, float *resid);

/* spes_q8_size is the encoded size of n values: 4 bytes per block plus one per value. */
size_t spes_q8_size(size_t n);

/* spes_topk_encode sparsifies n values of u into dst (per chunk of SPES_TOPK_CHUNK: the k =
 * min(SPES_TOPK_K, chunk) largest |u|, ties to the lower index; sorted by value (ties by index)
 * they fall in 4 rank groups (k*c/4 .. k*(c+1)/4), whose fp32 means are the chunk's levels, each
 * the sequential sum in that order divided by the count (0 for an empty group); on the wire the 4
 * levels, the k indices ascending as 12-bit fields, then their 2-bit codes, both packed LSB first)
 * and, when resid is not NULL, writes u - D to it (u where nothing was kept). dst holds
 * spes_topk_size(n) bytes. SPES_ERANGE on a non-finite value. */
int spes_topk_encode(const float *u, size_t n, uint8_t *dst, float *resid);

/* spes_topk_size is the encoded size of n values. */
size_t spes_topk_size(size_t n);

/* spes__values_size is the encoded size of one group of n values in the codec (0: unknown codec). */
size_t spes__values_size(uint32_t codec, size_t n);

/* spes__values_encode writes one group of n values val (agreed values base) in the codec to dst
 * (spes__values_size bytes): fp32 the values, bf16 bf16(value - base), q8ef and topk the codec of
 * u = (value - base) + ef (ef may be NULL: zero), with u - D(u) left in u (n floats of the caller's;
 * unused by fp32 and bf16). SPES_ERANGE on a non-finite u; ef is only read. */
int spes__values_encode(uint8_t *dst, uint32_t codec, const float *val, const float *base, const float *ef,
                        size_t n, float *u);

/* spes__values_decode reads one group of n values in the codec (a known one) from src, which holds
 * spes__values_size bytes (the caller checked), against the agreed values base into val, each checked
 * finite and within max_delta of its base (q8ef: q = -128 and a negative or non-finite scale refused;
 * topk: indices out of order or range and non-finite levels refused). Errors name origin, then what
 * (e.g. "contribution") and the value's number counted from first. */
int spes__values_decode(float *val, const uint8_t *src, uint32_t codec, const float *base, size_t n,
                        size_t first, float max_delta, const char *what, const char *origin);

/* spes_contrib_max_size is the largest encoded contribution for a model of
 * layout lo with E experts (any codec, every column): a bound on what a peer may
 * send as one before any byte of it is fetched. */
size_t spes_contrib_max_size(const spes_layout *lo, int E);

/* spes_contrib_decode parses and checks a contribution from peer bytes for a
 * model of layout lo with E experts against the agreed state base: magic,
 * version, codec, sizes, columns in range and increasing, every value finite
 * and |value - base| <= max_delta. Errors name `origin` (e.g. the peer) and
 * the first bad field or value. */
int spes_contrib_decode(spes_contrib *c, const uint8_t *buf, size_t len, const spes_layout *lo, int E,
                        const float *base, float max_delta, const char *origin);

/* spes_contrib_check_author checks a decoded contribution against what its announcer was told:
 * it must be of round `round`, name member `node`, and carry exactly the columns set in cols (E
 * entries), no more and no fewer. Errors name `origin` and the first difference. */
int spes_contrib_check_author(const spes_contrib *c, int64_t round, int32_t node, const uint8_t *cols, int E,
                              const char *origin);

/* spes_aggregate turns the agreed state S_r (params, in place) into S_{r+1}:
 * shared += mean over contributions of (value - S_r); each column += mean over
 * the contributions that carry it; the sum is accumulated in fp32 in node-id
 * order and divided by the count; with a single contributor the result is its
 * value exactly. Contributions must be sorted by node id (SPES_EINVAL otherwise). */
int spes_aggregate(float *params, const spes_layout *lo, int E, const spes_contrib *const *cs, int n);

/* spes__segment_fn updates n floats of params (at offset off of the full layout)
 * from the k contributions' values vs (in node-id order), with acc as scratch. */
typedef void (*spes__segment_fn)(void *ctx, float *params, size_t off, const float *const *vs, int k,
                                 size_t n, float *acc);

/* spes__mean_segment is spes_aggregate's update of n floats of params from
 * the k contributions' values vs: a single one's values exactly, else params
 * += (the fp32 sum of v - params in order) / k; acc is scratch. */
void spes__mean_segment(float *params, const float *const *vs, int k, size_t n, float *acc);

/* spes__aggregate_walk checks the contributions' order and runs seg over the
 * shared block and over every column that has contributing owners: the walk
 * that spes_aggregate and the outer optimizer (sync/outer.h) share. */
int spes__aggregate_walk(float *params, const spes_layout *lo, int E, const spes_contrib *const *cs, int n,
                         spes__segment_fn seg, void *ctx);

/* spes_state_digest is the SHA-256 of the canonical serialisation of a state:
 * "SPESSTATE1", the round (int64 LE), total_numel (uint64 LE), then every
 * parameter as little-endian fp32 in layout order. */
int spes_state_digest(const float *params, size_t numel, int64_t round, uint8_t out[32]);

/* spes_bf16_from_f32 rounds to nearest even (NaN stays NaN). */
uint16_t spes_bf16_from_f32(float f);

/* spes_f32_from_bf16 widens a bf16 value. */
float spes_f32_from_bf16(uint16_t h);

#endif
