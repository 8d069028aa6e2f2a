/* corpus.c: text and jsonl files to one token file (see corpus.h). */
#include "tokenizer/corpus.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/parallel.h"
#include "data/tokwriter.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLICES 64 /* work items per batch (balance across threads) */
#define MAX_THREADS SPES_CORPUS_MAX_THREADS

typedef struct doc {
    size_t off, len;    /* in the batch buffer */
    const char *path;   /* for messages */
    unsigned long line; /* jsonl line number, 0 for plain text */
} doc;

typedef struct slice {
    size_t begin, end; /* documents */
    spes_ids ids;
    int err;
    char msg[512];
} slice;

typedef struct tok_run {
    const spes_tokenizer *tok;
    spes_pool *pool;
    int nthreads;
    spes_tokstream *streams[MAX_THREADS]; /* per thread, batch encoding */
    spes_tokstream *big;                  /* one large document, BPE on the pool */
    spes_tokwriter w;
    uint32_t eos;
    int has_eos;
    const char *field;
    char *batch;
    size_t batch_len, batch_cap;
    doc *docs;
    size_t ndocs, docs_cap;
    slice slices[SLICES];
    size_t nslices;
    atomic_size_t next_slice;
    uint64_t in_bytes, ndoc_total;
    double t0, last_report;
    void (*progress)(void *, const spes_corpus_stats *, int);
    void *progress_ctx;
    size_t batch_bytes; /* documents larger than this are streamed */
    size_t block_bytes; /* read size when streaming one large document */
    int writing;        /* the token writer is open */
} tok_run;

static void stats(const tok_run *r, spes_corpus_stats *st)
{
    st->in_bytes = r->in_bytes;
    st->tokens = spes_tokwriter_count(&r->w);
    st->documents = r->ndoc_total;
    st->seconds = spes_mono_s() - r->t0;
}

static void report(tok_run *r, int last)
{
    double t = spes_mono_s();
    if (!r->progress || (!last && t - r->last_report < 2.0))
        return;
    r->last_report = t;
    spes_corpus_stats st;
    stats(r, &st);
    r->progress(r->progress_ctx, &st, last);
}

static int push_eos(tok_run *r, spes_ids *ids)
{
    return r->has_eos ? spes_ids_push(ids, r->eos) : 0;
}

/* doc_text returns the document text: the whole plain text, or the jsonl field */
static int doc_text(tok_run *r, const doc *d, json_t **root, const char **text, size_t *len)
{
    const char *p = r->batch + d->off;
    *root = NULL;
    if (!d->line) {
        *text = p, *len = d->len;
        return 0;
    }
    json_error_t je;
    *root = json_loadb(p, d->len, 0, &je);
    if (!*root)
        return spes_errf(SPES_EFORMAT, "%s:%lu: malformed JSON: %s", d->path, d->line, je.text);
    json_t *f = json_is_object(*root) ? json_object_get(*root, r->field) : NULL;
    if (!json_is_string(f))
        return spes_errf(SPES_EFORMAT, "%s:%lu: no string field \"%s\"", d->path, d->line, r->field);
    *text = json_string_value(f), *len = json_string_length(f);
    return 0;
}

static int encode_doc(tok_run *r, spes_tokstream *s, const doc *d, spes_ids *out)
{
    json_t *root;
    const char *text = NULL;
    size_t len = 0;
    int rc = doc_text(r, d, &root, &text, &len);
    if (!rc && (rc = spes_tokenizer_encode(s, text, len, out)) == SPES_EFORMAT) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", spes_errmsg());
        if (d->line)
            spes_errf(rc, "%s:%lu: %s", d->path, d->line, msg);
        else
            spes_errf(rc, "%s: %s", d->path, msg);
    }
    json_decref(root);
    return rc ? rc : push_eos(r, out);
}

/* slice_fn: each thread takes the next slice until none is left, so a thread that the
 * OS holds back (a shared machine) does not hold the others up */
static void slice_fn(void *ctx, size_t begin, size_t end, int tid)
{
    tok_run *r = ctx;
    (void)begin, (void)end;
    for (;;) {
        size_t k = atomic_fetch_add(&r->next_slice, 1);
        if (k >= r->nslices)
            break;
        slice *sl = &r->slices[k];
        sl->ids.n = 0;
        sl->err = 0;
        for (size_t i = sl->begin; i < sl->end && !sl->err; i++)
            sl->err = encode_doc(r, r->streams[tid], &r->docs[i], &sl->ids);
        if (sl->err)
            snprintf(sl->msg, sizeof sl->msg, "%s", spes_errmsg());
    }
}

