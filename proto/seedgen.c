/* seedgen.c: writes the checked-in fuzz seed corpora for the proto targets.
 * Usage: proto_seedgen CORPUS_DIR (e.g. fuzz/corpus). Creates
 * fuzz_proto_envelope/, fuzz_proto_payload/, fuzz_proto_chunk/ and
 * fuzz_proto_manifest/ under it with one small file per seed, and
 * fuzz_blob_push/ (request sequences, fuzz/fuzz_blob_push.c's format). A developer
 * tool: never linked into the daemon or client. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/fileio.h"
#include "proto/bulk.h"
#include "proto/examples.h"

static int put(const char *dir, const char *target, const char *name, const void *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, target);
    int rc = spes_mkdir_p(path, 0755);
    if (rc == 0) {
        snprintf(path, sizeof path, "%s/%s/%s", dir, target, name);
        rc = spes_write_file_atomic(path, p, n);
    }
    if (rc < 0)
        fprintf(stderr, "proto_seedgen: %s\n", spes_errmsg());
    return rc;
}

static int envelopes(const char *dir)
{
    for (int t = 1; t < SPES_MSG_TYPE_END; t++) {
        uint8_t *buf;
        size_t len;
        char name[64];
        if (spes_proto_example_encode(t, &buf, &len) < 0) {
            fprintf(stderr, "proto_seedgen: %s\n", spes_errmsg());
            return -1;
        }
        snprintf(name, sizeof name, "%02d-%s", t, spes_proto_type_name(t));
        int rc = put(dir, "fuzz_proto_envelope", name, buf, len);
        /* The payload target takes one type byte, then the bare protobuf payload. */
        buf[SPES_PROTO_HEADER_LEN - 1] = (uint8_t)t;
        if (rc == 0)
            rc = put(dir, "fuzz_proto_payload", name, buf + SPES_PROTO_HEADER_LEN - 1,
                     len - SPES_PROTO_HEADER_LEN + 1);
        free(buf);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int bulk(const char *dir)
{
    enum { CS = SPES_CHUNK_SIZE_MIN };
    static uint8_t blob[2 * CS + 10];
    for (size_t i = 0; i < sizeof blob; i++)
        blob[i] = (uint8_t)(i * 7 + 1);
    struct {
        const char *name;
        size_t len;
    } blobs[] = {{"empty", 0}, {"three", sizeof blob}};
    for (size_t b = 0; b < 2; b++) {
        spes_manifest m;
        uint8_t *enc;
        static uint8_t msg[SPES_CHUNK_HEADER_LEN + CS];
        size_t len;
        if (spes_manifest_build(blob, blobs[b].len, CS, &m) < 0 || spes_manifest_encode(&m, &enc, &len) < 0)
            return -1;
        int rc = put(dir, "fuzz_proto_manifest", blobs[b].name, enc, len);
        free(enc);
        for (uint32_t i = 0; rc == 0 && i < m.chunk_count; i += 2) {
            /* The first (full) and the short last chunk of three. */
            spes_chunk_header h;
            rc = spes_chunk_header_for(&m, i, &h);
            if (rc == 0)
                rc = spes_chunk_header_encode(&h, msg);
            memcpy(msg + SPES_CHUNK_HEADER_LEN, blob + h.offset, h.length);
            if (rc == 0)
                rc = put(dir, "fuzz_proto_chunk", i ? "last-of-three" : "first-of-three", msg,
                         SPES_CHUNK_HEADER_LEN + h.length);
        }
        spes_manifest_fini(&m);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* push_record appends one fuzz_blob_push record (sender, u16 length, envelope) to buf. */
static size_t push_record(uint8_t *buf, size_t at, int who, int type, const ProtobufCMessage *m)
{
    uint8_t *env = NULL;
    size_t len = 0;
    if (spes_proto_encode(type, m, &env, &len) != 0 || len > 0xffff)
        abort();
    buf[at] = (uint8_t)who;
    buf[at + 1] = (uint8_t)(len & 0xff);
    buf[at + 2] = (uint8_t)(len >> 8);
    memcpy(buf + at + 3, env, len);
    free(env);
    return at + 3 + len;
}

/* pushes writes push sequences of the 9000-byte blob byte i = i * 31 + 7 (fuzz_blob_push.c):
 * whole, out of order with a wrong piece, and two senders interleaved. */
static int pushes(const char *dir)
{
    static uint8_t blob[9000], out[3][40000];
    for (size_t i = 0; i < sizeof blob; i++)
        blob[i] = (uint8_t)(i * 31 + 7);
    spes_manifest m;
    uint8_t *menc = NULL;
    size_t mlen = 0;
    if (spes_manifest_build(blob, sizeof blob, 4096, &m) != 0 || spes_manifest_encode(&m, &menc, &mlen) != 0)
        return -1;
    Spes__Wire__BlobPush bp = SPES__WIRE__BLOB_PUSH__INIT;
    bp.manifest = (ProtobufCBinaryData){mlen, menc};
    Spes__Wire__BlobPiece pc = SPES__WIRE__BLOB_PIECE__INIT;
    pc.blob_hash = (ProtobufCBinaryData){32, m.blob_hash};
    pc.data =
        (ProtobufCBinaryData){sizeof blob, blob}; /* one piece: the blob is under SPES_PROTO_PUSH_PIECE */
    size_t n[3] = {0, 0, 0};
    n[0] = push_record(out[0], n[0], 0, SPES_MSG_BLOB_PUSH, &bp.base);
    n[0] = push_record(out[0], n[0], 0, SPES_MSG_BLOB_PIECE, &pc.base);
    n[1] = push_record(out[1], n[1], 1, SPES_MSG_BLOB_PIECE, &pc.base); /* before its push */
    n[1] = push_record(out[1], n[1], 1, SPES_MSG_BLOB_PUSH, &bp.base);
    pc.offset = 4096; /* not a piece */
    n[1] = push_record(out[1], n[1], 1, SPES_MSG_BLOB_PIECE, &pc.base);
    pc.offset = 0;
    n[1] = push_record(out[1], n[1], 1, SPES_MSG_BLOB_PIECE, &pc.base);
    n[2] = push_record(out[2], n[2], 0, SPES_MSG_BLOB_PUSH, &bp.base);
    n[2] = push_record(out[2], n[2], 2, SPES_MSG_BLOB_PUSH, &bp.base);
    blob[77] ^= 1; /* bytes that do not match the manifest */
    n[2] = push_record(out[2], n[2], 2, SPES_MSG_BLOB_PIECE, &pc.base);
    blob[77] ^= 1;
    n[2] = push_record(out[2], n[2], 0, SPES_MSG_BLOB_PIECE, &pc.base);
    free(menc);
    spes_manifest_fini(&m);
    const char *names[3] = {"whole", "out-of-order", "two-senders-one-lies"};
    for (int i = 0; i < 3; i++)
        if (put(dir, "fuzz_blob_push", names[i], out[i], n[i]) != 0)
            return -1;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: proto_seedgen CORPUS_DIR\n");
        return 2;
    }
    return envelopes(argv[1]) == 0 && bulk(argv[1]) == 0 && pushes(argv[1]) == 0 ? 0 : 1;
}
