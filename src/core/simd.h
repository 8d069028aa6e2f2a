/* simd.h: SPES_CLONES, the target_clones attribute that builds a hot loop for
 * AVX-512, AVX2 and baseline x86-64 (the clone is chosen once at load time).
 * Loops that carry it use only plain + * / and sqrt with no FMA contraction
 * (ISO C mode), so every clone computes the same bits. */
#ifndef SPES_CORE_SIMD_H
#define SPES_CORE_SIMD_H

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(__clang__)
#define SPES_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SPES_CLONES
#endif

#endif
