/* load.c: reads a Hugging Face tokenizer.json (byte-level BPE) into a spes_tokenizer.
 * Every field is checked; a feature that is not implemented is refused by name (the
 * message names the file and the field), never skipped. Never trusts the file: ids,
 * strings and merges are range- and presence-checked before use. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/fileio.h"
#include "tokenizer/tok_internal.h"

#define MAX_ID 0x7fffffffu
#define GPT2_REGEX "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

typedef struct loader {
    spes_tokenizer *t;
    const char *name;
    int has_bytelevel_pre;
} loader;

static int refuse(loader *L, const char *what, const char *type)
{
    return spes_errf(SPES_EFORMAT, "%s: %s '%s' is not supported", L->name, what, type);
}

static int bad(loader *L, const char *what)
{
    return spes_errf(SPES_EFORMAT, "%s: %s", L->name, what);
}

int spes__tok_check_keys(const char *name, json_t *obj, const char *where, const char *const *keys)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        int ok = 0;
        for (size_t i = 0; keys[i]; i++)
            ok |= strcmp(k, keys[i]) == 0;
        if (!ok)
            return spes_errf(SPES_EFORMAT, "%s: %s field '%s' is not supported", name, where, k);
    }
    return 0;
}

static int check_keys(loader *L, json_t *obj, const char *where, const char *const *keys)
{
    return spes__tok_check_keys(L->name, obj, where, keys);
}

static const char *type_of(json_t *obj)
{
    json_t *ty = json_object_get(obj, "type");
    return json_is_string(ty) ? json_string_value(ty) : NULL;
}

static int get_bool(loader *L, json_t *obj, const char *key, int dflt, int *out, const char *where)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!json_is_boolean(v))
        return spes_errf(SPES_EFORMAT, "%s: %s.%s must be true or false", L->name, where, key);
    *out = json_is_true(v);
    return 0;
}

static int norm_one(loader *L, json_t *n)
{
    static const char *const keys[] = {"type", "normalizers", NULL};
    const char *ty = json_is_object(n) ? type_of(n) : NULL;
    if (!ty)
        return bad(L, "normalizer has no type");
    int r = check_keys(L, n, "normalizer", keys);
    if (r)
        return r;
    if (strcmp(ty, "Sequence") == 0) {
        json_t *arr = json_object_get(n, "normalizers"), *x;
        size_t i;
        if (!json_is_array(arr))
            return bad(L, "normalizer Sequence has no normalizers array");
        json_array_foreach(arr, i, x)
        {
            if ((r = norm_one(L, x)))
                return r;
        }
        return 0;
    }
    static const char *const forms[] = {"NFC", "NFD", "NFKC", "NFKD"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(ty, forms[i]) == 0) {
            if (L->t->nnorm == 8)
                return bad(L, "more than 8 normalizers");
            L->t->norm[L->t->nnorm++] = TOK_NFC + i;
            return 0;
        }
    }
    return refuse(L, "normalizer type", ty);
}

static int add_level(loader *L, const char *pattern, size_t plen, int literal, int behavior, int invert,
                     int prefix_space)
{
    spes_tokenizer *t = L->t;
    if (t->nlevels == 8)
        return bad(L, "more than 8 pre-tokenizers");
    tok_level *lv = &t->levels[t->nlevels];
    memset(lv, 0, sizeof(*lv));
    lv->behavior = behavior;
    lv->invert = invert;
    lv->prefix_space = prefix_space;
    if (pattern) {
        int ec;
        PCRE2_SIZE eo;
        uint32_t opt = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
        lv->re = pcre2_compile((PCRE2_SPTR)pattern, plen, opt, &ec, &eo, NULL);
        if (!lv->re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(ec, msg, sizeof(msg));
            return spes_errf(SPES_EFORMAT, "%s: pre_tokenizer regex does not compile at %zu: %s", L->name,
                             (size_t)eo, (char *)msg);
        }
        if (pcre2_jit_compile(lv->re, PCRE2_JIT_COMPLETE | PCRE2_JIT_PARTIAL_HARD) != 0)
            return spes_errf(SPES_EFORMAT, "%s: pre_tokenizer regex: PCRE2 JIT failed", L->name);
    }
    t->nlevels++;
    return 0;
}

static int split_level(loader *L, json_t *p)
{
    static const char *const keys[] = {"type", "pattern", "behavior", "invert", NULL};
    static const char *const behaviors[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext",
                                            "Contiguous"};
    int r = check_keys(L, p, "Split pre_tokenizer", keys), invert = 0, beh = -1, literal;
    if (r || (r = get_bool(L, p, "invert", 0, &invert, "Split")))
        return r;
    json_t *b = json_object_get(p, "behavior"), *pat = json_object_get(p, "pattern"), *s;
    if (!json_is_string(b))
        return bad(L, "Split pre_tokenizer has no behavior");
    for (int i = 0; i < 5; i++)
        if (strcmp(json_string_value(b), behaviors[i]) == 0)
            beh = i;
    if (beh < 0)
        return refuse(L, "Split behavior", json_string_value(b));
    if (!json_is_object(pat) || json_object_size(pat) != 1)
        return bad(L, "Split pattern must be {\"Regex\": ...} or {\"String\": ...}");
    if ((s = json_object_get(pat, "Regex")))
        literal = 0;
    else if ((s = json_object_get(pat, "String")))
        literal = 1;
    else
        return refuse(L, "Split pattern kind", json_object_iter_key(json_object_iter(pat)));
    if (!json_is_string(s) || json_string_length(s) == 0)
        return bad(L, "Split pattern must be a non-empty string");
    return add_level(L, json_string_value(s), json_string_length(s), literal, beh, invert, 0);
}

static int bytelevel_level(loader *L, json_t *p, const char *where)
{
    static const char *const keys[] = {"type", "add_prefix_space", "trim_offsets", "use_regex", NULL};
    int r = check_keys(L, p, where, keys), prefix = 0, trim = 0, regex = 0;
    if (r || (r = get_bool(L, p, "add_prefix_space", 1, &prefix, where)) ||
        (r = get_bool(L, p, "trim_offsets", 1, &trim, where)) ||
        (r = get_bool(L, p, "use_regex", 1, &regex, where)))
        return r;
    if (strcmp(where, "pre_tokenizer") != 0)
        return 0; /* post_processor/decoder: offsets only, ids unaffected */
    L->has_bytelevel_pre = 1;
    if (!regex && !prefix)
        return 0;
    return add_level(L, regex ? GPT2_REGEX : NULL, regex ? strlen(GPT2_REGEX) : 0, 0, TOK_ISOLATED, 0,
                     prefix);
}

