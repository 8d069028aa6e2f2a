/* checkpoint.h: the resume checkpoint (DIR/spes.ckpt) and Hugging Face export/import.
 * A checkpoint is a directory holding one binary file, written atomically
 * (temp file, fsync, rename, fsync dir), so a crash leaves the old checkpoint
 * or the new one, never a torn one. Its bytes, all little-endian:
 *   header (128 bytes): "SPESCKPT", u32 version (1), u32 flags (bit 0: AdamW
 *     moments present), u64 config_len, u32 E, u32 0, u64 nparams,
 *     u64 nmoments, i64 adam_t, i64 step, i64 round, u64 data_pos,
 *     u64 data_file, u64 rng[4], u64 0
 *   config JSON (config_len bytes, no NUL), trained mask (E bytes of 0/1),
 *     zero padding to a multiple of 8, SHA-256 of every byte before it
 *   params (nparams f32), adam_m and adam_v (nmoments f32 each, if flagged),
 *     SHA-256 of every byte before it.
 * The first digest lets a reader trust the sizes before it allocates; the
 * second covers the whole file. Loading refuses truncation, trailing bytes,
 * corruption, and sizes that do not match the layout of the embedded config.
 * The Hugging Face side writes DIR/config.json and DIR/model.safetensors with
 * the layout's OLMoE tensor names, and reads them back strictly. */
#ifndef SPES_CHECKPOINT_CHECKPOINT_H
#define SPES_CHECKPOINT_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "model/model.h"

/* SPES_CKPT_FILE is the file name inside a checkpoint directory. */
#define SPES_CKPT_FILE "spes.ckpt"
/* SPES_CKPT_VERSION is the format version this build writes and reads. */
#define SPES_CKPT_VERSION 1u
/* SPES_CKPT_MAX_CONFIG is the largest embedded config JSON accepted, in bytes. */
#define SPES_CKPT_MAX_CONFIG (16u << 20)

/* spes_ckpt is the whole resumable state of one trainer. */
typedef struct spes_ckpt {
    char *config_json; /* the full run config (spes_config_to_json), NUL-terminated */
    uint8_t *trained;  /* (E) 1 where the column is trained here, else 0 */
    int E;             /* num_experts of the config */
    float *params;     /* (nparams) = layout total_numel: [shared | column 0..E-1] */
    size_t nparams;
    float *adam_m;      /* (nmoments) first moments, same order as gradients; NULL if absent */
    float *adam_v;      /* (nmoments) second moments; NULL if absent */
    size_t nmoments;    /* shared_numel + ntrained * column_numel, or 0 (inference-only) */
    int64_t adam_t;     /* AdamW steps taken (bias correction) */
    int64_t step;       /* training steps done (the next step to run) */
    int64_t round;      /* SPES round */
    uint64_t data_pos;  /* data cursor: token position of the next batch */
    uint64_t data_file; /* data cursor: index of the file holding data_pos (0 if unused) */
    uint64_t rng[4];    /* spes_rng state */
} spes_ckpt;

/* spes_ckpt_save writes ck to DIR/spes.ckpt durably (creating DIR), checking its sizes against
 * the layout of ck->config_json first; a good older checkpoint there is replaced only on success. */
int spes_ckpt_save(const char *dir, const spes_ckpt *ck);

/* spes_ckpt_load reads and verifies DIR/spes.ckpt into *out, allocating every array; on failure
 * *out is empty and nothing needs freeing. */
int spes_ckpt_load(const char *dir, spes_ckpt *out);

/* spes_ckpt_parse is spes_ckpt_load from an in-memory file of len bytes (named origin in messages). */
int spes_ckpt_parse(spes_ckpt *out, const uint8_t *buf, size_t len, const char *origin);

/* spes_ckpt_fini frees what spes_ckpt_load or spes_ckpt_reader_open allocated and zeroes *ck. */
void spes_ckpt_fini(spes_ckpt *ck);

/* spes_ckpt_reader reads a checkpoint in two steps, so the big arrays can go straight into a model. */
typedef struct spes_ckpt_reader spes_ckpt_reader;

/* spes_ckpt_reader_open verifies DIR/spes.ckpt's header section and fills *meta (config_json,
 * trained, sizes and counters; the array pointers stay NULL); meta is freed with spes_ckpt_fini. */
int spes_ckpt_reader_open(spes_ckpt_reader **out, const char *dir, spes_ckpt *meta);

/* spes_ckpt_reader_read streams the arrays into caller memory (params: nparams floats, adam_m and
 * adam_v: nmoments floats each, or NULL to skip them) and verifies the whole-file digest; on
 * failure the caller's arrays hold garbage and must not be used. */
int spes_ckpt_reader_read(spes_ckpt_reader *r, float *params, float *adam_m, float *adam_v);

/* spes_ckpt_reader_close releases the reader; NULL is allowed. */
void spes_ckpt_reader_close(spes_ckpt_reader *r);

/* spes_hf_export writes DIR/config.json and DIR/model.safetensors (creating DIR) for a model with
 * configuration mc, layout lo and parameters params (lo->total_numel floats), in BF16 if bf16. */
int spes_hf_export(const char *dir, const spes_model_config *mc, const spes_layout *lo, const float *params,
                   int bf16);

/* spes_hf_export_ckpt exports the parameters of the checkpoint in ckpt_dir (moments are verified,
 * not kept) as spes_hf_export does; this is `spesd export --checkpoint DIR --out OUT`. */
int spes_hf_export_ckpt(const char *ckpt_dir, const char *out_dir, int bf16);

/* spes_hf_read_config reads the model configuration from DIR/config.json. */
int spes_hf_read_config(const char *dir, spes_model_config *mc);

/* spes_hf_import reads DIR/model.safetensors into params (lo->total_numel floats), refusing by name
 * any tensor of lo that is missing or misshapen and any tensor lo does not have. */
int spes_hf_import(const char *dir, const spes_layout *lo, float *params);

/* spes_hf_load reads DIR/config.json, builds the layout into *lo and imports the parameters into a
 * malloc'd array *params; on success the caller frees *params and calls spes_layout_fini(lo). */
int spes_hf_load(const char *dir, spes_model_config *mc, spes_layout *lo, float **params);

#endif
