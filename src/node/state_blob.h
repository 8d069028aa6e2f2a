/* state_blob.h: the byte format of a state blob, the agreed state S_r that
 * nodes store and fetch by its digest: "SPESSTATE1" | round (u64) | numel
 * (u64) | numel float32 parameters, integers and floats little-endian (the
 * host's order; spes runs on little-endian hosts). Pure: no I/O. */
#ifndef SPES_NODE_STATE_BLOB_H
#define SPES_NODE_STATE_BLOB_H

#include <stddef.h>
#include <stdint.h>

#define SPES_STATE_BLOB_MAGIC "SPESSTATE1"
#define SPES_STATE_BLOB_HDR 26 /* magic (10) + round (8) + numel (8) */

/* spes_state_blob_size is the byte size of the state blob of total parameters. */
size_t spes_state_blob_size(size_t total);

/* spes_state_blob_write fills out (spes_state_blob_size(total) bytes) with the state of round. */
void spes_state_blob_write(uint8_t *out, const float *params, size_t total, uint64_t round);

/* spes_state_blob_read checks that buf is the state of round with total
 * parameters and copies them into params (origin names the blob in errors). */
int spes_state_blob_read(const uint8_t *buf, size_t len, size_t total, uint64_t round, float *params,
                         const char *origin);

#endif
