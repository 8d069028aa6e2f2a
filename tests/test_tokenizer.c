/* test_tokenizer.c: the tokenizer module and the tokenize/detokenize commands.
 * Small tokenizer.json files are built here (all 256 byte tokens plus chosen merges), so
 * each expected id list is worked out by hand from Hugging Face's rules; the comparison
 * with the real Qwen3 tokenizer and the JavaScript reference is tests/tokref/check_ref.sh. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "core/fileio.h"
#include "tools/commands.h"
#include "data/tokfile.h"
#include "tokenizer/corpus.h"
#include "tokenizer/tokenizer.h"

/* byte_char: GPT-2's bytes_to_unicode, written out independently of the library */
static unsigned byte_char(unsigned b)
{
    int printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
    if (printable)
        return b;
    unsigned n = 0;
    for (unsigned i = 0; i < b; i++)
        n += !((i >= 0x21 && i <= 0x7e) || (i >= 0xa1 && i <= 0xac) || (i >= 0xae));
    return 256 + n;
}

static void utf8(unsigned cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp, out[1] = 0;
    } else {
        out[0] = (char)(0xc0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3f)), out[2] = 0;
    }
}

/* tok_json builds a tokenizer.json: ids 0..255 are the bytes (GPT-2 map), then the merges'
 * results from id 256 in order; extra is spliced into the top-level object */
static char *tok_json(const char *const *merges, int array_form, const char *pre, const char *norm,
                      const char *extra)
{
    json_t *vocab = json_object(), *ms = json_array();
    for (unsigned b = 0; b < 256; b++) {
        char s[4];
        utf8(byte_char(b), s);
        json_object_set_new(vocab, s, json_integer(b));
    }
    int next = 256;
    for (int i = 0; merges && merges[i]; i++) {
        char a[64], b[64], cat[128];
        ck_assert(sscanf(merges[i], "%63s %63s", a, b) == 2);
        snprintf(cat, sizeof cat, "%s%s", a, b);
        if (!json_object_get(vocab, cat))
            json_object_set_new(vocab, cat, json_integer(next++));
        if (array_form)
            json_array_append_new(ms, json_pack("[ss]", a, b));
        else
            json_array_append_new(ms, json_string(merges[i]));
    }
    json_t *model = json_pack("{s:s,s:o,s:o}", "type", "BPE", "vocab", vocab, "merges", ms);
    char *ms_txt = json_dumps(model, JSON_COMPACT);
    json_decref(model);
    size_t cap = strlen(ms_txt) + 4096;
    char *out = malloc(cap);
    snprintf(out, cap,
             "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,%s\"normalizer\":%s,"
             "\"pre_tokenizer\":%s,\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\","
             "\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true},\"model\":%s}",
             extra ? extra : "", norm ? norm : "null",
             pre ? pre
                 : "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,"
                   "\"use_regex\":true}",
             ms_txt);
    free(ms_txt);
    return out;
}

static spes_tokenizer *load_ok(const char *json)
{
    spes_tokenizer *t = NULL;
    int r = spes_tokenizer_load_json(&t, "test.json", json, strlen(json));
    ck_assert_msg(r == 0, "load failed: %s", spes_errmsg());
    return t;
}

static void encode_ok(spes_tokenizer *t, const char *text, spes_ids *ids)
{
    spes_tokstream *s;
    ck_assert_int_eq(spes_tokstream_alloc(&s, t, NULL), 0);
    ids->n = 0;
    int r = spes_tokenizer_encode(s, text, strlen(text), ids);
    ck_assert_msg(r == 0, "encode failed: %s", spes_errmsg());
    spes_tokstream_free(s);
}

