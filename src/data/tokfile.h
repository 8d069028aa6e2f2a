/* tokfile.h: token file formats (raw, .npy, llm.c shards), their header codec,
 * and a read-only token file (read with pread, never mapped).
 * Header parsing works on bytes only and must never trust them: every length
 * and count is checked against the file size before anything is read.
 * Tokens are little-endian; spes supports little-endian hosts only. */
#ifndef SPES_DATA_TOKFILE_H
#define SPES_DATA_TOKFILE_H

#include <stddef.h>
#include <stdint.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "spes token files are read on little-endian hosts only"
#endif

/* spes_tok_dtype is the on-disk width of one token in bytes (0 = not given). */
typedef enum spes_tok_dtype {
    SPES_TOK_DTYPE_NONE = 0,
    SPES_TOK_U16 = 2,
    SPES_TOK_U32 = 4,
} spes_tok_dtype;

/* spes_tok_format is a token file container. */
typedef enum spes_tok_format {
    SPES_TOK_AUTO = 0, /* detect: llm.c magic, npy magic, else raw */
    SPES_TOK_RAW,      /* headerless little-endian tokens (OLMo memmap, nanoGPT .bin) */
    SPES_TOK_NPY,      /* NumPy .npy, 1-D, dtype <u2/<u4 (<i2/<i4 read, negatives refused) */
    SPES_TOK_LLMC,     /* llm.c shard: 256 x int32 header, then tokens */
} spes_tok_format;

enum {
    SPES_LLMC_HEADER_BYTES = 1024,  /* 256 int32 */
    SPES_LLMC_MAGIC_U16 = 20240520, /* version 1, uint16 tokens (GPT-2) */
    SPES_LLMC_MAGIC_U32 = 20240801, /* version 7, uint32 tokens (Llama 3) */
    SPES_LLMC_VERSION_U16 = 1,
    SPES_LLMC_VERSION_U32 = 7,
    SPES_NPY_WRITE_HEADER_BYTES = 128, /* what spes writes: v1.0, padded to 64 */
    SPES_NPY_HEADER_MAX = 65536,       /* largest npy dict text accepted */
    SPES_TOK_HEAD_MAX = 12 + 65536,    /* bytes of a file the header parser may need */
};

/* spes_tok_header is what a parsed header says about a file. */
typedef struct spes_tok_header {
    spes_tok_format format; /* never AUTO after a successful parse */
    spes_tok_dtype dtype;
    int is_signed;    /* npy <i2/<i4: values must be checked for negatives */
    uint64_t offset;  /* byte offset of the first token */
    uint64_t ntokens; /* tokens in the file */
} spes_tok_header;

/* spes_tok_dtype_parse maps "uint16"/"u16"/"uint32"/"u32" to a dtype (SPES_EINVAL otherwise). */
int spes_tok_dtype_parse(const char *s, spes_tok_dtype *out);

/* spes_tok_format_parse maps "auto"/"raw"/"npy"/"llmc" to a format (SPES_EINVAL otherwise). */
int spes_tok_format_parse(const char *s, spes_tok_format *out);

/* spes_tok_dtype_name returns "uint16", "uint32" or "none". */
const char *spes_tok_dtype_name(spes_tok_dtype d);

/* spes_tok_format_name returns "auto", "raw", "npy" or "llmc". */
const char *spes_tok_format_name(spes_tok_format f);

/* spes_tok_header_parse reads the header of a file named name (used in messages and for the
 * .npy extension check) of file_size bytes from its first head_len bytes (head_len must be
 * min(file_size, SPES_TOK_HEAD_MAX)); raw_dtype is used for raw files only. On success the
 * header's token region lies exactly inside the file; on failure SPES_EFORMAT/SPES_EINVAL
 * is returned with a one-line message naming the file and the fault. */
int spes_tok_header_parse(spes_tok_header *h, const char *name, const uint8_t *head, size_t head_len,
                          uint64_t file_size, spes_tok_format format, spes_tok_dtype raw_dtype);

/* spes_tok_header_build writes the header for ntokens tokens into out (cap bytes) and sets
 * *len to its size (0 for raw); SPES_ERANGE if the format cannot hold ntokens. */
int spes_tok_header_build(uint8_t *out, size_t cap, size_t *len, spes_tok_format format, spes_tok_dtype dtype,
                          uint64_t ntokens);

/* spes_tokfile is one opened, validated token file, read with pread: a mapping would
 * leave every page read (the vocabulary scan reads them all) counted in the process's
 * resident memory, and a file cut short under us would be SIGBUS instead of an error. */
typedef struct spes_tokfile {
    char *path;
    spes_tok_header hdr;
    int fd; /* read-only descriptor when has_fd */
    int has_fd;
} spes_tokfile;

/* spes_tokfile_open opens path, detects or checks its format and validates the header
 * against the file size; raw_dtype is needed for raw files. */
int spes_tokfile_open(spes_tokfile *f, const char *path, spes_tok_format format, spes_tok_dtype raw_dtype);

/* spes_tokfile_close closes the file and frees the path (safe on a zeroed struct). */
void spes_tokfile_close(spes_tokfile *f);

/* spes_tokfile_read copies the raw bytes of tokens [from, from + n) (n * dtype size;
 * from + n <= hdr.ntokens) to buf; SPES_EIO naming the file if they cannot be read
 * (the file shrank or failed after it was opened). */
int spes_tokfile_read(const spes_tokfile *f, uint64_t from, uint64_t n, void *buf);

/* spes_tokfile_read_ids reads tokens [from, from + n) into ids as uint32 values,
 * whatever the file's dtype (as spes_tokfile_read for errors). */
int spes_tokfile_read_ids(const spes_tokfile *f, uint64_t from, uint64_t n, uint32_t *ids);

/* spes_tokfile_get returns token i (i < hdr.ntokens) as an unsigned value, UINT32_MAX if
 * it cannot be read. One pread per call: for tests and messages, not for bulk reads. */
uint32_t spes_tokfile_get(const spes_tokfile *f, uint64_t i);

#endif
