/* bpe.c: the BPE merge loop on one pre-token, with Hugging Face's order: repeatedly merge
 * the adjacent pair of lowest rank, leftmost first. Short words use a linear scan, long
 * ones a binary heap over a linked list of symbols; both give the same result.
 * Works on bytes already checked; never allocates for words of up to 256 bytes. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "tokenizer/tok_internal.h"

#define SMALL 256

static uint32_t pair_rank(const spes_tokenizer *t, uint32_t a, uint32_t b, uint32_t *id)
{
    const struct tok_mergeent *e = tok_merge_get(&t->merges, a, b);
    if (!e)
        return UINT32_MAX;
    *id = e->id;
    return e->rank;
}

/* bpe_small: rank[i] is the rank of pair (i, i+1); only the neighbours of a merge change */
static int bpe_small(const spes_tokenizer *t, uint32_t *id, size_t n, spes_ids *out)
{
    uint32_t rank[SMALL], nid[SMALL];
    for (size_t i = 0; i + 1 < n; i++)
        rank[i] = pair_rank(t, id[i], id[i + 1], &nid[i]);
    while (n > 1) {
        uint32_t best = UINT32_MAX;
        size_t at = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            if (rank[i] < best) {
                best = rank[i];
                at = i;
            }
        }
        if (best == UINT32_MAX)
            break;
        id[at] = nid[at];
        size_t tail = n - at - 2;
        memmove(id + at + 1, id + at + 2, tail * sizeof(uint32_t));
        memmove(rank + at + 1, rank + at + 2, (tail ? tail - 1 : 0) * sizeof(uint32_t));
        memmove(nid + at + 1, nid + at + 2, (tail ? tail - 1 : 0) * sizeof(uint32_t));
        n--;
        if (at > 0)
            rank[at - 1] = pair_rank(t, id[at - 1], id[at], &nid[at - 1]);
        if (at + 1 < n)
            rank[at] = pair_rank(t, id[at], id[at + 1], &nid[at]);
    }
    int r = spes_ids_reserve(out, n);
    if (r)
        return r;
    memcpy(out->v + out->n, id, n * sizeof(uint32_t));
    out->n += n;
    return 0;
}

typedef struct hent {
    uint32_t rank, pos, id;
} hent;

static int hless(const hent *a, const hent *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void hpush(hent *h, size_t *n, hent e)
{
    size_t i = (*n)++;
    while (i > 0 && hless(&e, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = e;
}

static hent hpop(hent *h, size_t *n)
{
    hent top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && hless(&h[c + 1], &h[c]))
            c++;
        if (!hless(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = last;
    return top;
}

static void hpush_pair(const spes_tokenizer *t, hent *h, size_t *nh, const uint32_t *id, size_t a, size_t b)
{
    const struct tok_mergeent *e = tok_merge_get(&t->merges, id[a], id[b]);
    if (e)
        hpush(h, nh, (hent){e->rank, (uint32_t)a, e->id});
}

/* Hugging Face's Word::merge_all: queue of (rank, pos), stale entries skipped */
static int bpe_heap(const spes_tokenizer *t, uint32_t *id, size_t n, spes_ids *out)
{
    int32_t *next = malloc(n * sizeof(int32_t)), *prev = malloc(n * sizeof(int32_t));
    uint8_t *dead = calloc(n, 1);
    hent *h = malloc(n * sizeof(hent) * 2 + sizeof(hent));
    size_t nh = 0, hcap = 2 * n + 1;
    int r = 0;
    if (!next || !prev || !dead || !h) {
        r = spes_errf(SPES_ENOMEM, "tokenizer: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        next[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        prev[i] = (int32_t)i - 1;
    }
    for (size_t i = 0; i + 1 < n; i++)
        hpush_pair(t, h, &nh, id, i, i + 1);
    while (nh) {
        hent top = hpop(h, &nh);
        size_t p = top.pos;
        if (dead[p] || next[p] < 0)
            continue;
        size_t q = (size_t)next[p];
        const struct tok_mergeent *e = tok_merge_get(&t->merges, id[p], id[q]);
        if (!e || e->id != top.id)
            continue;
        id[p] = top.id;
        dead[q] = 1;
        next[p] = next[q];
        if (next[q] >= 0)
            prev[next[q]] = (int32_t)p;
        if (nh + 2 > hcap)
            break; /* cannot happen: each merge removes a symbol, pushes at most 2 */
        if (prev[p] >= 0)
            hpush_pair(t, h, &nh, id, (size_t)prev[p], p);
        if (next[p] >= 0)
            hpush_pair(t, h, &nh, id, p, (size_t)next[p]);
    }
    if ((r = spes_ids_reserve(out, n)))
        goto done;
    for (int32_t i = 0; i >= 0; i = next[i])
        out->v[out->n++] = id[i];
done:
    free(next);
    free(prev);
    free(dead);
    free(h);
    return r;
}

int spes__tok_bpe(const spes_tokenizer *t, const uint8_t *s, size_t len, spes_ids *out)
{
    if (len == 0)
        return 0;
    if (t->ignore_merges) {
        uint32_t whole = spes__tok_strmap_get(&t->vbytes, (const char *)s, len);
        if (whole != TOK_NONE)
            return spes_ids_push(out, whole);
    }
    uint32_t small[SMALL], *id = len <= SMALL ? small : malloc(len * sizeof(uint32_t));
    if (!id)
        return spes_errf(SPES_ENOMEM, "tokenizer: out of memory");
    for (size_t i = 0; i < len; i++)
        id[i] = t->byte_id[s[i]];
    int r = len <= 64 ? bpe_small(t, id, len, out) : bpe_heap(t, id, len, out);
    if (id != small)
        free(id);
    return r;
}
