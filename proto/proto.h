/* proto.h: the versioned envelope around spes control messages.
 * Wire layout (all integers big-endian, network order):
 *   bytes 0..3   magic "SPES"
 *   bytes 4..5   protocol version (u16), SPES_PROTO_VERSION
 *   bytes 6..7   message type (u16), enum spes_proto_type
 *   bytes 8..11  payload length (u32)
 *   bytes 12..   protobuf payload (proto/spes.proto, proto3)
 * Decoding checks all four fields, then unpacks with a bounded allocator and
 * validates semantic limits (proto/validate.c); anything unexpected from a peer
 * is refused with SPES_EFORMAT/SPES_ERANGE/SPES_PROTO_EVERSION and one
 * spes_errf() sentence. The codec is pure: no I/O, no global state. */
#ifndef SPES_PROTO_PROTO_H
#define SPES_PROTO_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "core/error.h"
#include "proto/spes.pb-c.h"

#define SPES_PROTO_MAGIC "SPES"
#define SPES_PROTO_VERSION 3
/* SPES_PROTO_ERROR_SINCE is the oldest protocol version whose envelope header and
 * Error message are laid out as this version's: an Error can be written in such a
 * peer's own version, so that an older node reads why it was refused. */
#define SPES_PROTO_ERROR_SINCE 1
#define SPES_PROTO_HEADER_LEN 12

/* SPES_PROTO_EVERSION is returned for a protocol version this node does not
 * speak (distinct from SPES_EFORMAT so a peer can be told to upgrade). */
#define SPES_PROTO_EVERSION SPES_EVERSION

/* Semantic limits enforced on every decoded and every encoded message. */
#define SPES_PROTO_MAX_NAME 128          /* node names, ids, targets, run id */
#define SPES_PROTO_MAX_URL 512           /* listen urls */
#define SPES_PROTO_MAX_TEXT 1024         /* reasons, messages, versions */
#define SPES_PROTO_MAX_PATH 4096         /* out_dir */
#define SPES_PROTO_MAX_CONFIG 262144     /* run_config_json */
#define SPES_PROTO_MAX_ITEMS 4096        /* any repeated field */
#define SPES_PROTO_MAX_COLUMNS 65536     /* column index bound (exclusive) */
#define SPES_PROTO_MAX_CHUNKS (1u << 18) /* chunks in one blob */
#define SPES_PROTO_MAX_CHUNKS_PER_REQUEST 4096
#define SPES_PROTO_SMALL_LIMIT 16384      /* payload limit of small messages */
#define SPES_PROTO_LARGE_LIMIT (4u << 20) /* payload limit of list-carrying messages */
#define SPES_PROTO_PUSH_PIECE (32u << 10) /* blob bytes in one BlobPiece */
#define SPES_PROTO_PUSH_LIMIT (64u << 10) /* payload limit of BlobPush and BlobPiece */

/* spes_proto_type numbers a message kind in the envelope; never renumber. */
enum spes_proto_type {
    SPES_MSG_JOIN = 1,
    SPES_MSG_ACCEPT = 2,
    SPES_MSG_REJECT = 3,
    SPES_MSG_HEARTBEAT = 4,
    SPES_MSG_LEAVE = 5,
    SPES_MSG_ANNOUNCE = 6,
    SPES_MSG_COMMIT = 7,
    SPES_MSG_DIGEST = 8,
    SPES_MSG_STATUS_REQUEST = 9,
    SPES_MSG_STATUS_REPLY = 10,
    SPES_MSG_MEMBERS_REQUEST = 11,
    SPES_MSG_MEMBERS_REPLY = 12,
    SPES_MSG_CHECKPOINT_REQUEST = 13,
    SPES_MSG_CHECKPOINT_REPLY = 14,
    SPES_MSG_BLOB_HAVE = 15,
    SPES_MSG_BLOB_WANT = 16,
    SPES_MSG_CHUNK_REQUEST = 17,
    SPES_MSG_ERROR = 18,
    SPES_MSG_ACK = 19,
    SPES_MSG_BLOB_PUSH = 20,
    SPES_MSG_BLOB_PIECE = 21,
    SPES_MSG_AGGREGATE_TASK = 22,
    SPES_MSG_AGGREGATE_REPORT = 23,
    SPES_MSG_TYPE_END /* one past the last type */
};

