/* cmd_train.c: `spesd train`, standalone training (DESIGN.md command-line contract).
 * Prints `step N loss X` for every step (N 0-based, X the batch's mean CE
 * before the update) and, every --log-every steps, throughput and learning
 * rate. SIGINT/SIGTERM finish the current step, write the checkpoint, exit 0. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"
#include "daemon/commands.h"
#include "daemon/cli.h"
#include "train/trainer.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* peak_rss_mib reads the process's peak resident set size (VmHWM). */
static double peak_rss_mib(void)
{
    FILE *fp = fopen("/proc/self/status", "r");
    char line[256];
    double kib = -1;
    while (fp && fgets(line, sizeof line, fp))
        if (sscanf(line, "VmHWM: %lf kB", &kib) == 1)
            break;
    if (fp)
        fclose(fp);
    return kib / 1024.0;
}

static void train_usage(FILE *fp)
{
    fprintf(fp,
            "usage: spesd train --config RUN.json [--data PATH] [--steps N] [--threads N]\n"
            "                   [--columns LIST] [--resume DIR] [--save-every N] [--log-every N]\n"
            "                   [--set section.field=value]... --out DIR\n"
            "  --steps N       stop when the step counter reaches N (default train.max_steps);\n"
            "                  the learning-rate schedule always follows train.max_steps\n"
            "  --columns LIST  train only these expert columns, e.g. 0,1 or 0-3 (others frozen)\n"
            "  --resume DIR    continue from the checkpoint in DIR, bit for bit\n"
            "  --save-every N  also write the checkpoint every N steps (default 0: only at the end)\n");
}

typedef struct train_args {
    const char *config, *data, *columns, *out, *resume;
    long steps, threads, save_every, log_every;
} train_args;

static int parse_args(int argc, char **argv, train_args *a, spes_run_config *cfg, int *help)
{
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'}, {"data", required_argument, 0, 'd'},
        {"steps", required_argument, 0, 's'},  {"threads", required_argument, 0, 't'},
        {"columns", required_argument, 0, 'C'}, {"out", required_argument, 0, 'o'},
        {"resume", required_argument, 0, 'r'}, {"save-every", required_argument, 0, 'S'},
        {"log-every", required_argument, 0, 'l'}, {"set", required_argument, 0, 'x'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0},
    };
    char *sets[64];
    int nsets = 0, c, rc;
    *a = (train_args){.steps = -1, .threads = 2, .log_every = 10};
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c': a->config = optarg; break;
        case 'd': a->data = optarg; break;
        case 'C': a->columns = optarg; break;
        case 'o': a->out = optarg; break;
        case 'r': a->resume = optarg; break;
        case 's': if ((rc = spes_cli_long("--steps", optarg, 0, 1L << 40, &a->steps))) return rc; break;
        case 't': if ((rc = spes_cli_long("--threads", optarg, 1, 256, &a->threads))) return rc; break;
        case 'S': if ((rc = spes_cli_long("--save-every", optarg, 0, 1L << 40, &a->save_every))) return rc; break;
        case 'l': if ((rc = spes_cli_long("--log-every", optarg, 1, 1L << 40, &a->log_every))) return rc; break;
        case 'x':
            if (nsets == 64)
                return spes_errf(SPES_EINVAL, "too many --set options");
            sets[nsets++] = optarg;
            break;
        case 'h': *help = 1; return 0;
        default: return spes_cli_bad_option(argv, optind);
        }
    }
    if (optind < argc)
        return spes_errf(SPES_EINVAL, "unexpected argument \"%s\"", argv[optind]);
    if (!a->config)
        return spes_errf(SPES_EINVAL, "--config RUN.json is required");
    if (!a->out)
        return spes_errf(SPES_EINVAL, "--out DIR is required");
    if ((rc = spes_config_load(cfg, a->config)) != 0)
        return rc;
    for (int i = 0; i < nsets; i++)
        if ((rc = spes_config_set(cfg, sets[i])) != 0)
            return rc;
    if (a->data && (rc = spes_config_set_data(cfg, a->data)) != 0)
        return rc;
    if ((rc = spes_config_validate(cfg)) != 0)
        return rc;
    return spes_dir_check_writable(a->out); /* before training, not after it */
}

