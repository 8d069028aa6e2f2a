/* test_proto.c: the wire codec: envelope round trips of every message type,
 * refusals of malformed envelopes and payloads (with their messages), chunk
 * headers and blob manifests. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "core/fileio.h"
#include "core/sha256.h"
#include "proto/bulk.h"
#include "proto/examples.h"
#include "proto/proto.h"

/* decode_fails decodes buf, expects err and a message containing want. */
static int decode_fails(const uint8_t *buf, size_t len, int err, const char *want)
{
    int type = -1;
    ProtobufCMessage *m = (ProtobufCMessage *)1;
    int rc = spes_proto_decode(buf, len, &type, &m);
    ck_assert_msg(rc == err, "rc %d, expected %d (%s)", rc, err, spes_errmsg());
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(spes_errmsg(), want) != NULL, "message \"%s\" lacks \"%s\"", spes_errmsg(), want);
    return type;
}

/* frame wraps a packed payload of msg (unvalidated) in an envelope of type. */
static uint8_t *frame(int type, const ProtobufCMessage *msg, const uint8_t *extra, size_t nextra, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(SPES_PROTO_HEADER_LEN + n + nextra);
    protobuf_c_message_pack(msg, buf + SPES_PROTO_HEADER_LEN);
    if (nextra)
        memcpy(buf + SPES_PROTO_HEADER_LEN + n, extra, nextra);
    spes_proto_header_write(buf, type, (uint32_t)(n + nextra));
    *len = SPES_PROTO_HEADER_LEN + n + nextra;
    return buf;
}

START_TEST(roundtrip_every_type)
{
    for (int t = 1; t < SPES_MSG_TYPE_END; t++) {
        uint8_t *a, *b;
        size_t na, nb;
        ck_assert_msg(spes_proto_example_encode(t, &a, &na) == 0, "%s", spes_errmsg());
        ck_assert_mem_eq(a, "SPES\0\3", 6);
        ck_assert_int_eq(a[6] << 8 | a[7], t);
        int type;
        ProtobufCMessage *m;
        ck_assert_msg(spes_proto_decode(a, na, &type, &m) == 0, "%s: %s", spes_proto_type_name(t),
                      spes_errmsg());
        ck_assert_int_eq(type, t);
        ck_assert_ptr_eq(m->descriptor, spes_proto_type_descriptor(t));
        ck_assert_int_eq(spes_proto_encode(t, m, &b, &nb), 0);
        ck_assert_uint_eq(na, nb);
        ck_assert_mem_eq(a, b, na);
        spes_proto_free(m);
        free(a);
        free(b);
    }
}
END_TEST

START_TEST(roundtrip_fields)
{
    uint8_t *buf;
    size_t len;
    int type;
    ProtobufCMessage *m;
    ck_assert_int_eq(spes_proto_example_encode(SPES_MSG_COMMIT, &buf, &len), 0);
    ck_assert_int_eq(spes_proto_decode(buf, len, &type, &m), 0);
    Spes__Wire__Commit *c = (Spes__Wire__Commit *)m;
    ck_assert_uint_eq(c->round, 41);
    ck_assert_uint_eq(c->n_contributions, 2);
    ck_assert_uint_eq(c->contributions[1]->node_id, 2);
    ck_assert_uint_eq(c->contributions[1]->size, 123456790);
    ck_assert_uint_eq(c->contributions[1]->blob_hash.len, 32);
    ck_assert_uint_eq(c->contributions[1]->blob_hash.data[0], 0xb1);
    ck_assert_int_eq(c->contributions[1]->codec, SPES__WIRE__CODEC__CODEC_BF16);
    ck_assert_int_eq(c->merge_applied, 1);
    ck_assert_uint_eq(c->assignment[0]->n_columns, 3);
    ck_assert_uint_eq(c->assignment[0]->columns[2], 7);
    ck_assert_str_eq(c->peers[1]->listen_url, "tls+tcp://[::1]:7001");
    ck_assert_str_eq(c->refused[0]->reason, "contribution has NaN in layers.0.mlp");
    spes_proto_free(m);
    free(buf);

    ck_assert_int_eq(spes_proto_example_encode(SPES_MSG_STATUS_REPLY, &buf, &len), 0);
    ck_assert_int_eq(spes_proto_decode(buf, len, &type, &m), 0);
    Spes__Wire__StatusReply *s = (Spes__Wire__StatusReply *)m;
    ck_assert_uint_eq(s->n_members, 2);
    ck_assert_str_eq(s->members[0]->name, "node-0");
    ck_assert_uint_eq(s->members[0]->digest.len, 32);
    ck_assert_uint_eq(s->members[1]->digest.len, 0);
    ck_assert_int_eq(s->members[1]->state, SPES__WIRE__NODE_STATE__NODE_STATE_DRAINING);
    ck_assert_double_eq(s->members[0]->tokens_per_s, 12345.5);
    ck_assert_uint_eq(s->last_round->digest_mismatch[0], 7);
    spes_proto_free(m);
    free(buf);

    ck_assert_int_eq(spes_proto_example_encode(SPES_MSG_JOIN, &buf, &len), 0);
    ck_assert_int_eq(spes_proto_decode(buf, len, &type, &m), 0);
    Spes__Wire__Join *j = (Spes__Wire__Join *)m;
    ck_assert_str_eq(j->node_name, "node-1");
    ck_assert_uint_eq(j->capabilities->memory_bytes, 1ull << 34);
    ck_assert_int_eq(j->capabilities->codecs[1], SPES__WIRE__CODEC__CODEC_BF16);
    ck_assert_uint_eq(j->have_state->step, 410);
    spes_proto_free(m);
    free(buf);
}
END_TEST

