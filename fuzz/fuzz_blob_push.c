/* fuzz_blob_push.c: feeds arbitrary request sequences to spes_blob_push_handle, the
 * receiving side of pushed blobs (src/blob/push.c), over a store of its own with two
 * push slots and a 64 KiB limit. Input: records of [sender 0..3][u16 length, little
 * endian][envelope], so one input can start a push, send pieces, interleave senders and
 * lie. Every request must get a reply and nothing may crash, leak or read outside a
 * buffer; a blob the store ends up holding must match its name. Seeds: proto_seedgen
 * (proto/seedgen.c) writes fuzz/corpus/fuzz_blob_push. */
#include "blob/blob.h"
#include "core/sha256.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static spes_blob_store *store;
static spes_blob_push_rx *rx;
static char dir[] = "/tmp/spes-fuzz-push-XXXXXX";

static void remove_store(void)
{
    char cmd[128];
    spes_blob_push_rx_close(rx);
    spes_blob_store_close(store);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz_blob_push: could not remove %s\n", dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    spes_blob_store_opts o = {.chunk_size = 4096};
    if (!mkdtemp(dir) || spes_blob_store_open(&store, dir, &o) != 0 ||
        spes_blob_push_rx_open(&rx, store, 2) != 0) {
        fprintf(stderr, "fuzz_blob_push: cannot set up the store in %s\n", dir);
        abort();
    }
    spes_blob_push_rx_limit(rx, 64u << 10);
    atexit(remove_store);
    return 0;
}

/* check_held: a blob the store holds hashes to its name (then it is deleted for the next input). */
static void check_held(const uint8_t hash[32])
{
    if (!spes_blob_has(store, hash))
        return;
    char path[4096];
    spes_manifest m;
    if (spes_blob_path(store, hash, path, sizeof path) != 0 || spes_manifest_build_file(path, 4096, &m) != 0)
        abort();
    if (memcmp(m.blob_hash, hash, 32) != 0)
        abort(); /* served bytes that do not match their name */
    spes_manifest_fini(&m);
    spes_blob_delete(store, hash);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *names[4] = {"node-a", "node-b", "node-c", "op"};
    size_t at = 0;
    while (at + 3 <= size) {
        int who = data[at] % 4;
        size_t len = (size_t)data[at + 1] | (size_t)data[at + 2] << 8;
        at += 3;
        if (len > size - at)
            len = size - at;
        spes_pki_identity id = {.role = who == 3 ? SPES_ROLE_OPERATOR : SPES_ROLE_NODE};
        snprintf(id.name, sizeof id.name, "%s", names[who]);
        uint8_t *rep = NULL;
        size_t rl = 0;
        spes_blob_push_handle(rx, &id, data + at, len, &rep, &rl);
        if (!rep)
            abort(); /* every request gets an answer */
        free(rep);
        int type = 0;
        ProtobufCMessage *msg = NULL;
        if (spes_proto_decode(data + at, len, &type, &msg) == 0 && type == SPES_MSG_BLOB_PIECE) {
            const Spes__Wire__BlobPiece *p = (const Spes__Wire__BlobPiece *)msg;
            check_held(p->blob_hash.data);
        }
        spes_proto_free(msg);
        at += len;
    }
    return 0;
}
