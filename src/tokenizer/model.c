/* model.c: loads the BPE model of a tokenizer.json (vocab, merges in "a b" or ["a","b"]
 * form, model options) and its added_tokens. Refuses options it does not implement by
 * name; checks every id and every merge's tokens against the vocabulary. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/error.h"
#include "tokenizer/tok_internal.h"

#define MAX_VOCAB (1u << 24)

static int check_options(spes_tokenizer *t, const char *name, json_t *m)
{
    static const char *const keys[] = {"type",
                                       "dropout",
                                       "unk_token",
                                       "continuing_subword_prefix",
                                       "end_of_word_suffix",
                                       "fuse_unk",
                                       "byte_fallback",
                                       "ignore_merges",
                                       "vocab",
                                       "merges",
                                       NULL};
    int r = spes__tok_check_keys(name, m, "model", keys);
    if (r)
        return r;
    json_t *v = json_object_get(m, "type");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "BPE") != 0))
        return spes_errf(SPES_EFORMAT, "%s: model type '%s' is not supported", name,
                         json_is_string(v) ? json_string_value(v) : "?");
    if ((v = json_object_get(m, "dropout")) && !json_is_null(v))
        return spes_errf(SPES_EFORMAT, "%s: model dropout is not supported", name);
    static const char *const empty[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        v = json_object_get(m, empty[i]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return spes_errf(SPES_EFORMAT, "%s: model %s is not supported", name, empty[i]);
    }
    if ((v = json_object_get(m, "byte_fallback")) && json_is_true(v))
        return spes_errf(SPES_EFORMAT, "%s: model byte_fallback is not supported", name);
    v = json_object_get(m, "ignore_merges");
    t->ignore_merges = v && json_is_true(v);
    return 0;
}

static int get_id(const char *name, json_t *v, const char *tok, uint32_t *id)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= (json_int_t)MAX_VOCAB)
        return spes_errf(SPES_EFORMAT,
                         "%s: token '%.60s' has an id that is not an integer in "
                         "[0, %u)",
                         name, tok, MAX_VOCAB);
    *id = (uint32_t)json_integer_value(v);
    return 0;
}

static int check_added(const char *name, json_t *a, size_t i)
{
    static const char *const keys[] = {"id",     "content",    "single_word", "lstrip",
                                       "rstrip", "normalized", "special",     NULL};
    const char *k;
    json_t *v;
    if (!json_is_object(a) || !json_is_string(json_object_get(a, "content")) ||
        json_string_length(json_object_get(a, "content")) == 0)
        return spes_errf(SPES_EFORMAT, "%s: added_tokens[%zu] has no content", name, i);
    json_object_foreach(a, k, v)
    {
        int ok = 0;
        for (size_t j = 0; keys[j]; j++)
            ok |= strcmp(k, keys[j]) == 0;
        if (!ok)
            return spes_errf(SPES_EFORMAT, "%s: added_tokens field '%s' is not supported", name, k);
    }
    static const char *const flags[] = {"single_word", "lstrip", "rstrip"};
    for (int f = 0; f < 3; f++)
        if (json_is_true(json_object_get(a, flags[f])))
            return spes_errf(SPES_EFORMAT,
                             "%s: added token '%.60s' uses %s, which is not "
                             "supported",
                             name, json_string_value(json_object_get(a, "content")), flags[f]);
    return 0;
}

/* sizes: pass over vocab and added tokens for the largest id and the string bytes */
static int measure(spes_tokenizer *t, const char *name, json_t *vocab, json_t *added, size_t *bytes)
{
    const char *k;
    json_t *v;
    size_t i;
    uint32_t id = 0, maxid = 0;
    int r;
    *bytes = 0;
    json_object_foreach(vocab, k, v)
    {
        if ((r = get_id(name, v, k, &id)))
            return r;
        maxid = id > maxid ? id : maxid;
        *bytes += strlen(k) + 1;
    }
    json_array_foreach(added, i, v)
    {
        if ((r = check_added(name, v, i)))
            return r;
        json_t *c = json_object_get(v, "content");
        if ((r = get_id(name, json_object_get(v, "id"), json_string_value(c), &id)))
            return r;
        maxid = id > maxid ? id : maxid;
        *bytes += json_string_length(c) + 1;
    }
    t->vocab_size = maxid + 1;
    return 0;
}