/* spes_proto_header is a decoded envelope header. */
typedef struct spes_proto_header {
    uint16_t version;
    uint16_t type;   /* enum spes_proto_type */
    uint32_t length; /* payload bytes after the header */
} spes_proto_header;

/* spes_proto_type_name returns "Announce" etc., or NULL for an unknown type. */
const char *spes_proto_type_name(int type);

/* spes_proto_type_descriptor returns the protobuf-c descriptor of a type, or NULL. */
const ProtobufCMessageDescriptor *spes_proto_type_descriptor(int type);

/* spes_proto_type_limit returns the largest payload accepted for a type (0 if unknown). */
uint32_t spes_proto_type_limit(int type);

/* spes_proto_header_write writes a 12-byte header for a payload of length bytes. */
void spes_proto_header_write(uint8_t out[SPES_PROTO_HEADER_LEN], int type, uint32_t length);

/* spes_proto_header_decode checks magic, version, type and the per-type length
 * limit of the first 12 bytes of buf (it does not look at the payload). */
int spes_proto_header_decode(const uint8_t *buf, size_t len, spes_proto_header *h);

/* spes_proto_peer_version returns the protocol version in buf's header, or 0 when
 * buf does not start with one (shorter than 6 bytes, or another magic). */
int spes_proto_peer_version(const uint8_t *buf, size_t len);

/* spes_proto_encode_version_error builds the Error that refuses req, a request in
 * another protocol version, naming both versions: in the requester's own version
 * when this node can write that version's Error (SPES_PROTO_ERROR_SINCE up to
 * SPES_PROTO_VERSION), so an older node prints the reason; else in this node's. */
int spes_proto_encode_version_error(const uint8_t *req, size_t req_len, uint8_t **out, size_t *len);

/* spes_proto_encode validates msg (which must be of type's descriptor) and
 * returns a malloc'd envelope in *out; the caller frees it with free(). */
int spes_proto_encode(int type, const ProtobufCMessage *msg, uint8_t **out, size_t *len);

/* spes_proto_decode checks and unpacks one whole envelope; on success *type
 * and *msg are set and the caller frees *msg with spes_proto_free(). On
 * failure nothing is allocated, *type is the header's type if the header
 * was valid (so an Error reply can name it; else 0), and spes_errmsg() says
 * what was wrong. */
int spes_proto_decode(const uint8_t *buf, size_t len, int *type, ProtobufCMessage **msg);

/* spes_proto_free frees a message returned by spes_proto_decode (NULL is fine). */
void spes_proto_free(ProtobufCMessage *msg);

/* spes_proto_validate checks the semantic limits of a message tree; it is run
 * by both encode and decode. */
int spes_proto_validate(const ProtobufCMessage *msg);

/* spes__proto_scan_strings refuses NUL bytes inside string fields of a raw
 * payload already accepted by protobuf-c (internal to the codec). */
int spes__proto_scan_strings(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t len);

/* spes_proto_error_code maps a spes error code to the wire ErrorCode. */
Spes__Wire__ErrorCode spes_proto_error_code(int err);

/* spes_proto_encode_error builds an Error envelope (code from err, message
 * text truncated to SPES_PROTO_MAX_TEXT at a UTF-8 boundary and cleaned of
 * invalid bytes) answering a message of type in_reply_to (0 if unknown). */
int spes_proto_encode_error(int err, const char *message, int in_reply_to, uint8_t **out, size_t *len);

/* spes_proto_utf8_valid says whether s[0..len) is well-formed UTF-8 (no
 * overlongs, no surrogates, nothing above U+10FFFF). */
int spes_proto_utf8_valid(const char *s, size_t len);

#endif
