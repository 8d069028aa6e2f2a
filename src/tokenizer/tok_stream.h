/* tok_stream.h: the state of a spes_tokstream, shared by stream.c and pretok.c only. */
#ifndef SPES_TOKENIZER_STREAM_H
#define SPES_TOKENIZER_STREAM_H

#include "tokenizer/tok_internal.h"

#define TOK_MAX_THREADS 16 /* threads of a pool a stream uses (others stay idle) */
#define TOK_CHUNKS 32      /* pieces of a block are encoded in up to this many chunks */

typedef struct tok_buf {
    char *p;
    size_t n, cap;
} tok_buf;

/* tok_piece is one pre-token (bytes in the arena) or, with len 0, an added token id. */
typedef struct tok_piece {
    uint32_t off, len, id;
} tok_piece;

/* tok_pieceset is the pieces of one fed block, waiting for BPE. */
typedef struct tok_pieceset {
    tok_buf arena; /* piece bytes */
    tok_piece *v;
    size_t n, cap;
} tok_pieceset;

/* tok_item is one regex split result: [a, b), a match or not. */
typedef struct tok_item {
    size_t a, b;
    int m;
} tok_item;

/* tok_cache maps short pre-tokens to their ids; cleared when full. */
typedef struct tok_cache {
    struct tok_cent {
        uint64_t h;
        uint32_t off;
        uint16_t klen, nids; /* nids 0: empty slot */
    } * slots;
    char *arena;
    size_t arena_n, n;
} tok_cache;

struct spes_tokstream {
    const spes_tokenizer *t;
    spes_pool *pool;
    int nthreads;
    tok_buf raw;         /* fed bytes not yet normalized */
    uint64_t raw_base;   /* document offset of raw.p[0] */
    tok_buf norm;        /* normalized text of the current segment not yet pre-tokenized */
    size_t norm_ctx;     /* bytes at the start of norm kept only as regex context */
    int seg_start;       /* nothing of the current segment has been taken yet */
    tok_pieceset set[2]; /* pre-tokenizer output: set[cur] filling, the other waiting */
    int cur;
    tok_item *items[8], *folds[8]; /* per pre-tokenizer level */
    size_t icap[8], fcap[8];
    pcre2_match_data *md[8];
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
    tok_cache cache[TOK_MAX_THREADS];
    spes_ids part[TOK_CHUNKS]; /* ids of each chunk of a set encoded on the pool */
};

int spes__tok_buf_add(tok_buf *b, const void *p, size_t n);
int spes__tok_cache_init(tok_cache *c);
void spes__tok_cache_fini(tok_cache *c);
/* spes__tok_pretok pre-tokenizes norm [a, b) into pieces; with partial set, only what later
 * text cannot change, and *used is where the carry starts. */
int spes__tok_pretok(spes_tokstream *s, size_t a, size_t b, int partial, size_t *used);
/* spes__tok_add_piece appends a piece (len > 0) or an added token id (p NULL) to set[cur]. */
int spes__tok_add_piece(spes_tokstream *s, const char *p, size_t n, uint32_t id);
/* spes__tok_encode_set appends the ids of set's pieces [begin, end) to out, cache c. */
int spes__tok_encode_set(spes_tokstream *s, const tok_pieceset *set, tok_cache *c, size_t begin, size_t end,
                         spes_ids *out);

#endif