START_TEST(refuse_envelopes)
{
    uint8_t *buf;
    size_t len;
    ck_assert_int_eq(spes_proto_example_encode(SPES_MSG_ANNOUNCE, &buf, &len), 0);
    decode_fails(buf, 5, SPES_EFORMAT, "envelope: truncated header (5 of 12 bytes)");
    decode_fails(buf, 0, SPES_EFORMAT, "truncated header (0 of 12");
    buf[0] = 'X';
    decode_fails(buf, len, SPES_EFORMAT, "envelope: bad magic 0x58504553");
    buf[0] = 'S';
    buf[5] = 7;
    decode_fails(buf, len, SPES_PROTO_EVERSION,
                 "envelope: protocol version 7 not supported (this node speaks 3)");
    buf[5] = SPES_PROTO_VERSION;
    buf[7] = 99;
    decode_fails(buf, len, SPES_EFORMAT, "envelope: unknown message type 99");
    buf[7] = 0;
    decode_fails(buf, len, SPES_EFORMAT, "unknown message type 0");
    buf[7] = SPES_MSG_ANNOUNCE;
    decode_fails(buf, len - 1, SPES_EFORMAT, "Announce payload length 271 but 270 bytes follow");
    uint8_t big[SPES_PROTO_HEADER_LEN];
    spes_proto_header_write(big, SPES_MSG_ANNOUNCE, 9000000);
    decode_fails(big, sizeof big, SPES_ERANGE,
                 "envelope: payload length 9000000 exceeds the 16384-byte limit for Announce");
    free(buf);
}
END_TEST

START_TEST(refuse_trailing_bytes)
{
    uint8_t *buf;
    size_t len;
    ck_assert_int_eq(spes_proto_example_encode(SPES_MSG_ACK, &buf, &len), 0);
    uint8_t *longer = malloc(len + 3);
    memcpy(longer, buf, len);
    int type = decode_fails(longer, len + 3, SPES_EFORMAT, "Ack payload length 4 but 7 bytes follow");
    ck_assert_int_eq(type, SPES_MSG_ACK); /* known, so an Error reply can name it */
    buf[5] = SPES_PROTO_VERSION + 1;
    ck_assert_int_eq(decode_fails(buf, len, SPES_PROTO_EVERSION, "version 4"), 0);
    free(longer);
    free(buf);
}
END_TEST

START_TEST(refuse_payloads)
{
    uint8_t h31[31] = {0}, *buf;
    size_t len;
    Spes__Wire__Digest d = SPES__WIRE__DIGEST__INIT;
    d.round = 3, d.state_hash = (ProtobufCBinaryData){31, h31};
    buf = frame(SPES_MSG_DIGEST, &d.base, NULL, 0, &len);
    decode_fails(buf, len, SPES_EFORMAT, "Digest.state_hash: hash is 31 bytes, expected 32");
    free(buf);
    d.state_hash = (ProtobufCBinaryData){0, NULL};
    buf = frame(SPES_MSG_DIGEST, &d.base, NULL, 0, &len);
    decode_fails(buf, len, SPES_EFORMAT, "Digest.state_hash: hash is 0 bytes");
    free(buf);

    /* field 99, varint 1: tag (99 << 3 | 0) = 792 = 0x98 0x06 */
    Spes__Wire__Ack ack = SPES__WIRE__ACK__INIT;
    ack.message = "ok";
    const uint8_t unknown[] = {0x98, 0x06, 0x01};
    buf = frame(SPES_MSG_ACK, &ack.base, unknown, sizeof unknown, &len);
    decode_fails(buf, len, SPES_EFORMAT, "Ack: unknown field 99 (wire type 0)");
    free(buf);

    uint8_t junk[SPES_PROTO_HEADER_LEN + 4] = {0};
    spes_proto_header_write(junk, SPES_MSG_HEARTBEAT, 4);
    memset(junk + SPES_PROTO_HEADER_LEN, 0xff, 4);
    decode_fails(junk, sizeof junk, SPES_EFORMAT,
                 "Heartbeat payload of 4 bytes is not a valid Heartbeat message");
}
END_TEST

