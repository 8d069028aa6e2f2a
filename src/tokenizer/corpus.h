/* corpus.h: a corpus of text files to one token file, the pipeline behind `spesd tokenize`.
 * A plain-text input is one document; a ".jsonl" input holds one document per line (a
 * string field, default "text"); "-" is standard input. Small documents are gathered into
 * batches encoded in parallel, one tokenizer stream per thread, output kept in input order;
 * a document too large to batch is streamed in blocks (ids equal whole-document encoding)
 * with BPE on the pool. Memory stays bounded by the batch size whatever the input size (a
 * single JSON line must fit in memory). Never leaves a partial output file: the token
 * writer commits atomically at the end or removes everything on error. */
#ifndef SPES_TOKENIZER_CORPUS_H
#define SPES_TOKENIZER_CORPUS_H

#include <stddef.h>
#include <stdint.h>

#include "data/tokfile.h"
#include "tokenizer/tokenizer.h"

#define SPES_CORPUS_MAX_THREADS 16
#define SPES_CORPUS_BATCH_BYTES (8u << 20)

/* spes_corpus_stats counts what a run has read and written so far. */
typedef struct spes_corpus_stats {
    uint64_t in_bytes;  /* input bytes read */
    uint64_t tokens;    /* tokens written, EOS included */
    uint64_t documents; /* documents encoded */
    double seconds;     /* since the run started */
} spes_corpus_stats;

/* spes_corpus_opts says how to tokenize a corpus; zero fields take their defaults. */
typedef struct spes_corpus_opts {
    const spes_tokenizer *tok; /* required */
    const char *out;           /* the token file to write (required) */
    spes_tok_format format;    /* SPES_TOK_AUTO: npy for a ".npy" name, else raw */
    spes_tok_dtype dtype;      /* SPES_TOK_DTYPE_NONE: uint16 if the vocabulary fits, else uint32 */
    const char *text_field;    /* the jsonl field holding the text; NULL: "text" */
    int has_eos;               /* append eos after every document */
    uint32_t eos;
    int threads;        /* 1..SPES_CORPUS_MAX_THREADS; 0: 1 */
    size_t batch_bytes; /* input gathered per parallel batch (>= 2); 0: SPES_CORPUS_BATCH_BYTES */
    /* progress, when set, is called about every 2 s and once at the end (done = 1) */
    void (*progress)(void *ctx, const spes_corpus_stats *st, int done);
    void *progress_ctx;
} spes_corpus_opts;

/* spes_tokenize_corpus encodes the inputs in order into o->out; on error nothing is
 * written and the message names the input (and the jsonl line) at fault. */
int spes_tokenize_corpus(const spes_corpus_opts *o, const char *const *inputs, size_t ninputs,
                         spes_corpus_stats *st);

#endif
