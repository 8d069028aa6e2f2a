/* trainer_ckpt.c: a trainer's resumable checkpoint (everything needed to
 * continue the exact loss curve: parameters, AdamW moments and step, the
 * training step, which fixes the data position, and the RNG state). */
#include "checkpoint/checkpoint.h"
#include "core/error.h"
#include "train/trainer.h"

#include <stdlib.h>
#include <string.h>

int spes_trainer_save(spes_trainer *t, const char *dir)
{
    return spes_trainer_save_as(t, dir, t->model->params, t->step, t->round);
}

int spes_trainer_save_as(spes_trainer *t, const char *dir, const float *params, int64_t step, int64_t round)
{
    spes_ckpt ck = {0};
    ck.config_json = spes_config_to_json(&t->cfg);
    if (!ck.config_json)
        return SPES_ENOMEM;
    ck.trained = t->model->trained;
    ck.E = t->cfg.model.num_experts;
    ck.params = (float *)params;
    ck.nparams = t->model->layout.total_numel;
    ck.adam_m = t->opt.m;
    ck.adam_v = t->opt.v;
    ck.nmoments = t->opt.n;
    ck.adam_t = t->opt.t;
    ck.step = step;
    ck.round = round;
    ck.data_pos = (uint64_t)step * (uint64_t)t->cfg.train.batch_size * (uint64_t)t->cfg.train.seq_len;
    memcpy(ck.rng, t->rng.s, sizeof ck.rng);
    int rc = spes_ckpt_save(dir, &ck);
    free(ck.config_json);
    return rc;
}

/* check_compatible refuses a checkpoint of another model or other columns. */
static int check_compatible(const spes_trainer *t, const spes_ckpt *meta, const char *dir)
{
    spes_run_config c;
    spes_config_defaults(&c);
    int rc = spes_config_parse_json(&c, meta->config_json, dir);
    if (rc)
        return rc;
    int same = memcmp(&c.model, &t->cfg.model, sizeof c.model) == 0;
    spes_config_fini(&c);
    if (!same)
        return spes_errf(SPES_EINVAL, "%s: the checkpoint's model configuration differs from the run config",
                         dir);
    if (meta->E != t->cfg.model.num_experts || memcmp(meta->trained, t->model->trained, (size_t)meta->E))
        return spes_errf(SPES_EINVAL,
                         "%s: the checkpoint trains other expert columns than this run (--columns)", dir);
    if (meta->nmoments != t->opt.n)
        return spes_errf(SPES_EINVAL, "%s: the checkpoint has no optimizer state for these columns", dir);
    return 0;
}

int spes_trainer_load(spes_trainer *t, const char *dir)
{
    spes_ckpt meta;
    spes_ckpt_reader *r;
    int rc = spes_ckpt_reader_open(&r, dir, &meta);
    if (rc)
        return rc;
    if ((rc = check_compatible(t, &meta, dir)) == 0 &&
        (rc = spes_ckpt_reader_read(r, t->model->params, t->opt.m, t->opt.v)) == 0) {
        t->opt.t = meta.adam_t;
        t->step = meta.step;
        t->round = meta.round;
        memcpy(t->rng.s, meta.rng, sizeof meta.rng);
    }
    spes_ckpt_reader_close(r);
    spes_ckpt_fini(&meta);
    return rc;
}