/* set_dec records the decoded bytes of id: byte-level decoded, or as written if some
 * character is outside the byte map (what the Hugging Face ByteLevel decoder does), or
 * as written for an added token (as transformers.js does, so that decode(encode(text))
 * gives back added tokens with non-ASCII text too) */
static void set_dec(spes_tokenizer *t, uint32_t id, const char *s, size_t len, size_t *pos, int verbatim)
{
    long n = verbatim ? -1 : spes__tok_unbyte(s, len, t->dec + *pos);
    if (n < 0) {
        memcpy(t->dec + *pos, s, len);
        n = (long)len;
    }
    t->dec_off[id] = (uint32_t)*pos;
    t->dec_len[id] = (uint32_t)n;
    *pos += (size_t)n;
}

static int load_vocab(spes_tokenizer *t, const char *name, json_t *vocab, json_t *added)
{
    size_t bytes, apos = 0, dpos = 0, i;
    int r = measure(t, name, vocab, added, &bytes);
    if (r)
        return r;
    t->arena = malloc(bytes + 1);
    t->dec = malloc(bytes + 1);
    t->dec_off = calloc(t->vocab_size, sizeof(uint32_t));
    t->dec_len = calloc(t->vocab_size, sizeof(uint32_t));
    t->has_id = calloc(t->vocab_size, 1);
    if (!t->arena || !t->dec || !t->dec_off || !t->dec_len || !t->has_id ||
        (r = spes__tok_strmap_init(&t->vocab, json_object_size(vocab))))
        return spes_errf(SPES_ENOMEM, "%s: out of memory", name);
    const char *k;
    json_t *v;
    json_object_foreach(vocab, k, v)
    {
        uint32_t id = (uint32_t)json_integer_value(v), len = (uint32_t)strlen(k);
        if (t->has_id[id])
            return spes_errf(SPES_EFORMAT, "%s: vocab id %u is given twice", name, id);
        t->has_id[id] = 1;
        memcpy(t->arena + apos, k, len + 1);
        spes__tok_strmap_put(&t->vocab, t->arena + apos, len, id);
        set_dec(t, id, k, len, &dpos, 0);
        apos += len + 1;
    }
    size_t nadd = json_array_size(added);
    t->added_raw.v = calloc(nadd + 1, sizeof(struct tok_added));
    t->added_norm.v = calloc(nadd + 1, sizeof(struct tok_added));
    if (!t->added_raw.v || !t->added_norm.v)
        return spes_errf(SPES_ENOMEM, "%s: out of memory", name);
    json_array_foreach(added, i, v)
    {
        json_t *c = json_object_get(v, "content"), *nz = json_object_get(v, "normalized");
        uint32_t id = (uint32_t)json_integer_value(json_object_get(v, "id"));
        uint32_t len = (uint32_t)json_string_length(c);
        int special = json_is_true(json_object_get(v, "special"));
        int normalized = nz && !json_is_null(nz) ? json_is_true(nz) : !special;
        tok_added_set *set = normalized && t->nnorm ? &t->added_norm : &t->added_raw;
        memcpy(t->arena + apos, json_string_value(c), len + 1);
        set->v[set->n++] = (struct tok_added){t->arena + apos, len, id};
        set->maxlen = len > set->maxlen ? len : set->maxlen;
        if (!set->first[(uint8_t)t->arena[apos]]) {
            set->first[(uint8_t)t->arena[apos]] = 1;
            set->nfirst++;
        }
        set->only_first = (uint8_t)t->arena[apos];
        set_dec(t, id, json_string_value(c), len, &dpos, 1);
        t->has_id[id] = 1;
        apos += len + 1;
    }
    return 0;
}