static void expect_ids(spes_tokenizer *t, const char *text, const uint32_t *want, size_t n)
{
    spes_ids ids = {0};
    encode_ok(t, text, &ids);
    ck_assert_msg(ids.n == n, "\"%s\": %zu ids, expected %zu", text, ids.n, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(ids.v[i] == want[i], "\"%s\": id %zu is %u, expected %u", text, i, ids.v[i], want[i]);
    spes_ids_fini(&ids);
}

#define EXPECT(t, text, ...)                                                                                 \
    do {                                                                                                     \
        const uint32_t w_[] = {__VA_ARGS__};                                                                 \
        expect_ids(t, text, w_, sizeof w_ / sizeof w_[0]);                                                   \
    } while (0)

static const char *const MERGES[] = {"h e", "l l",   "he ll",  "hell o",  "Ġ w",
                                     "o r", "Ġw or", "Ġwor l", "Ġworl d", NULL};
/* ids: he 256, ll 257, hell 258, hello 259, Ġw 260, or 261, Ġwor 262, Ġworl 263, Ġworld 264 */

START_TEST(merges_both_forms)
{
    for (int form = 0; form < 2; form++) {
        char *js = tok_json(MERGES, form, NULL, NULL, NULL);
        spes_tokenizer *t = load_ok(js);
        EXPECT(t, "hello world", 259, 264);
        EXPECT(t, "hell", 258);
        EXPECT(t, "worldhello", 'w', 261, 'l', 'd', 259);
        EXPECT(t, "  hello", ' ', ' ', 259); /* GPT-2 regex: " " then " hello" */
        spes_tokenizer_free(t);
        free(js);
    }
}
END_TEST

START_TEST(added_tokens_before_pretokenizer)
{
    char *js = tok_json(MERGES, 1, NULL, NULL,
                        "\"added_tokens\":[{\"id\":300,\"content\":\"<|eos|>\",\"single_word\":false,"
                        "\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},"
                        "{\"id\":301,\"content\":\"<|e\",\"single_word\":false,\"lstrip\":false,"
                        "\"rstrip\":false,\"normalized\":false,\"special\":false}],");
    spes_tokenizer *t = load_ok(js);
    /* leftmost-longest: "<|eos|>" wins over its prefix "<|e"; text around is split apart */
    EXPECT(t, "hello<|eos|> world", 259, 300, 264);
    EXPECT(t, "<|eo", 301, 'o');
    EXPECT(t, "<|eos|><|eos|>", 300, 300);
    uint32_t id;
    ck_assert_int_eq(spes_tokenizer_token_id(t, "<|eos|>", &id), 0);
    ck_assert_uint_eq(id, 300);
    ck_assert_int_eq(spes_tokenizer_token_id(t, "Ġworld", &id), 0);
    ck_assert_uint_eq(id, 264);
    ck_assert_int_eq(spes_tokenizer_token_id(t, "nope", &id), SPES_ENOENT);
    ck_assert_uint_eq(spes_tokenizer_vocab_size(t), 302);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    const uint32_t ids[] = {259, 300, 264};
    ck_assert_int_eq(spes_tokenizer_decode(t, ids, 3, &buf, &len, &cap), 0);
    ck_assert_int_eq((int)len, 18);
    ck_assert(memcmp(buf, "hello<|eos|> world", 18) == 0);
    const uint32_t bad = 299;
    ck_assert_int_eq(spes_tokenizer_decode(t, &bad, 1, &buf, &len, &cap), SPES_ERANGE);
    free(buf);
    spes_tokenizer_free(t);
    free(js);
}
END_TEST

static void split_case(const char *behavior, int invert, const char *text, const uint32_t *want, size_t n)
{
    static const char *const m[] = {"a -", "- b", "- -", "- c", NULL};
    /* ids: a- 256, -b 257, -- 258, -c 259 */
    char pre[512];
    snprintf(pre, sizeof pre,
             "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
             "{\"String\":\"-\"},\"behavior\":\"%s\",\"invert\":%s},{\"type\":\"ByteLevel\","
             "\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false}]}",
             behavior, invert ? "true" : "false");
    char *js = tok_json(m, 0, pre, NULL, NULL);
    spes_tokenizer *t = load_ok(js);
    expect_ids(t, text, want, n);
    spes_tokenizer_free(t);
    free(js);
}

START_TEST(split_behaviours)
{
    /* pieces of "a-b--c" by Hugging Face's SplitDelimiterBehavior */
    split_case("Isolated", 0, "a-b--c", (const uint32_t[]){'a', '-', 'b', '-', '-', 'c'}, 6);
    split_case("Removed", 0, "a-b--c", (const uint32_t[]){'a', 'b', 'c'}, 3);
    /* "a-" "b-" "-" "c" */
    split_case("MergedWithPrevious", 0, "a-b--c", (const uint32_t[]){256, 'b', '-', '-', 'c'}, 5);
    /* "a" "-b" "-" "-c" */
    split_case("MergedWithNext", 0, "a-b--c", (const uint32_t[]){'a', 257, '-', 259}, 4);
    /* "a" "-" "b" "--" "c" */
    split_case("Contiguous", 0, "a-b--c", (const uint32_t[]){'a', '-', 'b', 258, 'c'}, 5);
    /* inverted: the letters are the matches; each dash stays its own item */
    split_case("Removed", 1, "a-b--c", (const uint32_t[]){'-', '-', '-'}, 3);
    /* "a" "-b" "-" "-c": each letter (a match now) joins the dash before it */
    split_case("MergedWithPrevious", 1, "a-b--c", (const uint32_t[]){'a', 257, '-', 259}, 4);
}
END_TEST

START_TEST(normalizer_and_prefix_space)
{
    static const char *const m[] = {"Ã ©", NULL}; /* é in UTF-8 is C3 A9 -> "Ã©" id 256 */
    char *js = tok_json(m, 0, NULL, "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"}]}", NULL);
    spes_tokenizer *t = load_ok(js);
    EXPECT(t, "e\xcc\x81", 256); /* e + combining acute composes to é */
    EXPECT(t, "\xc3\xa9", 256);
    spes_tokenizer_free(t);
    free(js);
    /* a normalized added token is matched in its normalized form (Hugging Face normalizes
     * its content too): NFD text "[se\u0301p]" and composed "[s\u00e9p]" both find it */
    js = tok_json(m, 0, NULL, "{\"type\":\"NFD\"}",
                  "\"added_tokens\":[{\"id\":300,\"content\":\"[s\u00e9p]\",\"special\":false,"
                  "\"normalized\":true}],");
    t = load_ok(js);
    EXPECT(t, "a[s\xc3\xa9p]", 'a', 300);
    EXPECT(t, "[se\xcc\x81p]b", 300, 'b');
    uint32_t id;
    ck_assert_int_eq(spes_tokenizer_token_id(t, "[s\xc3\xa9p]", &id), 0);
    ck_assert_uint_eq(id, 300);
    spes_tokenizer_free(t);
    free(js);
    js = tok_json(MERGES, 0,
                  "{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,"
                  "\"use_regex\":true}",
                  NULL, NULL);
    t = load_ok(js);
    EXPECT(t, "world", 264); /* add_prefix_space makes it " world" */
    spes_tokenizer_free(t);
    free(js);
}
END_TEST

