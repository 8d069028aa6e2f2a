/* cmd_tokenize.c: `spesd tokenize`, text files to a token file (DESIGN.md contract).
 * A plain-text input is one document, a .jsonl input one document per line (a string
 * field, default "text"). Small documents are gathered into batches encoded in parallel,
 * one tokenizer stream per thread, output kept in input order; a document too large to
 * batch is streamed in blocks (ids equal whole-document encoding) with BPE on the pool.
 * Memory stays bounded by the batch size whatever the input size (a single JSON line
 * must fit in memory). Never writes a partial output file: the token writer commits
 * atomically at the end or removes everything on error. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/error.h"
#include "core/parallel.h"
#include "daemon/cli.h"
#include "daemon/commands.h"
#include "data/tokwriter.h"
#include "tokenizer/tokenizer.h"

#define BATCH_BYTES (8u << 20) /* default input bytes gathered before a parallel encode */
#define SLICES 64              /* work items per batch (balance across threads) */
#define MAX_THREADS 16

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
    int progress;
    size_t batch_bytes; /* documents larger than this are streamed */
    size_t block_bytes; /* read size when streaming one large document */
} tok_run;

static void report(tok_run *r, int last)
{
    double t = spes_mono_s(), dt = t - r->t0;
    if (!last && (t - r->last_report < 2.0 || !r->progress))
        return;
    r->last_report = t;
    fprintf(stderr, "spesd tokenize: %.1f MB in, %llu tokens, %llu documents, %.2f MB/s%s\n",
            r->in_bytes / 1e6, (unsigned long long)spes_tokwriter_count(&r->w),
            (unsigned long long)r->ndoc_total, dt > 0 ? r->in_bytes / 1e6 / dt : 0.0, last ? " (done)" : "");
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

static void tokenize_usage(FILE *fp)
{
    fprintf(fp, "usage: spesd tokenize (--tokenizer tokenizer.json | --bytes) [--eos TOKEN]\n"
                "                      [--dtype uint16|uint32] [--format raw|npy|llmc]\n"
                "                      [--text-field F] [--threads N] [--quiet] --out FILE INPUT...\n"
                "  INPUT         a text file (one document), a .jsonl file (one document per line,\n"
                "                string field F, default \"text\"), or - for standard input\n"
                "  --eos TOKEN   append this token after every document: an id, or a token's text\n"
                "  --dtype       default: uint16 if the vocabulary fits, else uint32\n"
                "  --format      default: npy for a .npy name, else raw\n"
                "  --threads N   worker threads (default: the number of CPUs)\n"
                "  --batch-bytes N  input gathered per parallel batch (default 8 MiB); a larger\n"
                "                document is streamed in blocks of N/2 bytes\n");
}

typedef struct tok_args {
    const char *tokenizer, *eos, *dtype, *format, *field, *out;
    int bytes, quiet;
    long threads, batch_bytes;
} tok_args;

static int parse_args(int argc, char **argv, tok_args *a, int *help)
{
    static const struct option opts[] = {
        {"tokenizer", required_argument, 0, 't'},
        {"bytes", no_argument, 0, 'b'},
        {"eos", required_argument, 0, 'e'},
        {"dtype", required_argument, 0, 'd'},
        {"format", required_argument, 0, 'f'},
        {"text-field", required_argument, 0, 'F'},
        {"out", required_argument, 0, 'o'},
        {"threads", required_argument, 0, 'j'},
        {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},
        {"batch-bytes", required_argument, 0, 'B'},
        {0, 0, 0, 0},
    };
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    *a = (tok_args){.field = "text",
                    .batch_bytes = BATCH_BYTES,
                    .threads = ncpu < 1             ? 1
                               : ncpu > MAX_THREADS ? MAX_THREADS
                                                    : ncpu};
    int c, rc;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 't': a->tokenizer = optarg; break;
        case 'b': a->bytes = 1; break;
        case 'e': a->eos = optarg; break;
        case 'd': a->dtype = optarg; break;
        case 'f': a->format = optarg; break;
        case 'F': a->field = optarg; break;
        case 'o': a->out = optarg; break;
        case 'q': a->quiet = 1; break;
        case 'j':
            if ((rc = spes_cli_long("--threads", optarg, 1, MAX_THREADS, &a->threads)))
                return rc;
            break;
        case 'B':
            if ((rc = spes_cli_long("--batch-bytes", optarg, 2, 1L << 32, &a->batch_bytes)))
                return rc;
            break;
        case 'h': *help = 1; return 0;
        default: return spes_cli_bad_option(argv, optind);
        }
    }
    if (!!a->tokenizer == a->bytes)
        return spes_errf(SPES_EINVAL, "give exactly one of --tokenizer FILE and --bytes");
    if (!a->out)
        return spes_errf(SPES_EINVAL, "--out FILE is required");
    if (optind >= argc)
        return spes_errf(SPES_EINVAL, "no INPUT files given");
    return 0;
}