static int load_bytes_map(spes_tokenizer *t, const char *name)
{
    for (int b = 0; b < 256; b++) {
        uint32_t cp = spes__tok_byte_char((uint8_t)b);
        char s[4];
        size_t n = cp < 0x80 ? 1 : 2;
        if (n == 1)
            s[0] = (char)cp;
        else
            s[0] = (char)(0xc0 | (cp >> 6)), s[1] = (char)(0x80 | (cp & 0x3f));
        t->byte_id[b] = spes__tok_strmap_get(&t->vocab, s, n);
        if (t->byte_id[b] == TOK_NONE && t->unk_id == TOK_NONE)
            return spes_errf(SPES_EFORMAT,
                             "%s: the vocabulary has no token for byte 0x%02x "
                             "and no unk_token",
                             name, b);
        if (t->byte_id[b] == TOK_NONE)
            t->byte_id[b] = t->unk_id;
    }
    if (!t->ignore_merges)
        return 0;
    if (spes__tok_strmap_init(&t->vbytes, t->vocab.n))
        return spes_errf(SPES_ENOMEM, "%s: out of memory", name);
    for (size_t i = 0; i <= t->vocab.mask; i++) {
        const struct tok_strent *e = &t->vocab.slots[i];
        if (e->key && e->len < 1024 && spes__tok_unbyte(e->key, e->len, (char[1024]){0}) >= 0)
            spes__tok_strmap_put(&t->vbytes, t->dec + t->dec_off[e->id], t->dec_len[e->id], e->id);
    }
    return 0;
}

/* merge_parts splits merge i into its two token strings */
static int merge_parts(const char *name, json_t *m, size_t i, const char **a, size_t *alen, const char **b,
                       size_t *blen)
{
    if (json_is_string(m)) {
        const char *s = json_string_value(m), *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' ') || sp == s || sp[1] == 0)
            return spes_errf(SPES_EFORMAT,
                             "%s: merges[%zu] '%.60s' is not two tokens "
                             "separated by one space",
                             name, i, s);
        *a = s, *alen = (size_t)(sp - s), *b = sp + 1, *blen = strlen(sp + 1);
        return 0;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *alen = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1));
        *blen = json_string_length(json_array_get(m, 1));
        return 0;
    }
    return spes_errf(SPES_EFORMAT, "%s: merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", name, i);
}

static int load_merges(spes_tokenizer *t, const char *name, json_t *merges)
{
    size_t i, cap = 256;
    json_t *m;
    char *cat = malloc(cap);
    if (!cat || spes__tok_mergemap_init(&t->merges, json_array_size(merges))) {
        free(cat);
        return spes_errf(SPES_ENOMEM, "%s: out of memory", name);
    }
    json_array_foreach(merges, i, m)
    {
        const char *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        int r = merge_parts(name, m, i, &a, &alen, &b, &blen);
        if (!r && alen + blen > cap) {
            char *c2 = realloc(cat, (cap = alen + blen));
            r = c2 ? 0 : spes_errf(SPES_ENOMEM, "%s: out of memory", name);
            cat = c2 ? c2 : cat;
        }
        if (r) {
            free(cat);
            return r;
        }
        memcpy(cat, a, alen);
        memcpy(cat + alen, b, blen);
        uint32_t ia = spes__tok_strmap_get(&t->vocab, a, alen);
        uint32_t ib = spes__tok_strmap_get(&t->vocab, b, blen);
        uint32_t ic = spes__tok_strmap_get(&t->vocab, cat, alen + blen);
        if (ia == TOK_NONE || ib == TOK_NONE || ic == TOK_NONE) {
            const char *which = ia == TOK_NONE ? a : ib == TOK_NONE ? b : cat;
            int wl = (int)(ia == TOK_NONE ? alen : ib == TOK_NONE ? blen : alen + blen);
            r = spes_errf(SPES_EFORMAT, "%s: merges[%zu]: token '%.*s' is not in the vocab", name, i,
                          wl > 60 ? 60 : wl, which);
            free(cat);
            return r;
        }
        spes__tok_mergemap_put(&t->merges, ia, ib, (uint32_t)i, ic);
    }
    free(cat);
    return 0;
}

