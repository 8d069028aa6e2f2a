/* dataset.h: several token files read as one stream, a node's disjoint part of it,
 * and llm.c-layout batches addressed by step (so resume is exact).
 * Stream order is the files in the order given. Step s of the part uses the B*T+1
 * tokens starting at token (s*B*T mod part_len) of the part, wrapping to the part's
 * beginning when a batch runs past its end. The dataset is read-only after open and
 * may be read from several threads; the cursor belongs to one caller. */
#ifndef SPES_DATA_DATASET_H
#define SPES_DATA_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "core/parallel.h"
#include "data/tokfile.h"

/* spes_dataset is a validated, mapped, concatenated token stream. */
typedef struct spes_dataset {
    int nfiles;
    spes_tokfile *files; /* (nfiles) */
    uint64_t *starts;    /* (nfiles + 1) first stream index of each file; starts[nfiles] = total */
    uint64_t total;      /* tokens in the whole stream */
    uint32_t vocab_size;
    int part_index, part_count; /* this node's part: index of count */
    uint64_t part_begin;        /* first stream token of the part */
    uint64_t part_len;          /* tokens in the part */
    uint64_t cursor;            /* next batch starts here, relative to part_begin, < part_len */
} spes_dataset;

/* spes_dataset_open opens n token files (dtype for raw files, format AUTO or forced),
 * validates every header and scans every token once, refusing an id >= vocab_size (or a
 * negative one in a signed .npy) with a message naming the file and the token index; pool
 * may be NULL (scan on the caller). The part is the whole stream and the cursor 0. */
int spes_dataset_open(spes_dataset *ds, const char *const *paths, int n, spes_tok_dtype dtype,
                      spes_tok_format format, uint32_t vocab_size, spes_pool *pool);

/* spes_dataset_close unmaps every file and frees the dataset (safe on a zeroed struct). */
void spes_dataset_close(spes_dataset *ds);

/* spes_dataset_total returns the number of tokens in the whole stream. */
uint64_t spes_dataset_total(const spes_dataset *ds);

/* spes_dataset_set_part selects part index of count contiguous parts of the stream: each
 * part has floor(total/count) tokens and the last also takes the remainder, so the parts
 * are disjoint and cover the stream; the cursor is reset to 0. */
int spes_dataset_set_part(spes_dataset *ds, int index, int count);

/* spes_dataset_part_len returns the number of tokens in the selected part. */
uint64_t spes_dataset_part_len(const spes_dataset *ds);

/* spes_dataset_check_batch refuses (SPES_ERANGE, with a message) a B x T batch that does
 * not fit the part: it needs B*T+1 tokens. */
int spes_dataset_check_batch(const spes_dataset *ds, int B, int T);

/* spes_dataset_read copies n tokens of the part starting at part position pos (wrapping
 * at the part's end) into out as int32. */
int spes_dataset_read(const spes_dataset *ds, uint64_t pos, size_t n, int32_t *out);

/* spes_dataset_batch_at fills inputs (B*T) and targets (B*T, inputs shifted by one) with
 * the batch of the given step, independent of the cursor. */
int spes_dataset_batch_at(const spes_dataset *ds, uint64_t step, int B, int T, int32_t *inputs,
                          int32_t *targets);

/* spes_dataset_next fills the batch at the cursor and advances the cursor by B*T (wrapping). */
int spes_dataset_next(spes_dataset *ds, int B, int T, int32_t *inputs, int32_t *targets);

/* spes_dataset_tell returns the cursor (a position within the part) for a checkpoint. */
uint64_t spes_dataset_tell(const spes_dataset *ds);

/* spes_dataset_seek restores a cursor saved by spes_dataset_tell (SPES_ERANGE if it is not
 * inside the part). */
int spes_dataset_seek(spes_dataset *ds, uint64_t cursor);

#endif
