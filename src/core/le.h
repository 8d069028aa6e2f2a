/* le.h: little-endian load/store of the integers in spes's own file and blob formats
 * (checkpoints, contributions, group blobs), whatever the host's byte order. */
#ifndef SPES_CORE_LE_H
#define SPES_CORE_LE_H

#include <stdint.h>

/* spes_le_put32 stores v at p, least significant byte first. */
static inline void spes_le_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* spes_le_put64 stores v at p, least significant byte first. */
static inline void spes_le_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* spes_le_get32 loads the little-endian value at p. */
static inline uint32_t spes_le_get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

/* spes_le_get64 loads the little-endian value at p. */
static inline uint64_t spes_le_get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

#endif
