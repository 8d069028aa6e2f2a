/* blob.h: content-addressed blobs: an on-disk store, a server that answers
 * manifest and chunk requests from it, and a parallel, verifying, resumable
 * fetch from several peers over spes_net (mutual TLS).
 *
 * Store layout (one directory, files named by the blob's lower-case hex SHA-256 H):
 *   H                the blob's bytes (only ever created by rename after the
 *                    whole-blob hash was verified; immutable afterwards)
 *   H.manifest       its manifest (proto/bulk.h encoding), written before H
 *   H.part           a fetch in progress, chunks written at their offsets
 *   H.part.manifest  the manifest that fetch follows
 *   H.part.map       bitmap of the chunks already written (bit i LSB-first)
 *   .put-XXXXXX      a put in progress
 *
 * Wire (request envelopes from proto/proto.h, raw bulk replies from proto/bulk.h):
 *   BlobWant{H, want_manifest=1}       -> the manifest bytes ("SPMF...")
 *   BlobWant{H, want_manifest=0}       -> BlobHave{blobs=[{H, size, manifest_hash}]}
 *   ChunkRequest{H, first=i, count=1}  -> chunk header + raw bytes ("SPCK...")
 *   anything refused                   -> an Error envelope (NOT_FOUND for unknown blobs)
 * One chunk per request: parallelism comes from several requests in flight.
 *
 * Threads: store functions are thread-safe (serving runs on nng threads).
 * spes_blob_fetch blocks the calling thread (run it on a worker, never on a
 * libuv loop); its progress callback runs on that same thread. */
#ifndef SPES_BLOB_BLOB_H
#define SPES_BLOB_BLOB_H

#include "net/net.h"
#include "pki/pki.h"
#include "proto/bulk.h"
#include "proto/proto.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* ---- store ---- */

typedef struct spes_blob_store spes_blob_store;

/* spes_blob_keep_fn says whether the GC must keep a blob (1 keep, 0 may delete). */
typedef int (*spes_blob_keep_fn)(void *arg, const uint8_t hash[32]);

/* spes_blob_store_opts configures spes_blob_store_open (all fields optional). */
typedef struct spes_blob_store_opts {
    uint32_t chunk_size;    /* chunk size of blobs put here (default SPES_CHUNK_SIZE_DEFAULT) */
    uint64_t max_bytes;     /* 0 = unbounded; else GC runs after each put/fetch */
    spes_blob_keep_fn keep; /* GC hook: blobs it keeps are never collected */
    void *keep_arg;
} spes_blob_store_opts;

/* spes_blob_serve_stats counts what the store served (for tests and status). */
typedef struct spes_blob_serve_stats {
    uint64_t manifests_served;
    uint64_t chunks_served;
    uint64_t bytes_served;
    uint64_t refused;
} spes_blob_serve_stats;

/* spes_blob_store_open opens (creating if needed) a store directory. */
int spes_blob_store_open(spes_blob_store **out, const char *dir, const spes_blob_store_opts *o);

/* spes_blob_store_close frees the store handle (files stay). */
void spes_blob_store_close(spes_blob_store *s);

/* spes_blob_store_dir returns the store's directory. */
const char *spes_blob_store_dir(const spes_blob_store *s);

/* spes_blob_put stores a buffer; hash_out (optional) gets its SHA-256. Putting a
 * blob already held is a success that writes nothing. */
int spes_blob_put(spes_blob_store *s, const void *data, size_t len, uint8_t hash_out[32]);

/* spes_blob_put_file stores a copy of a file, streaming it (no whole-file buffer). */
int spes_blob_put_file(spes_blob_store *s, const char *path, uint8_t hash_out[32]);

/* spes_blob_has returns 1 if the whole blob and its manifest are held, else 0. */
int spes_blob_has(spes_blob_store *s, const uint8_t hash[32]);

/* spes_blob_path writes the blob's file name into out (it exists only if held). */
int spes_blob_path(const spes_blob_store *s, const uint8_t hash[32], char *out, size_t n);

