/* cmd_generate.c: `spesd generate --checkpoint DIR --prompt TEXT
 * (--tokenizer tokenizer.json | --bytes) [--max-new N] [--temperature X]
 * [--top-p P] [--seed S]`: continues a prompt with the model, greedily
 * (temperature 0, the default) or by temperature/top-p sampling, and prints
 * the prompt and its continuation. Without a KV cache each new token runs the
 * whole window again: fine for looking at what a model says, not a server. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "cli/opts.h"
#include "tools/commands.h"
#include "tools/model_load.h"
#include "tokenizer/tokenizer.h"

typedef struct gen_args {
    const char *ckpt, *prompt, *tokenizer;
    int bytes;
    long max_new, seed, threads;
    double temperature, top_p;
} gen_args;

static int parse(int argc, char **argv, gen_args *a, int *help)
{
    const spes_opt opts[] = {
        {"checkpoint", 0, SPES_OPT_STR, &a->ckpt, 0, 0, "DIR", "a spesd checkpoint or a Hugging Face export"},
        {"prompt", 0, SPES_OPT_STR, &a->prompt, 0, 0, "TEXT", "the text to continue"},
        {"tokenizer", 0, SPES_OPT_STR, &a->tokenizer, 0, 0, "FILE", "a Hugging Face tokenizer.json"},
        {"bytes", 0, SPES_OPT_FLAG, &a->bytes, 0, 0, NULL, "the byte vocabulary instead of a tokenizer"},
        {"max-new", 0, SPES_OPT_LONG, &a->max_new, 1, 1 << 20, "N", "tokens to generate (default 64)"},
        {"temperature", 0, SPES_OPT_DOUBLE, &a->temperature, 0, 100, "X", "0 (default) is greedy"},
        {"top-p", 0, SPES_OPT_DOUBLE, &a->top_p, 0, 1, "P", "sample from the top-p nucleus (default 1)"},
        {"seed", 0, SPES_OPT_LONG, &a->seed, 0, 1L << 62, "S", "sampling seed (default 1)"},
        {"threads", 0, SPES_OPT_LONG, &a->threads, 1, 256, "N", "worker threads (default 2)"},
        {NULL, 0, 0, NULL, 0, 0, NULL, NULL},
    };
    const spes_opt_cmd cmd = {"spesd generate",
                              "--checkpoint DIR --prompt TEXT (--tokenizer FILE | --bytes) [options]",
                              opts,
                              0,
                              0,
                              NULL};
    *a = (gen_args){.max_new = 64, .seed = 1, .threads = 2, .temperature = 0, .top_p = 1.0};
    int rc = spes_opts_parse(&cmd, argc, argv, NULL, NULL);
    if (rc == SPES_OPTS_HELP) {
        spes_opts_usage(&cmd, stdout);
        *help = 1;
        return 0;
    }
    if (rc)
        return rc;
    if (a->top_p <= 0)
        return spes_errf(SPES_EINVAL, "--top-p: expected a number in (0, 1], got %g", a->top_p);
    if (!a->ckpt || !a->prompt || (!a->bytes == !a->tokenizer))
        return spes_errf(
            SPES_EINVAL,
            "--checkpoint DIR, --prompt TEXT and one of --tokenizer FILE or --bytes are required");
    return 0;
}

typedef struct cand {
    float p;
    int id;
} cand;

static int by_prob(const void *x, const void *y)
{
    const cand *a = x, *b = y;
    return a->p < b->p ? 1 : a->p > b->p ? -1 : a->id - b->id;
}

/* pick chooses the next id from logits (V): argmax, or temperature + nucleus sampling. */
static int pick(const float *logits, int V, const gen_args *a, spes_rng *rng, cand *buf)
{
    int best = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > logits[best])
            best = v;
    if (a->temperature <= 0)
        return best;
    double sum = 0;
    for (int v = 0; v < V; v++) {
        buf[v].p = (float)exp((logits[v] - logits[best]) / a->temperature);
        buf[v].id = v;
        sum += buf[v].p;
    }
    qsort(buf, (size_t)V, sizeof *buf, by_prob);
    double keep = 0;
    int n = 0;
    while (n < V && keep < a->top_p * sum)
        keep += buf[n++].p;
    double u = spes_rng_uniform(rng) * keep, acc = 0;
    for (int i = 0; i < n; i++)
        if ((acc += buf[i].p) >= u)
            return buf[i].id;
    return buf[n - 1].id;
}

