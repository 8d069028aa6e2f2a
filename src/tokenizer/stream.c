/* stream.c: encoding a document fed in blocks: added tokens, normalization, pre-tokenizer
 * levels and BPE, with the carry that keeps the ids equal to those of whole-document
 * encoding. Cuts are made only where later bytes cannot change the result: before an
 * added token could start, before a character no normalizer can merge backwards (ASCII,
 * CJK ideographs, Hangul syllables), and at regex piece ends PCRE2's hard partial matching
 * proves final. Never trusts the text: invalid UTF-8 is an error with its offset. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/error.h"
#include "core/parallel.h"
#include "tokenizer/tok_internal.h"
#include "tokenizer/tok_stream.h"

int spes_ids_reserve(spes_ids *ids, size_t extra)
{
    if (ids->n + extra <= ids->cap)
        return 0;
    size_t cap = ids->cap ? ids->cap : 256;
    while (cap < ids->n + extra)
        cap *= 2;
    uint32_t *v = realloc(ids->v, cap * sizeof(uint32_t));
    if (!v)
        return spes_errf(SPES_ENOMEM, "tokenizer: out of memory");
    ids->v = v;
    ids->cap = cap;
    return 0;
}

int spes_ids_push(spes_ids *ids, uint32_t id)
{
    if (ids->n == ids->cap && spes_ids_reserve(ids, 1))
        return SPES_ENOMEM;
    ids->v[ids->n++] = id;
    return 0;
}

void spes_ids_fini(spes_ids *ids)
{
    free(ids->v);
    memset(ids, 0, sizeof(*ids));
}

int spes__tok_buf_add(tok_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q)
            return spes_errf(SPES_ENOMEM, "tokenizer: out of memory");
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    return 0;
}

int spes_tokstream_alloc(spes_tokstream **out, const spes_tokenizer *t, spes_pool *pool)
{
    spes_tokstream *s = calloc(1, sizeof(*s));
    if (!s)
        return spes_errf(SPES_ENOMEM, "tokenizer: out of memory");
    s->t = t;
    s->pool = pool;
    s->nthreads = pool ? spes_pool_threads(pool) : 1;
    if (s->nthreads > TOK_MAX_THREADS)
        s->nthreads = TOK_MAX_THREADS;
    s->seg_start = 1;
    s->jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    s->mctx = pcre2_match_context_create(NULL);
    s->raw.p = malloc(s->raw.cap = 4096); /* never NULL, so offsets on them are defined */
    s->norm.p = malloc(s->norm.cap = 4096);
    int ok = s->jit_stack && s->mctx && s->raw.p && s->norm.p;
    if (ok)
        pcre2_jit_stack_assign(s->mctx, NULL, s->jit_stack);
    for (int i = 0; ok && i < t->nlevels; i++)
        ok = (s->md[i] = pcre2_match_data_create(1, NULL)) != NULL;
    for (int i = 0; ok && i < s->nthreads; i++)
        ok = spes__tok_cache_init(&s->cache[i]) == 0;
    if (!ok) {
        spes_tokstream_free(s);
        return spes_errf(SPES_ENOMEM, "tokenizer: out of memory");
    }
    *out = s;
    return 0;
}

void spes_tokstream_free(spes_tokstream *s)
{
    if (!s)
        return;
    for (int i = 0; i < 8; i++)
        pcre2_match_data_free(s->md[i]);
    pcre2_match_context_free(s->mctx);
    pcre2_jit_stack_free(s->jit_stack);
    for (int i = 0; i < TOK_MAX_THREADS; i++)
        spes__tok_cache_fini(&s->cache[i]);
    for (int i = 0; i < TOK_CHUNKS; i++)
        spes_ids_fini(&s->part[i]);
    free(s->raw.p);
    free(s->norm.p);
    for (int i = 0; i < 2; i++) {
        free(s->set[i].arena.p);
        free(s->set[i].v);
    }
    for (int i = 0; i < 8; i++) {
        free(s->items[i]);
        free(s->folds[i]);
    }
    free(s);
}

