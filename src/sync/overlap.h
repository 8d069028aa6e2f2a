/* overlap.h: the rebase of a round trained beside its sync (docs/design.md,
 * "Overlap"). A node trains round r+1 from its own parameters while round r
 * travels; at the first step boundary that finds the agreed state S_{r+1} held,
 * it moves what it trained so far onto it:
 *     params = S + c (params - xstart)
 * value by value in fp32. The weight c follows the share of the round's steps
 * that were trained before S arrived: a run's overlap_carry c1 is the weight when
 * all of them were (the rebase after the last step), and a rebase after `stale`
 * of `steps` steps weighs them
 *     c = 1 / (1 + (stale / steps) (1 / c1 - 1))
 * so c1 = 1 carries them whole whatever the share, c1 = 0.5 gives
 * 1 / (1 + stale / steps), staleness-aware SGD's 1 / (1 + staleness) with the
 * round's mean staleness, and c1 = 0 drops them. Node-local: the contribution is
 * the progress as carried, so S_{r+2} stays recomputable from the blobs. */
#ifndef SPES_SYNC_OVERLAP_H
#define SPES_SYNC_OVERLAP_H

#include <stddef.h>

/* spes_overlap_carry_of is the weight for a group of values whose agreed delta is
 * the mean of k contributions, the node's own among them (the shared block: every
 * member's; a column: its owners'). The steps were stale only by the share
 * 1 - 1/k of that delta that came from the others, so the staleness counts at it:
 *     c = 1 / (1 + (1 - 1/k) (stale / steps) (1 / c1 - 1))
 * k = 1 (a column of its own) carries them whole; k <= 0 (not known) counts the
 * staleness whole, the rule above; c1 is the run's overlap_carry (0 .. 1); 1 when
 * no step was stale. */
double spes_overlap_carry_of(double c1, int stale, int steps, int k);

/* spes_overlap_rebase sets p[i] = base[i] + c (p[i] - x[i]) for i < n. */
void spes_overlap_rebase(float *p, const float *base, const float *x, size_t n, float c);

#endif
