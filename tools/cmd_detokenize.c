/* cmd_detokenize.c: `spesd detokenize`, a token file back to text with a tokenizer.json
 * or the byte vocabulary. Writes the decoded bytes exactly (no lossy UTF-8 repair) to
 * standard output or, with --out, durably to a file. Never trusts the token file: its
 * header is validated by the data module and every id is checked against the vocabulary. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/fileio.h"
#include "cli/opts.h"
#include "tools/commands.h"
#include "data/tokfile.h"
#include "tokenizer/tokenizer.h"

#define CHUNK 65536

typedef struct detok_args {
    const char *tokenizer, *dtype, *format, *out, *in;
    int bytes;
} detok_args;

static int parse_args(int argc, char **argv, detok_args *a, int *help)
{
    const spes_opt opts[] = {
        {"tokenizer", 0, SPES_OPT_STR, &a->tokenizer, 0, 0, "FILE", "a Hugging Face tokenizer.json"},
        {"bytes", 0, SPES_OPT_FLAG, &a->bytes, 0, 0, NULL, "the byte vocabulary instead of a tokenizer"},
        {"format", 0, SPES_OPT_STR, &a->format, 0, 0, "auto|raw|npy|llmc",
         "the token file's format (default auto)"},
        {"dtype", 0, SPES_OPT_STR, &a->dtype, 0, 0, "uint16|uint32", "token width, for raw token files only"},
        {"out", 0, SPES_OPT_STR, &a->out, 0, 0, "FILE", "write the text here (default standard output)"},
        {NULL, 0, 0, NULL, 0, 0, NULL, NULL},
    };
    const spes_opt_cmd cmd = {
        "spesd detokenize", "(--tokenizer FILE | --bytes) [options] TOKENS", opts, 1, 1, NULL};
    *a = (detok_args){0};
    int rc = spes_opts_parse(&cmd, argc, argv, &a->in, NULL);
    if (rc == SPES_OPTS_HELP) {
        spes_opts_usage(&cmd, stdout);
        *help = 1;
        return 0;
    }
    if (rc)
        return rc;
    if (!!a->tokenizer == a->bytes)
        return spes_errf(SPES_EINVAL, "give exactly one of --tokenizer FILE and --bytes");
    return 0;
}

/* decode_all decodes f chunk by chunk and hands each chunk's bytes to the sink */
static int decode_all(const spes_tokenizer *tok, const spes_tokfile *f, FILE *fp, spes_atomic_file *af)
{
    uint32_t *ids = malloc(CHUNK * sizeof(uint32_t));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = ids ? 0 : spes_errf(SPES_ENOMEM, "out of memory");
    for (uint64_t i = 0; !rc && i < f->hdr.ntokens; i += CHUNK) {
        size_t n = f->hdr.ntokens - i < CHUNK ? (size_t)(f->hdr.ntokens - i) : CHUNK;
        if ((rc = spes_tokfile_read_ids(f, i, n, ids)) != 0)
            break;
        len = 0;
        rc = spes_tokenizer_decode(tok, ids, n, &buf, &len, &cap);
        if (rc) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", spes_errmsg());
            rc = spes_errf(rc, "%s: %s (chunk at token %llu)", f->path, msg, (unsigned long long)i);
        } else if (af) {
            rc = spes_atomic_write(af, buf, len);
        } else if (len && fwrite(buf, 1, len, fp) != len) {
            rc = spes_errf_errno(SPES_EIO, "standard output: write failed");
        }
    }
    free(ids);
    free(buf);
    return rc;
}

int cmd_detokenize(int argc, char **argv)
{
    detok_args a;
    spes_tokenizer *tok = NULL;
    spes_tokfile f = {0};
    spes_atomic_file af = {0};
    spes_tok_dtype dtype = SPES_TOK_DTYPE_NONE;
    spes_tok_format format = SPES_TOK_AUTO;
    int help = 0, opened = 0, rc = parse_args(argc, argv, &a, &help);
    if (help)
        return 0;
    if (!rc && a.dtype)
        rc = spes_tok_dtype_parse(a.dtype, &dtype);
    if (!rc && a.format)
        rc = spes_tok_format_parse(a.format, &format);
    if (!rc)
        rc = a.bytes ? spes_tokenizer_alloc_bytes(&tok) : spes_tokenizer_load(&tok, a.tokenizer);
    if (!rc)
        rc = spes_tokfile_open(&f, a.in, format, dtype);
    if (!rc && a.out && !(rc = spes_atomic_open(&af, a.out)))
        opened = 1;
    if (!rc)
        rc = decode_all(tok, &f, stdout, opened ? &af : NULL);
    if (!rc && opened) {
        opened = 0; /* commit releases the file whether or not it succeeds */
        rc = spes_atomic_commit(&af);
    }
    if (!rc && !a.out && fflush(stdout) != 0)
        rc = spes_errf_errno(SPES_EIO, "standard output: write failed");
    if (opened)
        spes_atomic_abort(&af);
    spes_tokfile_close(&f);
    spes_tokenizer_free(tok);
    if (rc) {
        fprintf(stderr, "spesd detokenize: %s\n", spes_errmsg());
        return 1;
    }
    return 0;
}
