/* cmd_eval.c: `spesd eval --checkpoint DIR --data PATH --batch B --seq T
 * [--batches K] [--threads N]`: prints `loss X`, the mean cross-entropy over
 * K consecutive non-overlapping batches from the start of the data (default:
 * every whole batch the data holds). */
#include <cblas.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "daemon/cli.h"
#include "daemon/commands.h"
#include "daemon/model_load.h"
#include "data/dataset.h"

typedef struct eval_args {
    const char *ckpt, *data, *dtype;
    long B, T, K, threads;
} eval_args;

static int parse(int argc, char **argv, eval_args *a, int *help)
{
    static const struct option opts[] = {
        {"checkpoint", required_argument, 0, 'c'}, {"data", required_argument, 0, 'd'},
        {"batch", required_argument, 0, 'b'},      {"seq", required_argument, 0, 's'},
        {"batches", required_argument, 0, 'k'},    {"threads", required_argument, 0, 't'},
        {"dtype", required_argument, 0, 'D'},      {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    *a = (eval_args){.K = -1, .threads = 2, .dtype = "uint16"};
    int c, rc;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c': a->ckpt = optarg; break;
        case 'd': a->data = optarg; break;
        case 'D': a->dtype = optarg; break;
        case 'b': if ((rc = spes_cli_long("--batch", optarg, 1, 1 << 16, &a->B))) return rc; break;
        case 's': if ((rc = spes_cli_long("--seq", optarg, 1, 1 << 20, &a->T))) return rc; break;
        case 'k': if ((rc = spes_cli_long("--batches", optarg, 1, 1L << 40, &a->K))) return rc; break;
        case 't': if ((rc = spes_cli_long("--threads", optarg, 1, 256, &a->threads))) return rc; break;
        case 'h': *help = 1; return 0;
        default: return spes_cli_bad_option(argv, optind);
        }
    }
    if (optind < argc)
        return spes_errf(SPES_EINVAL, "unexpected argument \"%s\"", argv[optind]);
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
        rc = spes_errf(SPES_ERANGE, "%s holds %llu whole batches of %ld x %ld, fewer than --batches %ld", a->data,
                       (unsigned long long)avail, a->B, a->T, a->K);
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
    if (help) {
        printf("usage: spesd eval --checkpoint DIR --data PATH --batch B --seq T [--batches K]\n"
               "                  [--threads N] [--dtype uint16|uint32]\n"
               "  DIR is a spesd checkpoint or a Hugging Face export; --dtype is for raw token files\n");
        return 0;
    }
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