START_TEST(ignore_merges)
{
    static const char *const m[] = {"a b", NULL};
    char *js = tok_json(m, 0, NULL, NULL, NULL);
    /* put a vocab entry "abc" that no merge builds */
    char *p = strstr(js, "\"ab\":256");
    ck_assert_ptr_nonnull(p);
    size_t n = strlen(js);
    char *js2 = malloc(n + 64);
    memcpy(js2, js, (size_t)(p - js));
    sprintf(js2 + (p - js), "\"abc\":257,%s", p);
    spes_tokenizer *t = load_ok(js2);
    EXPECT(t, "abc", 256, 'c');
    spes_tokenizer_free(t);
    char *q = strstr(js2, "\"type\":\"BPE\"");
    ck_assert_ptr_nonnull(q);
    char *js3 = malloc(n + 128);
    memcpy(js3, js2, (size_t)(q - js2));
    sprintf(js3 + (q - js2), "\"ignore_merges\":true,%s", q);
    t = load_ok(js3);
    EXPECT(t, "abc", 257);
    EXPECT(t, "abcab", 256, 'c', 256); /* only a whole pre-token skips the merges */
    EXPECT(t, "abc ab", 257, ' ', 256);
    spes_tokenizer_free(t);
    free(js);
    free(js2);
    free(js3);
}
END_TEST