/* spes_blob_manifest_get returns a copy of a held blob's manifest (caller
 * spes_manifest_fini's it); SPES_ENOENT if the blob is not held. */
int spes_blob_manifest_get(spes_blob_store *s, const uint8_t hash[32], spes_manifest *out);

/* spes_blob_open returns a read-only descriptor of a held blob (caller closes). */
int spes_blob_open(spes_blob_store *s, const uint8_t hash[32], int *fd);

/* spes_blob_chunk_read reads chunk index of a held blob into buf (cap bytes, at
 * least the chunk's length) and fills its header h (h->length = bytes read). */
int spes_blob_chunk_read(spes_blob_store *s, const uint8_t hash[32], uint32_t index, void *buf, size_t cap,
                         spes_chunk_header *h);

/* spes_blob_delete removes a blob, its manifest and any partial fetch of it. */
int spes_blob_delete(spes_blob_store *s, const uint8_t hash[32]);

/* spes_blob_store_usage sums the bytes of held blobs, manifests and partial
 * fetches (*bytes) and counts held blobs (*nblobs); either may be NULL. */
int spes_blob_store_usage(spes_blob_store *s, uint64_t *bytes, uint32_t *nblobs);

/* spes_blob_gc deletes held blobs and stopped partial fetches, oldest first,
 * that the keep hook does not keep and that are not `protect` (may be NULL),
 * until usage <= max_bytes (a fetch still running is never touched);
 * *ndeleted (optional) gets the count. SPES_ERANGE if it could not get there. */
int spes_blob_gc(spes_blob_store *s, uint64_t max_bytes, const uint8_t *protect, int *ndeleted);

/* spes_blob_store_stats copies the serving counters. */
void spes_blob_store_stats(spes_blob_store *s, spes_blob_serve_stats *out);

/* ---- serving ---- */

/* spes_blob_handle answers one request (a BlobWant or ChunkRequest envelope)
 * from the store: *rep (malloc'd, caller frees) is always set on return, to the
 * answer or to an Error envelope; the return value is 0 or the refusal's code.
 * Reads one chunk from disk per request, never a whole blob. */
int spes_blob_handle(spes_blob_store *s, const void *req, size_t len, uint8_t **rep, size_t *rep_len);

/* spes_blob_serve_request answers a blob request that arrived on a spes_net
 * server, as spes_blob_handle does, and replies (or drops it): chunk bytes are
 * read from disk straight into the reply message. Callable on nng threads. */
void spes_blob_serve_request(spes_blob_store *s, spes_net_request *req);

typedef struct spes_blob_server spes_blob_server;

/* spes_blob_server_open serves a store on a spes_net server (o->handler and
 * o->arg are ignored and replaced; o->contexts defaults to 16, o->max_msg to
 * 64 KiB since requests are small). */
int spes_blob_server_open(spes_blob_server **out, spes_blob_store *s, const spes_net_server_opts *o);

/* spes_blob_server_port returns the bound TCP port. */
int spes_blob_server_port(const spes_blob_server *b);

/* spes_blob_server_close stops serving (requests in flight are dropped). */
void spes_blob_server_close(spes_blob_server *b);

/* SPES_BLOB_MAX_REQUEST is the largest request a daemon's endpoint takes: a
 * pushed piece (proto.h's SPES_PROTO_PUSH_LIMIT); every other request is a
 * small envelope (SPES_PROTO_SMALL_LIMIT), and the list-carrying messages
 * (4 MiB) are replies, which travel the other way under the caller's own limit. */
#define SPES_BLOB_MAX_REQUEST (SPES_PROTO_HEADER_LEN + SPES_PROTO_PUSH_LIMIT)

/* SPES_BLOB_LANE_CONTEXTS is how many blob requests a daemon endpoint answers
 * at once: its chunk replies in memory (one chunk each) are bounded by it. */
#define SPES_BLOB_LANE_CONTEXTS 64