START_TEST(refuse_memory_bomb)
{
    /* 5000 empty MemberInfo: 2 wire bytes each, ~150 bytes each unpacked. */
    size_t n = 5000, len = SPES_PROTO_HEADER_LEN + 2 * n;
    uint8_t *buf = malloc(len);
    spes_proto_header_write(buf, SPES_MSG_STATUS_REPLY, (uint32_t)(2 * n));
    for (size_t i = 0; i < n; i++)
        buf[SPES_PROTO_HEADER_LEN + 2 * i] = 0x32, buf[SPES_PROTO_HEADER_LEN + 2 * i + 1] = 0;
    decode_fails(buf, len, SPES_ERANGE,
                 "StatusReply payload of 10000 bytes needs more than 225536 bytes of memory");
    free(buf);
}
END_TEST

START_TEST(refuse_semantics)
{
    uint8_t *buf;
    size_t len;
    Spes__Wire__Heartbeat hb = SPES__WIRE__HEARTBEAT__INIT;
    hb.state = 42;
    buf = frame(SPES_MSG_HEARTBEAT, &hb.base, NULL, 0, &len);
    decode_fails(buf, len, SPES_EFORMAT, "Heartbeat.state: unknown enum value 42");
    free(buf);
    hb.state = SPES__WIRE__NODE_STATE__NODE_STATE_ACTIVE;
    Spes__Wire__NodeCounters nc = SPES__WIRE__NODE_COUNTERS__INIT;
    hb.counters = &nc;
    nc.train_s = -1;
    buf = frame(SPES_MSG_HEARTBEAT, &hb.base, NULL, 0, &len);
    decode_fails(buf, len, SPES_ERANGE, "Heartbeat.counters: seconds out of range (train -1, wait 0)");
    free(buf);
    nc.train_s = 2, nc.wait_s = NAN;
    buf = frame(SPES_MSG_HEARTBEAT, &hb.base, NULL, 0, &len);
    decode_fails(buf, len, SPES_ERANGE, "Heartbeat.counters: seconds out of range (train 2, wait nan)");
    free(buf);

    Spes__Wire__Join j = SPES__WIRE__JOIN__INIT;
    j.node_name = "node-\xc0\xaf", j.protocol_version = 1;
    buf = frame(SPES_MSG_JOIN, &j.base, NULL, 0, &len);
    decode_fails(buf, len, SPES_EFORMAT, "Join.node_name: string is not valid UTF-8");
    free(buf);
    j.node_name = "node\n1";
    buf = frame(SPES_MSG_JOIN, &j.base, NULL, 0, &len);
    decode_fails(buf, len, SPES_EFORMAT, "Join.node_name: control character 0x0a");
    free(buf);
    char longname[SPES_PROTO_MAX_NAME + 2];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    j.node_name = longname;
    buf = frame(SPES_MSG_JOIN, &j.base, NULL, 0, &len);
    decode_fails(buf, len, SPES_ERANGE, "Join.node_name: string longer than 128 bytes");
    free(buf);
    j.node_name = "";
    buf = frame(SPES_MSG_JOIN, &j.base, NULL, 0, &len);
    decode_fails(buf, len, SPES_EFORMAT, "Join.node_name: empty");
    free(buf);

    uint8_t hash[32] = {1};
    Spes__Wire__StateRef sr = SPES__WIRE__STATE_REF__INIT;
    sr.state_hash = (ProtobufCBinaryData){5, hash};
    j.node_name = "n", j.have_state = &sr;
    buf = frame(SPES_MSG_JOIN, &j.base, NULL, 0, &len);
    decode_fails(buf, len, SPES_EFORMAT, "Join.have_state.state_hash: hash is 5 bytes");
    free(buf);

    Spes__Wire__Accept a = SPES__WIRE__ACCEPT__INIT;
    uint32_t cols[] = {1, 70000};
    a.state_hash = (ProtobufCBinaryData){32, hash}, a.n_columns = 2, a.columns = cols;
    buf = frame(SPES_MSG_ACCEPT, &a.base, NULL, 0, &len);
    decode_fails(buf, len, SPES_ERANGE, "Accept.columns: column 70000 out of range");
    free(buf);
    uint32_t *many = calloc(SPES_PROTO_MAX_ITEMS + 1, sizeof *many);
    a.n_columns = SPES_PROTO_MAX_ITEMS + 1, a.columns = many;
    buf = frame(SPES_MSG_ACCEPT, &a.base, NULL, 0, &len);
    decode_fails(buf, len, SPES_ERANGE, "Accept.columns: 4097 items exceeds the limit of 4096");
    free(buf);
    free(many);

    Spes__Wire__Commit c = SPES__WIRE__COMMIT__INIT;
    Spes__Wire__Contribution k = SPES__WIRE__CONTRIBUTION__INIT, *kp[2] = {&k, &k};
    k.blob_hash = (ProtobufCBinaryData){32, hash};
    k.manifest_hash = (ProtobufCBinaryData){33, (uint8_t[33]){0}};
    c.base_hash = (ProtobufCBinaryData){32, hash}, c.n_contributions = 2, c.contributions = kp;
    buf = frame(SPES_MSG_COMMIT, &c.base, NULL, 0, &len);
    decode_fails(buf, len, SPES_EFORMAT,
                 "Commit.contributions[0].manifest_hash: hash is 33 bytes, expected 32");
    free(buf);

    Spes__Wire__MembersRequest mr = SPES__WIRE__MEMBERS_REQUEST__INIT;
    mr.action = SPES__WIRE__MEMBERS_ACTION__MEMBERS_EVICT;
    buf = frame(SPES_MSG_MEMBERS_REQUEST, &mr.base, NULL, 0, &len);
    decode_fails(buf, len, SPES_EFORMAT, "MembersRequest.target: missing for this action");
    free(buf);

    /* Join{node_name: "ab\0c", protocol_version: 1}: protobuf-c would cut the name at the NUL. */
    uint8_t nul[SPES_PROTO_HEADER_LEN + 8] = {0};
    const uint8_t nul_payload[] = {0x0a, 0x04, 'a', 'b', 0, 'c', 0x20, 0x01};
    spes_proto_header_write(nul, SPES_MSG_JOIN, sizeof nul_payload);
    memcpy(nul + SPES_PROTO_HEADER_LEN, nul_payload, sizeof nul_payload);
    decode_fails(nul, sizeof nul, SPES_EFORMAT, "Join.node_name: NUL byte inside a string");
    /* Accept{peers: [{name: "x\0"}]} (field 7 holding field 2), nested. */
    const uint8_t nested[] = {0x3a, 0x04, 0x12, 0x02, 'x', 0};
    spes_proto_header_write(nul, SPES_MSG_ACCEPT, sizeof nested);
    memcpy(nul + SPES_PROTO_HEADER_LEN, nested, sizeof nested);
    decode_fails(nul, SPES_PROTO_HEADER_LEN + sizeof nested, SPES_EFORMAT,
                 "Accept.peers.name: NUL byte inside a string");

    Spes__Wire__ChunkRequest cr = SPES__WIRE__CHUNK_REQUEST__INIT;
    cr.blob_hash = (ProtobufCBinaryData){32, hash}, cr.first_chunk = SPES_PROTO_MAX_CHUNKS;
    cr.chunk_count = 1;
    buf = frame(SPES_MSG_CHUNK_REQUEST, &cr.base, NULL, 0, &len);
    decode_fails(buf, len, SPES_ERANGE, "beyond the 262144-chunk limit");
    free(buf);
}
END_TEST