/* resolve_eos maps --eos (an id or a token's text) to an id inside the vocabulary */
static int resolve_eos(const spes_tokenizer *tok, const char *s, uint32_t *id)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (*s >= '0' && *s <= '9' && !*end && !errno) {
        if (v >= spes_tokenizer_vocab_size(tok))
            return spes_errf(SPES_ERANGE, "--eos %lu is outside the vocabulary (size %u)", v,
                             spes_tokenizer_vocab_size(tok));
        *id = (uint32_t)v;
        return 0;
    }
    if (spes_tokenizer_token_id(tok, s, id))
        return spes_errf(SPES_ENOENT,
                         "--eos \"%s\" is neither an id nor a token of the "
                         "tokenizer",
                         s);
    return 0;
}

static int setup(tok_run *r, const tok_args *a, spes_tokenizer **tok)
{
    spes_tok_dtype dtype = SPES_TOK_DTYPE_NONE;
    spes_tok_format format = SPES_TOK_AUTO;
    int rc;
    if ((a->dtype && (rc = spes_tok_dtype_parse(a->dtype, &dtype))) ||
        (a->format && (rc = spes_tok_format_parse(a->format, &format))))
        return rc;
    rc = a->bytes ? spes_tokenizer_alloc_bytes(tok) : spes_tokenizer_load(tok, a->tokenizer);
    if (rc)
        return rc;
    r->tok = *tok;
    if (a->eos && (rc = resolve_eos(*tok, a->eos, &r->eos)))
        return rc;
    r->has_eos = a->eos != NULL;
    if (dtype == SPES_TOK_DTYPE_NONE)
        dtype = spes_tokenizer_vocab_size(*tok) <= 65536 ? SPES_TOK_U16 : SPES_TOK_U32;
    r->nthreads = (int)a->threads;
    if ((rc = spes_pool_alloc(&r->pool, r->nthreads)))
        return rc;
    for (int i = 0; i < r->nthreads; i++)
        if ((rc = spes_tokstream_alloc(&r->streams[i], *tok, NULL)))
            return rc;
    if ((rc = spes_tokstream_alloc(&r->big, *tok, r->pool)))
        return rc;
    return spes_tokwriter_open(&r->w, a->out, format, dtype);
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

int cmd_tokenize(int argc, char **argv)
{
    tok_args a;
    tok_run r = {0};
    spes_tokenizer *tok = NULL;
    int help = 0, rc = parse_args(argc, argv, &a, &help);
    if (help) {
        tokenize_usage(stdout);
        return 0;
    }
    if (!rc)
        rc = setup(&r, &a, &tok);
    r.field = a.field;
    r.batch_bytes = (size_t)a.batch_bytes;
    r.block_bytes = (size_t)a.batch_bytes / 2;
    r.progress = !a.quiet;
    r.t0 = r.last_report = spes_mono_s();
    for (int i = optind; !rc && i < argc; i++)
        rc = has_suffix(argv[i], ".jsonl") ? do_jsonl(&r, argv[i]) : do_plain(&r, argv[i]);
    if (!rc && r.ndocs)
        rc = flush_batch(&r);
    if (!rc) {
        if (!a.quiet)
            report(&r, 1);
        rc = spes_tokwriter_close(&r.w);
    } else {
        spes_tokwriter_abort(&r.w);
    }
    teardown(&r);
    spes_tokenizer_free(tok);
    if (rc) {
        fprintf(stderr, "spesd tokenize: %s\n", spes_errmsg());
        return 1;
    }
    return 0;
}