/* SPES_BLOB_CONTROL_CONTEXTS is the default number of other requests a daemon
 * endpoint handles at once. */
#define SPES_BLOB_CONTROL_CONTEXTS 32

/* SPES_BLOB_PUSH_CONTEXTS is how many pushed pieces a daemon endpoint takes at once. */
#define SPES_BLOB_PUSH_CONTEXTS 8

typedef struct spes_blob_push_rx spes_blob_push_rx; /* push.c, below */

/* spes_blob_endpoint_open opens a daemon's endpoint: blob requests (BlobWant,
 * ChunkRequest) are answered from the store on a lane of their own with
 * SPES_BLOB_LANE_CONTEXTS contexts, pushed blobs (BlobPush, BlobPiece) by push
 * (NULL: refused) on a third with SPES_BLOB_PUSH_CONTEXTS, every other request
 * goes to o->handler on another lane with o->contexts (default
 * SPES_BLOB_CONTROL_CONTEXTS), so that no kind can hold another's contexts;
 * o->max_msg defaults to SPES_BLOB_MAX_REQUEST; the other limits are o's
 * (spes_net's defaults). */
int spes_blob_endpoint_open(spes_net_server **out, spes_blob_store *s, spes_blob_push_rx *push,
                            const spes_net_server_opts *o);

/* ---- fetching ---- */

/* spes_blob_peer names one peer that may hold a blob. */
typedef struct spes_blob_peer {
    const char *url;  /* tls+tcp://host:port */
    const char *name; /* expected certificate name, NULL = any node */
} spes_blob_peer;

/* spes_blob_progress is what a fetch reports after each chunk. */
typedef struct spes_blob_progress {
    uint32_t chunk_count;
    uint32_t chunks_done; /* including resumed ones */
    uint64_t bytes_done;
    uint64_t total_size;
    int peers_live;
} spes_blob_progress;

/* spes_blob_progress_fn is called on the fetching thread (never under a lock). */
typedef void (*spes_blob_progress_fn)(void *arg, const spes_blob_progress *p);

/* spes_blob_fetch_opts configures spes_blob_fetch. */
/* SPES_BLOB_WINDOW_TOTAL is the default number of chunk requests in flight
 * over all peers of a fetch: one peer far away needs a deep window (bandwidth
 * x round trip), many peers need only a few each. */
#define SPES_BLOB_WINDOW_TOTAL 16

typedef struct spes_blob_fetch_opts {
    spes_net_tls *tls;            /* required unless plain */
    int plain;                    /* tcp:// without TLS (tests only) */
    int window;                   /* requests in flight per peer (default: SPES_BLOB_WINDOW_TOTAL
                                   * shared among the peers, at least 2 each) */
    int timeout_ms;               /* per request (default 30000) */
    int max_peer_errors;          /* transport failures in a row before a peer is dropped (default 2) */
    int connect_ms;               /* a peer not connected (TLS and SP done) this long after the fetch
                                   * dialled it is dropped, its requests ended (default 10000) */
    const uint8_t *manifest_hash; /* optional: the manifest must hash to this */
    uint64_t max_size;            /* optional: a manifest claiming more bytes is refused (0: no limit) */
    atomic_int *cancel;           /* optional: set non-zero to stop; the fetch returns SPES_EINTR */
    spes_blob_progress_fn progress;
    void *progress_arg;
} spes_blob_fetch_opts;

/* spes_blob_fetch_stats says how a fetch went. */
typedef struct spes_blob_fetch_stats {
    uint32_t chunks_fetched; /* verified chunks received in this call */
    uint32_t chunks_resumed; /* chunks found already written by an earlier call */
    uint32_t chunk_requests; /* chunk requests sent */
    uint32_t bad_chunks;     /* chunks refused (hash or header wrong) */
    uint32_t transport_errors;
    int peers_used;    /* peers that offered a matching manifest */
    int peers_dropped; /* dropped for a bad chunk or repeated failures */
} spes_blob_fetch_stats;