START_TEST(encode_checks)
{
    uint8_t *buf = NULL, h[31] = {0};
    size_t len;
    Spes__Wire__Ack ack = SPES__WIRE__ACK__INIT;
    ck_assert_int_eq(spes_proto_encode(SPES_MSG_LEAVE, &ack.base, &buf, &len), SPES_EINVAL);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "message is not a Leave"));
    ck_assert_int_eq(spes_proto_encode(77, &ack.base, &buf, &len), SPES_EINVAL);
    Spes__Wire__BlobWant w = SPES__WIRE__BLOB_WANT__INIT;
    w.blob_hash = (ProtobufCBinaryData){31, h};
    ck_assert_int_eq(spes_proto_encode(SPES_MSG_BLOB_WANT, &w.base, &buf, &len), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(), "BlobWant.blob_hash: hash is 31 bytes, expected 32");
    ck_assert_ptr_null(buf);
    /* A payload over its type's limit is refused when encoding, too. */
    char *big = malloc(SPES_PROTO_MAX_CONFIG + 1);
    memset(big, 'x', SPES_PROTO_MAX_CONFIG);
    big[SPES_PROTO_MAX_CONFIG] = '\0';
    Spes__Wire__Reject r = SPES__WIRE__REJECT__INIT;
    r.reason = big;
    ck_assert_int_eq(spes_proto_encode(SPES_MSG_REJECT, &r.base, &buf, &len), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "Reject.reason: string longer than 1024"));
    free(big);
}
END_TEST

