/* merge.h: the SPES expert-merging warm-up (docs/design.md, "What a run computes").
 * Pure computation on the agreed state: every node applies it to the same
 * bytes in the same order, so every node gets the same result. */
#ifndef SPES_MERGE_MERGE_H
#define SPES_MERGE_MERGE_H

#include <stdint.h>

#include "config/config.h"
#include "model/model.h"

/* spes_merge_alpha returns the merge strength for a round ending at `step`
 * (the number of steps taken): merge_alpha * (1 - step / D) when step is a
 * positive multiple of merge_interval, else 0; never negative. D is
 * merge_decay_steps, or the run's max_steps when that is 0 (the warm-up then
 * lasts the whole run). */
double spes_merge_alpha(const spes_spes_config *sc, int64_t max_steps, int64_t step);

/* spes_merge_apply pulls each expert toward its merge_topk most similar
 * experts of the same layer: similarity is the cosine of the flattened
 * gate_proj weights; new_i = old_i + alpha * mean_over_donors(old_d - old_i)
 * for gate_proj, up_proj and down_proj, all computed from pre-merge values.
 * Ties in similarity go to the lower expert index. params is the full
 * flat array of layout lo. Returns SPES_ENOMEM on allocation failure. */
int spes_merge_apply(float *params, const spes_layout *lo, const spes_model_config *mc, int topk,
                     double alpha);

#endif