static int pretok_one(loader *L, json_t *p)
{
    const char *ty = json_is_object(p) ? type_of(p) : NULL;
    if (!ty)
        return bad(L, "pre_tokenizer has no type");
    if (L->has_bytelevel_pre)
        return bad(L, "a pre_tokenizer after ByteLevel is not supported");
    if (strcmp(ty, "Sequence") == 0) {
        static const char *const keys[] = {"type", "pretokenizers", NULL};
        json_t *arr = json_object_get(p, "pretokenizers"), *x;
        size_t i;
        int r = check_keys(L, p, "pre_tokenizer Sequence", keys);
        if (r)
            return r;
        if (!json_is_array(arr))
            return bad(L, "pre_tokenizer Sequence has no pretokenizers array");
        json_array_foreach(arr, i, x)
        {
            if ((r = pretok_one(L, x)))
                return r;
        }
        return 0;
    }
    if (strcmp(ty, "Split") == 0)
        return split_level(L, p);
    if (strcmp(ty, "ByteLevel") == 0)
        return bytelevel_level(L, p, "pre_tokenizer");
    return refuse(L, "pre_tokenizer type", ty);
}

/* post_processor: only kinds whose effect is adding template tokens or offsets */
static int post_one(loader *L, json_t *p)
{
    const char *ty = json_is_object(p) ? type_of(p) : NULL;
    if (!ty)
        return bad(L, "post_processor has no type");
    if (strcmp(ty, "ByteLevel") == 0)
        return bytelevel_level(L, p, "post_processor");
    if (strcmp(ty, "TemplateProcessing") == 0)
        return 0; /* template tokens belong to add_special_tokens=True, which spes never uses */
    if (strcmp(ty, "Sequence") == 0) {
        json_t *arr = json_object_get(p, "processors"), *x;
        size_t i;
        int r;
        if (!json_is_array(arr))
            return bad(L, "post_processor Sequence has no processors array");
        json_array_foreach(arr, i, x)
        {
            if ((r = post_one(L, x)))
                return r;
        }
        return 0;
    }
    return refuse(L, "post_processor type", ty);
}

static int decoder_one(loader *L, json_t *p)
{
    const char *ty = json_is_object(p) ? type_of(p) : NULL;
    if (!ty)
        return bad(L, "decoder has no type");
    if (strcmp(ty, "ByteLevel") == 0)
        return bytelevel_level(L, p, "decoder");
    return refuse(L, "decoder type", ty);
}

