/* seedgen.c: writes the checked-in fuzz seed corpora for the proto targets.
 * Usage: proto_seedgen CORPUS_DIR (e.g. fuzz/corpus). Creates
 * fuzz_proto_envelope/, fuzz_proto_payload/, fuzz_proto_chunk/ and
 * fuzz_proto_manifest/ under it with one small file per seed. A developer
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

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: proto_seedgen CORPUS_DIR\n");
        return 2;
    }
    return envelopes(argv[1]) == 0 && bulk(argv[1]) == 0 ? 0 : 1;
}
