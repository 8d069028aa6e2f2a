/* pretok.c: the pre-tokenizer levels (Split / ByteLevel regex with Hugging Face's split
 * behaviours), the pieces they produce, and BPE of the pieces through a per-thread cache,
 * on the worker pool when a block has many pieces. Never reads past the given ranges;
 * a regex engine failure is an error, never a silent fallback. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/parallel.h"
#include "tokenizer/tok_stream.h"

#define CACHE_SLOTS (1u << 17)
#define CACHE_ARENA (1u << 23)
#define CACHE_MAXKEY 64
#define PARALLEL_MIN 4096

static int grow(tok_item **v, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need)
        c *= 2;
    tok_item *p = realloc(*v, c * sizeof(tok_item));
    if (!p)
        return spes_errf(SPES_ENOMEM, "tokenizer: out of memory");
    *v = p;
    *cap = c;
    return 0;
}

static int push_item(spes_tokstream *s, int lvl, size_t *n, size_t a, size_t b, int m)
{
    int r = grow(&s->items[lvl], &s->icap[lvl], *n + 1);
    if (!r)
        s->items[lvl][(*n)++] = (tok_item){a, b, m};
    return r;
}

/* scan: Hugging Face's find_matches, from start to len; *hit: a hard partial stopped it */
static int scan(spes_tokstream *s, int lvl, const char *p, size_t len, size_t start, int partial,
                size_t *nitems, int *hit)
{
    const tok_level *lv = &s->t->levels[lvl];
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md[lvl]);
    size_t prev = start, pos = start, n = 0;
    int r;
    *hit = 0;
    while (pos <= len) {
        int rc = pcre2_jit_match(lv->re, (PCRE2_SPTR)p, len, pos, partial ? PCRE2_PARTIAL_HARD : 0,
                                 s->md[lvl], s->mctx);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc == PCRE2_ERROR_PARTIAL) {
            *hit = 1;
            break;
        }
        if (rc < 0) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            return spes_errf(SPES_EFORMAT, "tokenizer: pre_tokenizer regex failed: %s", (char *)msg);
        }
        size_t ms = ov[0], me = ov[1];
        if (ms > prev && (r = push_item(s, lvl, &n, prev, ms, 0)))
            return r;
        if ((r = push_item(s, lvl, &n, ms, me, 1)))
            return r;
        prev = me;
        pos = me;
        if (me == ms) { /* empty match: step over one character */
            if (me >= len)
                break;
            pos++;
            while (pos < len && ((uint8_t)p[pos] & 0xc0) == 0x80)
                pos++;
        }
    }
    if (!*hit && prev < len && (r = push_item(s, lvl, &n, prev, len, 0)))
        return r;
    *nitems = n;
    return 0;
}

/* fold applies the split behaviour to items (Hugging Face's SplitDelimiterBehavior) */
static size_t fold(const tok_item *it, size_t n, int behavior, int invert, tok_item *out)
{
    size_t k = 0;
    int prevm = 0;
    if (behavior == TOK_MERGED_NEXT) {
        for (size_t j = n; j-- > 0;) {
            int m = it[j].m ^ invert;
            if (m && !prevm && k > 0)
                out[k - 1].a = it[j].a;
            else
                out[k++] = (tok_item){it[j].a, it[j].b, m};
            prevm = m;
        }
        for (size_t i = 0; i < k / 2; i++) {
            tok_item x = out[i];
            out[i] = out[k - 1 - i];
            out[k - 1 - i] = x;
        }
        return k;
    }
    for (size_t j = 0; j < n; j++) {
        int m = it[j].m ^ invert;
        if (behavior == TOK_REMOVED) {
            if (!m)
                out[k++] = it[j];
        } else if (behavior == TOK_MERGED_PREV && m && !prevm && k > 0) {
            out[k - 1].b = it[j].b;
        } else if (behavior == TOK_CONTIGUOUS && m == prevm && k > 0) {
            out[k - 1].b = it[j].b;
        } else {
            out[k++] = (tok_item){it[j].a, it[j].b, m};
        }
        prevm = m;
    }
    return k;
}