START_TEST(error_reply)
{
    uint8_t *buf;
    size_t len;
    int type;
    ProtobufCMessage *m;
    ck_assert_int_eq(
        spes_proto_encode_error(SPES_PROTO_EVERSION, "bad \xff version\x01 7", SPES_MSG_JOIN, &buf, &len), 0);
    ck_assert_int_eq(spes_proto_decode(buf, len, &type, &m), 0);
    ck_assert_int_eq(type, SPES_MSG_ERROR);
    Spes__Wire__Error *e = (Spes__Wire__Error *)m;
    ck_assert_int_eq(e->code, SPES__WIRE__ERROR_CODE__ERROR_UNSUPPORTED_VERSION);
    ck_assert_str_eq(e->message, "bad  version 7");
    ck_assert_uint_eq(e->in_reply_to, SPES_MSG_JOIN);
    spes_proto_free(m);
    free(buf);
}
END_TEST

/* A request in another protocol version is answered with an Error naming both
 * versions: in an older requester's own version (its Error is laid out as ours),
 * in this node's for a newer one. */
START_TEST(version_error_reply)
{
    uint8_t *req, *rep;
    size_t req_len, rep_len;
    int type;
    ProtobufCMessage *m;
    ck_assert_int_eq(spes_proto_example_encode(SPES_MSG_JOIN, &req, &req_len), 0);
    ck_assert_int_eq(spes_proto_peer_version(req, req_len), SPES_PROTO_VERSION);
    ck_assert_int_eq(spes_proto_peer_version(req, 5), 0);
    for (int v = 1; v <= SPES_PROTO_VERSION + 1; v++) {
        if (v == SPES_PROTO_VERSION)
            continue;
        req[5] = (uint8_t)v;
        ck_assert_int_eq(spes_proto_decode(req, req_len, &type, &m), SPES_PROTO_EVERSION);
        ck_assert_int_eq(spes_proto_peer_version(req, req_len), v);
        ck_assert_int_eq(spes_proto_encode_version_error(req, req_len, &rep, &rep_len), 0);
        int sent_as = v < SPES_PROTO_VERSION ? v : SPES_PROTO_VERSION;
        ck_assert_int_eq(spes_proto_peer_version(rep, rep_len), sent_as);
        rep[5] = SPES_PROTO_VERSION; /* read it as the requester would */
        ck_assert_int_eq(spes_proto_decode(rep, rep_len, &type, &m), 0);
        ck_assert_int_eq(type, SPES_MSG_ERROR);
        Spes__Wire__Error *e = (Spes__Wire__Error *)m;
        ck_assert_int_eq(e->code, SPES__WIRE__ERROR_CODE__ERROR_UNSUPPORTED_VERSION);
        ck_assert_uint_eq(e->in_reply_to, SPES_MSG_JOIN);
        char want[64];
        snprintf(want, sizeof want, "protocol version %d refused: this daemon speaks protocol %d", v,
                 SPES_PROTO_VERSION);
        ck_assert_msg(strstr(e->message, want) != NULL, "%s", e->message);
        spes_proto_free(m);
        free(rep);
    }
    free(req);
}
END_TEST