static void refused(const char *json, const char *want)
{
    spes_tokenizer *t = NULL;
    int r = spes_tokenizer_load_json(&t, "bad.json", json, strlen(json));
    ck_assert_msg(r != 0, "accepted, expected refusal: %s", want);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(spes_errmsg(), want) != NULL, "message \"%s\" lacks \"%s\"", spes_errmsg(), want);
    ck_assert_msg(strncmp(spes_errmsg(), "bad.json: ", 10) == 0, "message does not name the file");
}

static char *replace(const char *s, const char *from, const char *to)
{
    const char *p = strstr(s, from);
    ck_assert_msg(p != NULL, "no \"%s\"", from);
    char *out = malloc(strlen(s) + strlen(to) + 1);
    memcpy(out, s, (size_t)(p - s));
    strcpy(out + (p - s), to);
    strcat(out, p + strlen(from));
    return out;
}

START_TEST(refusals)
{
    char *js = tok_json(MERGES, 0, NULL, NULL, NULL), *b;
    refused("{\"model\": [1, 2", "malformed JSON at line 1");
    refused("[]", "the top level is not a JSON object");
    b = replace(js, "\"normalizer\":null", "\"normalizer\":{\"type\":\"Lowercase\"}");
    refused(b, "normalizer type 'Lowercase' is not supported");
    free(b);
    b = replace(js, "\"normalizer\":null",
                "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},"
                "{\"type\":\"Replace\"}]}");
    refused(b, "normalizer type 'Replace' is not supported");
    free(b);
    b = replace(js, "\"pre_tokenizer\":{\"type\":\"ByteLevel\"", "\"pre_tokenizer\":{\"type\":\"Metaspace\"");
    refused(b, "pre_tokenizer type 'Metaspace' is not supported");
    free(b);
    b = replace(js, "\"type\":\"BPE\"", "\"type\":\"WordPiece\"");
    refused(b, "model type 'WordPiece' is not supported");
    free(b);
    b = replace(js, "\"type\":\"BPE\"", "\"type\":\"BPE\",\"byte_fallback\":true");
    refused(b, "byte_fallback is not supported");
    free(b);
    b = replace(js, "\"type\":\"BPE\"", "\"type\":\"BPE\",\"dropout\":0.1");
    refused(b, "dropout is not supported");
    free(b);
    b = replace(js, "\"truncation\":null", "\"truncation\":{\"max_length\":5}");
    refused(b, "truncation is not supported");
    free(b);
    b = replace(js, "\"decoder\":{\"type\":\"ByteLevel\"", "\"decoder\":{\"type\":\"WordPiece\"");
    refused(b, "decoder type 'WordPiece' is not supported");
    free(b);
    b = replace(js, "\"h e\"", "\"h q\"");
    refused(b, "merges[0]: token 'hq' is not in the vocab");
    free(b);
    b = replace(js, "\"h e\"", "\"h e x\"");
    refused(b, "merges[0] 'h e x' is not two tokens");
    free(b);
    b = replace(js, "\"padding\":null,",
                "\"padding\":null,\"added_tokens\":[{\"id\":300,\"content\":\"X\","
                "\"lstrip\":true}],");
    refused(b, "added token 'X' uses lstrip, which is not supported");
    free(b);
    b = replace(js, "\"padding\":null", "\"padding\":null,\"extra_feature\":1");
    refused(b, "top-level field 'extra_feature' is not supported");
    free(b);
    b = replace(js, "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false",
                "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},"
                "\"behavior\":\"Isolated\",\"invert\":false,\"x\":false");
    refused(b, "Split pre_tokenizer field 'x' is not supported");
    free(b);
    b = replace(js,
                "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
                "\"trim_offsets\":true,\"use_regex\":true}",
                "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},"
                "\"behavior\":\"Isolated\",\"invert\":false}");
    refused(b, "pre_tokenizer regex does not compile");
    free(b);
    free(js);
}
END_TEST