static int grow_set(tok_pieceset *set, size_t n)
{
    if (set->n == set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 1024;
        tok_piece *q = realloc(set->v, cap * sizeof(*q));
        if (!q)
            return spes_errf(SPES_ENOMEM, "tokenizer: out of memory");
        set->v = q;
        set->cap = cap;
    }
    if (set->arena.n + n > UINT32_MAX - 16)
        return spes_errf(SPES_ERANGE, "tokenizer: a block has more than 4 GiB of pieces");
    if (set->arena.n + n + 16 > set->arena.cap) { /* 16 bytes slack for the short copy */
        size_t cap = set->arena.cap ? set->arena.cap * 2 : 1 << 16;
        while (cap < set->arena.n + n + 16)
            cap *= 2;
        char *q = realloc(set->arena.p, cap);
        if (!q)
            return spes_errf(SPES_ENOMEM, "tokenizer: out of memory");
        set->arena.p = q;
        set->arena.cap = cap;
    }
    return 0;
}

int spes__tok_add_piece(spes_tokstream *s, const char *p, size_t n, uint32_t id)
{
    tok_pieceset *set = &s->set[s->cur];
    if (p && n == 0)
        return 0;
    if ((set->n == set->cap || set->arena.n + n + 16 > set->arena.cap) && grow_set(set, n))
        return SPES_ENOMEM;
    set->v[set->n++] = (tok_piece){(uint32_t)set->arena.n, p ? (uint32_t)n : 0, id};
    if (!p)
        return 0;
    char *dst = set->arena.p + set->arena.n;
    if (n <= 16) { /* short pieces: a plain loop beats a libc call */
        for (size_t i = 0; i < n; i++)
            dst[i] = p[i];
    } else {
        memcpy(dst, p, n);
    }
    set->arena.n += n;
    return 0;
}

static int emit(spes_tokstream *s, const char *p, size_t n)
{
    return spes__tok_add_piece(s, p, n, 0);
}

static int apply(spes_tokstream *s, int lvl, const char *p, size_t n);

/* split_level runs level lvl on p [start, len) and hands finished pieces to level lvl+1 */
static int split_level(spes_tokstream *s, int lvl, const char *p, size_t start, size_t len, int partial,
                       size_t *used)
{
    const tok_level *lv = &s->t->levels[lvl];
    size_t n = 0, k;
    int hit, r;
    if (!lv->re) {
        *used = partial ? start : len;
        return partial ? 0 : apply(s, lvl + 1, p + start, len - start);
    }
    if ((r = scan(s, lvl, p, len, start, partial, &n, &hit)) ||
        (r = grow(&s->folds[lvl], &s->fcap[lvl], n + 1)))
        return r;
    if (lv->behavior == TOK_ISOLATED && !lv->invert && lvl + 1 == s->t->nlevels) {
        /* common case: every item is a final piece */
        size_t carry = partial ? (n ? s->items[lvl][n - 1].a : start) : len;
        for (size_t i = 0; i < n; i++) {
            const tok_item *f = &s->items[lvl][i];
            if (f->b <= carry && (r = emit(s, p + f->a, f->b - f->a)))
                return r;
        }
        *used = carry;
        return 0;
    }
    k = fold(s->items[lvl], n, lv->behavior, lv->invert, s->folds[lvl]);
    size_t carry = len;
    if (partial) {
        carry = n ? s->items[lvl][n - 1].a : start;
        for (size_t i = 0; i < k; i++)
            if (s->folds[lvl][i].b > carry && s->folds[lvl][i].a < carry)
                carry = s->folds[lvl][i].a;
    }
    for (size_t i = 0; i < k; i++) {
        const tok_item *f = &s->folds[lvl][i];
        if (f->b <= carry && f->b > f->a && (r = apply(s, lvl + 1, p + f->a, f->b - f->a)))
            return r;
    }
    *used = carry;
    return 0;
}