START_TEST(utf8)
{
    ck_assert(spes_proto_utf8_valid("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", 15));
    ck_assert(!spes_proto_utf8_valid("\xc0\xaf", 2));         /* overlong */
    ck_assert(!spes_proto_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    ck_assert(!spes_proto_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    ck_assert(!spes_proto_utf8_valid("\xe2\x82", 2));         /* truncated */
    ck_assert(!spes_proto_utf8_valid("\x80", 1));
}
END_TEST

/* --- bulk: chunk headers and manifests --- */

enum { CS = SPES_CHUNK_SIZE_MIN, BLOB = 3 * CS + 100 };

static uint8_t *make_blob(void)
{
    uint8_t *b = malloc(BLOB);
    for (size_t i = 0; i < BLOB; i++)
        b[i] = (uint8_t)(i * 131 + (i >> 8));
    return b;
}

static void chunk_fails(const uint8_t *buf, size_t len, const char *want)
{
    spes_chunk_header h;
    const uint8_t *data;
    int rc = spes_chunk_decode(buf, len, &h, &data);
    ck_assert_msg(rc < 0, "accepted, expected \"%s\"", want);
    ck_assert_msg(strstr(spes_errmsg(), want) != NULL, "message \"%s\" lacks \"%s\"", spes_errmsg(), want);
}

START_TEST(manifest_build)
{
    uint8_t *blob = make_blob(), want[32];
    spes_manifest m, s;
    ck_assert_int_eq(spes_manifest_build(blob, BLOB, CS, &m), 0);
    ck_assert_uint_eq(m.chunk_count, 4);
    ck_assert_uint_eq(m.total_size, BLOB);
    spes_sha256(blob, BLOB, want);
    ck_assert_mem_eq(m.blob_hash, want, 32);
    for (uint32_t i = 0; i < 4; i++) {
        spes_sha256(blob + (size_t)i * CS, i < 3 ? CS : 100, want);
        ck_assert_mem_eq(m.chunk_hashes[i], want, 32);
    }
    /* Streaming in odd pieces gives the same manifest. */
    spes_manifest_builder b;
    ck_assert_int_eq(spes_manifest_builder_init(&b, CS), 0);
    for (size_t off = 0; off < BLOB; off += 777)
        spes_manifest_builder_update(&b, blob + off, BLOB - off < 777 ? BLOB - off : 777);
    ck_assert_int_eq(spes_manifest_builder_finish(&b, &s), 0);
    ck_assert_uint_eq(s.chunk_count, 4);
    ck_assert_mem_eq(s.chunk_hashes, m.chunk_hashes, 4 * 32);
    ck_assert_mem_eq(s.blob_hash, m.blob_hash, 32);
    spes_manifest_fini(&s);
    /* ... and so does the file builder. */
    char dir[] = "/tmp/test_proto.XXXXXX", *path;
    ck_assert_ptr_nonnull(mkdtemp(dir));
    path = spes_path_join(dir, "blob");
    ck_assert_int_eq(spes_write_file_atomic(path, blob, BLOB), 0);
    ck_assert_int_eq(spes_manifest_build_file(path, CS, &s), 0);
    ck_assert_mem_eq(s.chunk_hashes, m.chunk_hashes, 4 * 32);
    ck_assert_mem_eq(s.blob_hash, m.blob_hash, 32);
    spes_manifest_fini(&s);
    unlink(path);
    rmdir(dir);
    ck_assert_int_eq(spes_manifest_build_file(path, CS, &s), SPES_EIO);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "cannot open"));
    free(path);
    /* Exact multiples and the empty blob. */
    ck_assert_int_eq(spes_manifest_build(blob, 2 * CS, CS, &s), 0);
    ck_assert_uint_eq(s.chunk_count, 2);
    spes_manifest_fini(&s);
    ck_assert_int_eq(spes_manifest_build(blob, 0, CS, &s), 0);
    ck_assert_uint_eq(s.chunk_count, 0);
    spes_sha256("", 0, want);
    ck_assert_mem_eq(s.blob_hash, want, 32);
    spes_manifest_fini(&s);
    ck_assert_int_eq(spes_manifest_build(blob, 10, 100, &s), SPES_EINVAL);
    spes_manifest_fini(&m);
    free(blob);
}
END_TEST

