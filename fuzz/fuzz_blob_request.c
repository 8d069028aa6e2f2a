/* fuzz_blob_request.c: feeds arbitrary bytes to spes_blob_handle, the server
 * side of blob transfer, over a store holding one small blob (the blob of
 * fuzz_blob_data below, 9000 bytes in 4096-byte chunks, so seeds can name it).
 * Every input must produce a reply (the answer or an Error envelope) and no
 * crash, leak or read outside a buffer. */
#include "blob/blob.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static spes_blob_store *store;
static char dir[] = "/tmp/spes-fuzz-blob-XXXXXX";

static void remove_store(void)
{
    char cmd[128];
    spes_blob_store_close(store);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz_blob_request: could not remove %s\n", dir);
}

static void fuzz_blob_data(uint8_t *buf, size_t n)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)(i * 31 + 7);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    uint8_t data[9000];
    spes_blob_store_opts o = {.chunk_size = 4096};
    fuzz_blob_data(data, sizeof data);
    if (!mkdtemp(dir) || spes_blob_store_open(&store, dir, &o) != 0 ||
        spes_blob_put(store, data, sizeof data, NULL) != 0) {
        fprintf(stderr, "fuzz_blob_request: cannot set up the store in %s\n", dir);
        abort();
    }
    atexit(remove_store);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *rep = NULL;
    size_t len = 0;
    spes_blob_handle(store, data, size, &rep, &len);
    if (!rep)
        abort(); /* every request gets an answer */
    free(rep);
    return 0;
}