/* apply runs levels lvl.. on a finished piece */
static int apply(spes_tokstream *s, int lvl, const char *p, size_t n)
{
    if (lvl == s->t->nlevels)
        return emit(s, p, n);
    const tok_level *lv = &s->t->levels[lvl];
    size_t used;
    if (lv->prefix_space && n > 0 && p[0] != ' ') {
        char *q = malloc(n + 1);
        if (!q)
            return spes_errf(SPES_ENOMEM, "tokenizer: out of memory");
        q[0] = ' ';
        memcpy(q + 1, p, n);
        int r = split_level(s, lvl, q, 0, n + 1, 0, &used);
        free(q);
        return r;
    }
    return split_level(s, lvl, p, 0, n, 0, &used);
}

int spes__tok_pretok(spes_tokstream *s, size_t a, size_t b, int partial, size_t *used)
{
    *used = a;
    if (b <= a)
        return 0;
    if (s->t->nlevels == 0) {
        if (partial)
            return 0;
        *used = b;
        return emit(s, s->norm.p + a, b - a);
    }
    /* level 0's prefix space was put into the segment text by the stream */
    return split_level(s, 0, s->norm.p, a, b, partial, used);
}

int spes__tok_cache_init(tok_cache *c)
{
    c->slots = calloc(CACHE_SLOTS, sizeof(*c->slots));
    c->arena = malloc(CACHE_ARENA);
    c->arena_n = c->n = 0;
    return c->slots && c->arena ? 0 : SPES_ENOMEM;
}

void spes__tok_cache_fini(tok_cache *c)
{
    free(c->slots);
    free(c->arena);
    memset(c, 0, sizeof(*c));
}

static inline int key_eq(const char *a, const uint8_t *b, size_t n)
{
    if (n <= 8) {
        uint64_t x = 0, y = 0;
        memcpy(&x, a, n);
        memcpy(&y, b, n);
        return x == y;
    }
    return memcmp(a, b, n) == 0;
}

/* encode_piece appends a piece's ids, through the cache when it is short */
static int encode_piece(const spes_tokenizer *t, tok_cache *c, const uint8_t *p, size_t n, spes_ids *out)
{
    if (n > CACHE_MAXKEY)
        return spes__tok_bpe(t, p, n, out);
    uint64_t h = spes__tok_hash(p, n);
    size_t i = (size_t)h & (CACHE_SLOTS - 1);
    for (;;) {
        struct tok_cent *e = &c->slots[i];
        if (e->nids == 0)
            break;
        if (e->h == h && e->klen == n && key_eq(c->arena + e->off + e->nids * 4, p, n)) {
            int r = spes_ids_reserve(out, e->nids);
            if (r)
                return r;
            memcpy(out->v + out->n, c->arena + e->off, e->nids * 4u);
            out->n += e->nids;
            return 0;
        }
        i = (i + 1) & (CACHE_SLOTS - 1);
    }
    size_t before = out->n;
    int r = spes__tok_bpe(t, p, n, out);
    size_t nids = out->n - before, need = nids * 4 + n;
    if (r || nids == 0)
        return r;
    if (c->n * 4 >= CACHE_SLOTS * 3 || c->arena_n + need + 3 > CACHE_ARENA) {
        memset(c->slots, 0, CACHE_SLOTS * sizeof(*c->slots));
        c->n = c->arena_n = 0;
        i = (size_t)h & (CACHE_SLOTS - 1);
    }
    c->arena_n = (c->arena_n + 3) & ~(size_t)3;
    memcpy(c->arena + c->arena_n, out->v + before, nids * 4);
    memcpy(c->arena + c->arena_n + nids * 4, p, n);
    c->slots[i] = (struct tok_cent){h, (uint32_t)c->arena_n, (uint16_t)n, (uint16_t)nids};
    c->arena_n += need;
    c->n++;
    return 0;
}

int spes__tok_encode_set(spes_tokstream *s, const tok_pieceset *set, tok_cache *c, size_t begin, size_t end,
                         spes_ids *out)
{
    int r = 0;
    for (size_t i = begin; i < end && !r; i++) {
        const tok_piece *pc = &set->v[i];
        if (pc->len == 0)
            r = spes_ids_push(out, pc->id);
        else
            r = encode_piece(s->t, c, (const uint8_t *)set->arena.p + pc->off, pc->len, out);
    }
    return r;
}
