/* blob_internal.h: what the spes_blob files share (not part of the public API). */
#ifndef SPES_BLOB_INTERNAL_H
#define SPES_BLOB_INTERNAL_H

#include "blob/blob.h"

#include <pthread.h>

#define SPES__BLOB_MCACHE 8 /* manifests kept decoded for serving */

/* spes__blob_mref is a reference-counted decoded manifest of a held blob. */
typedef struct spes__blob_mref {
    uint8_t hash[32];
    spes_manifest m;
    int refs;      /* under the store's mutex */
    int cached;    /* still in the cache array */
    uint64_t used; /* last use tick */
} spes__blob_mref;

struct spes_blob_store {
    char *dir;
    uint32_t chunk_size;
    uint64_t max_bytes;
    spes_blob_keep_fn keep;
    void *keep_arg;
    pthread_mutex_t mu;
    spes__blob_mref *cache[SPES__BLOB_MCACHE];
    uint64_t tick;
    _Atomic uint64_t manifests_served, chunks_served, bytes_served, refused;
};

/* spes__blob_file writes "<dir>/<hex><suffix>" into out. */
int spes__blob_file(const spes_blob_store *s, const uint8_t hash[32], const char *suffix, char *out,
                    size_t n);

/* spes__blob_mref_get returns a held blob's decoded manifest (SPES_ENOENT if not held). */
int spes__blob_mref_get(spes_blob_store *s, const uint8_t hash[32], spes__blob_mref **out);

/* spes__blob_mref_put releases a reference from spes__blob_mref_get. */
void spes__blob_mref_put(spes_blob_store *s, spes__blob_mref *r);

/* spes__blob_chunk_header fills h for chunk index of the blob r describes
 * (SPES_ERANGE naming the blob if it has no such chunk). */
int spes__blob_chunk_header(const spes__blob_mref *r, uint32_t index, spes_chunk_header *h);

/* spes__blob_chunk_pread reads the h->length bytes of chunk h of a held blob into buf. */
int spes__blob_chunk_pread(spes_blob_store *s, const spes_chunk_header *h, void *buf);

/* spes__blob_install makes a verified file the blob m describes: writes
 * H.manifest, renames tmp_path to H, fsyncs the directory, then runs the GC. */
int spes__blob_install(spes_blob_store *s, const char *tmp_path, const spes_manifest *m);

/* spes__blob_pread_full reads exactly len bytes at off (SPES_EIO naming path otherwise). */
int spes__blob_pread_full(int fd, void *buf, size_t len, uint64_t off, const char *path);

/* spes__blob_pwrite_full writes exactly len bytes at off. */
int spes__blob_pwrite_full(int fd, const void *buf, size_t len, uint64_t off, const char *path);

/* spes__blob_conn is the fetching side's connection to one peer (conn.c). */
typedef struct spes__blob_conn spes__blob_conn;

/* spes__blob_conn_cb gets one reply (err 0) or failure for a slot, on an nng
 * thread; rep is valid only during the call, and the slot may be reused as
 * soon as the callback has handed its result on. */
typedef void (*spes__blob_conn_cb)(void *arg, int slot, int err, const void *rep, size_t len);

/* spes__blob_conn_open dials url (tls+tcp, or tcp when plain) expecting the
 * server certificate name `name` (NULL = any node), with nslots request slots. */
int spes__blob_conn_open(spes__blob_conn **out, const char *url, const char *name, spes_net_tls *tls,
                         int plain, int nslots, size_t max_msg, spes__blob_conn_cb cb, void *arg);

/* spes__blob_conn_send sends a request on an idle slot; cb reports its end. */
int spes__blob_conn_send(spes__blob_conn *c, int slot, const void *req, size_t len, int timeout_ms);

/* spes__blob_conn_connected says whether a connection is up now (TLS and SP done). */
int spes__blob_conn_connected(spes__blob_conn *c);

/* spes__blob_conn_down_ms is how long no connection has been up: since the dial, or since the
 * last one went (a peer that died or went off the network); 0 while one is up. ever (if not
 * NULL): whether one ever came up. */
uint64_t spes__blob_conn_down_ms(spes__blob_conn *c, int *ever);

/* spes__blob_conn_close aborts what is in flight (each callback runs once), then closes. */
void spes__blob_conn_close(spes__blob_conn *c);

/* spes__blob_hex returns the hex of a hash in a static-size buffer the caller provides. */
const char *spes__blob_hex(const uint8_t hash[32], char out[65]);

#endif
