/* envelope.c: the message-type registry and the envelope codec.
 * Turns a protobuf-c message into "SPES" header + payload and back. Every
 * byte of a received envelope is checked before use; this file must never
 * trust a length, type or version from the wire, never abort on peer input,
 * and never do I/O. */
#include "proto/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "proto/bytes.h"

typedef struct proto_type_info {
    const char *name;
    const ProtobufCMessageDescriptor *desc;
    uint32_t limit; /* largest payload accepted */
} proto_type_info;

#define SMALL SPES_PROTO_SMALL_LIMIT
#define LARGE SPES_PROTO_LARGE_LIMIT

static const proto_type_info types[SPES_MSG_TYPE_END] = {
    [SPES_MSG_JOIN] = {"Join", &spes__wire__join__descriptor, SMALL},
    [SPES_MSG_ACCEPT] = {"Accept", &spes__wire__accept__descriptor, LARGE},
    [SPES_MSG_REJECT] = {"Reject", &spes__wire__reject__descriptor, SMALL},
    [SPES_MSG_HEARTBEAT] = {"Heartbeat", &spes__wire__heartbeat__descriptor, SMALL},
    [SPES_MSG_LEAVE] = {"Leave", &spes__wire__leave__descriptor, SMALL},
    [SPES_MSG_ANNOUNCE] = {"Announce", &spes__wire__announce__descriptor, SMALL},
    [SPES_MSG_COMMIT] = {"Commit", &spes__wire__commit__descriptor, LARGE},
    [SPES_MSG_DIGEST] = {"Digest", &spes__wire__digest__descriptor, SMALL},
    [SPES_MSG_STATUS_REQUEST] = {"StatusRequest", &spes__wire__status_request__descriptor, SMALL},
    [SPES_MSG_STATUS_REPLY] = {"StatusReply", &spes__wire__status_reply__descriptor, LARGE},
    [SPES_MSG_MEMBERS_REQUEST] = {"MembersRequest", &spes__wire__members_request__descriptor, SMALL},
    [SPES_MSG_MEMBERS_REPLY] = {"MembersReply", &spes__wire__members_reply__descriptor, LARGE},
    [SPES_MSG_CHECKPOINT_REQUEST] = {"CheckpointRequest", &spes__wire__checkpoint_request__descriptor, SMALL},
    [SPES_MSG_CHECKPOINT_REPLY] = {"CheckpointReply", &spes__wire__checkpoint_reply__descriptor, LARGE},
    [SPES_MSG_BLOB_HAVE] = {"BlobHave", &spes__wire__blob_have__descriptor, LARGE},
    [SPES_MSG_BLOB_WANT] = {"BlobWant", &spes__wire__blob_want__descriptor, SMALL},
    [SPES_MSG_CHUNK_REQUEST] = {"ChunkRequest", &spes__wire__chunk_request__descriptor, SMALL},
    [SPES_MSG_ERROR] = {"Error", &spes__wire__error__descriptor, SMALL},
    [SPES_MSG_ACK] = {"Ack", &spes__wire__ack__descriptor, SMALL},
    [SPES_MSG_BLOB_PUSH] = {"BlobPush", &spes__wire__blob_push__descriptor, SPES_PROTO_PUSH_LIMIT},
    [SPES_MSG_BLOB_PIECE] = {"BlobPiece", &spes__wire__blob_piece__descriptor, SPES_PROTO_PUSH_LIMIT},
    [SPES_MSG_AGGREGATE_TASK] = {"AggregateTask", &spes__wire__aggregate_task__descriptor, LARGE},
    [SPES_MSG_AGGREGATE_REPORT] = {"AggregateReport", &spes__wire__aggregate_report__descriptor, LARGE},
};

static const proto_type_info *type_info(int type)
{
    if (type <= 0 || type >= SPES_MSG_TYPE_END || types[type].desc == NULL)
        return NULL;
    return &types[type];
}

const char *spes_proto_type_name(int type)
{
    const proto_type_info *ti = type_info(type);
    return ti ? ti->name : NULL;
}

const ProtobufCMessageDescriptor *spes_proto_type_descriptor(int type)
{
    const proto_type_info *ti = type_info(type);
    return ti ? ti->desc : NULL;
}

uint32_t spes_proto_type_limit(int type)
{
    const proto_type_info *ti = type_info(type);
    return ti ? ti->limit : 0;
}

void spes_proto_header_write(uint8_t out[SPES_PROTO_HEADER_LEN], int type, uint32_t length)
{
    memcpy(out, SPES_PROTO_MAGIC, 4);
    spes__put16(out + 4, SPES_PROTO_VERSION);
    spes__put16(out + 6, (uint16_t)type);
    spes__put32(out + 8, length);
}