START_TEST(bytes_vocab_and_invalid_utf8)
{
    spes_tokenizer *t;
    ck_assert_int_eq(spes_tokenizer_alloc_bytes(&t), 0);
    ck_assert_uint_eq(spes_tokenizer_vocab_size(t), 256);
    spes_tokstream *s;
    ck_assert_int_eq(spes_tokstream_alloc(&s, t, NULL), 0);
    char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (char)i;
    spes_ids ids = {0};
    ck_assert_int_eq(spes_tokenizer_encode(s, all, 256, &ids), 0);
    ck_assert_uint_eq(ids.n, 256);
    for (uint32_t i = 0; i < 256; i++)
        ck_assert_uint_eq(ids.v[i], i);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    ck_assert_int_eq(spes_tokenizer_decode(t, ids.v, ids.n, &buf, &len, &cap), 0);
    ck_assert(len == 256 && memcmp(buf, all, 256) == 0);
    free(buf);
    spes_tokstream_free(s);
    spes_tokenizer_free(t);
    /* a BPE tokenizer refuses invalid UTF-8 and says where */
    char *js = tok_json(MERGES, 0, NULL, NULL, NULL);
    t = load_ok(js);
    ck_assert_int_eq(spes_tokstream_alloc(&s, t, NULL), 0);
    ids.n = 0;
    ck_assert_int_eq(spes_tokenizer_encode(s, "hello \xff world", 13, &ids), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(), "invalid UTF-8 at byte 6");
    spes_tokstream_free(s);
    spes_tokenizer_free(t);
    spes_ids_fini(&ids);
    free(js);
}
END_TEST

START_TEST(stream_cuts_equal_whole)
{
    char *js = tok_json(MERGES, 0, NULL, "{\"type\":\"NFC\"}",
                        "\"added_tokens\":[{\"id\":300,\"content\":\"<|eos|>\",\"special\":true,"
                        "\"normalized\":false}],");
    spes_tokenizer *t = load_ok(js);
    static const char *const parts[] = {
        "hello", " world", "  ", "\n",   "e\xcc\x81", "<|eos|>", "\xe4\xbd\xa0", "\xf0\x9f\x98\x80",
        "12",    "!!",     "\t", "\r\n", "hell",      "o"};
    char text[4096];
    size_t n = 0;
    unsigned seed = 12345;
    while (n < sizeof text - 16) {
        seed = seed * 1103515245u + 12345u;
        const char *p = parts[(seed >> 16) % 14];
        memcpy(text + n, p, strlen(p));
        n += strlen(p);
    }
    spes_tokstream *s;
    ck_assert_int_eq(spes_tokstream_alloc(&s, t, NULL), 0);
    spes_ids whole = {0}, cut = {0};
    ck_assert_int_eq(spes_tokenizer_encode(s, text, n, &whole), 0);
    for (size_t block = 1; block < 200; block += 13) {
        cut.n = 0;
        for (size_t off = 0; off < n; off += block) {
            size_t k = n - off < block ? n - off : block;
            ck_assert_int_eq(spes_tokstream_feed(s, text + off, k, off + k == n, &cut), 0);
        }
        ck_assert_uint_eq(cut.n, whole.n);
        ck_assert(memcmp(cut.v, whole.v, whole.n * 4) == 0);
    }
    spes_ids_fini(&whole);
    spes_ids_fini(&cut);
    spes_tokstream_free(s);
    spes_tokenizer_free(t);
    free(js);
}
END_TEST

/* command tests: run cmd_tokenize / cmd_detokenize in this process */
static char tmpdir[64];