static int load_root(loader *L, json_t *root)
{
    static const char *const keys[] = {
        "version",       "truncation",     "padding", "added_tokens", "normalizer",
        "pre_tokenizer", "post_processor", "decoder", "model",        NULL};
    int r;
    json_t *v;
    if (!json_is_object(root))
        return bad(L, "the top level is not a JSON object");
    if ((r = check_keys(L, root, "top-level", keys)))
        return r;
    if ((v = json_object_get(root, "truncation")) && !json_is_null(v))
        return bad(L, "truncation is not supported (it must be null)");
    if ((v = json_object_get(root, "padding")) && !json_is_null(v))
        return bad(L, "padding is not supported (it must be null)");
    if ((v = json_object_get(root, "normalizer")) && !json_is_null(v) && (r = norm_one(L, v)))
        return r;
    if ((v = json_object_get(root, "pre_tokenizer")) && !json_is_null(v) && (r = pretok_one(L, v)))
        return r;
    if (!L->has_bytelevel_pre)
        return bad(L, "pre_tokenizer has no ByteLevel step; only byte-level BPE is supported");
    if ((v = json_object_get(root, "post_processor")) && !json_is_null(v) && (r = post_one(L, v)))
        return r;
    v = json_object_get(root, "decoder");
    if (!v || json_is_null(v))
        return bad(L, "decoder is missing; only the ByteLevel decoder is supported");
    if ((r = decoder_one(L, v)))
        return r;
    return spes__tok_load_model(L->t, L->name, json_object_get(root, "model"),
                                json_object_get(root, "added_tokens"));
}

int spes_tokenizer_load_json(spes_tokenizer **out, const char *name, const char *json, size_t len)
{
    json_error_t jerr;
    *out = NULL;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return spes_errf(SPES_EFORMAT, "%s: malformed JSON at line %d column %d: %s", name, jerr.line,
                         jerr.column, jerr.text);
    spes_tokenizer *t = calloc(1, sizeof(*t));
    if (!t) {
        json_decref(root);
        return spes_errf(SPES_ENOMEM, "%s: out of memory", name);
    }
    t->unk_id = TOK_NONE;
    loader L = {.t = t, .name = name};
    int r = load_root(&L, root);
    json_decref(root);
    if (r) {
        spes_tokenizer_free(t);
        return r;
    }
    *out = t;
    return 0;
}

int spes_tokenizer_load(spes_tokenizer **out, const char *path)
{
    char *buf;
    size_t len;
    *out = NULL;
    int r = spes_read_file(path, (size_t)1 << 31, &buf, &len);
    if (r)
        return r;
    r = spes_tokenizer_load_json(out, path, buf, len);
    free(buf);
    return r;
}

int spes_tokenizer_alloc_bytes(spes_tokenizer **out)
{
    spes_tokenizer *t = calloc(1, sizeof(*t));
    if (!t)
        return spes_errf(SPES_ENOMEM, "tokenizer: out of memory");
    t->is_bytes = 1;
    t->vocab_size = 256;
    t->unk_id = TOK_NONE;
    for (int b = 0; b < 256; b++)
        t->byte_id[b] = (uint32_t)b;
    *out = t;
    return 0;
}

void spes_tokenizer_free(spes_tokenizer *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->nlevels; i++)
        pcre2_code_free(t->levels[i].re);
    spes__tok_strmap_fini(&t->vocab);
    spes__tok_strmap_fini(&t->vbytes);
    spes__tok_mergemap_fini(&t->merges);
    free(t->added_raw.v);
    free(t->added_norm.v);
    free(t->added_norm_text);
    free(t->arena);
    free(t->dec);
    free(t->dec_off);
    free(t->dec_len);
    free(t->has_id);
    free(t);
}

uint32_t spes_tokenizer_vocab_size(const spes_tokenizer *t)
{
    return t->vocab_size;
}

/* added_find compares with each added token's text as written (its decoded bytes) */
static uint32_t added_find(const spes_tokenizer *t, const tok_added_set *s, const char *tok, size_t len)
{
    for (size_t i = 0; i < s->n; i++) {
        uint32_t id = s->v[i].id;
        if (t->dec_len[id] == len && memcmp(t->dec + t->dec_off[id], tok, len) == 0)
            return id;
    }
    return TOK_NONE;
}

int spes_tokenizer_token_id(const spes_tokenizer *t, const char *token, uint32_t *id)
{
    size_t len = strlen(token);
    uint32_t v = t->is_bytes ? TOK_NONE : added_find(t, &t->added_raw, token, len);
    if (v == TOK_NONE && !t->is_bytes)
        v = added_find(t, &t->added_norm, token, len);
    if (v == TOK_NONE)
        v = spes__tok_strmap_get(&t->vocab, token, len);
    if (v == TOK_NONE)
        return spes_errf(SPES_ENOENT, "token '%s' is not in the tokenizer's vocabulary", token);
    *id = v;
    return 0;
}