int spes_proto_header_decode(const uint8_t *buf, size_t len, spes_proto_header *h)
{
    if (len < SPES_PROTO_HEADER_LEN)
        return spes_errf(SPES_EFORMAT, "envelope: truncated header (%zu of %d bytes)", len,
                         SPES_PROTO_HEADER_LEN);
    if (memcmp(buf, SPES_PROTO_MAGIC, 4) != 0)
        return spes_errf(SPES_EFORMAT, "envelope: bad magic 0x%02x%02x%02x%02x (expected \"SPES\")", buf[0],
                         buf[1], buf[2], buf[3]);
    h->version = spes__be16(buf + 4);
    h->type = spes__be16(buf + 6);
    h->length = spes__be32(buf + 8);
    if (h->version != SPES_PROTO_VERSION)
        return spes_errf(SPES_PROTO_EVERSION,
                         "envelope: protocol version %u not supported (this node speaks %d)", h->version,
                         SPES_PROTO_VERSION);
    const proto_type_info *ti = type_info(h->type);
    if (ti == NULL)
        return spes_errf(SPES_EFORMAT, "envelope: unknown message type %u", h->type);
    if (h->length > ti->limit)
        return spes_errf(SPES_ERANGE, "envelope: payload length %u exceeds the %u-byte limit for %s",
                         h->length, ti->limit, ti->name);
    return 0;
}

/* The bounded allocator: each block carries its size in front so that a
 * budget can be kept while unpacking; a peer's payload may make protobuf-c
 * allocate at most a fixed multiple of its length. */
typedef struct alloc_budget {
    size_t left;
    int exhausted; /* an allocation was refused */
} alloc_budget;

#define BLOCK_HDR 16 /* keeps max_align_t alignment */

static void *bounded_alloc(void *data, size_t size)
{
    alloc_budget *b = data;
    if (size > SIZE_MAX - BLOCK_HDR)
        return NULL;
    if (b != NULL) {
        if (size + BLOCK_HDR > b->left) {
            b->exhausted = 1;
            return NULL;
        }
        b->left -= size + BLOCK_HDR;
    }
    unsigned char *p = malloc(size + BLOCK_HDR);
    if (p == NULL)
        return NULL;
    memcpy(p, &size, sizeof size);
    return p + BLOCK_HDR;
}

static void bounded_free(void *data, void *ptr)
{
    if (ptr == NULL)
        return;
    unsigned char *p = (unsigned char *)ptr - BLOCK_HDR;
    alloc_budget *b = data;
    if (b != NULL) {
        size_t size;
        memcpy(&size, p, sizeof size);
        b->left += size + BLOCK_HDR;
    }
    free(p);
}

/* Messages outlive the budget, so freeing after decode uses a budget-less twin. */
static ProtobufCAllocator free_allocator = {bounded_alloc, bounded_free, NULL};

/* Worst case protobuf-c expands a payload: a packed repeated uint32 of
 * one-byte varints takes 4 bytes per wire byte (8 for uint64), strings add
 * a NUL and a pointer; 16x plus a floor is generous and still bounded. */
static size_t decode_budget(uint32_t length)
{
    return (size_t)length * 16 + 65536;
}

int spes_proto_encode(int type, const ProtobufCMessage *msg, uint8_t **out, size_t *len)
{
    const proto_type_info *ti = type_info(type);
    if (ti == NULL)
        return spes_errf(SPES_EINVAL, "encode: unknown message type %d", type);
    if (msg == NULL || msg->descriptor != ti->desc)
        return spes_errf(SPES_EINVAL, "encode: message is not a %s", ti->name);
    int rc = spes_proto_validate(msg);
    if (rc < 0)
        return rc;
    size_t n = protobuf_c_message_get_packed_size(msg);
    if (n > ti->limit)
        return spes_errf(SPES_ERANGE, "encode: %s payload of %zu bytes exceeds the %u-byte limit", ti->name,
                         n, ti->limit);
    uint8_t *buf = malloc(SPES_PROTO_HEADER_LEN + n + 1);
    if (buf == NULL)
        return spes_errf(SPES_ENOMEM, "encode: out of memory for a %zu-byte %s", n, ti->name);
    size_t packed = protobuf_c_message_pack(msg, buf + SPES_PROTO_HEADER_LEN);
    if (packed != n) {
        free(buf);
        return spes_errf(SPES_EINVAL, "encode: %s packed to %zu bytes, expected %zu", ti->name, packed, n);
    }
    spes_proto_header_write(buf, type, (uint32_t)n);
    *out = buf;
    *len = SPES_PROTO_HEADER_LEN + n;
    return 0;
}

