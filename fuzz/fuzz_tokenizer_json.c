/* fuzz_tokenizer_json.c: libFuzzer target for the tokenizer.json loader and the encoder.
 * First byte even: the rest is a tokenizer.json; loading must either succeed or fail with
 * a message, and a loaded tokenizer must encode and decode a fixed text without faults.
 * First byte odd: the rest is text for a small built-in tokenizer (NFC or NFD by bit 1, a Qwen-style Split
 * regex, ByteLevel, merges, a special and a normalized added token); encoding it whole must equal encoding it
 * fed in blocks (block size from the first byte), and decode(encode(text)) must equal NFC(text)
 * (or NFD(text)). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

static const char SMALL_JSON[] =
    "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,"
    "\"added_tokens\":[{\"id\":270,\"content\":\"<|end|>\",\"single_word\":false,\"lstrip\":false,"
    "\"rstrip\":false,\"normalized\":false,\"special\":true},{\"id\":271,\"content\":"
    "\"[s\u00e9p]\",\"normalized\":true,\"special\":false}],"
    "\"normalizer\":{NORM},"
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
    "{\"Regex\":\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}| "
    "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
    "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":"
    "false,\"trim_offsets\":false,\"use_regex\":false}]},"
    "\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},"
    "\"model\":{\"type\":\"BPE\",\"vocab\":{VOCAB},\"merges\":[\"Ġ t\",\"h e\",\"Ġt he\",[\"Ã\","
    "\"©\"],\"Ġ Ġ\",\"ĠĠ ĠĠ\",\"i n\",\"a n\",\"Ċ Ċ\"]}}";

static char *fill(const char *tmpl, const char *hole, const char *with)
{
    const char *h = strstr(tmpl, hole);
    size_t n = (size_t)(h - tmpl);
    char *out = malloc(strlen(tmpl) + strlen(with) + 1);
    if (!out)
        abort();
    memcpy(out, tmpl, n);
    sprintf(out + n, "%s%s", with, h + strlen(hole));
    return out;
}

/* small_tok: nfd 0 uses NFC, 1 a Sequence of NFD */
static spes_tokenizer *small_tok(int nfd)
{
    static spes_tokenizer *tt[2];
    spes_tokenizer **t = &tt[nfd];
    if (*t)
        return *t;
    /* the 256 byte tokens (GPT-2 map) then the merge results */
    static const char *const extra[] = {"Ġt", "he", "Ġthe", "Ã©", "ĠĠ", "ĠĠĠĠ", "in", "an", "ĊĊ"};
    char *vocab = malloc(8192), *p = vocab;
    for (unsigned b = 0, n = 0; b < 256; b++) {
        int pr = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
        unsigned cp = pr ? b : 256 + n++;
        if (cp == '"' || cp == '\\')
            p += sprintf(p, "\"\\%c\":%u,", (char)cp, b);
        else if (cp < 0x80)
            p += sprintf(p, "\"%c\":%u,", (char)cp, b);
        else
            p += sprintf(p, "\"%c%c\":%u,", (char)(0xc0 | (cp >> 6)), (char)(0x80 | (cp & 0x3f)), b);
    }
    for (unsigned i = 0; i < 9; i++)
        p += sprintf(p, "\"%s\":%u%s", extra[i], 256 + i, i < 8 ? "," : "");
    char *v2 = malloc(8200);
    if (!v2)
        abort();
    sprintf(v2, "{%s}", vocab);
    char *js1 = fill(SMALL_JSON, "{VOCAB}", v2);
    char *js =
        fill(js1, "{NORM}",
             nfd ? "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFD\"}]}" : "{\"type\":\"NFC\"}");
    if (spes_tokenizer_load_json(t, "small", js, strlen(js)) != 0)
        abort(); /* our own fixed tokenizer must load */
    free(v2);
    free(js1);
    free(vocab);
    free(js);
    return *t;
}

static void fuzz_json(const uint8_t *data, size_t size)
{
    spes_tokenizer *t = NULL;
    if (spes_tokenizer_load_json(&t, "fuzz.json", (const char *)data, size) != 0) {
        if (spes_errmsg()[0] == 0)
            abort(); /* a refusal always says why */
        return;
    }
    static const char text[] = "Hello, wörld! 你好 😀 <|endoftext|>  12\r\n\ttabs";
    spes_tokstream *s;
    spes_ids ids = {0};
    if (spes_tokstream_alloc(&s, t, NULL) == 0) {
        if (spes_tokenizer_encode(s, text, sizeof text - 1, &ids) == 0) {
            char *buf = NULL;
            size_t len = 0, cap = 0;
            if (spes_tokenizer_decode(t, ids.v, ids.n, &buf, &len, &cap) != 0)
                abort(); /* encoded ids are always in the vocabulary */
            free(buf);
        }
        spes_tokstream_free(s);
    }
    spes_ids_fini(&ids);
    spes_tokenizer_free(t);
}

static void fuzz_text(unsigned block, int nfd, const uint8_t *data, size_t size)
{
    spes_tokenizer *t = small_tok(nfd);
    spes_tokstream *s;
    spes_ids whole = {0}, cut = {0};
    if (spes_tokstream_alloc(&s, t, NULL) != 0)
        return;
    int r1 = spes_tokenizer_encode(s, (const char *)data, size, &whole), r2 = 0;
    for (size_t off = 0; !r2 && (off < size || off == 0); off += block) {
        size_t k = size - off < block ? size - off : block;
        r2 = spes_tokstream_feed(s, (const char *)data + off, k, off + k >= size, &cut);
        if (size == 0)
            break;
    }
    if ((r1 == 0) != (r2 == 0))
        abort();
    if (r1 == 0 && (whole.n != cut.n || (whole.n && memcmp(whole.v, cut.v, whole.n * 4) != 0)))
        abort(); /* streaming must not change the ids */
    if (r1 == 0 && size) {
        char *buf = NULL;
        size_t len = 0, cap = 0;
        char *z = calloc(size + 1, 1);
        if (!z)
            abort();
        memcpy(z, data, size);
        uint8_t *nfc = nfd ? utf8proc_NFD((const uint8_t *)z) : utf8proc_NFC((const uint8_t *)z);
        free(z);
        if (spes_tokenizer_decode(t, whole.v, whole.n, &buf, &len, &cap) != 0)
            abort();
        /* text with NUL bytes: utf8proc_NFC stops at the first one, compare only then; an
         * added token decodes to its text as written ("[sép]" composed), not NFD of it */
        int added = 0;
        for (size_t i = 0; i < whole.n; i++)
            added |= whole.v[i] == 271;
        if (nfc && !memchr(data, 0, size) && !(nfd && added) &&
            (strlen((char *)nfc) != len || memcmp(nfc, buf, len)))
            abort(); /* decode(encode(text)) == NFC(text) */
        free(nfc);
        free(buf);
    }
    spes_ids_fini(&whole);
    spes_ids_fini(&cut);
    spes_tokstream_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] % 2 == 0)
        fuzz_json(data + 1, size - 1);
    else
        fuzz_text(1u + data[0] / 4, (data[0] >> 1) & 1, data + 1, size - 1);
    return 0;
}
