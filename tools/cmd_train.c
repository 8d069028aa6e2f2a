/* cmd_train.c: `spesd train`, standalone training (docs/design.md, the command-line contract).
 * Prints `step N loss X` for every step (N 0-based, X the batch's mean CE
 * before the update) and, every --log-every steps, throughput and learning
 * rate. SIGINT/SIGTERM finish the current step, write the checkpoint, exit 0. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"
#include "cli/opts.h"
#include "tools/commands.h"
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

typedef struct train_args {
    const char *config, *data, *columns, *out, *resume;
    long steps, threads, save_every, log_every;
    spes_opt_list sets;
} train_args;

static const spes_opt_cmd *train_cmd(train_args *a)
{
    static spes_opt opts[] = {
        {"config", 0, SPES_OPT_STR, NULL, 0, 0, "RUN.json", "the run configuration (required)"},
        {"data", 0, SPES_OPT_STR, NULL, 0, 0, "PATH", "one token file; replaces data.files"},
        {"steps", 0, SPES_OPT_LONG, NULL, 0, 1L << 40, "N",
         "stop when the step counter reaches N (default train.max_steps)"},
        {"threads", 0, SPES_OPT_LONG, NULL, 1, 256, "N", "worker threads (default 2)"},
        {"columns", 0, SPES_OPT_STR, NULL, 0, 0, "LIST", "train only these expert columns, e.g. 0,1 or 0-3"},
        {"resume", 0, SPES_OPT_STR, NULL, 0, 0, "DIR", "continue from the checkpoint in DIR, bit for bit"},
        {"save-every", 0, SPES_OPT_LONG, NULL, 0, 1L << 40, "N", "also write the checkpoint every N steps"},
        {"log-every", 0, SPES_OPT_LONG, NULL, 1, 1L << 40, "N", "throughput and learning rate every N steps"},
        {"set", 0, SPES_OPT_LIST, NULL, 0, 0, "S.F=V", "override one run-config field (repeatable)"},
        {"out", 0, SPES_OPT_STR, NULL, 0, 0, "DIR", "where the checkpoint goes (required)"},
        {NULL, 0, 0, NULL, 0, 0, NULL, NULL},
    };
    static const spes_opt_cmd cmd = {
        "spesd train",
        "--config RUN.json [options] --out DIR",
        opts,
        0,
        0,
        "the learning-rate schedule always follows train.max_steps, whatever --steps says;\n"
        "the checkpoint is written at the end (and on SIGINT/SIGTERM) unless --save-every asks for more\n"};
    void *dst[] = {&a->config, &a->data,       &a->steps,     &a->threads, &a->columns,
                   &a->resume, &a->save_every, &a->log_every, &a->sets,    &a->out};
    for (size_t i = 0; i < sizeof dst / sizeof dst[0]; i++)
        opts[i].dst = dst[i];
    return &cmd;
}

static int parse_args(int argc, char **argv, train_args *a, spes_run_config *cfg, int *help)
{
    int rc;
    *a = (train_args){.steps = -1, .threads = 2, .log_every = 10};
    const spes_opt_cmd *cmd = train_cmd(a);
    rc = spes_opts_parse(cmd, argc, argv, NULL, NULL);
    if (rc == SPES_OPTS_HELP) {
        spes_opts_usage(cmd, stdout);
        *help = 1;
        return 0;
    }
    if (rc)
        return rc;
    if (!a->config)
        return spes_errf(SPES_EINVAL, "--config RUN.json is required");
    if (!a->out)
        return spes_errf(SPES_EINVAL, "--out DIR is required");
    if ((rc = spes_config_load(cfg, a->config)) != 0)
        return rc;
    for (int i = 0; i < a->sets.n; i++)
        if ((rc = spes_config_set(cfg, a->sets.v[i])) != 0)
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
