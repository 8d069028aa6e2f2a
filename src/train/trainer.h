/* trainer.h: one node's training loop state: model, AdamW, data, step, RNG.
 * Used by `spesd train` (standalone) and by a SPES node (which trains a few
 * columns and syncs every sync_interval steps). One step is: the batch of
 * this step, forward, backward, clip, AdamW; nothing here does network I/O. */
#ifndef SPES_TRAIN_TRAINER_H
#define SPES_TRAIN_TRAINER_H

#include <stdint.h>

#include "config/config.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "data/dataset.h"
#include "model/model.h"
#include "optim/adamw.h"

/* spes_step_stats is what one training step reports. */
typedef struct spes_step_stats {
    int64_t step; /* 0-based step just taken */
    double loss;  /* mean CE of the batch, before the update (docs/design.md) */
    double total; /* CE + weighted auxiliary losses */
    double lb, z; /* unweighted auxiliary losses */
    double lr;
    double grad_norm; /* before clipping */
    double seconds;   /* wall time of the step */
} spes_step_stats;

/* spes_trainer owns everything one trainer needs. */
typedef struct spes_trainer {
    spes_run_config cfg;
    spes_model *model;
    spes_adamw opt;
    spes_segment *seg; /* (nseg) trained parameter ranges */
    int nseg;
    spes_pool *pool;
    int nthreads;
    spes_dataset data;
    int have_data;
    int32_t *inputs, *targets; /* (B*T) */
    int64_t step;              /* next step to take */
    int64_t round;             /* SPES round (0 in standalone training) */
    spes_rng rng;
} spes_trainer;

/* spes_trainer_init builds the model (weights from cfg->train.seed), optimizer
 * and thread pool for the columns in trained (NULL = all). The config is copied. */
int spes_trainer_init(spes_trainer *t, const spes_run_config *cfg, const uint8_t *trained, int nthreads);

/* spes_trainer_open_data opens the config's data files (local paths), taking
 * part `index` of `count` disjoint parts. */
int spes_trainer_open_data(spes_trainer *t, int index, int count);

/* spes_trainer_step takes one step on the batch of step t->step and advances it. */
int spes_trainer_step(spes_trainer *t, spes_step_stats *st);

/* spes_trainer_save writes a resumable checkpoint of everything into dir. */
int spes_trainer_save(spes_trainer *t, const char *dir);

/* spes_trainer_save_as writes the same checkpoint with params, step and round
 * in place of the trainer's own (a node keeps the agreed state, not its
 * working copy: docs/design.md, "Overlap"). */
int spes_trainer_save_as(spes_trainer *t, const char *dir, const float *params, int64_t step, int64_t round);

/* spes_trainer_load restores a checkpoint written by spes_trainer_save into an
 * initialised trainer whose model configuration and columns must match. */
int spes_trainer_load(spes_trainer *t, const char *dir);

/* spes_trainer_fini frees everything. */
void spes_trainer_fini(spes_trainer *t);

/* spes_data_fetch_urls downloads the config's data files given by URL into
 * cache_dir (verified by their sha256) and points the config at the copies. */
int spes_data_fetch_urls(spes_run_config *cfg, const char *cache_dir, const volatile int *cancel);

/* spes_parse_columns parses "0,2,5-7" into a mask of E entries. */
int spes_parse_columns(const char *list, int E, uint8_t *mask);

#endif
