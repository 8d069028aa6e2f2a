/* serve.c: answers BlobWant and ChunkRequest envelopes from a blob store, and
 * a ready-made spes_net server doing so. A chunk reply is its 96-byte header
 * followed by the bytes read from disk for that one chunk; this file never
 * reads a whole blob, never answers for a blob it does not hold, and never
 * trusts a request's fields before the codec and the manifest have checked them. */
#include "blob/blob_internal.h"

#include "core/error.h"
#include "core/log.h"
#include "proto/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* refuse sets *rep to an Error envelope for err (the current error message). */
static int refuse(spes_blob_store *s, int err, int in_reply_to, uint8_t **rep, size_t *rep_len)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", spes_errmsg());
    s->refused++;
    *rep = NULL;
    *rep_len = 0;
    if (spes_proto_encode_error(err, msg, in_reply_to, rep, rep_len) != 0) {
        *rep = NULL;
        *rep_len = 0;
    }
    spes_errf(err, "%s", msg);
    return err;
}

static int hash_field(const ProtobufCBinaryData *b, const char *what)
{
    if (b->len != 32)
        return spes_errf(SPES_EFORMAT, "%s.blob_hash: %zu bytes, expected 32", what, b->len);
    return 0;
}

static int answer_manifest(spes_blob_store *s, const uint8_t hash[32], uint8_t **rep, size_t *rep_len)
{
    spes__blob_mref *r;
    int rc = spes__blob_mref_get(s, hash, &r);
    if (rc)
        return rc;
    rc = spes_manifest_encode(&r->m, rep, rep_len);
    spes__blob_mref_put(s, r);
    if (!rc)
        s->manifests_served++;
    return rc;
}

static int answer_have(spes_blob_store *s, const uint8_t hash[32], uint8_t **rep, size_t *rep_len)
{
    spes__blob_mref *r;
    uint8_t mh[32];
    int rc = spes__blob_mref_get(s, hash, &r);
    if (rc)
        return rc;
    Spes__Wire__BlobInfo info = SPES__WIRE__BLOB_INFO__INIT;
    Spes__Wire__BlobInfo *infos[1] = {&info};
    Spes__Wire__BlobHave have = SPES__WIRE__BLOB_HAVE__INIT;
    info.blob_hash.data = (uint8_t *)hash;
    info.blob_hash.len = 32;
    info.size = r->m.total_size;
    rc = spes_manifest_hash(&r->m, mh);
    spes__blob_mref_put(s, r);
    if (rc)
        return rc;
    info.manifest_hash.data = mh;
    info.manifest_hash.len = 32;
    have.n_blobs = 1;
    have.blobs = infos;
    return spes_proto_encode(SPES_MSG_BLOB_HAVE, &have.base, rep, rep_len);
}

/* reply_to says where a chunk reply goes: a malloc'd *rep, or in place into a
 * buffer of the transport's (alloc), which saves copying the chunk once more. */
typedef struct reply_to {
    void *(*alloc)(void *arg, size_t len); /* NULL: malloc; else NULL means out of memory */
    void *arg;
    int in_place; /* set when the reply went into alloc's buffer */
} reply_to;

static int answer_chunk(spes_blob_store *s, const uint8_t hash[32], uint32_t index, reply_to *to,
                        uint8_t **rep, size_t *rep_len)
{
    spes__blob_mref *r;
    spes_chunk_header h;
    uint8_t *buf;
    int rc = spes__blob_mref_get(s, hash, &r);
    if (rc)
        return rc;
    rc = spes__blob_chunk_header(r, index, &h);
    spes__blob_mref_put(s, r);
    if (rc)
        return rc;
    size_t n = SPES_CHUNK_HEADER_LEN + (size_t)h.length;
    buf = to->alloc ? to->alloc(to->arg, n) : malloc(n);
    if (!buf)
        return spes_errf(SPES_ENOMEM, "no memory for a chunk reply of %zu bytes", n);
    if ((rc = spes_chunk_header_encode(&h, buf)) != 0 ||
        (rc = spes__blob_chunk_pread(s, &h, buf + SPES_CHUNK_HEADER_LEN)) != 0) {
        if (!to->alloc)
            free(buf);
        return rc;
    }
    if (to->alloc) {
        to->in_place = 1;
    } else {
        *rep = buf;
    }
    *rep_len = n;
    s->chunks_served++;
    s->bytes_served += h.length;
    return 0;
}

