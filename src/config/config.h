/* config.h: the run configuration (one JSON file, docs/design.md "Run config").
 * Every field lives in one table (name, type, bounds, default); parsing,
 * flag overrides (`section.field=value`), validation and serialisation all
 * walk that table, so a new field is one line there. */
#ifndef SPES_CONFIG_CONFIG_H
#define SPES_CONFIG_CONFIG_H

#include <stdint.h>

#define SPES_MAX_DATA_FILES 256
/* SPES_MAX_MEMBERS is the most nodes a run holds at once: the coordinator's member
 * table, and so the bound of a daemon config's min_nodes. */
#define SPES_MAX_MEMBERS 256

/* spes_model_config uses the Hugging Face OLMoE config.json names. */
typedef struct spes_model_config {
    int vocab_size;          /* V */
    int hidden_size;         /* H */
    int intermediate_size;   /* I */
    int num_hidden_layers;   /* L */
    int num_attention_heads; /* NH; head dim D = H / NH */
    int num_key_value_heads; /* NKV, divides NH */
    int num_experts;         /* E */
    int num_experts_per_tok; /* K */
    double rms_norm_eps;
    double rope_theta;
    int norm_topk_prob;      /* bool */
    int tie_word_embeddings; /* bool */
    int max_position_embeddings;
} spes_model_config;

/* spes_train_config holds the optimisation settings. */
typedef struct spes_train_config {
    int seq_len;    /* T */
    int batch_size; /* B */
    double lr, min_lr_ratio;
    int warmup_steps, max_steps;
    double weight_decay, beta1, beta2, eps, grad_clip;
    double lb_loss_weight, z_loss_weight;
    int64_t seed;
} spes_train_config;

/* spes_spes_config holds the SPES synchronisation and merge settings. */
typedef struct spes_spes_config {
    int sync_interval;
    int merge_interval;
    double merge_alpha;
    int merge_decay_steps;
    int merge_topk;
    double lb_factor_start;
    double lb_factor_ramp;
    double outer_lr;       /* outer learning rate on the round's mean delta (1: plain averaging) */
    double outer_momentum; /* outer Nesterov momentum (0: none) */
    double norm_bound;     /* refuse a delta norm above this x the round's median (0: off) */
    char aggregation[16];  /* "mean" | "trimmed_mean" | "clipped_mean" */
    double trim;           /* trimmed_mean: fraction dropped at each end per coordinate */
    double clip;           /* clipped_mean: delta norm bound, in medians of the group */
    char codec[8];         /* contributions on the wire: "fp32" | "bf16" | "q8ef" | "topk" (run-wide) */
    int overlap;           /* 1: a round's next training runs while the round travels (docs/design.md) */
    double overlap_carry;  /* the weight of the steps trained before the rebase onto S_round */
    int rotate_interval;   /* rounds between hand-overs of every member's columns to the next (0: never) */
    int column_owners;     /* members that train each column (1: its dealt owner only; docs/design.md) */
    int sharded;           /* 1: aggregators average the shared block's shards (docs/design.md) */
    double audit_fraction; /* sharded rounds: the share of a round's shards a second node recomputes */
} spes_spes_config;

/* spes_data_file is one token source: a path or URL, with optional checks. */
typedef struct spes_data_file {
    char *path;   /* local path or http(s) URL */
    char *sha256; /* hex, may be NULL */
    int64_t size; /* bytes, -1 if unknown */
} spes_data_file;

/* spes_data_config lists the token files, concatenated in order. */
typedef struct spes_data_config {
    int nfiles;
    spes_data_file files[SPES_MAX_DATA_FILES];
    char dtype[16];  /* "uint16" | "uint32" (raw files; headers override) */
    char format[16]; /* "auto" | "raw" | "npy" | "llmc" */
} spes_data_config;

/* spes_run_config is a whole run configuration. */
typedef struct spes_run_config {
    spes_model_config model;
    spes_train_config train;
    spes_spes_config spes;
    spes_data_config data;
} spes_run_config;

/* spes_config_defaults fills every field with its default. */
void spes_config_defaults(spes_run_config *c);

/* spes_config_load reads defaults, then the JSON file; an unknown key, a wrong
 * type or an out-of-bounds value is an error naming the file and the field. */
int spes_config_load(spes_run_config *c, const char *path);

/* spes_config_parse_json is spes_config_load from a string (origin names it in errors). */
int spes_config_parse_json(spes_run_config *c, const char *json, const char *origin);

/* spes_config_set overrides one field from "section.field=value". */
int spes_config_set(spes_run_config *c, const char *assignment);

/* spes_config_set_data replaces the data file list with one path. */
int spes_config_set_data(spes_run_config *c, const char *path);

/* spes_config_validate checks cross-field rules (heads divide hidden, K <= E, ...). */
int spes_config_validate(const spes_run_config *c);

/* spes_config_to_json returns a malloc'd JSON text of the whole config (caller frees). */
char *spes_config_to_json(const spes_run_config *c);

/* spes_config_hf_json returns a malloc'd Hugging Face OLMoE config.json text. */
char *spes_config_hf_json(const spes_model_config *m);

/* spes_config_from_hf_json reads the model part from a Hugging Face config.json text. */
int spes_config_from_hf_json(spes_model_config *m, const char *json, const char *origin);

/* spes_config_fini frees the strings the config owns. */
void spes_config_fini(spes_run_config *c);

/* spes_config_copy deep-copies src into dst (dst must not own strings). */
int spes_config_copy(spes_run_config *dst, const spes_run_config *src);

#endif
