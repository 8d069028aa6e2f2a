/* shard.h: the sharded (butterfly) round of sync version 2: how the shared block is cut into shards,
 * the group blob that carries one shard (a node's contribution to it, or an aggregator's aggregate of
 * it) and the aggregate itself. Pure computation and byte codecs; no I/O. Every function gives the
 * same bytes on every machine (fp32, sequential sums in node-id order, no fused multiply-add). */
#ifndef SPES_SYNC_SHARD_H
#define SPES_SYNC_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "sync/sync.h"

/* SPES_SHARD_MIN is the fewest values a shard is planned with (256 Ki), unless the block is smaller. */
#define SPES_SHARD_MIN 262144

/* SPES_SHARD_MAX is the most shards a plan makes. */
#define SPES_SHARD_MAX 256

/* SPES_GROUP_HEADER is the size of a group blob's header. */
#define SPES_GROUP_HEADER 60

/* SPES_GROUP_NO_AUTHOR is the node field of an aggregate: the same bytes whoever computes it, so
 * that honest aggregators and auditors name the same blob (docs/design.md, "The sharded round"). */
#define SPES_GROUP_NO_AUTHOR (-1)

/* spes_group_kind is what a group blob carries. */
typedef enum spes_group_kind {
    SPES_GROUP_CONTRIB = 1,   /* one node's contribution to a shard (node: its author) */
    SPES_GROUP_AGGREGATE = 2, /* an aggregate of a shard (node: SPES_GROUP_NO_AUTHOR) */
} spes_group_kind;

/* spes_group_hdr is a group blob's header: the shard [offset, offset + count) of the shared block, shard
 * `shard` of `shards`, in round `round`; contributors is how many contributions an aggregate averaged
 * (0 for a contribution). */
typedef struct spes_group_hdr {
    uint32_t kind, codec; /* spes_group_kind, spes_codec */
    int64_t round;
    int32_t node;
    uint32_t shard, shards;
    uint64_t offset, count;
    uint32_t contributors;
} spes_group_hdr;

/* spes_shard_plan cuts a shared block of shared_numel values among `capable` aggregator-capable nodes
 * (<= 0 counts as 1) and returns the number of shards K (1..SPES_SHARD_MAX), shard j covering
 * [off[j], off[j + 1]) with off[0] = 0 and off[K] = shared_numel; off holds SPES_SHARD_MAX + 1 entries.
 * K0 = min(capable, shared_numel / SPES_SHARD_MIN) within 1..SPES_SHARD_MAX, every shard but the last
 * ceil(shared_numel / K0) values rounded up to a multiple of SPES_Q8_BLOCK, empty trailing shards
 * dropped (so K <= K0); an empty block is one empty shard. */
int spes_shard_plan(size_t shared_numel, int capable, size_t *off);

/* spes_group_size is the exact size of a group blob of count values in the codec (0: unknown codec). */
size_t spes_group_size(uint32_t codec, size_t count);

/* spes_group_encode serialises the header h and the shard's h->count new values val (base: the agreed
 * values of that range) into a malloc'd buffer *out of *len bytes, which the caller frees. The values
 * travel as a contribution's group does (sync.h): fp32 the values, bf16 bf16(value - base), q8ef and
 * topk the codec of u = (value - base) + ef (ef may be NULL: zero), and ef becomes u - D(u). A
 * non-finite u is refused (SPES_ERANGE) and leaves ef untouched; a header that spes_group_decode would
 * refuse (unknown kind or codec, contributors not 0 for a contribution or 0 for an aggregate) is
 * SPES_EINVAL. */
int spes_group_encode(const spes_group_hdr *h, const float *val, const float *base, float *ef, uint8_t **out,
                      size_t *len);

/* spes_group_decode parses and checks a group blob of len bytes from a peer against what was asked
 * for: kind, codec, round, node, shard, shards, offset and count must equal want's (a node that differs
 * is SPES_EAUTH, a round SPES_ESTATE, anything else SPES_EFORMAT); contributors must be 0 for a
 * contribution and, for an aggregate, at least 1 and want's when want's is not 0; the length must be
 * exactly spes_group_size. It then decodes want->count values into val (base + D, or the fp32 values
 * themselves), each finite and within max_delta of base, and fills h. Nothing past len is read and
 * nothing is allocated. Errors name `origin` and the first bad field or value. */
int spes_group_decode(spes_group_hdr *h, float *val, const uint8_t *buf, size_t len,
                      const spes_group_hdr *want, const float *base, float max_delta, const char *origin);

/* spes_shard_mean writes into out (n floats; may be base) the new values of a shard after averaging
 * the k >= 1 decoded contributions vs (node-id order) against base, exactly as spes_aggregate does: a
 * single one's values bit for bit, else base + (the fp32 sum of v - base in order) / k. */
int spes_shard_mean(float *out, const float *base, const float *const *vs, int k, size_t n);

/* spes_shard_acc_add adds a decoded contribution's deltas v - base to the fp32 sum acc (n floats):
 * called for k >= 2 contributions in node-id order from acc = 0, then spes_shard_acc_mean, it gives
 * spes_shard_mean's bytes while holding one contribution at a time. */
void spes_shard_acc_add(float *acc, const float *v, const float *base, size_t n);

/* spes_shard_acc_mean writes base + acc / k into out (n floats): the mean of the k contributions summed. */
void spes_shard_acc_mean(float *out, const float *base, const float *acc, int k, size_t n);

#endif