void spes_tokstream_reset(spes_tokstream *s)
{
    s->raw.n = s->norm.n = 0;
    for (int i = 0; i < 2; i++)
        s->set[i].n = s->set[i].arena.n = 0;
    s->raw_base = 0;
    s->norm_ctx = 0;
    s->seg_start = 1;
}

/* nfc_starter: a character that no normalizer changes or joins with what comes before it
 * (ccc 0, never the second half of a composition, no decomposition): text can be cut
 * before it and each side normalized alone */
static int nfc_starter(uint32_t cp, const utf8proc_property_t *p)
{
    if (cp < 0x80)
        return 1;
    if ((cp >= 0x1161 && cp <= 0x1175) || (cp >= 0x11a8 && cp <= 0x11c2))
        return 0; /* Hangul V and T jamo compose algorithmically */
    return p->combining_class == 0 && (p->comb_index == UINT16_MAX || p->comb_index < 0x8000) &&
           p->decomp_seqindex == UINT16_MAX;
}

/* safe_cut returns the last position <= n before which text can be cut for normalization
 * (without a normalizer: any character boundary) */
static size_t safe_cut(const spes_tokenizer *t, const uint8_t *p, size_t n)
{
    for (size_t i = n; i > 0; i--) {
        uint8_t c = p[i - 1];
        if (c < 0x80 || (!t->nnorm && (c & 0xc0) == 0xc0))
            return i - 1;
        if ((c & 0xc0) != 0xc0)
            continue;
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p + i - 1, (utf8proc_ssize_t)(n - i + 1), &cp);
        if (k > 0 && nfc_starter((uint32_t)cp, utf8proc_get_property(cp)))
            return i - 1;
    }
    return 0;
}

/* nfc_inert: a character the normalizers leave as it is and do not join backwards;
 * Hangul syllables are split by the decomposing forms (NFD, NFKD) */
static int nfc_inert(uint32_t cp, const utf8proc_property_t *p, int decomposing)
{
    return nfc_starter(cp, p) && !(decomposing && cp >= 0xac00 && cp <= 0xd7a3);
}

static size_t next_char(const uint8_t *s, size_t n, size_t i, uint32_t *cp)
{
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &c);
    *cp = k > 0 ? (uint32_t)c : 0xfffd;
    return k > 0 ? (size_t)k : 1;
}

static int normalize_run(spes_tokstream *s, const uint8_t *in, size_t n)
{
    const spes_tokenizer *t = s->t;
    uint8_t *cur = NULL;
    utf8proc_ssize_t len = (utf8proc_ssize_t)n;
    for (int k = 0; k < t->nnorm; k++) {
        static const int opts[] = {0, UTF8PROC_COMPOSE, UTF8PROC_DECOMPOSE,
                                   UTF8PROC_COMPOSE | UTF8PROC_COMPAT, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT};
        uint8_t *o = NULL;
        len = utf8proc_map(in, len, &o, (utf8proc_option_t)(UTF8PROC_STABLE | opts[t->norm[k]]));
        free(cur);
        cur = o;
        in = o;
        if (len < 0)
            return spes_errf(SPES_EFORMAT, "tokenizer: normalization failed: %s", utf8proc_errmsg(len));
    }
    int r = spes__tok_buf_add(&s->norm, cur, (size_t)len);
    free(cur);
    return r;
}

/* normalize_append normalizes valid UTF-8 p [0, n) (cut at safe points) onto the segment;
 * only runs around characters a normalizer may change go through utf8proc */
