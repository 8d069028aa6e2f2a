/* node.h: the node role, on every daemon: join the run, train the owned
 * columns for sync_interval steps from the agreed state S_r on a worker
 * thread, publish the contribution as a content-addressed blob, announce it,
 * then fetch the round's committed contributions, aggregate, merge, digest,
 * persist S_{r+1} and report the digest. The protocol's decisions are the state
 * machine of src/node/node.h, fed on the loop; the heavy work runs on the
 * worker thread (docs/node.md). */
#ifndef SPES_DAEMON_NODE_H
#define SPES_DAEMON_NODE_H

#include <protobuf-c/protobuf-c.h>
#include <stdint.h>

#include "blob/blob.h"
#include "daemon/daemon.h"

typedef struct spes_node spes_node;

/* spes_node_alloc prepares the node (blob store, persisted state) without starting it. */
int spes_node_alloc(spes_node **out, spes_daemon *d);

/* spes_node_start starts the worker thread and the join. */
int spes_node_start(spes_node *n);

/* spes_node_stop drains: abandons the round in progress, leaves the run, then
 * calls spes_daemon_stopped. */
void spes_node_stop(spes_node *n);

/* spes_node_free joins the worker and frees the node. */
void spes_node_free(spes_node *n);

/* spes_node_tick sends heartbeats and retries what failed. */
void spes_node_tick(spes_node *n);

/* spes_node_blobs returns the node's blob store (thread-safe). */
spes_blob_store *spes_node_blobs(spes_node *n);

/* spes_node_forward_status relays a status request to the coordinator. */
void spes_node_forward_status(spes_node *n, const uint8_t *data, size_t len, spes_reply_fn reply, void *ctx);

/* spes_node_validate asks the worker to fetch and check the given announced
 * contributions, each pinned to its announced manifest (coordinator's own
 * node); the result goes to spes_coord_validated. */
int spes_node_validate(spes_node *n, uint64_t round, int count, const uint8_t (*hashes)[32],
                       const uint8_t (*manifests)[32], const char **urls, const char **names,
                       const uint32_t *ids, const uint8_t *cols);

/* spes_node_put_state stores a state (total floats of round) as a blob named by its
 * digest, so that peers can fetch it (a restored checkpoint's state). */
int spes_node_put_state(spes_node *n, const float *params, size_t total, uint64_t round, uint8_t out[32]);

/* spes_node_put_state_outer is spes_node_put_state for a state that carries the
 * outer momentum mom (total floats; NULL: none), as a SPESSTATE2 blob. */
int spes_node_put_state_outer(spes_node *n, const float *params, const float *mom, size_t total,
                              uint64_t round, uint8_t out[32]);

/* spes_node_status fills loss, tokens/s, round and step of this node. */
void spes_node_status(spes_node *n, double *loss, double *tps, uint64_t *round, uint64_t *step);

#endif