int spes_proto_decode(const uint8_t *buf, size_t len, int *type, ProtobufCMessage **msg)
{
    spes_proto_header h = {0};
    *type = 0;
    *msg = NULL;
    int rc = spes_proto_header_decode(buf, len, &h);
    if (rc < 0)
        return rc;
    const proto_type_info *ti = type_info(h.type);
    *type = h.type;
    if (len - SPES_PROTO_HEADER_LEN != h.length)
        return spes_errf(SPES_EFORMAT, "envelope: %s payload length %u but %zu bytes follow the header",
                         ti->name, h.length, len - SPES_PROTO_HEADER_LEN);
    alloc_budget budget = {decode_budget(h.length), 0};
    ProtobufCAllocator alloc = {bounded_alloc, bounded_free, &budget};
    ProtobufCMessage *m = protobuf_c_message_unpack(ti->desc, &alloc, h.length, buf + SPES_PROTO_HEADER_LEN);
    if (m == NULL && budget.exhausted)
        return spes_errf(SPES_ERANGE,
                         "envelope: %s payload of %u bytes needs more than %zu "
                         "bytes of memory to unpack",
                         ti->name, h.length, decode_budget(h.length));
    if (m == NULL)
        return spes_errf(SPES_EFORMAT, "envelope: %s payload of %u bytes is not a valid %s message", ti->name,
                         h.length, ti->name);
    rc = spes__proto_scan_strings(ti->desc, buf + SPES_PROTO_HEADER_LEN, h.length);
    if (rc == 0)
        rc = spes_proto_validate(m);
    if (rc < 0) {
        protobuf_c_message_free_unpacked(m, &alloc);
        return rc;
    }
    *msg = m;
    return 0;
}

void spes_proto_free(ProtobufCMessage *msg)
{
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, &free_allocator);
}

Spes__Wire__ErrorCode spes_proto_error_code(int err)
{
    switch (err) {
    case SPES_PROTO_EVERSION: return SPES__WIRE__ERROR_CODE__ERROR_UNSUPPORTED_VERSION;
    case SPES_EFORMAT:
    case SPES_ERANGE: return SPES__WIRE__ERROR_CODE__ERROR_BAD_MESSAGE;
    case SPES_EAUTH: return SPES__WIRE__ERROR_CODE__ERROR_UNAUTHORIZED;
    case SPES_ENOENT: return SPES__WIRE__ERROR_CODE__ERROR_NOT_FOUND;
    case SPES_ESTATE: return SPES__WIRE__ERROR_CODE__ERROR_WRONG_ROUND;
    case SPES_EEXIST: return SPES__WIRE__ERROR_CODE__ERROR_BUSY;
    default: return SPES__WIRE__ERROR_CODE__ERROR_INTERNAL;
    }
}

/* clean_text copies message into out (size cap+1), dropping invalid UTF-8
 * and control characters and cutting at a character boundary. */
static void clean_text(const char *message, char *out, size_t cap)
{
    size_t o = 0;
    const unsigned char *s = (const unsigned char *)(message ? message : "");
    while (*s) {
        size_t n = *s < 0x80 ? 1 : *s >= 0xf0 ? 4 : *s >= 0xe0 ? 3 : 2;
        if (strnlen((const char *)s, n) < n || !spes_proto_utf8_valid((const char *)s, n)) {
            s++;
            continue;
        }
        if (o + n > cap)
            break;
        if (!(n == 1 && (*s < 0x20 || *s == 0x7f)))
            memcpy(out + o, s, n), o += n;
        s += n;
    }
    out[o] = '\0';
}

int spes_proto_encode_error(int err, const char *message, int in_reply_to, uint8_t **out, size_t *len)
{
    char text[SPES_PROTO_MAX_TEXT + 1];
    clean_text(message, text, SPES_PROTO_MAX_TEXT);
    Spes__Wire__Error e = SPES__WIRE__ERROR__INIT;
    e.code = spes_proto_error_code(err);
    e.message = text;
    e.in_reply_to = type_info(in_reply_to) ? (uint32_t)in_reply_to : 0;
    return spes_proto_encode(SPES_MSG_ERROR, &e.base, out, len);
}

int spes_proto_peer_version(const uint8_t *buf, size_t len)
{
    if (len < 6 || memcmp(buf, SPES_PROTO_MAGIC, 4) != 0)
        return 0;
    return spes__be16(buf + 4);
}

int spes_proto_encode_version_error(const uint8_t *req, size_t req_len, uint8_t **out, size_t *len)
{
    int v = spes_proto_peer_version(req, req_len);
    /* the types are never renumbered, so an older request's type is named as ours */
    int type = req_len >= 8 ? spes__be16(req + 6) : 0;
    char msg[256];
    snprintf(msg, sizeof msg,
             "protocol version %d refused: this daemon speaks protocol %d; every member of a run needs the "
             "same spes release (spesd --version prints its protocol)",
             v, SPES_PROTO_VERSION);
    int rc = spes_proto_encode_error(SPES_PROTO_EVERSION, msg, type, out, len);
    if (rc == 0 && v >= SPES_PROTO_ERROR_SINCE && v < SPES_PROTO_VERSION)
        spes__put16(*out + 4, (uint16_t)v);
    return rc;
}
