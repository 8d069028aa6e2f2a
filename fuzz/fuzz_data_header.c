/* fuzz_data_header.c: token file headers (llm.c, .npy, raw) from arbitrary bytes.
 * The bytes go to the pure header parser under every format (with and without a
 * .npy name) and, as a real file (memfd), through spes_tokfile_open, after which
 * every token is read. Invariants checked: an accepted header's token region lies
 * exactly inside the file, and every token of an opened file can be read. */
#include "core/error.h"
#include "data/tokfile.h"

#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

static void check_header(const uint8_t *data, size_t size, spes_tok_format f, spes_tok_dtype d,
                         const char *name)
{
    spes_tok_header h;
    size_t hl = size < SPES_TOK_HEAD_MAX ? size : SPES_TOK_HEAD_MAX;
    if (spes_tok_header_parse(&h, name, data, hl, size, f, d) != 0)
        return;
    if (h.format == SPES_TOK_AUTO || (h.dtype != SPES_TOK_U16 && h.dtype != SPES_TOK_U32) ||
        h.offset > size || h.ntokens * (uint64_t)h.dtype != size - h.offset)
        abort();
}

static void check_file(const uint8_t *data, size_t size)
{
    static int fd = -1;
    if (fd < 0 && (fd = memfd_create("fuzz_data_header", 0)) < 0)
        return;
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
        return;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    spes_tokfile tf;
    if (spes_tokfile_open(&tf, path, SPES_TOK_AUTO, SPES_TOK_U16) != 0)
        return;
    if (tf.hdr.offset > size || tf.hdr.ntokens * (uint64_t)tf.hdr.dtype != size - tf.hdr.offset)
        abort();
    uint32_t ids[256];
    for (uint64_t i = 0; i < tf.hdr.ntokens; i += 256) {
        uint64_t n = tf.hdr.ntokens - i < 256 ? tf.hdr.ntokens - i : 256;
        if (spes_tokfile_read_ids(&tf, i, n, ids) != 0)
            abort(); /* the region was accepted, so it must be readable */
    }
    spes_tokfile_close(&tf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const spes_tok_format fmts[] = {SPES_TOK_AUTO, SPES_TOK_RAW, SPES_TOK_NPY, SPES_TOK_LLMC};
    for (int i = 0; i < 4; i++) {
        check_header(data, size, fmts[i], SPES_TOK_U16, "fuzz.bin");
        check_header(data, size, fmts[i], SPES_TOK_U32, "fuzz.npy");
        check_header(data, size, fmts[i], SPES_TOK_DTYPE_NONE, "fuzz");
    }
    check_file(data, size);
    spes_errclear();
    return 0;
}
