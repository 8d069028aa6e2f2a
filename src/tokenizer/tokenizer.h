/* tokenizer.h: Hugging Face byte-level BPE tokenizers (tokenizer.json of the GPT-2 / Qwen2 /
 * Qwen3 / Llama-3 family) and the plain byte vocabulary, encode and decode.
 * A tokenizer.json feature this code does not implement is refused by name at load time,
 * never ignored. Text input must be valid UTF-8 (checked; the byte vocabulary takes any bytes).
 * Encoding is what Hugging Face does with add_special_tokens=False: the post-processor's
 * template tokens (BOS and the like) are not added; special tokens written in the text are. */
#ifndef SPES_TOKENIZER_TOKENIZER_H
#define SPES_TOKENIZER_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct spes_tokenizer spes_tokenizer;
typedef struct spes_tokstream spes_tokstream;
typedef struct spes_pool spes_pool;

/* spes_ids is a growable array of token ids (zero it before first use). */
typedef struct spes_ids {
    uint32_t *v;
    size_t n, cap;
} spes_ids;

/* spes_ids_push appends one id; SPES_ENOMEM on allocation failure. */
int spes_ids_push(spes_ids *ids, uint32_t id);
/* spes_ids_reserve makes room for extra more ids. */
int spes_ids_reserve(spes_ids *ids, size_t extra);
/* spes_ids_fini frees the array and zeroes it. */
void spes_ids_fini(spes_ids *ids);

/* spes_tokenizer_load reads and checks a tokenizer.json file; on failure the message names
 * the file and the unsupported or malformed part. */
int spes_tokenizer_load(spes_tokenizer **out, const char *path);
/* spes_tokenizer_load_json is spes_tokenizer_load on bytes in memory; name is used in messages. */
int spes_tokenizer_load_json(spes_tokenizer **out, const char *name, const char *json, size_t len);
/* spes_tokenizer_alloc_bytes makes the byte vocabulary: ids are the bytes, vocab 256. */
int spes_tokenizer_alloc_bytes(spes_tokenizer **out);
/* spes_tokenizer_free frees a tokenizer (NULL is fine); no stream may still use it. */
void spes_tokenizer_free(spes_tokenizer *t);

/* spes_tokenizer_vocab_size returns the largest id plus one. */
uint32_t spes_tokenizer_vocab_size(const spes_tokenizer *t);
/* spes_tokenizer_token_id looks a token up by its text: an added/special token's content,
 * or a vocabulary entry as written in tokenizer.json; SPES_ENOENT if absent. */
int spes_tokenizer_token_id(const spes_tokenizer *t, const char *token, uint32_t *id);

/* spes_tokstream_alloc makes an encoder for one thread: it holds a cache of pre-token ids
 * and the carry of a document being streamed. pool may be NULL; when given, long blocks
 * are BPE-encoded on it (the stream must then be used from the pool's owner thread only). */
int spes_tokstream_alloc(spes_tokstream **out, const spes_tokenizer *t, spes_pool *pool);
/* spes_tokstream_free frees a stream (NULL is fine). */
void spes_tokstream_free(spes_tokstream *s);
/* spes_tokstream_feed appends the next len bytes of the current document and appends to out
 * ids that no later bytes can change (on a pool, a block's ids come out with the next call);
 * with final set the document ends and every id is out (the stream is then ready for the
 * next document). The ids of a document equal those of encoding it in one piece, however it
 * is cut into feeds. Invalid UTF-8 is SPES_EFORMAT with the byte offset in the document. */
int spes_tokstream_feed(spes_tokstream *s, const char *data, size_t len, int final, spes_ids *out);
/* spes_tokstream_reset forgets a half-fed document. */
void spes_tokstream_reset(spes_tokstream *s);

/* spes_tokenizer_encode encodes one whole document (appending to out) with stream s. */
int spes_tokenizer_encode(spes_tokstream *s, const char *text, size_t len, spes_ids *out);

/* spes_tokenizer_decode appends the bytes of ids to a malloc'd buffer *buf of *len bytes
 * (*cap allocated; start with all three zeroed); SPES_ERANGE for an id outside the vocab. */
int spes_tokenizer_decode(const spes_tokenizer *t, const uint32_t *ids, size_t n, char **buf, size_t *len,
                          size_t *cap);

#endif
