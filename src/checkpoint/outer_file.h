/* outer_file.h: the outer optimizer's momentum beside a checkpoint, as
 * DIR/outer.bin, and the node's error-feedback residual, as DIR/residual.bin,
 * each written atomically. Their bytes, little-endian:
 *   "SPESOUTR" (or "SPESRESD") | u32 version (1) | u32 extra bytes | i64 round |
 *   u64 numel | the extra bytes | f32 values[numel] | SHA-256 of every byte before it.
 * The momentum has no extra bytes; the residual's are one per expert column,
 * 1 where the column's values are held (after the shared block's, in column
 * order). A checkpoint without outer.bin is a run without outer momentum (or
 * one written before it existed); readers treat its momentum as absent. One
 * without residual.bin restores a zero residual. Each save keeps the file it
 * replaces as FILE.prev, and a load of a round FILE is not of reads FILE.prev:
 * a node writes these before its trainer state of the same round, so a kill
 * between the two leaves the older state with its own files. */
#ifndef SPES_CHECKPOINT_OUTER_FILE_H
#define SPES_CHECKPOINT_OUTER_FILE_H

#include <stddef.h>
#include <stdint.h>

/* SPES_OUTER_FILE is the file name inside a checkpoint directory. */
#define SPES_OUTER_FILE "outer.bin"

/* spes_outer_save writes numel momentum values of round to DIR/outer.bin durably (DIR must exist). */
int spes_outer_save(const char *dir, const float *mom, size_t numel, int64_t round);

/* spes_outer_load reads DIR/outer.bin into mom (numel floats), refusing another round, another
 * size, truncation and corruption; SPES_ENOENT when the file does not exist. */
int spes_outer_load(const char *dir, float *mom, size_t numel, int64_t round);

/* spes_outer_remove deletes DIR/outer.bin (and outer.bin.prev) if present (a checkpoint saved without momentum). */
int spes_outer_remove(const char *dir);

/* SPES_RESID_FILE is the residual's file name inside a checkpoint directory. */
#define SPES_RESID_FILE "residual.bin"

/* spes_resid_save writes a node's error-feedback residual after round `round` (docs/design.md,
 * "Codecs"): the columns held (cols, E entries) and numel values (shared block, then those columns). */
int spes_resid_save(const char *dir, const uint8_t *cols, int E, const float *vals, size_t numel,
                    int64_t round);

/* spes_resid_load reads it back for a model of E columns of `column` values and a shared block of
 * `shared`, refusing another round, other sizes and corruption; *vals is malloc'd (numel values),
 * cols gets the columns held. SPES_ENOENT when the file does not exist. */
int spes_resid_load(const char *dir, int E, size_t shared, size_t column, int64_t round, uint8_t *cols,
                    float **vals, size_t *numel);

/* spes_resid_remove deletes DIR/residual.bin if present. */
int spes_resid_remove(const char *dir);

#endif