static int normalize_append(spes_tokstream *s, const char *p, size_t n)
{
    const uint8_t *u = (const uint8_t *)p;
    size_t pos = 0, i = 0, starter = 0;
    int r;
    if (s->t->nnorm == 0)
        return spes__tok_buf_add(&s->norm, p, n);
    int decomposing = 0;
    for (int k = 0; k < s->t->nnorm; k++)
        decomposing |= s->t->norm[k] == TOK_NFD || s->t->norm[k] == TOK_NFKD;
    while (i < n) {
        if (u[i] < 0x80) {
            starter = i++;
            continue;
        }
        uint32_t cp;
        size_t k = next_char(u, n, i, &cp);
        const utf8proc_property_t *pr = utf8proc_get_property((utf8proc_int32_t)cp);
        if (nfc_inert(cp, pr, decomposing)) {
            starter = i;
            i += k;
            continue;
        }
        if (nfc_starter(cp, pr))
            starter = i;  /* a starter itself begins the run */
        size_t j = i + k; /* the run ends before the next starter */
        while (j < n) {
            k = next_char(u, n, j, &cp);
            if (nfc_starter(cp, utf8proc_get_property((utf8proc_int32_t)cp)))
                break;
            j += k;
        }
        if ((r = spes__tok_buf_add(&s->norm, p + pos, starter - pos)) ||
            (r = normalize_run(s, u + starter, j - starter)))
            return r;
        pos = starter = i = j;
    }
    return spes__tok_buf_add(&s->norm, p + pos, n - pos);
}

/* find_added: leftmost-longest added token starting in [pos, lim) */
static int find_added(const tok_added_set *set, const char *p, size_t n, size_t pos, size_t lim, size_t *at,
                      const struct tok_added **tok)
{
    if (set->n == 0)
        return 0;
    for (size_t i = pos; i < lim; i++) {
        if (set->nfirst == 1) { /* one possible first byte (e.g. '<'): memchr to it */
            const char *q = memchr(p + i, set->only_first, lim - i);
            if (!q)
                return 0;
            i = (size_t)(q - p);
        } else if (!set->first[(uint8_t)p[i]]) {
            continue;
        }
        const struct tok_added *best = NULL;
        for (size_t k = 0; k < set->n; k++) {
            const struct tok_added *a = &set->v[k];
            if (a->len <= n - i && (!best || a->len > best->len) && memcmp(p + i, a->s, a->len) == 0)
                best = a;
        }
        if (best) {
            *at = i;
            *tok = best;
            return 1;
        }
    }
    return 0;
}

static size_t added_lim(const tok_added_set *set, size_t n, int final)
{
    if (final || set->n == 0)
        return n;
    return n >= set->maxlen ? n - set->maxlen + 1 : 0;
}

static int add_special(spes_tokstream *s, uint32_t id)
{
    return spes__tok_add_piece(s, NULL, 0, id);
}

/* process_norm runs pass 2 (normalized added tokens) and the pre-tokenizer over the
 * normalized text of the current segment; seg_final: the segment ends here */
static int process_norm(spes_tokstream *s, int seg_final)
{
    const tok_added_set *set = &s->t->added_norm;
    size_t pos = s->norm_ctx, n = s->norm.n, at;
    size_t lim = added_lim(set, n, seg_final);
    lim = lim < pos ? pos : lim;
    const struct tok_added *tok;
    int r;
    while (find_added(set, s->norm.p, n, pos, lim, &at, &tok)) {
        size_t used;
        if ((r = spes__tok_pretok(s, pos, at, 0, &used)) || (r = add_special(s, tok->id)))
            return r;
        pos = at + tok->len;
        s->seg_start = 0;
    }
    size_t used = pos;
    if ((r = spes__tok_pretok(s, pos, seg_final ? n : lim, !seg_final, &used)))
        return r;
    if (seg_final) {
        s->norm.n = s->norm_ctx = 0;
        s->seg_start = 1;
        return 0;
    }
    /* keep up to 32 bytes of context before the carry for regex look-behind */
    size_t keep = used > 32 ? used - 32 : 0;
    while (keep < used && ((uint8_t)s->norm.p[keep] & 0xc0) == 0x80)
        keep++;
    memmove(s->norm.p, s->norm.p + keep, n - keep);
    s->norm.n = n - keep;
    s->norm_ctx = used - keep;
    return 0;
}