static int run(train_args *a, spes_run_config *cfg)
{
    uint8_t *mask = NULL;
    int rc;
    if (a->columns) {
        mask = malloc((size_t)cfg->model.num_experts);
        if (!mask)
            return SPES_ENOMEM;
        if ((rc = spes_parse_columns(a->columns, cfg->model.num_experts, mask)) != 0) {
            free(mask);
            return rc;
        }
    }
    /* data files given by URL are cached in $SPES_CACHE, else ~/.cache/spes/data */
    const char *env = getenv("SPES_CACHE"), *home = getenv("HOME");
    char *cache = env ? strdup(env) : spes_path_join(home ? home : "/tmp", ".cache/spes/data");
    rc = cache ? spes_data_fetch_urls(cfg, cache, (const volatile int *)&stop_requested) : SPES_ENOMEM;
    free(cache);
    if (rc) {
        free(mask);
        return rc;
    }
    spes_trainer t;
    rc = spes_trainer_init(&t, cfg, mask, (int)a->threads);
    free(mask);
    if (rc)
        return rc;
    if ((rc = spes_trainer_open_data(&t, 0, 1)) != 0)
        goto out;
    if (a->resume && (rc = spes_trainer_load(&t, a->resume)) != 0)
        goto out;
    int64_t end = a->steps >= 0 ? a->steps : cfg->train.max_steps;
    const int64_t tokens_per_step = (int64_t)cfg->train.batch_size * cfg->train.seq_len;
    double window_s = 0;
    int64_t window_steps = 0;
    log_info("training %zu parameters (%zu trained), %d thread(s), steps %lld..%lld of %d, "
             "%.4g model FLOPs per token",
             t.model->layout.total_numel, t.model->grads_numel, t.nthreads, (long long)t.step,
             (long long)end - 1, cfg->train.max_steps, spes_model_flops_per_token(t.model));
    while (t.step < end && !stop_requested) {
        spes_step_stats st;
        if ((rc = spes_trainer_step(&t, &st)) != 0)
            goto out;
        window_s += st.seconds;
        window_steps++;
        if ((st.step + 1) % a->log_every == 0 || t.step == end) {
            printf("step %lld loss %.9g lr %.3e norm %.3f tok/s %.0f\n", (long long)st.step, st.loss, st.lr,
                   st.grad_norm, (double)(tokens_per_step * window_steps) / window_s);
            window_s = 0;
            window_steps = 0;
        } else {
            printf("step %lld loss %.9g\n", (long long)st.step, st.loss);
        }
        fflush(stdout);
        if (a->save_every > 0 && t.step % a->save_every == 0 && t.step < end &&
            (rc = spes_trainer_save(&t, a->out)) != 0)
            goto out;
    }
    if (stop_requested)
        log_info("stopping at step %lld on request; writing the checkpoint", (long long)t.step);
    rc = spes_trainer_save(&t, a->out);
    if (!rc)
        log_info("checkpoint at step %lld written to %s; peak memory %.1f MiB", (long long)t.step, a->out,
                 peak_rss_mib());
out:
    spes_trainer_fini(&t);
    return rc;
}

int cmd_train(int argc, char **argv)
{
    train_args a;
    spes_run_config cfg;
    int help = 0;
    spes_config_defaults(&cfg);
    int rc = parse_args(argc, argv, &a, &cfg, &help);
    if (help) {
        train_usage(stdout);
        spes_config_fini(&cfg);
        return 0;
    }
    if (!rc) {
        struct sigaction sa = {.sa_handler = on_signal};
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        rc = run(&a, &cfg);
    }
    spes_config_fini(&cfg);
    if (rc) {
        fprintf(stderr, "spesd train: %s\n", spes_errmsg());
        return 1;
    }
    return 0;
}