/* flush_batch encodes the gathered documents in parallel and writes them in order */
static int flush_batch(tok_run *r)
{
    size_t nsl = 0, i = 0, per = r->batch_len / SLICES + 1;
    while (i < r->ndocs && nsl < SLICES) {
        size_t b = i, bytes = 0;
        while (i < r->ndocs && (bytes < per || nsl == SLICES - 1))
            bytes += r->docs[i++].len;
        slice *sl = &r->slices[nsl++];
        sl->begin = b;
        sl->end = i;
    }
    r->nslices = nsl;
    atomic_store(&r->next_slice, 0);
    spes_parallel_for(r->pool, (size_t)r->nthreads, slice_fn, r);
    int rc = 0;
    for (size_t k = 0; k < nsl && !rc; k++) {
        slice *sl = &r->slices[k];
        if (sl->err)
            rc = spes_errf(sl->err, "%s", sl->msg);
        else
            rc = spes_tokwriter_write(&r->w, sl->ids.v, sl->ids.n);
    }
    r->ndoc_total += r->ndocs;
    r->batch_len = r->ndocs = 0;
    report(r, 0);
    return rc;
}

static int add_doc(tok_run *r, const char *p, size_t len, const char *path, unsigned long line)
{
    int rc;
    if (r->batch_len + len > r->batch_bytes && r->ndocs && (rc = flush_batch(r)))
        return rc;
    if (r->batch_len + len > r->batch_cap) {
        size_t cap = r->batch_cap ? r->batch_cap : r->batch_bytes;
        while (cap < r->batch_len + len)
            cap *= 2;
        char *b = realloc(r->batch, cap);
        if (!b)
            return spes_errf(SPES_ENOMEM, "out of memory");
        r->batch = b, r->batch_cap = cap;
    }
    if (r->ndocs == r->docs_cap) {
        size_t cap = r->docs_cap ? r->docs_cap * 2 : 4096;
        doc *d = realloc(r->docs, cap * sizeof(doc));
        if (!d)
            return spes_errf(SPES_ENOMEM, "out of memory");
        r->docs = d, r->docs_cap = cap;
    }
    memcpy(r->batch + r->batch_len, p, len);
    r->docs[r->ndocs++] = (doc){r->batch_len, len, path, line};
    r->batch_len += len;
    r->in_bytes += len;
    return 0;
}

/* stream_doc encodes one plain-text document of any size from fp, block by block */
static int stream_doc(tok_run *r, FILE *fp, const char *path, char *head, size_t nhead)
{
    spes_ids ids = {0};
    char *buf = malloc(r->block_bytes);
    int rc = buf ? 0 : spes_errf(SPES_ENOMEM, "out of memory"), eof = 0;
    spes_tokstream_reset(r->big);
    if (!rc && (rc = spes_tokstream_feed(r->big, head, nhead, 0, &ids)) == 0)
        r->in_bytes += nhead;
    while (!rc && !eof) {
        size_t n = fread(buf, 1, r->block_bytes, fp);
        if (n < r->block_bytes && ferror(fp)) {
            rc = spes_errf_errno(SPES_EIO, "%s: read error", path);
            break;
        }
        eof = n < r->block_bytes;
        rc = spes_tokstream_feed(r->big, buf, n, eof, &ids);
        if (rc == SPES_EFORMAT) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", spes_errmsg());
            rc = spes_errf(rc, "%s: %s", path, msg);
        }
        if (!rc && eof)
            rc = push_eos(r, &ids);
        if (!rc)
            rc = spes_tokwriter_write(&r->w, ids.v, ids.n);
        ids.n = 0;
        r->in_bytes += n;
        report(r, 0);
    }
    r->ndoc_total++;
    spes_ids_fini(&ids);
    free(buf);
    return rc;
}

static int do_plain(tok_run *r, const char *path)
{
    int is_stdin = strcmp(path, "-") == 0, rc = 0;
    FILE *fp = is_stdin ? stdin : fopen(path, "rb");
    if (!fp)
        return spes_errf_errno(SPES_EIO, "%s: cannot open", path);
    char *head = malloc(r->batch_bytes + 1);
    if (!head) {
        if (!is_stdin)
            fclose(fp);
        return spes_errf(SPES_ENOMEM, "out of memory");
    }
    size_t n = fread(head, 1, r->batch_bytes + 1, fp);
    if (n <= r->batch_bytes && ferror(fp))
        rc = spes_errf_errno(SPES_EIO, "%s: read error", path);
    else if (n <= r->batch_bytes)
        rc = add_doc(r, head, n, path, 0);
    else if (!(rc = r->ndocs ? flush_batch(r) : 0))
        rc = stream_doc(r, fp, path, head, n);
    free(head);
    if (!is_stdin)
        fclose(fp);
    return rc;
}

static int is_blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
            return 0;
    return 1;
}