static int dispatch(spes_blob_store *s, int type, const ProtobufCMessage *msg, reply_to *to, uint8_t **rep,
                    size_t *rep_len)
{
    if (type == SPES_MSG_BLOB_WANT) {
        const Spes__Wire__BlobWant *w = (const Spes__Wire__BlobWant *)msg;
        int rc = hash_field(&w->blob_hash, "BlobWant");
        if (rc)
            return rc;
        return w->want_manifest ? answer_manifest(s, w->blob_hash.data, rep, rep_len)
                                : answer_have(s, w->blob_hash.data, rep, rep_len);
    }
    if (type == SPES_MSG_CHUNK_REQUEST) {
        const Spes__Wire__ChunkRequest *c = (const Spes__Wire__ChunkRequest *)msg;
        int rc = hash_field(&c->blob_hash, "ChunkRequest");
        if (rc)
            return rc;
        if (c->chunk_count != 1)
            return spes_errf(SPES_ERANGE,
                             "ChunkRequest.chunk_count: %u, this server sends one chunk per request",
                             c->chunk_count);
        return answer_chunk(s, c->blob_hash.data, c->first_chunk, to, rep, rep_len);
    }
    const char *name = spes_proto_type_name(type);
    return spes_errf(SPES_EFORMAT, "%s: not a blob request (BlobWant or ChunkRequest)", name ? name : "?");
}

static int handle(spes_blob_store *s, const void *req, size_t len, reply_to *to, uint8_t **rep,
                  size_t *rep_len)
{
    int type = 0;
    ProtobufCMessage *msg = NULL;
    *rep = NULL;
    *rep_len = 0;
    int rc = spes_proto_decode(req, len, &type, &msg);
    if (rc)
        return refuse(s, rc, type, rep, rep_len);
    rc = dispatch(s, type, msg, to, rep, rep_len);
    spes_proto_free(msg);
    if (rc)
        return refuse(s, rc, type, rep, rep_len);
    return 0;
}

int spes_blob_handle(spes_blob_store *s, const void *req, size_t len, uint8_t **rep, size_t *rep_len)
{
    reply_to to = {0};
    return handle(s, req, len, &to, rep, rep_len);
}

static void *net_alloc(void *arg, size_t len)
{
    return spes_net_reply_alloc(arg, len);
}

void spes_blob_serve_request(spes_blob_store *s, spes_net_request *req)
{
    size_t len = 0, rep_len = 0;
    uint8_t *rep = NULL;
    reply_to to = {.alloc = net_alloc, .arg = req};
    spes_net_request_set_class(req, SPES_NET_BLOB);
    const void *data = spes_net_request_data(req, &len);
    if (handle(s, data, len, &to, &rep, &rep_len) != 0)
        log_debug("blob request from '%s' refused: %s", spes_net_request_peer(req)->name, spes_errmsg());
    int rc = 0;
    if (to.in_place)
        rc = spes_net_reply_send(req);
    else if (rep)
        rc = spes_net_reply(req, rep, rep_len);
    else
        spes_net_request_drop(req);
    if (rc)
        log_warnx("blob reply to '%s' failed: %s", spes_net_request_peer(req)->name, spes_errmsg());
    free(rep);
}

/* ---- server ---- */

struct spes_blob_server {
    spes_net_server *srv;
    spes_blob_store *store;
};

