/* outer_file.h: the outer optimizer's momentum beside a checkpoint, as
 * DIR/outer.bin, and the node's error-feedback residual, as DIR/residual.bin,
 * each written atomically. Their bytes, little-endian:
 *   "SPESOUTR" (or "SPESRESD") | u32 version (1) | u32 0 | i64 round |
 *   u64 numel | f32 values[numel] | SHA-256 of every byte before it.
 * A checkpoint without outer.bin is a run without outer momentum (or one
 * written before it existed); readers treat its momentum as absent. One
 * without residual.bin restores a zero residual. */
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

/* spes_outer_remove deletes DIR/outer.bin if present (a checkpoint saved without momentum). */
int spes_outer_remove(const char *dir);

/* SPES_RESID_FILE is the residual's file name inside a checkpoint directory. */
#define SPES_RESID_FILE "residual.bin"

/* spes_resid_save, spes_resid_load and spes_resid_remove are the same for the error-feedback
 * residual of a node after round `round` (docs/design.md, "Codecs"). */
int spes_resid_save(const char *dir, const float *resid, size_t numel, int64_t round);
int spes_resid_load(const char *dir, float *resid, size_t numel, int64_t round);
int spes_resid_remove(const char *dir);

#endif
