/* maps.c: the tokenizer's hash maps (strings -> id, id pairs -> merge), GPT-2's byte-to-
 * unicode map and UTF-8 validation. Pure data structures: no I/O, no messages. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "tokenizer/tok_internal.h"

uint64_t spes__tok_hash(const void *p, size_t len)
{
    const uint8_t *s = p;
    if (len <= 8) { /* most pre-tokens: one load, one multiply */
        uint64_t w = 0;
        memcpy(&w, s, len);
        uint64_t h = (w ^ ((uint64_t)len << 59)) * 0x9E3779B97F4A7C15ull;
        return h ^ (h >> 31);
    }
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (len * 0xFF51AFD7ED558CCDull);
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
        h ^= h >> 29;
        s += 8;
        len -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, len);
    h = (h ^ w ^ ((uint64_t)len << 56)) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 32;
    return h;
}

static size_t table_size(size_t expect)
{
    size_t n = 16;
    while (n < expect * 2)
        n <<= 1;
    return n;
}

int spes__tok_strmap_init(tok_strmap *m, size_t expect)
{
    size_t n = table_size(expect);
    m->slots = calloc(n, sizeof(*m->slots));
    if (!m->slots)
        return spes_errf(SPES_ENOMEM, "tokenizer: out of memory");
    m->mask = n - 1;
    m->n = 0;
    return 0;
}

void spes__tok_strmap_fini(tok_strmap *m)
{
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

int spes__tok_strmap_put(tok_strmap *m, const char *key, uint32_t len, uint32_t id)
{
    size_t i = spes__tok_hash(key, len) & m->mask;
    for (;;) {
        struct tok_strent *e = &m->slots[i];
        if (!e->key) {
            e->key = key;
            e->len = len;
            e->id = id;
            m->n++;
            return 0;
        }
        if (e->len == len && memcmp(e->key, key, len) == 0)
            return 1;
        i = (i + 1) & m->mask;
    }
}

uint32_t spes__tok_strmap_get(const tok_strmap *m, const char *key, size_t len)
{
    if (!m->slots)
        return TOK_NONE;
    size_t i = spes__tok_hash(key, len) & m->mask;
    for (;;) {
        const struct tok_strent *e = &m->slots[i];
        if (!e->key)
            return TOK_NONE;
        if (e->len == len && memcmp(e->key, key, len) == 0)
            return e->id;
        i = (i + 1) & m->mask;
    }
}

int spes__tok_mergemap_init(tok_mergemap *m, size_t expect)
{
    size_t n = table_size(expect);
    m->slots = malloc(n * sizeof(*m->slots));
    if (!m->slots)
        return spes_errf(SPES_ENOMEM, "tokenizer: out of memory");
    memset(m->slots, 0xff, n * sizeof(*m->slots));
    m->mask = n - 1;
    m->n = 0;
    return 0;
}

void spes__tok_mergemap_fini(tok_mergemap *m)
{
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

int spes__tok_mergemap_put(tok_mergemap *m, uint32_t a, uint32_t b, uint32_t rank, uint32_t id)
{
    uint64_t key = (uint64_t)a << 32 | b;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & m->mask;
    for (;;) {
        struct tok_mergeent *e = &m->slots[i];
        if (e->key == UINT64_MAX) {
            e->key = key;
            e->rank = rank;
            e->id = id;
            m->n++;
            return 0;
        }
        if (e->key == key) { /* like Hugging Face's map: the last merge listed wins */
            e->rank = rank;
            e->id = id;
            return 1;
        }
        i = (i + 1) & m->mask;
    }
}

/* GPT-2: printable Latin-1 bytes stand for themselves, the other 68 bytes map to 256+n. */
static int byte_printable(unsigned b)
{
    return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
}

uint32_t spes__tok_byte_char(uint8_t b)
{
    if (byte_printable(b))
        return b;
    unsigned n = 0;
    for (unsigned i = 0; i < b; i++)
        n += !byte_printable(i);
    return 256 + n;
}

int spes__tok_char_byte(uint32_t c)
{
    if (c < 256)
        return byte_printable(c) ? (int)c : -1;
    if (c >= 256 + 68)
        return -1;
    unsigned n = c - 256;
    for (unsigned b = 0; b < 256; b++)
        if (!byte_printable(b) && n-- == 0)
            return (int)b;
    return -1;
}

/* decode one UTF-8 sequence of valid text; returns its length, 0 if malformed */
static size_t utf8_next(const uint8_t *s, size_t len, uint32_t *cp)
{
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 0;
    if (n == 0 || n > len || spes__tok_utf8_valid(s, n) != n)
        return 0;
    uint32_t v = c & (0x7f >> n);
    for (size_t i = 1; i < n; i++)
        v = v << 6 | (s[i] & 0x3f);
    *cp = v;
    return n;
}

long spes__tok_unbyte(const char *s, size_t len, char *out)
{
    const uint8_t *p = (const uint8_t *)s;
    long o = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t n = utf8_next(p + i, len - i, &cp);
        if (n == 0)
            return -1;
        int b = spes__tok_char_byte(cp);
        if (b < 0)
            return -1;
        out[o++] = (char)b;
        i += n;
    }
    return o;
}

size_t spes__tok_utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= len)
            break;
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t min;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 2, min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 3, min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 4, min = 0x10000;
        } else {
            return i;
        }
        if (i + n > len)
            return i;
        uint32_t v = c & (0x7f >> n);
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
            v = v << 6 | (s[i + k] & 0x3f);
        }
        if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
            return i;
        i += n;
    }
    return i;
}