/* spes_blob_fetch gets blob `hash` into the store from the given peers: the
 * manifest first (its blob hash must be `hash`, and its own hash
 * o->manifest_hash if given), then chunks in parallel from every peer holding
 * it, each verified on arrival and written at its offset into H.part; the
 * finished file is hashed again as a whole before it is renamed to H. Memory
 * is bounded by peers x window x chunk size. An interrupted fetch (cancel,
 * crash, every peer gone) leaves H.part and H.part.map, and the next call
 * fetches only the missing chunks. Returns 0 at once if the blob is held;
 * st (optional) gets the counters either way. */
int spes_blob_fetch(spes_blob_store *s, const uint8_t hash[32], const spes_blob_peer *peers, int npeers,
                    const spes_blob_fetch_opts *o, spes_blob_fetch_stats *st);

/* ---- pushed blobs (push.c): how a node that cannot be dialled publishes ---- */

/* spes_blob_push_stats counts what a receiver took. */
typedef struct spes_blob_push_stats {
    uint64_t started;   /* pushes begun */
    uint64_t completed; /* blobs checked and held */
    uint64_t refused;   /* requests refused */
    uint64_t bytes;     /* piece bytes written */
    uint64_t in_progress;
} spes_blob_push_stats;

/* spes_blob_push_rx_open takes pushed blobs into store s: one unfinished push per
 * certificate name, at most max_pushers names at once; none until
 * spes_blob_push_rx_limit gives the largest blob taken. Deletes the unfinished
 * pushes a killed daemon left in the store. */
int spes_blob_push_rx_open(spes_blob_push_rx **out, spes_blob_store *s, int max_pushers);

/* spes_blob_push_rx_close drops unfinished pushes and frees rx (NULL is fine). */
void spes_blob_push_rx_close(spes_blob_push_rx *rx);

/* spes_blob_push_rx_limit sets the largest blob a push may carry (0: none taken). Thread-safe. */
void spes_blob_push_rx_limit(spes_blob_push_rx *rx, uint64_t max_size);

/* spes_blob_push_rx_stats copies the counters. */
void spes_blob_push_rx_stats(spes_blob_push_rx *rx, spes_blob_push_stats *out);

/* spes_blob_push_handle answers one BlobPush or BlobPiece envelope from peer:
 * *rep (malloc'd, caller frees) is set to an Ack ("ok", "held", "complete") or
 * an Error naming what was refused; returns 0 or the refusal's code. rx NULL
 * refuses every push. Thread-safe (called on nng threads). */
int spes_blob_push_handle(spes_blob_push_rx *rx, const spes_pki_identity *peer, const void *req, size_t len,
                          uint8_t **rep, size_t *rep_len);

/* spes_blob_push_opts configures spes_blob_push. */
typedef struct spes_blob_push_opts {
    spes_net_tls *tls;  /* required unless plain */
    int plain;          /* tcp:// without TLS (tests only) */
    int window;         /* pieces in flight (default 8) */
    int timeout_ms;     /* per piece (default 30000) */
    atomic_int *cancel; /* optional: set non-zero to stop (SPES_EINTR) */
} spes_blob_push_opts;

/* spes_blob_push_result says how a push went. */
typedef struct spes_blob_push_result {
    int held;       /* the receiver held the blob already: nothing was sent */
    uint64_t bytes; /* blob bytes the receiver took */
} spes_blob_push_result;

/* spes_blob_push hands held blob `hash` to the daemon at `to` (which must be able
 * to take pushes): its manifest, then its bytes in SPES_PROTO_PUSH_PIECE pieces,
 * a piece that failed in transport sent again up to twice; returns 0 once the
 * receiver holds the whole blob checked against the manifest. Blocks. */
int spes_blob_push(spes_blob_store *s, const uint8_t hash[32], const spes_blob_peer *to,
                   const spes_blob_push_opts *o, spes_blob_push_result *res);

#endif
