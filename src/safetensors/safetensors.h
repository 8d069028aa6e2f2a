/* safetensors.h: the Hugging Face safetensors format, a streaming writer and a strict reader.
 * File layout: 8-byte little-endian header size N, N bytes of JSON header
 * ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, ..., "__metadata__": {...}}),
 * then the data region, which the tensors tile exactly.
 * The writer streams through a spes_atomic_file (no whole-file buffer); the
 * reader maps the file read-only and refuses anything the Rust crate would
 * refuse (and a little more), with one message naming the file and the tensor
 * or field. Outside bytes never crash the reader: it is fuzzed. */
#ifndef SPES_SAFETENSORS_SAFETENSORS_H
#define SPES_SAFETENSORS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/fileio.h"

/* SPES_ST_MAX_HEADER is the largest JSON header accepted (the Rust crate's limit). */
#define SPES_ST_MAX_HEADER 100000000ULL
/* SPES_ST_MAX_DIMS is the largest tensor rank accepted. */
#define SPES_ST_MAX_DIMS 8

/* spes_st_dtype lists the dtypes the reader knows; only F32/F16/BF16 convert to float. */
typedef enum spes_st_dtype {
    SPES_ST_BOOL,
    SPES_ST_U8,
    SPES_ST_I8,
    SPES_ST_F8_E5M2,
    SPES_ST_F8_E4M3,
    SPES_ST_I16,
    SPES_ST_U16,
    SPES_ST_F16,
    SPES_ST_BF16,
    SPES_ST_I32,
    SPES_ST_U32,
    SPES_ST_F32,
    SPES_ST_F64,
    SPES_ST_I64,
    SPES_ST_U64,
    SPES_ST_NDTYPES
} spes_st_dtype;

/* spes_st_dtype_name returns the header spelling of a dtype ("F32"), or NULL if out of range. */
const char *spes_st_dtype_name(int dtype);

/* spes_st_dtype_size returns the bytes per element of a dtype, or 0 if out of range. */
size_t spes_st_dtype_size(int dtype);

/* spes_st_f32_to_bf16 rounds a float to bfloat16 bits, to nearest with ties to even (NaN stays NaN). */
uint16_t spes_st_f32_to_bf16(float x);

/* spes_st_bf16_to_f32 widens bfloat16 bits to a float exactly. */
float spes_st_bf16_to_f32(uint16_t h);

/* spes_st_f16_to_f32 widens IEEE half-precision bits to a float exactly (subnormals, inf, NaN). */
float spes_st_f16_to_f32(uint16_t h);

/* spes_st_desc describes one tensor to write: name, stored dtype (F32 or BF16), shape. */
typedef struct spes_st_desc {
    const char *name;
    int dtype; /* SPES_ST_F32 or SPES_ST_BF16 */
    int ndim;  /* 0..SPES_ST_MAX_DIMS */
    int64_t shape[SPES_ST_MAX_DIMS];
} spes_st_desc;

/* spes_st_writer streams tensors, in the order they were described, into one file. */
typedef struct spes_st_writer {
    spes_atomic_file af;
    spes_st_desc *descs; /* copies, names owned */
    int ndescs;
    int next;         /* index of the tensor being written */
    uint64_t written; /* elements of tensor `next` written so far */
    int failed;       /* a write failed: only abort is allowed */
} spes_st_writer;

/* spes_st_writer_open writes the header for these tensors to path's temp file; metadata is
 * NULL or a NULL-terminated list of key, value strings ({"format":"pt"} is always written). */
int spes_st_writer_open(spes_st_writer *w, const char *path, const spes_st_desc *descs, int n,
                        const char *const *metadata);

/* spes_st_writer_put appends n float32 values to the current tensor (converting to its dtype);
 * a tensor may be given in several calls, and the next tensor starts when one is full. */
int spes_st_writer_put(spes_st_writer *w, const float *data, size_t n);

/* spes_st_writer_commit checks every tensor was written in full, then makes the file durable and visible. */
int spes_st_writer_commit(spes_st_writer *w);

/* spes_st_writer_abort drops the temp file; an older file at path is untouched. */
void spes_st_writer_abort(spes_st_writer *w);

/* spes_st_tensor is one tensor of a parsed file. */
typedef struct spes_st_tensor {
    char *name;
    int dtype;
    int ndim;
    int64_t shape[SPES_ST_MAX_DIMS];
    uint64_t numel;
    uint64_t begin, end; /* byte offsets inside the data region */
} spes_st_tensor;

/* spes_st_file is an open, fully validated safetensors file (tensors sorted by offset). */
typedef struct spes_st_file {
    char *origin;        /* file name used in messages */
    const uint8_t *data; /* data region */
    uint64_t data_len;
    int ntensors;
    spes_st_tensor *tensors;
    int nmeta;
    char **meta_keys, **meta_vals;
    void *map; /* mmap of the whole file, or NULL when parsed from memory */
    size_t map_len;
} spes_st_file;

/* spes_st_open maps and validates path; on success *out is owned by the caller (spes_st_close). */
int spes_st_open(spes_st_file **out, const char *path);

/* spes_st_parse validates an in-memory file of len bytes (named origin in messages); the buffer
 * must outlive *out, which borrows it. */
int spes_st_parse(spes_st_file **out, const uint8_t *buf, size_t len, const char *origin);

/* spes_st_close unmaps and frees everything; NULL is allowed. */
void spes_st_close(spes_st_file *f);

/* spes_st_find returns the tensor with this name, or NULL. */
const spes_st_tensor *spes_st_find(const spes_st_file *f, const char *name);

/* spes_st_meta returns the __metadata__ value for key, or NULL if absent. */
const char *spes_st_meta(const spes_st_file *f, const char *key);

/* spes_st_read_f32 converts tensor t (F32, F16 or BF16) into n floats at out; n must equal t->numel. */
int spes_st_read_f32(const spes_st_file *f, const spes_st_tensor *t, float *out, size_t n);

#endif