static int do_jsonl(tok_run *r, const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return spes_errf_errno(SPES_EIO, "%s: cannot open", path);
    size_t cap = r->block_bytes, have = 0;
    char *buf = malloc(cap);
    unsigned long line = 0;
    int rc = buf ? 0 : spes_errf(SPES_ENOMEM, "out of memory"), eof = 0;
    while (!rc && !eof) {
        if (have == cap) { /* one line longer than the buffer: grow */
            char *b = realloc(buf, cap * 2);
            if (!b) {
                rc = spes_errf(SPES_ENOMEM, "%s:%lu: line too long for memory", path, line + 1);
                break;
            }
            buf = b, cap *= 2;
        }
        size_t n = fread(buf + have, 1, cap - have, fp);
        if (n < cap - have && ferror(fp))
            rc = spes_errf_errno(SPES_EIO, "%s: read error", path);
        eof = n < cap - have;
        have += n;
        size_t pos = 0;
        for (;;) {
            char *nl = memchr(buf + pos, '\n', have - pos);
            if (!nl && !(eof && pos < have))
                break;
            size_t end = nl ? (size_t)(nl - buf) : have;
            line++;
            if (!rc && !is_blank(buf + pos, end - pos))
                rc = add_doc(r, buf + pos, end - pos, path, line);
            r->in_bytes += nl ? 1 : 0;
            pos = nl ? end + 1 : have;
        }
        memmove(buf, buf + pos, have - pos);
        have -= pos;
    }
    free(buf);
    fclose(fp);
    return rc;
}

static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcmp(s + n - k, suf) == 0;
}

static int setup(tok_run *r, const spes_corpus_opts *o)
{
    int rc;
    spes_tok_dtype dtype = o->dtype;
    r->tok = o->tok;
    r->eos = o->eos;
    r->has_eos = o->has_eos;
    r->field = o->text_field ? o->text_field : "text";
    r->batch_bytes = o->batch_bytes ? o->batch_bytes : SPES_CORPUS_BATCH_BYTES;
    r->block_bytes = r->batch_bytes / 2;
    r->progress = o->progress;
    r->progress_ctx = o->progress_ctx;
    r->nthreads = o->threads ? o->threads : 1;
    if (r->nthreads < 1 || r->nthreads > MAX_THREADS)
        return spes_errf(SPES_EINVAL, "threads %d is outside [1, %d]", r->nthreads, MAX_THREADS);
    if (r->batch_bytes < 2)
        return spes_errf(SPES_EINVAL, "batch_bytes %zu is below 2", r->batch_bytes);
    if (r->has_eos && r->eos >= spes_tokenizer_vocab_size(o->tok))
        return spes_errf(SPES_ERANGE, "eos %u is outside the vocabulary (size %u)", r->eos,
                         spes_tokenizer_vocab_size(o->tok));
    if (dtype == SPES_TOK_DTYPE_NONE)
        dtype = spes_tokenizer_vocab_size(o->tok) <= 65536 ? SPES_TOK_U16 : SPES_TOK_U32;
    if ((rc = spes_pool_alloc(&r->pool, r->nthreads)))
        return rc;
    for (int i = 0; i < r->nthreads; i++)
        if ((rc = spes_tokstream_alloc(&r->streams[i], o->tok, NULL)))
            return rc;
    if ((rc = spes_tokstream_alloc(&r->big, o->tok, r->pool)))
        return rc;
    if ((rc = spes_tokwriter_open(&r->w, o->out, o->format, dtype)))
        return rc;
    r->writing = 1;
    return 0;
}

static void teardown(tok_run *r)
{
    for (int i = 0; i < MAX_THREADS; i++)
        spes_tokstream_free(r->streams[i]);
    spes_tokstream_free(r->big);
    spes_pool_free(r->pool);
    for (int k = 0; k < SLICES; k++)
        spes_ids_fini(&r->slices[k].ids);
    free(r->batch);
    free(r->docs);
}

int spes_tokenize_corpus(const spes_corpus_opts *o, const char *const *inputs, size_t ninputs,
                         spes_corpus_stats *st)
{
    tok_run *r = calloc(1, sizeof *r);
    if (!r)
        return spes_errf(SPES_ENOMEM, "out of memory");
    r->t0 = r->last_report = spes_mono_s();
    int rc = setup(r, o);
    for (size_t i = 0; !rc && i < ninputs; i++)
        rc = has_suffix(inputs[i], ".jsonl") ? do_jsonl(r, inputs[i]) : do_plain(r, inputs[i]);
    if (!rc && r->ndocs)
        rc = flush_batch(r);
    if (!rc) {
        report(r, 1);
        if (st)
            stats(r, st);
        rc = spes_tokwriter_close(&r->w);
    } else if (r->writing) {
        spes_tokwriter_abort(&r->w);
    }
    teardown(r);
    free(r);
    return rc;
}