/* normalize_added: Hugging Face matches normalized added tokens by their content passed
 * through the normalizer, so keep that form for matching (decoding keeps the original) */
static int normalize_added(spes_tokenizer *t, const char *name)
{
    tok_added_set *set = &t->added_norm;
    size_t total = 0;
    uint8_t **forms = calloc(set->n + 1, sizeof(uint8_t *));
    int r = forms ? 0 : spes_errf(SPES_ENOMEM, "%s: out of memory", name);
    for (size_t i = 0; !r && i < set->n; i++) {
        utf8proc_ssize_t len = set->v[i].len;
        const uint8_t *in = (const uint8_t *)set->v[i].s;
        for (int k = 0; k < t->nnorm && len >= 0; k++) {
            static const int opts[] = {0, UTF8PROC_COMPOSE, UTF8PROC_DECOMPOSE,
                                       UTF8PROC_COMPOSE | UTF8PROC_COMPAT,
                                       UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT};
            uint8_t *o = NULL;
            len = utf8proc_map(in, len, &o, (utf8proc_option_t)(UTF8PROC_STABLE | opts[t->norm[k]]));
            free(forms[i]);
            forms[i] = o;
            in = o;
        }
        if (len <= 0)
            r = spes_errf(SPES_EFORMAT, "%s: added token '%.60s' does not normalize", name, set->v[i].s);
        else
            set->v[i].len = (uint32_t)len, total += (size_t)len;
    }
    if (!r && !(t->added_norm_text = malloc(total + 1)))
        r = spes_errf(SPES_ENOMEM, "%s: out of memory", name);
    memset(set->first, 0, sizeof set->first);
    set->nfirst = 0;
    set->maxlen = 0;
    for (size_t i = 0, off = 0; !r && i < set->n; i++) {
        memcpy(t->added_norm_text + off, forms[i], set->v[i].len);
        set->v[i].s = t->added_norm_text + off;
        off += set->v[i].len;
        uint8_t b = (uint8_t)set->v[i].s[0];
        set->nfirst += !set->first[b];
        set->first[b] = 1;
        set->only_first = b;
        set->maxlen = set->v[i].len > set->maxlen ? set->v[i].len : set->maxlen;
    }
    for (size_t i = 0; forms && i < set->n; i++)
        free(forms[i]);
    free(forms);
    return r;
}

int spes__tok_load_model(spes_tokenizer *t, const char *name, json_t *model, json_t *added)
{
    int r;
    if (!json_is_object(model))
        return spes_errf(SPES_EFORMAT, "%s: model is missing", name);
    if ((r = check_options(t, name, model)))
        return r;
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    json_t *noadd = json_array();
    if (!json_is_object(vocab) || json_object_size(vocab) == 0)
        r = spes_errf(SPES_EFORMAT, "%s: model vocab is missing or empty", name);
    else if (!json_is_array(merges))
        r = spes_errf(SPES_EFORMAT, "%s: model merges is missing", name);
    else if (added && !json_is_null(added) && !json_is_array(added))
        r = spes_errf(SPES_EFORMAT, "%s: added_tokens is not an array", name);
    else
        r = load_vocab(t, name, vocab, json_is_array(added) ? added : noadd);
    json_decref(noadd);
    if (r)
        return r;
    json_t *unk = json_object_get(model, "unk_token");
    if (unk && !json_is_null(unk)) {
        if (!json_is_string(unk) || (t->unk_id = spes__tok_strmap_get(&t->vocab, json_string_value(unk),
                                                                      json_string_length(unk))) == TOK_NONE)
            return spes_errf(SPES_EFORMAT, "%s: model unk_token is not in the vocab", name);
    }
    if (t->added_norm.n && t->nlevels && t->levels[0].prefix_space)
        return spes_errf(SPES_EFORMAT,
                         "%s: ByteLevel add_prefix_space together with normalized "
                         "added tokens is not supported",
                         name);
    if (t->added_norm.n && (r = normalize_added(t, name)))
        return r;
    if ((r = load_bytes_map(t, name)))
        return r;
    return load_merges(t, name, merges);
}