/* take_text validates and normalizes raw [a, b) into the segment; seg_final ends it */
static int take_text(spes_tokstream *s, size_t a, size_t b, int seg_final)
{
    const uint8_t *p = (const uint8_t *)s->raw.p;
    size_t ok = spes__tok_utf8_valid(p + a, b - a);
    if (ok != b - a)
        return spes_errf(SPES_EFORMAT, "invalid UTF-8 at byte %llu",
                         (unsigned long long)(s->raw_base + a + ok));
    if (s->seg_start && b > a && s->t->nlevels && s->t->levels[0].prefix_space && s->norm.n == s->norm_ctx &&
        p[a] != ' ') {
        int r = spes__tok_buf_add(&s->norm, " ", 1);
        if (r)
            return r;
    }
    if (b > a)
        s->seg_start = 0;
    int r = normalize_append(s, (const char *)p + a, b - a);
    return r ? r : process_norm(s, seg_final);
}

static int process_raw(spes_tokstream *s, int final)
{
    const tok_added_set *set = &s->t->added_raw;
    size_t pos = 0, n = s->raw.n, lim = added_lim(set, n, final), at;
    const struct tok_added *tok;
    int r;
    while (find_added(set, s->raw.p, n, pos, lim, &at, &tok)) {
        if ((r = take_text(s, pos, at, 1)) || (r = add_special(s, tok->id)))
            return r;
        pos = at + tok->len;
    }
    size_t end = final        ? n
                 : lim <= pos ? pos
                              : pos + safe_cut(s->t, (const uint8_t *)s->raw.p + pos, lim - pos);
    if ((r = take_text(s, pos, end, final)))
        return r;
    memmove(s->raw.p, s->raw.p + end, n - end);
    s->raw.n = n - end;
    s->raw_base += end;
    return 0;
}

/* job_ctx: the work of one block on the pool, taken job by job by whichever thread is free:
 * job 0 (if pretok) pre-tokenizes the new raw bytes into set[cur], the others run BPE on
 * chunks of set; chunk ids go to part[] and are joined in order afterwards */
typedef struct job_ctx {
    spes_tokstream *s;
    const tok_pieceset *set;
    int pretok, final;
    size_t nchunks;
    atomic_size_t next;
    int err[TOK_CHUNKS + 1];
    char msg[TOK_CHUNKS + 1][256];
} job_ctx;

static void job_fn(void *ctx, size_t begin, size_t end, int tid)
{
    job_ctx *jc = ctx;
    spes_tokstream *s = jc->s;
    (void)begin, (void)end;
    if (tid >= TOK_MAX_THREADS)
        return;
    for (;;) {
        size_t k = atomic_fetch_add(&jc->next, 1), n = jc->set ? jc->set->n : 0;
        if (k >= (size_t)jc->pretok + jc->nchunks)
            return;
        if (jc->pretok && k == 0) {
            jc->err[0] = process_raw(s, jc->final);
        } else {
            size_t c = k - (size_t)jc->pretok;
            s->part[c].n = 0;
            jc->err[k] = spes__tok_encode_set(s, jc->set, &s->cache[tid], c * n / jc->nchunks,
                                              (c + 1) * n / jc->nchunks, &s->part[c]);
        }
        if (jc->err[k])
            snprintf(jc->msg[k], sizeof jc->msg[k], "%s", spes_errmsg());
    }
}

/* run_jobs runs job 0 (pre-tokenize, if pretok) and BPE of set on the pool, appending the
 * set's ids to out in order */
