/* tokwriter.h: streaming writer of token files (raw, .npy, llm.c shard).
 * Tokens are appended in chunks; the header (whose count is known only at the end)
 * is written as a placeholder and rewritten at close, and the file appears at its
 * final path atomically (temp file, fsync, rename, directory fsync) or not at all. */
#ifndef SPES_DATA_TOKWRITER_H
#define SPES_DATA_TOKWRITER_H

#include <stddef.h>
#include <stdint.h>

#include "core/fileio.h"
#include "data/tokfile.h"

/* spes_tokwriter is one token file being written; fields are private. */
typedef struct spes_tokwriter {
    spes_atomic_file af;
    spes_tok_format format; /* RAW, NPY or LLMC */
    spes_tok_dtype dtype;
    uint64_t ntokens; /* tokens written so far */
    uint8_t *buf;     /* conversion buffer (SPES_TOKWRITER_CHUNK tokens) */
    int open;
} spes_tokwriter;

/* spes_tokwriter_open starts writing path in format (AUTO picks npy for a ".npy" name, else
 * raw) with dtype uint16 or uint32; nothing appears at path until spes_tokwriter_close. */
int spes_tokwriter_open(spes_tokwriter *w, const char *path, spes_tok_format format, spes_tok_dtype dtype);

/* spes_tokwriter_write appends n token ids; if any id does not fit the dtype (or an llm.c
 * shard would exceed INT32_MAX tokens) nothing of this call is written and SPES_ERANGE is
 * returned with a message naming the id and its position in the file; the writer stays usable. */
int spes_tokwriter_write(spes_tokwriter *w, const uint32_t *ids, size_t n);

/* spes_tokwriter_count returns the number of tokens written so far. */
uint64_t spes_tokwriter_count(const spes_tokwriter *w);

/* spes_tokwriter_close writes the final header and commits the file durably to its path;
 * the writer is released whether or not it succeeds (on failure no file appears). */
int spes_tokwriter_close(spes_tokwriter *w);

/* spes_tokwriter_abort discards everything written and releases the writer (safe on a
 * zeroed or already released writer). */
void spes_tokwriter_abort(spes_tokwriter *w);

#endif
