/* rng.h: a small deterministic RNG (xoshiro256**, seeded by splitmix64).
 * Its whole state is four words, saved in checkpoints so that a resumed run
 * draws the same numbers as an uninterrupted one. */
#ifndef SPES_CORE_RNG_H
#define SPES_CORE_RNG_H

#include <stdint.h>

/* spes_rng is the generator state. */
typedef struct spes_rng {
    uint64_t s[4];
} spes_rng;

/* spes_rng_seed initialises the state from a 64-bit seed. */
void spes_rng_seed(spes_rng *r, uint64_t seed);
/* spes_rng_u64 returns 64 random bits. */
uint64_t spes_rng_u64(spes_rng *r);
/* spes_rng_uniform returns a double in [0, 1). */
double spes_rng_uniform(spes_rng *r);
/* spes_rng_normal returns a standard normal sample (Box-Muller, no cached pair). */
double spes_rng_normal(spes_rng *r);

#endif