static int run_jobs(spes_tokstream *s, int pretok, int final, const tok_pieceset *set, spes_ids *out)
{
    static job_ctx zero;
    job_ctx *jc = malloc(sizeof(*jc));
    if (!jc)
        return spes_errf(SPES_ENOMEM, "tokenizer: out of memory");
    *jc = zero;
    jc->s = s, jc->set = set, jc->pretok = pretok, jc->final = final;
    jc->nchunks = set && set->n ? set->n / 512 + 1 : 0;
    jc->nchunks = jc->nchunks > TOK_CHUNKS ? TOK_CHUNKS : jc->nchunks;
    atomic_init(&jc->next, 0);
    spes_parallel_for(s->pool, (size_t)s->nthreads, job_fn, jc);
    int r = 0;
    for (size_t k = 0; k < (size_t)pretok + jc->nchunks && !r; k++)
        if (jc->err[k])
            r = spes_errf(jc->err[k], "%s", jc->msg[k]);
    for (size_t c = 0; c < jc->nchunks && !r; c++) {
        if (!(r = spes_ids_reserve(out, s->part[c].n))) {
            memcpy(out->v + out->n, s->part[c].v, s->part[c].n * sizeof(uint32_t));
            out->n += s->part[c].n;
        }
    }
    free(jc);
    return r;
}

/* feed_block pre-tokenizes the new raw bytes into set[cur]; on a pool the waiting set is
 * encoded at the same time and set[cur] waits for the next call (or the end) */
static int feed_block(spes_tokstream *s, int final, spes_ids *out)
{
    tok_pieceset *prev = &s->set[s->cur ^ 1], *cur = &s->set[s->cur];
    int r;
    cur->n = cur->arena.n = 0;
    if (!s->pool || s->nthreads < 2) {
        if (!(r = process_raw(s, final)))
            r = spes__tok_encode_set(s, cur, &s->cache[0], 0, cur->n, out);
        cur->n = cur->arena.n = 0;
        return r;
    }
    r = run_jobs(s, 1, final, prev, out);
    prev->n = prev->arena.n = 0;
    if (r)
        return r;
    if (!final) {
        s->cur ^= 1;
        return 0;
    }
    r = run_jobs(s, 0, 0, cur, out);
    cur->n = cur->arena.n = 0;
    return r;
}

int spes_tokstream_feed(spes_tokstream *s, const char *data, size_t len, int final, spes_ids *out)
{
    int r;
    if (s->t->is_bytes) {
        if ((r = spes_ids_reserve(out, len)))
            return r;
        for (size_t i = 0; i < len; i++)
            out->v[out->n++] = (uint8_t)data[i];
        return 0;
    }
    if ((r = spes__tok_buf_add(&s->raw, data, len)) || (r = feed_block(s, final, out))) {
        spes_tokstream_reset(s);
        return r;
    }
    if (final)
        spes_tokstream_reset(s);
    return 0;
}

int spes_tokenizer_encode(spes_tokstream *s, const char *text, size_t len, spes_ids *out)
{
    spes_tokstream_reset(s);
    return spes_tokstream_feed(s, text, len, 1, out);
}

int spes_tokenizer_decode(const spes_tokenizer *t, const uint32_t *ids, size_t n, char **buf, size_t *len,
                          size_t *cap)
{
    tok_buf b = {*buf, *len, *cap};
    int r = 0;
    for (size_t i = 0; i < n && !r; i++) {
        uint32_t id = ids[i];
        if (id >= t->vocab_size || (!t->is_bytes && !t->has_id[id]))
            r = spes_errf(SPES_ERANGE,
                          "token id %u at position %zu is not in the vocabulary "
                          "(size %u)",
                          id, i, t->vocab_size);
        else if (t->is_bytes)
            r = spes__tok_buf_add(&b, (char[1]){(char)id}, 1);
        else
            r = spes__tok_buf_add(&b, t->dec + t->dec_off[id], t->dec_len[id]);
    }
    *buf = b.p, *len = b.n, *cap = b.cap;
    return r;
}