START_TEST(manifest_codec)
{
    uint8_t *blob = make_blob(), *enc, hash[32], want[32];
    size_t len;
    spes_manifest m, d;
    ck_assert_int_eq(spes_manifest_build(blob, BLOB, CS, &m), 0);
    ck_assert_int_eq(spes_manifest_encode(&m, &enc, &len), 0);
    ck_assert_uint_eq(len, SPES_MANIFEST_HEADER_LEN + 4 * 32);
    ck_assert_int_eq(spes_manifest_decode(enc, len, &d), 0);
    ck_assert_uint_eq(d.total_size, BLOB);
    ck_assert_uint_eq(d.chunk_size, CS);
    ck_assert_mem_eq(d.chunk_hashes, m.chunk_hashes, 4 * 32);
    ck_assert_mem_eq(d.blob_hash, m.blob_hash, 32);
    spes_manifest_fini(&d);
    ck_assert_int_eq(spes_manifest_hash(&m, hash), 0);
    spes_sha256(enc, len, want);
    ck_assert_mem_eq(hash, want, 32);

    ck_assert_int_eq(spes_manifest_decode(enc, len - 1, &d), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(), "manifest: 183 bytes, expected 184 for 4 chunks");
    ck_assert_int_eq(spes_manifest_decode(enc, 20, &d), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(), "manifest: truncated header (20 of 56 bytes)");
    enc[55] = 5; /* chunk count */
    ck_assert_int_eq(spes_manifest_decode(enc, len, &d), SPES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "5 chunks, but 12388 bytes in chunks of 4096 make 4"));
    enc[55] = 4;
    enc[48] = 0x7f; /* chunk size */
    ck_assert_int_eq(spes_manifest_decode(enc, len, &d), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "chunk size 2130710528 not in"));
    enc[48] = 0;
    enc[40] = 0xff; /* total size */
    ck_assert_int_eq(spes_manifest_decode(enc, len, &d), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "needs more than 262144 chunks"));
    enc[40] = 0;
    enc[1] = 'Q';
    ck_assert_int_eq(spes_manifest_decode(enc, len, &d), SPES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "manifest: bad magic"));
    enc[1] = 'P';
    enc[5] = 2;
    ck_assert_int_eq(spes_manifest_decode(enc, len, &d), SPES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "bulk version 2 not supported"));
    free(enc);
    spes_manifest_fini(&m);
    free(blob);
}
END_TEST

START_TEST(chunk_roundtrip)
{
    uint8_t *blob = make_blob();
    spes_manifest m;
    ck_assert_int_eq(spes_manifest_build(blob, BLOB, CS, &m), 0);
    for (uint32_t i = 0; i < m.chunk_count; i++) {
        spes_chunk_header h, d;
        const uint8_t *data;
        ck_assert_int_eq(spes_chunk_header_for(&m, i, &h), 0);
        uint8_t *msg = malloc(SPES_CHUNK_HEADER_LEN + h.length);
        ck_assert_int_eq(spes_chunk_header_encode(&h, msg), 0);
        memcpy(msg + SPES_CHUNK_HEADER_LEN, blob + h.offset, h.length);
        ck_assert_int_eq(spes_chunk_decode(msg, SPES_CHUNK_HEADER_LEN + h.length, &d, &data), 0);
        ck_assert_ptr_eq(data, msg + SPES_CHUNK_HEADER_LEN);
        ck_assert_uint_eq(d.index, i);
        ck_assert_uint_eq(d.length, i < 3 ? CS : 100);
        ck_assert_uint_eq(d.offset, (uint64_t)i * CS);
        ck_assert_mem_eq(&d, &h, sizeof h);
        ck_assert_int_eq(spes_chunk_matches_manifest(&d, &m), 0);
        free(msg);
    }
    spes_manifest_fini(&m);
    free(blob);
}
END_TEST

