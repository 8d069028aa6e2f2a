/* cmd_tokenize.c: `spesd tokenize`, text files to a token file (docs/design.md, the
 * command-line contract): the options of the corpus pipeline in tokenizer/corpus.h,
 * and a progress line on stderr every few seconds unless --quiet. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cli/opts.h"
#include "core/error.h"
#include "tokenizer/corpus.h"
#include "tools/commands.h"

typedef struct tok_args {
    const char *tokenizer, *eos, *dtype, *format, *field, *out;
    int bytes, quiet;
    long threads, batch_bytes;
} tok_args;

static int parse_args(int argc, char **argv, tok_args *a, const char **inputs, int *ninputs, int *help)
{
    const spes_opt opts[] = {
        {"tokenizer", 0, SPES_OPT_STR, &a->tokenizer, 0, 0, "FILE", "a Hugging Face tokenizer.json"},
        {"bytes", 0, SPES_OPT_FLAG, &a->bytes, 0, 0, NULL, "the byte vocabulary instead of a tokenizer"},
        {"eos", 0, SPES_OPT_STR, &a->eos, 0, 0, "TOKEN",
         "append after every document: an id or a token's text"},
        {"dtype", 0, SPES_OPT_STR, &a->dtype, 0, 0, "uint16|uint32",
         "default: uint16 if the vocabulary fits"},
        {"format", 0, SPES_OPT_STR, &a->format, 0, 0, "raw|npy|llmc",
         "default: npy for a .npy name, else raw"},
        {"text-field", 0, SPES_OPT_STR, &a->field, 0, 0, "F",
         "the jsonl field holding the text (default text)"},
        {"threads", 0, SPES_OPT_LONG, &a->threads, 1, SPES_CORPUS_MAX_THREADS, "N",
         "worker threads (default: the number of CPUs)"},
        {"batch-bytes", 0, SPES_OPT_LONG, &a->batch_bytes, 2, 1L << 32, "N",
         "input per parallel batch (default 8 MiB); larger documents stream in N/2 blocks"},
        {"quiet", 0, SPES_OPT_FLAG, &a->quiet, 0, 0, NULL, "no progress lines"},
        {"out", 0, SPES_OPT_STR, &a->out, 0, 0, "FILE", "the token file to write (required)"},
        {NULL, 0, 0, NULL, 0, 0, NULL, NULL},
    };
    const spes_opt_cmd cmd = {"spesd tokenize",
                              "(--tokenizer FILE | --bytes) [options] --out FILE INPUT...",
                              opts,
                              0,
                              4096,
                              "INPUT is a text file (one document), a .jsonl file (one document per line) or "
                              "- for standard input\n"};
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    *a = (tok_args){.field = "text",
                    .batch_bytes = SPES_CORPUS_BATCH_BYTES,
                    .threads = ncpu < 1                         ? 1
                               : ncpu > SPES_CORPUS_MAX_THREADS ? SPES_CORPUS_MAX_THREADS
                                                                : ncpu};
    int rc = spes_opts_parse(&cmd, argc, argv, inputs, ninputs);
    if (rc == SPES_OPTS_HELP) {
        spes_opts_usage(&cmd, stdout);
        *help = 1;
        return 0;
    }
    if (rc)
        return rc;
    if (!!a->tokenizer == a->bytes)
        return spes_errf(SPES_EINVAL, "give exactly one of --tokenizer FILE and --bytes");
    if (!a->out)
        return spes_errf(SPES_EINVAL, "--out FILE is required");
    if (*ninputs == 0)
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

static void progress(void *ctx, const spes_corpus_stats *st, int done)
{
    (void)ctx;
    fprintf(stderr, "spesd tokenize: %.1f MB in, %llu tokens, %llu documents, %.2f MB/s%s\n",
            st->in_bytes / 1e6, (unsigned long long)st->tokens, (unsigned long long)st->documents,
            st->seconds > 0 ? st->in_bytes / 1e6 / st->seconds : 0.0, done ? " (done)" : "");
}

int cmd_tokenize(int argc, char **argv)
{
    static const char *inputs[4096];
    tok_args a;
    spes_tokenizer *tok = NULL;
    spes_corpus_opts o = {0};
    int help = 0, ninputs = 0, rc = parse_args(argc, argv, &a, inputs, &ninputs, &help);
    if (help)
        return 0;
    if (!rc && a.dtype)
        rc = spes_tok_dtype_parse(a.dtype, &o.dtype);
    if (!rc && a.format)
        rc = spes_tok_format_parse(a.format, &o.format);
    if (!rc)
        rc = a.bytes ? spes_tokenizer_alloc_bytes(&tok) : spes_tokenizer_load(&tok, a.tokenizer);
    if (!rc && a.eos && (rc = resolve_eos(tok, a.eos, &o.eos)) == 0)
        o.has_eos = 1;
    if (!rc) {
        o.tok = tok;
        o.out = a.out;
        o.text_field = a.field;
        o.threads = (int)a.threads;
        o.batch_bytes = (size_t)a.batch_bytes;
        o.progress = a.quiet ? NULL : progress;
        rc = spes_tokenize_corpus(&o, inputs, (size_t)ninputs, NULL);
    }
    spes_tokenizer_free(tok);
    if (rc) {
        fprintf(stderr, "spesd tokenize: %s\n", spes_errmsg());
        return 1;
    }
    return 0;
}