static void server_handler(void *arg, spes_net_request *req)
{
    spes_blob_server *b = arg;
    spes_blob_serve_request(b->store, req);
}

int spes_blob_server_open(spes_blob_server **out, spes_blob_store *s, const spes_net_server_opts *o)
{
    spes_blob_server *b = calloc(1, sizeof *b);
    if (!b)
        return SPES_ENOMEM;
    spes_net_server_opts so = *o;
    so.handler = server_handler;
    so.arg = b;
    if (so.contexts <= 0)
        so.contexts = 16;
    if (!so.max_msg)
        so.max_msg = 64u << 10; /* requests are small envelopes */
    b->store = s;
    int rc = spes_net_server_open(&b->srv, &so);
    if (rc) {
        free(b);
        return rc;
    }
    *out = b;
    return 0;
}

int spes_blob_server_port(const spes_blob_server *b)
{
    return spes_net_server_port(b->srv);
}

void spes_blob_server_close(spes_blob_server *b)
{
    if (!b)
        return;
    spes_net_server_close(b->srv);
    free(b);
}

/* ---- a daemon's endpoint: blob requests and the rest on separate lanes ---- */

enum { LANE_OTHER, LANE_BLOB, LANE_PUSH };

static int endpoint_lane(void *arg, const void *data, size_t len)
{
    (void)arg;
    spes_proto_header h;
    if (spes_proto_header_decode(data, len, &h) != 0)
        return LANE_OTHER; /* the handler refuses what it cannot decode */
    if (h.type == SPES_MSG_BLOB_WANT || h.type == SPES_MSG_CHUNK_REQUEST)
        return LANE_BLOB;
    if (h.type == SPES_MSG_BLOB_PUSH || h.type == SPES_MSG_BLOB_PIECE)
        return LANE_PUSH;
    return LANE_OTHER;
}

static void endpoint_blob(void *arg, spes_net_request *req)
{
    spes_blob_serve_request(arg, req);
}

static void endpoint_push(void *arg, spes_net_request *req)
{
    spes_net_request_set_class(req, SPES_NET_BLOB); /* pushed bytes are blob traffic */
    size_t len;
    const void *data = spes_net_request_data(req, &len);
    const spes_pki_identity *peer = spes_net_request_peer(req);
    uint8_t *rep = NULL;
    size_t rep_len = 0;
    if (spes_blob_push_handle(arg, peer, data, len, &rep, &rep_len) != 0)
        log_warnx("blob push from '%s' refused: %s", peer->name, spes_errmsg());
    char who[SPES_PKI_NAME_MAX + 1];
    snprintf(who, sizeof who, "%s", peer->name); /* the request goes with its reply */
    if (!rep)
        spes_net_request_drop(req);
    else if (spes_net_reply(req, rep, rep_len) != 0)
        log_warnx("blob push reply to '%s' failed: %s", who, spes_errmsg());
    free(rep);
}

int spes_blob_endpoint_open(spes_net_server **out, spes_blob_store *s, spes_blob_push_rx *push,
                            const spes_net_server_opts *o)
{
    if (!o->handler)
        return spes_errf(SPES_EINVAL, "%s: an endpoint needs a handler for other requests", o->url);
    spes_net_server_opts so = *o;
    so.nlanes = 3;
    so.lanes[LANE_OTHER] =
        (spes_net_lane){o->handler, o->arg, o->contexts > 0 ? o->contexts : SPES_BLOB_CONTROL_CONTEXTS};
    so.lanes[LANE_BLOB] = (spes_net_lane){endpoint_blob, s, SPES_BLOB_LANE_CONTEXTS};
    so.lanes[LANE_PUSH] = (spes_net_lane){endpoint_push, push, SPES_BLOB_PUSH_CONTEXTS};
    so.classify = endpoint_lane;
    so.classify_arg = NULL;
    if (!so.max_msg)
        so.max_msg = SPES_BLOB_MAX_REQUEST;
    return spes_net_server_open(out, &so);
}
