/* bytes.h: big-endian load/store helpers shared by the proto codecs (internal). */
#ifndef SPES_PROTO_BYTES_H
#define SPES_PROTO_BYTES_H

#include <stdint.h>

static inline uint16_t spes__be16(const uint8_t *p)
{
    return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}

static inline uint32_t spes__be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t spes__be64(const uint8_t *p)
{
    return (uint64_t)spes__be32(p) << 32 | spes__be32(p + 4);
}

static inline void spes__put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void spes__put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static inline void spes__put64(uint8_t *p, uint64_t v)
{
    spes__put32(p, (uint32_t)(v >> 32));
    spes__put32(p + 4, (uint32_t)v);
}

#endif
