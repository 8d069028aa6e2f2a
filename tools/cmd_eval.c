/* cmd_eval.c: `spesd eval --checkpoint DIR --data PATH --batch B --seq T
 * [--batches K] [--threads N]`: prints `loss X`, the mean cross-entropy over
 * K consecutive non-overlapping batches from the start of the data (default:
 * every whole batch the data holds). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "cli/opts.h"
#include "tools/commands.h"
#include "tools/model_load.h"
#include "data/dataset.h"

typedef struct eval_args {
    const char *ckpt, *data, *dtype;
    long B, T, K, threads;
} eval_args;

static int parse(int argc, char **argv, eval_args *a, int *help)
{
    const spes_opt opts[] = {
        {"checkpoint", 0, SPES_OPT_STR, &a->ckpt, 0, 0, "DIR", "a spesd checkpoint or a Hugging Face export"},
        {"data", 0, SPES_OPT_STR, &a->data, 0, 0, "PATH", "the token file"},
        {"batch", 0, SPES_OPT_LONG, &a->B, 1, 1 << 16, "B", "sequences per batch"},
        {"seq", 0, SPES_OPT_LONG, &a->T, 1, 1 << 20, "T", "tokens per sequence"},
        {"batches", 0, SPES_OPT_LONG, &a->K, 1, 1L << 40, "K",
         "batches to average (default: every whole one)"},
        {"threads", 0, SPES_OPT_LONG, &a->threads, 1, 256, "N", "worker threads (default 2)"},
        {"dtype", 0, SPES_OPT_STR, &a->dtype, 0, 0, "uint16|uint32", "token width of a raw token file"},
        {NULL, 0, 0, NULL, 0, 0, NULL, NULL},
    };
    const spes_opt_cmd cmd = {"spesd eval",
                              "--checkpoint DIR --data PATH --batch B --seq T [options]",
                              opts,
                              0,
                              0,
                              "prints `loss X`, the mean cross-entropy over the first K batches\n"};
    *a = (eval_args){.K = -1, .threads = 2, .dtype = "uint16"};
    int rc = spes_opts_parse(&cmd, argc, argv, NULL, NULL);
    if (rc == SPES_OPTS_HELP) {
        spes_opts_usage(&cmd, stdout);
        *help = 1;
        return 0;
    }
    if (rc)
        return rc;
    if (!a->ckpt || !a->data || !a->B || !a->T)
        return spes_errf(SPES_EINVAL, "--checkpoint DIR, --data PATH, --batch B and --seq T are required");
    return 0;
}

static int run(const eval_args *a, double *loss)
{
    spes_pool *pool = NULL;
    spes_model *m = NULL;
    spes_dataset ds = {0};
    int32_t *in = NULL, *tg = NULL;
    spes_tok_dtype dt;
    int rc = spes_tok_dtype_parse(a->dtype, &dt);
    if (rc)
        return rc;
    openblas_set_num_threads((int)a->threads);
    if ((rc = spes_pool_alloc(&pool, (int)a->threads)) != 0)
        goto out;
    if ((rc = spes_load_model(&m, a->ckpt, (int)a->B, (int)a->T, pool)) != 0)
        goto out;
    if ((int)a->T > m->cfg.max_position_embeddings) {
        rc = spes_errf(SPES_EINVAL, "--seq %ld exceeds the model's max_position_embeddings %d", a->T,
                       m->cfg.max_position_embeddings);
        goto out;
    }
    const char *paths[1] = {a->data};
    if ((rc = spes_dataset_open(&ds, paths, 1, dt, SPES_TOK_AUTO, (uint32_t)m->cfg.vocab_size, pool)) != 0)
        goto out;
    if ((rc = spes_dataset_check_batch(&ds, (int)a->B, (int)a->T)) != 0)
        goto out;
    uint64_t per = (uint64_t)a->B * (uint64_t)a->T;
    uint64_t avail = (spes_dataset_total(&ds) - 1) / per;
    uint64_t K = a->K > 0 ? (uint64_t)a->K : avail;
    if (K > avail) {
        rc = spes_errf(SPES_ERANGE, "%s holds %llu whole batches of %ld x %ld, fewer than --batches %ld",
                       a->data, (unsigned long long)avail, a->B, a->T, a->K);
        goto out;
    }
    in = malloc(per * sizeof *in);
    tg = malloc(per * sizeof *tg);
    if (!in || !tg) {
        rc = SPES_ENOMEM;
        goto out;
    }
    spes_loss_opts lo = {0, 0, 1.0};
    double sum = 0;
    for (uint64_t k = 0; k < K; k++) {
        if ((rc = spes_dataset_batch_at(&ds, k, (int)a->B, (int)a->T, in, tg)) != 0 ||
            (rc = spes_model_forward(m, in, tg, (int)a->B, (int)a->T, &lo)) != 0)
            goto out;
        sum += m->ce_loss;
    }
    *loss = sum / (double)K;
out:
    free(in);
    free(tg);
    spes_dataset_close(&ds);
    spes_model_free(m);
    spes_pool_free(pool);
    return rc;
}

int cmd_eval(int argc, char **argv)
{
    eval_args a;
    int help = 0;
    int rc = parse(argc, argv, &a, &help);
    if (help)
        return 0;
    double loss = 0;
    if (!rc)
        rc = run(&a, &loss);
    if (rc) {
        fprintf(stderr, "spesd eval: %s\n", spes_errmsg());
        return 1;
    }
    printf("loss %.6f\n", loss);
    return 0;
}