static char *tpath(const char *name)
{
    static char buf[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static int run_cmd(int (*fn)(int, char **), const char *const *args)
{
    char *argv[32];
    int argc = 0;
    while (args[argc]) {
        argv[argc] = (char *)args[argc];
        argc++;
    }
    argv[argc] = NULL;
    return fn(argc, argv);
}

static void setup_tmp(void)
{
    strcpy(tmpdir, "/tmp/spes-tok-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown_tmp(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(cmd_bytes_exact)
{
    char all[300];
    for (int i = 0; i < 300; i++)
        all[i] = (char)(i * 7);
    ck_assert_int_eq(spes_write_file_atomic(tpath("a.bin"), all, 300), 0);
    ck_assert_int_eq(spes_write_file_atomic(tpath("b.txt"), "xy", 2), 0);
    const char *args[] = {"tokenize", "--quiet", "--bytes",      "--eos",        "10",           "--format",
                          "npy",      "--out",   tpath("o.npy"), tpath("a.bin"), tpath("b.txt"), NULL};
    ck_assert_int_eq(run_cmd(cmd_tokenize, args), 0);
    spes_tokfile f = {0};
    ck_assert_int_eq(spes_tokfile_open(&f, tpath("o.npy"), SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE), 0);
    ck_assert_int_eq(f.hdr.format, SPES_TOK_NPY);
    ck_assert_int_eq(f.hdr.dtype, SPES_TOK_U16);
    ck_assert_uint_eq(f.hdr.ntokens, 304);
    for (int i = 0; i < 300; i++)
        ck_assert_uint_eq(spes_tokfile_get(&f, (uint64_t)i), (uint8_t)(i * 7));
    ck_assert_uint_eq(spes_tokfile_get(&f, 300), 10);
    ck_assert_uint_eq(spes_tokfile_get(&f, 301), 'x');
    ck_assert_uint_eq(spes_tokfile_get(&f, 303), 10);
    spes_tokfile_close(&f);
    const char *dargs[] = {"detokenize", "--bytes", "--out", tpath("back"), tpath("o.npy"), NULL};
    ck_assert_int_eq(run_cmd(cmd_detokenize, dargs), 0);
    char *back;
    size_t len;
    ck_assert_int_eq(spes_read_file(tpath("back"), 1 << 20, &back, &len), 0);
    ck_assert_uint_eq(len, 304);
    ck_assert(memcmp(back, all, 300) == 0 && memcmp(back + 300, "\nxy\n", 4) == 0);
    free(back);
}
END_TEST

START_TEST(cmd_ids_too_large_for_uint16)
{
    char *js = tok_json(MERGES, 0, NULL, NULL,
                        "\"added_tokens\":[{\"id\":70000,\"content\":\"<big>\",\"special\":true,"
                        "\"normalized\":false}],");
    ck_assert_int_eq(spes_write_file_atomic(tpath("tok.json"), js, strlen(js)), 0);
    free(js);
    const char *jl = "{\"text\":\"hello world\"}\n\n{\"text\":\"hello<big>\"}\n";
    ck_assert_int_eq(spes_write_file_atomic(tpath("d.jsonl"), jl, strlen(jl)), 0);
    const char *args[] = {"tokenize", "--quiet", "--tokenizer",  tpath("tok.json"), "--dtype",
                          "uint16",   "--out",   tpath("o.bin"), tpath("d.jsonl"),  NULL};
    ck_assert_int_eq(run_cmd(cmd_tokenize, args), 1);
    ck_assert_msg(strstr(spes_errmsg(), "70000") != NULL, "message: %s", spes_errmsg());
    ck_assert_int_ne(access(tpath("o.bin"), F_OK), 0); /* no partial output */
    /* uint32 holds it; default dtype is uint32 for a vocabulary over 65536 */
    const char *args2[] = {"tokenize", "--quiet", "--tokenizer", tpath("tok.json"), "--eos",          "<big>",
                           "--format", "raw",     "--out",       tpath("o.bin"),    tpath("d.jsonl"), NULL};
    ck_assert_int_eq(run_cmd(cmd_tokenize, args2), 0);
    spes_tokfile f = {0};
    ck_assert_int_eq(spes_tokfile_open(&f, tpath("o.bin"), SPES_TOK_RAW, SPES_TOK_U32), 0);
    const uint32_t want[] = {259, 264, 70000, 259, 70000, 70000};
    ck_assert_uint_eq(f.hdr.ntokens, 6);
    for (int i = 0; i < 6; i++)
        ck_assert_uint_eq(spes_tokfile_get(&f, (uint64_t)i), want[i]);
    spes_tokfile_close(&f);
    /* the byte vocabulary cannot decode these ids: refused, nothing written */
    const char *dargs[] = {"detokenize", "--bytes", "--format",     "raw",          "--dtype",
                           "uint32",     "--out",   tpath("t.txt"), tpath("o.bin"), NULL};
    ck_assert_int_eq(run_cmd(cmd_detokenize, dargs), 1);
    ck_assert_msg(strstr(spes_errmsg(), "token id 259 at position 0 is not in the vocabulary "
                                        "(size 256)") != NULL,
                  "message: %s", spes_errmsg());
    ck_assert_int_ne(access(tpath("t.txt"), F_OK), 0);
    const char *dargs2[] = {"detokenize", "--tokenizer", tpath("tok.json"), "--format",     "raw", "--dtype",
                            "uint32",     "--out",       tpath("t.txt"),    tpath("o.bin"), NULL};
    ck_assert_int_eq(run_cmd(cmd_detokenize, dargs2), 0);
    char *txt;
    size_t tlen;
    ck_assert_int_eq(spes_read_file(tpath("t.txt"), 1 << 20, &txt, &tlen), 0);
    ck_assert_str_eq(txt, "hello world<big>hello<big><big>");
    free(txt);
    /* bad jsonl line and a missing field name their line */
    const char *ej = "{\"text\":\"a\"}\n{\"body\":1}\n";
    ck_assert_int_eq(spes_write_file_atomic(tpath("e.jsonl"), ej, strlen(ej)), 0);
    const char *args3[] = {"tokenize", "--quiet",      "--tokenizer",    tpath("tok.json"),
                           "--out",    tpath("e.bin"), tpath("e.jsonl"), NULL};
    ck_assert_int_eq(run_cmd(cmd_tokenize, args3), 1);
    ck_assert_msg(strstr(spes_errmsg(), "e.jsonl:2: no string field \"text\"") != NULL, "message: %s",
                  spes_errmsg());
    const char *args4[] = {"tokenize", "--quiet",      "--bytes",        "--tokenizer", tpath("tok.json"),
                           "--out",    tpath("e.bin"), tpath("e.jsonl"), NULL};
    ck_assert_int_eq(run_cmd(cmd_tokenize, args4), 1);
    ck_assert_str_eq(spes_errmsg(), "give exactly one of --tokenizer FILE and --bytes");
}
END_TEST

/* the corpus pipeline as a library call: plain and jsonl inputs, EOS, several batches and a
 * streamed document, all giving the same ids whatever the batch size; errors leave no file */
static void count_progress(void *ctx, const spes_corpus_stats *st, int done)
{
    int *calls = ctx;
    (void)st;
    calls[done ? 1 : 0]++;
}

static void read_ids(const char *path, uint32_t *ids, uint64_t *n)
{
    spes_tokfile f = {0};
    ck_assert_int_eq(spes_tokfile_open(&f, path, SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE), 0);
    *n = f.hdr.ntokens;
    for (uint64_t i = 0; i < f.hdr.ntokens; i++)
        ids[i] = spes_tokfile_get(&f, i);
    spes_tokfile_close(&f);
}

START_TEST(corpus_library_call)
{
    char big[200];
    for (int i = 0; i < 200; i++)
        big[i] = (char)('a' + i % 26);
    ck_assert_int_eq(spes_write_file_atomic(tpath("big.txt"), big, 200), 0);
    const char *jl = "{\"body\":\"hi\",\"text\":\"no\"}\n\n{\"body\":\"yo!\"}\n{\"body\":\"\"}";
    ck_assert_int_eq(spes_write_file_atomic(tpath("d.jsonl"), jl, strlen(jl)), 0);
    ck_assert_int_eq(spes_write_file_atomic(tpath("s.txt"), "xy", 2), 0);
    spes_tokenizer *tok;
    ck_assert_int_eq(spes_tokenizer_alloc_bytes(&tok), 0);
    /* expected: big + EOS, "hi" + EOS, "yo!" + EOS, "" + EOS, "xy" + EOS */
    uint32_t want[220];
    size_t nw = 0;
    for (int i = 0; i < 200; i++)
        want[nw++] = (uint8_t)big[i];
    want[nw++] = 0;
    const char *rest[] = {"hi", "yo!", "", "xy"};
    for (int k = 0; k < 4; k++) {
        for (const char *p = rest[k]; *p; p++)
            want[nw++] = (uint8_t)*p;
        want[nw++] = 0;
    }
    char in0[256], in1[256], in2[256], out[256]; /* tpath's buffers are reused */
    snprintf(in0, sizeof in0, "%s", tpath("big.txt"));
    snprintf(in1, sizeof in1, "%s", tpath("d.jsonl"));
    snprintf(in2, sizeof in2, "%s", tpath("s.txt"));
    snprintf(out, sizeof out, "%s", tpath("c.npy"));
    const char *inputs[] = {in0, in1, in2};
    const size_t batches[] = {0, 64, 7, 2};
    for (int b = 0; b < 4; b++) {
        int calls[2] = {0, 0};
        spes_corpus_opts o = {.tok = tok,
                              .out = out,
                              .text_field = "body",
                              .has_eos = 1,
                              .eos = 0,
                              .threads = 1 + b % 3,
                              .batch_bytes = batches[b],
                              .progress = count_progress,
                              .progress_ctx = calls};
        spes_corpus_stats st;
        ck_assert_int_eq(spes_tokenize_corpus(&o, inputs, 3, &st), 0);
        ck_assert_uint_eq(st.documents, 5);
        ck_assert_uint_eq(st.tokens, nw);
        ck_assert_uint_eq(st.in_bytes, 200 + strlen(jl) + 2);
        ck_assert_int_eq(calls[1], 1);
        uint32_t got[256];
        uint64_t n;
        read_ids(out, got, &n);
        ck_assert_uint_eq(n, nw);
        for (size_t i = 0; i < nw; i++)
            ck_assert_msg(got[i] == want[i], "batch %zu: id %zu is %u, want %u", batches[b], i, got[i],
                          want[i]);
    }
    /* a line without the field: the message names file and line; nothing is written */
    const char *bad = "{\"body\":\"a\"}\n{\"text\":\"b\"}\n";
    ck_assert_int_eq(spes_write_file_atomic(tpath("bad.jsonl"), bad, strlen(bad)), 0);
    const char *bin[] = {tpath("bad.jsonl")};
    spes_corpus_opts o = {.tok = tok, .out = tpath("bad.bin"), .text_field = "body"};
    ck_assert_int_eq(spes_tokenize_corpus(&o, bin, 1, NULL), SPES_EFORMAT);
    ck_assert_msg(strstr(spes_errmsg(), "bad.jsonl:2: no string field \"body\""), "%s", spes_errmsg());
    ck_assert_int_ne(access(tpath("bad.bin"), F_OK), 0);
    o.threads = 17;
    ck_assert_int_eq(spes_tokenize_corpus(&o, inputs, 1, NULL), SPES_EINVAL);
    ck_assert_int_ne(access(tpath("bad.bin"), F_OK), 0);
    spes_tokenizer_free(tok);
}
END_TEST

static Suite *tokenizer_suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, merges_both_forms);
    tcase_add_test(tc, added_tokens_before_pretokenizer);
    tcase_add_test(tc, split_behaviours);
    tcase_add_test(tc, normalizer_and_prefix_space);
    tcase_add_test(tc, ignore_merges);
    tcase_add_test(tc, refusals);
    tcase_add_test(tc, bytes_vocab_and_invalid_utf8);
    tcase_add_test(tc, stream_cuts_equal_whole);
    suite_add_tcase(s, tc);
    TCase *cmd = tcase_create("commands");
    tcase_add_checked_fixture(cmd, setup_tmp, teardown_tmp);
    tcase_add_test(cmd, cmd_bytes_exact);
    tcase_add_test(cmd, cmd_ids_too_large_for_uint16);
    tcase_add_test(cmd, corpus_library_call);
    suite_add_tcase(s, cmd);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(tokenizer_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