START_TEST(chunk_refusals)
{
    uint8_t *blob = make_blob(), msg[SPES_CHUNK_HEADER_LEN + 100];
    spes_manifest m, other;
    spes_chunk_header h;
    ck_assert_int_eq(spes_manifest_build(blob, BLOB, CS, &m), 0);
    ck_assert_int_eq(spes_chunk_header_for(&m, 3, &h), 0);
    ck_assert_int_eq(spes_chunk_header_encode(&h, msg), 0);
    memcpy(msg + SPES_CHUNK_HEADER_LEN, blob + 3 * CS, 100);
    size_t len = sizeof msg;

    chunk_fails(msg, 50, "chunk: truncated header (50 of 96 bytes)");
    chunk_fails(msg, len - 1, "chunk 3: header says 100 bytes but 99 follow");
    msg[len - 1] ^= 1;
    chunk_fails(msg, len, "chunk 3: data does not match its SHA-256");
    msg[len - 1] ^= 1;
    msg[0] = 'x';
    chunk_fails(msg, len, "chunk: bad magic");
    msg[0] = 'S';
    msg[7] = 1;
    chunk_fails(msg, len, "chunk: unknown flags 0x0001");
    msg[7] = 0;
    msg[43] = 4; /* index 4 of 4 */
    chunk_fails(msg, len, "chunk: index 4 not below the chunk count 4");
    msg[43] = 2; /* index 2 is not last: must be full-size, offset mismatch comes later */
    chunk_fails(msg, len, "chunk 2: length 100 but only the last chunk may be shorter");
    msg[43] = 3;
    msg[63] ^= 1; /* offset */
    chunk_fails(msg, len, "chunk 3: offset 12289, expected 12288");
    msg[63] ^= 1;
    msg[52] = 1; /* length 16M+100 > chunk size */
    chunk_fails(msg, len, "chunk 3: length 16777316 not in 1..4096");
    msg[52] = 0;
    msg[47] = 0; /* count 0 */
    chunk_fails(msg, len, "chunk: chunk count 0 not in");
    msg[47] = 4;
    msg[48] = 0x7f; /* chunk size */
    chunk_fails(msg, len, "chunk: chunk size 2130710528 not in 4096..16777216");
    msg[48] = 0;

    /* Header checks against a manifest. */
    const uint8_t *data;
    ck_assert_int_eq(spes_chunk_decode(msg, len, &h, &data), 0);
    ck_assert_int_eq(spes_manifest_build(blob, BLOB - 1, CS, &other), 0);
    ck_assert_int_eq(spes_chunk_matches_manifest(&h, &other), SPES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "belongs to another blob"));
    memcpy(other.blob_hash, m.blob_hash, 32);
    ck_assert_int_eq(spes_chunk_matches_manifest(&h, &other), SPES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "chunk 3: length 100 does not fit"));
    spes_manifest_fini(&other);
    m.chunk_hashes[3][0] ^= 1;
    ck_assert_int_eq(spes_chunk_matches_manifest(&h, &m), SPES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "hash differs from the manifest"));
    ck_assert_int_eq(spes_chunk_header_for(&m, 4, &h), SPES_EINVAL);
    spes_manifest_fini(&m);
    free(blob);
}
END_TEST

/* The checked-in envelope seeds are today's encodings of the examples: a schema
 * change without regenerating them (proto_seedgen) fails here. */
START_TEST(seed_corpus_current)
{
    char here[4096];
    const char *src = getenv("SPES_SOURCE_DIR");
    if (src == NULL) { /* run by hand: the source tree is where this file is */
        snprintf(here, sizeof here, "%s", __FILE__);
        char *cut = strstr(here, "/tests/test_proto.c");
        if (cut != NULL)
            *cut = '\0';
        src = cut != NULL ? here : ".";
    }
    for (int t = 1; t < SPES_MSG_TYPE_END; t++) {
        char path[8192], *file;
        size_t flen, len;
        uint8_t *want;
        snprintf(path, sizeof path, "%s/fuzz/corpus/fuzz_proto_envelope/%02d-%s", src, t,
                 spes_proto_type_name(t));
        ck_assert_msg(spes_read_file(path, 1 << 20, &file, &flen) == 0, "%s", spes_errmsg());
        ck_assert_int_eq(spes_proto_example_encode(t, &want, &len), 0);
        ck_assert_msg(flen == len && memcmp(file, want, len) == 0,
                      "%s is stale: rebuild proto_seedgen and run it on fuzz/corpus", path);
        free(file);
        free(want);
    }
}
END_TEST

static Suite *proto_suite(void)
{
    Suite *s = suite_create("proto");
    TCase *tc = tcase_create("envelope");
    tcase_add_test(tc, roundtrip_every_type);
    tcase_add_test(tc, roundtrip_fields);
    tcase_add_test(tc, refuse_envelopes);
    tcase_add_test(tc, refuse_trailing_bytes);
    tcase_add_test(tc, refuse_payloads);
    tcase_add_test(tc, refuse_semantics);
    tcase_add_test(tc, refuse_memory_bomb);
    tcase_add_test(tc, encode_checks);
    tcase_add_test(tc, error_reply);
    tcase_add_test(tc, version_error_reply);
    tcase_add_test(tc, utf8);
    tcase_add_test(tc, seed_corpus_current);
    suite_add_tcase(s, tc);
    TCase *tb = tcase_create("bulk");
    tcase_add_test(tb, manifest_build);
    tcase_add_test(tb, manifest_codec);
    tcase_add_test(tb, chunk_roundtrip);
    tcase_add_test(tb, chunk_refusals);
    suite_add_tcase(s, tb);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(proto_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