static int run(const gen_args *a)
{
    spes_tokenizer *tok = NULL;
    spes_tokstream *ts = NULL;
    spes_model *m = NULL;
    spes_pool *pool = NULL;
    spes_ids ids = {0};
    cand *buf = NULL;
    char *text = NULL;
    size_t tlen = 0, tcap = 0;
    int rc = a->bytes ? spes_tokenizer_alloc_bytes(&tok) : spes_tokenizer_load(&tok, a->tokenizer);
    if (!rc)
        rc = spes_tokstream_alloc(&ts, tok, NULL);
    if (!rc)
        rc = spes_tokenizer_encode(ts, a->prompt, strlen(a->prompt), &ids);
    if (!rc)
        rc = spes_pool_alloc(&pool, (int)a->threads);
    if (rc)
        goto out;
    int W = 256; /* window: the model's positions, at most */
    if ((rc = spes_load_model(&m, a->ckpt, 1, W, pool)) != 0)
        goto out;
    if (W > m->cfg.max_position_embeddings)
        W = m->cfg.max_position_embeddings;
    int V = m->cfg.vocab_size;
    if (spes_tokenizer_vocab_size(tok) > (uint32_t)V) {
        rc = spes_errf(SPES_EINVAL, "the tokenizer has %u ids, the model only %d",
                       spes_tokenizer_vocab_size(tok), V);
        goto out;
    }
    if (ids.n == 0) {
        rc = spes_errf(SPES_EINVAL, "the prompt encodes to no tokens");
        goto out;
    }
    buf = malloc(sizeof *buf * (size_t)V);
    spes_rng rng;
    spes_rng_seed(&rng, (uint64_t)a->seed);
    spes_loss_opts lo = {0, 0, 1};
    size_t prompt_n = ids.n;
    for (long k = 0; buf && k < a->max_new; k++) {
        int T = ids.n < (size_t)W ? (int)ids.n : W;
        int32_t ctx[256];
        for (int t = 0; t < T; t++)
            ctx[t] = (int32_t)ids.v[ids.n - (size_t)T + (size_t)t];
        if ((rc = spes_model_forward(m, ctx, NULL, 1, T, &lo)) != 0)
            goto out;
        int next = pick(spes_model_logits(m) + (size_t)(T - 1) * V, V, a, &rng, buf);
        if ((rc = spes_ids_push(&ids, (uint32_t)next)) != 0)
            goto out;
    }
    if (!buf) {
        rc = SPES_ENOMEM;
        goto out;
    }
    if ((rc = spes_tokenizer_decode(tok, ids.v, ids.n, &text, &tlen, &tcap)) == 0) {
        fwrite(text, 1, tlen, stdout);
        printf("\n");
        fprintf(stderr, "spesd generate: %zu prompt tokens, %zu generated\n", prompt_n, ids.n - prompt_n);
    }
out:
    free(text);
    free(buf);
    spes_ids_fini(&ids);
    spes_model_free(m);
    spes_pool_free(pool);
    spes_tokstream_free(ts);
    spes_tokenizer_free(tok);
    return rc;
}

int cmd_generate(int argc, char **argv)
{
    gen_args a;
    int help = 0;
    int rc = parse(argc, argv, &a, &help);
    if (help)
        return 0;
    if (!rc)
        rc = run(&a);
    if (rc) {
        fprintf(stderr, "spesd generate: %s\n", spes_errmsg());
        return 1;
    }
    return 0;
}
