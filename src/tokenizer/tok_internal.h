/* tok_internal.h: the tokenizer's internal structures, shared by its .c files only.
 * Nothing here is API; names are spes__tok_* for non-static functions. */
#ifndef SPES_TOKENIZER_INTERNAL_H
#define SPES_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer/tokenizer.h"

#define TOK_NONE UINT32_MAX

/* tok_strmap maps byte strings (owned elsewhere) to ids, open addressing. */
typedef struct tok_strmap {
    struct tok_strent {
        const char *key;
        uint32_t len, id;
    } * slots;
    size_t mask, n;
} tok_strmap;

/* tok_mergemap maps an id pair to (rank, merged id), open addressing. */
typedef struct tok_mergemap {
    struct tok_mergeent {
        uint64_t key; /* a << 32 | b, UINT64_MAX = empty */
        uint32_t rank, id;
    } * slots;
    size_t mask, n;
} tok_mergemap;

/* tok_added_set is a group of added tokens matched leftmost-longest in text. */
typedef struct tok_added_set {
    struct tok_added {
        const char *s;
        uint32_t len, id;
    } * v;
    size_t n;
    size_t maxlen;
    uint8_t first[256]; /* 1 where some token starts with that byte */
    int nfirst;         /* how many distinct first bytes */
    uint8_t only_first; /* the first byte when nfirst == 1 */
} tok_added_set;

enum { TOK_ISOLATED, TOK_REMOVED, TOK_MERGED_PREV, TOK_MERGED_NEXT, TOK_CONTIGUOUS };
enum { TOK_NFC = 1, TOK_NFD, TOK_NFKC, TOK_NFKD };

/* tok_level is one pre-tokenizer split step (Split, or ByteLevel with its regex/prefix). */
typedef struct tok_level {
    pcre2_code *re; /* NULL: the whole input is one piece */
    int behavior, invert, prefix_space;
} tok_level;

struct spes_tokenizer {
    int is_bytes;
    uint32_t vocab_size; /* largest id + 1 */
    char *arena;         /* all token strings, NUL-separated */
    tok_strmap vocab;    /* token text as in the file -> id */
    tok_strmap vbytes;   /* token bytes (byte-level decoded) -> id, for ignore_merges */
    uint32_t *dec_off;   /* (vocab_size) offset of each id's bytes in dec */
    uint32_t *dec_len;   /* (vocab_size) byte count of each id (0 if absent) */
    char *dec;           /* decoded bytes of every id */
    uint8_t *has_id;     /* (vocab_size) 1 where the id exists */
    tok_mergemap merges;
    uint32_t byte_id[256];
    uint32_t unk_id;
    int ignore_merges;
    tok_added_set added_raw, added_norm; /* added_norm: matched in normalized form */
    char *added_norm_text;               /* normalized contents of added_norm */
    int norm[8];
    int nnorm;
    tok_level levels[8];
    int nlevels;
};

/* byte-level map (GPT-2's bytes_to_unicode) */
/* spes__tok_byte_char returns the code point that stands for byte b. */
uint32_t spes__tok_byte_char(uint8_t b);
/* spes__tok_char_byte returns the byte for code point c, or -1 if c is not in the map. */
int spes__tok_char_byte(uint32_t c);
/* spes__tok_unbyte converts a byte-level string to bytes (out has room for len bytes);
 * returns the byte count, or -1 if some character is not in the map. */
long spes__tok_unbyte(const char *s, size_t len, char *out);

uint64_t spes__tok_hash(const void *p, size_t len);
int spes__tok_strmap_init(tok_strmap *m, size_t expect);
void spes__tok_strmap_fini(tok_strmap *m);
/* spes__tok_strmap_put inserts key (kept by pointer); returns 1 if it was already there. */
int spes__tok_strmap_put(tok_strmap *m, const char *key, uint32_t len, uint32_t id);
uint32_t spes__tok_strmap_get(const tok_strmap *m, const char *key, size_t len);
int spes__tok_mergemap_init(tok_mergemap *m, size_t expect);
void spes__tok_mergemap_fini(tok_mergemap *m);
/* spes__tok_mergemap_put sets a pair (a later put replaces the rank); returns 1 on a duplicate. */
int spes__tok_mergemap_put(tok_mergemap *m, uint32_t a, uint32_t b, uint32_t rank, uint32_t id);

static inline const struct tok_mergeent *tok_merge_get(const tok_mergemap *m, uint32_t a, uint32_t b)
{
    uint64_t key = (uint64_t)a << 32 | b;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & m->mask;
    for (;;) {
        const struct tok_mergeent *e = &m->slots[i];
        if (e->key == key)
            return e;
        if (e->key == UINT64_MAX)
            return NULL;
        i = (i + 1) & m->mask;
    }
}

struct json_t;
/* spes__tok_check_keys refuses a key of obj not in the NULL-ended keys, naming
 * the file (name), the object (where) and the key. */
int spes__tok_check_keys(const char *name, struct json_t *obj, const char *where, const char *const *keys);
/* spes__tok_load_model reads model (BPE vocab, merges) and added_tokens into t. */
int spes__tok_load_model(spes_tokenizer *t, const char *name, struct json_t *model, struct json_t *added);

/* spes__tok_bpe appends the ids of one pre-token (raw bytes) to out. */
int spes__tok_bpe(const spes_tokenizer *t, const uint8_t *s, size_t len, spes_ids *out);

/* spes__tok_utf8_valid returns the length of the longest valid UTF-8 prefix of s. */
size_t spes__tok_utf8_valid(const uint8_t *s, size_t len);

#endif
