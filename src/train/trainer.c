/* trainer.c: the training step, shared by standalone training and SPES nodes. */
#include "train/trainer.h"
#include "core/clock.h"
#include "core/error.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

int spes_parse_columns(const char *list, int E, uint8_t *mask)
{
    memset(mask, 0, (size_t)E);
    const char *p = list;
    int any = 0;
    while (*p) {
        char *end;
        long a = strtol(p, &end, 10), b = a;
        if (end == p)
            return spes_errf(SPES_EINVAL, "--columns \"%s\": expected a number at \"%s\"", list, p);
        p = end;
        if (*p == '-') {
            b = strtol(p + 1, &end, 10);
            if (end == p + 1)
                return spes_errf(SPES_EINVAL, "--columns \"%s\": bad range", list);
            p = end;
        }
        if (a < 0 || b >= E || a > b)
            return spes_errf(SPES_ERANGE, "--columns \"%s\": column %ld is outside 0..%d", list,
                             a < 0 || a >= E ? a : b, E - 1);
        for (long i = a; i <= b; i++)
            mask[i] = 1;
        any = 1;
        if (*p == ',')
            p++;
        else if (*p)
            return spes_errf(SPES_EINVAL, "--columns \"%s\": unexpected \"%c\"", list, *p);
    }
    if (!any)
        return spes_errf(SPES_EINVAL, "--columns is empty");
    return 0;
}

/* Trained ranges: the shared block, then each trained column, in gradient order. */
static int build_segments(spes_trainer *t)
{
    const spes_layout *lo = &t->model->layout;
    int E = t->cfg.model.num_experts;
    t->seg = calloc((size_t)E + 1, sizeof *t->seg);
    if (!t->seg)
        return SPES_ENOMEM;
    t->seg[0] = (spes_segment){0, 0, lo->shared_numel};
    size_t g = lo->shared_numel;
    t->nseg = 1;
    for (int e = 0; e < E; e++) {
        if (!t->model->trained[e])
            continue;
        t->seg[t->nseg++] =
            (spes_segment){lo->shared_numel + (size_t)e * lo->column_numel, g, lo->column_numel};
        g += lo->column_numel;
    }
    return 0;
}

int spes_trainer_init(spes_trainer *t, const spes_run_config *cfg, const uint8_t *trained, int nthreads)
{
    memset(t, 0, sizeof *t);
    int rc = spes_config_copy(&t->cfg, cfg);
    if (rc)
        return rc;
    if ((rc = spes_config_validate(&t->cfg)) != 0)
        goto fail;
    t->nthreads = nthreads < 1 ? 1 : nthreads;
    openblas_set_num_threads(t->nthreads);
    if ((rc = spes_pool_alloc(&t->pool, t->nthreads)) != 0)
        goto fail;
    int B = t->cfg.train.batch_size, T = t->cfg.train.seq_len;
    if ((rc = spes_model_alloc(&t->model, &t->cfg.model, trained, B, T, 1, t->pool)) != 0)
        goto fail;
    spes_model_init_weights(t->model, (uint64_t)t->cfg.train.seed);
    if ((rc = build_segments(t)) != 0)
        goto fail;
    if ((rc = spes_adamw_init(&t->opt, t->model->grads_numel, &t->cfg.train)) != 0)
        goto fail;
    t->inputs = malloc((size_t)B * T * sizeof *t->inputs);
    t->targets = malloc((size_t)B * T * sizeof *t->targets);
    if (!t->inputs || !t->targets) {
        rc = SPES_ENOMEM;
        goto fail;
    }
    spes_rng_seed(&t->rng, (uint64_t)t->cfg.train.seed ^ 0x5e5d5e5dULL);
    return 0;
fail:
    spes_trainer_fini(t);
    return rc;
}

int spes_trainer_open_data(spes_trainer *t, int index, int count)
{
    const spes_data_config *d = &t->cfg.data;
    if (d->nfiles == 0)
        return spes_errf(SPES_EINVAL, "no training data: give --data PATH or data.files in the run config");
    const char *paths[SPES_MAX_DATA_FILES];
    for (int i = 0; i < d->nfiles; i++) {
        if (strstr(d->files[i].path, "://"))
            return spes_errf(SPES_EINVAL, "data file %s is a URL: fetch it first", d->files[i].path);
        paths[i] = d->files[i].path;
    }
    spes_tok_format fmt;
    spes_tok_dtype dt;
    int rc = spes_tok_format_parse(d->format, &fmt);
    if (!rc)
        rc = spes_tok_dtype_parse(d->dtype, &dt);
    if (!rc)
        rc = spes_dataset_open(&t->data, paths, d->nfiles, dt, fmt, (uint32_t)t->cfg.model.vocab_size,
                               t->pool);
    if (rc)
        return rc;
    t->have_data = 1;
    rc = spes_dataset_set_part(&t->data, index, count);
    if (!rc)
        rc = spes_dataset_check_batch(&t->data, t->cfg.train.batch_size, t->cfg.train.seq_len);
    return rc;
}

int spes_trainer_step(spes_trainer *t, spes_step_stats *st)
{
    if (!t->have_data)
        return spes_errf(SPES_ESTATE, "trainer has no data");
    double t0 = spes_mono_s();
    int B = t->cfg.train.batch_size, T = t->cfg.train.seq_len;
    int rc = spes_dataset_batch_at(&t->data, (uint64_t)t->step, B, T, t->inputs, t->targets);
    if (rc)
        return rc;
    spes_loss_opts lo = {
        .lb_weight = t->cfg.train.lb_loss_weight,
        .z_weight = t->cfg.train.z_loss_weight,
        .lb_factor = spes_lb_factor_at(&t->cfg.spes, t->cfg.train.max_steps, t->step),
    };
    if ((rc = spes_model_forward(t->model, t->inputs, t->targets, B, T, &lo)) != 0)
        return rc;
    spes_model_zero_grad(t->model);
    spes_model_backward(t->model);
    double norm = spes_grad_norm(t->model->grads, t->model->grads_numel, t->pool);
    double lr = spes_lr_at(&t->cfg.train, t->step);
    spes_adamw_step(&t->opt, t->model->params, t->model->grads, t->seg, t->nseg, lr,
                    spes_clip_coef(norm, t->cfg.train.grad_clip), t->pool);
    if (st) {
        st->step = t->step;
        st->loss = t->model->ce_loss;
        st->total = t->model->loss;
        st->lb = t->model->lb_loss;
        st->z = t->model->z_loss;
        st->lr = lr;
        st->grad_norm = norm;
        st->seconds = spes_mono_s() - t0;
    }
    t->step++;
    return 0;
}

void spes_trainer_fini(spes_trainer *t)
{
    if (t->have_data)
        spes_dataset_close(&t->data);
    spes_adamw_fini(&t->opt);
    spes_model_free(t->model);
    spes_pool_free(t->pool);
    free(t->seg);
    free(t->inputs);
    free(t->targets);
    spes_config_fini(&t->cfg);
    memset(t, 0, sizeof *t);
}
