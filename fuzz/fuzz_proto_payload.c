/* fuzz_proto_payload.c: libFuzzer target for each schema's payload decoder.
 * The first byte picks the message type, the rest is the protobuf payload;
 * the target frames it with a valid header so that the fuzzer spends its time
 * inside protobuf-c and the validator rather than on the envelope. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size - 1 > SPES_PROTO_LARGE_LIMIT)
        return 0;
    int type = data[0] % SPES_MSG_TYPE_END;
    uint8_t *buf = malloc(SPES_PROTO_HEADER_LEN + size - 1);
    if (buf == NULL)
        return 0;
    spes_proto_header_write(buf, type, (uint32_t)(size - 1));
    memcpy(buf + SPES_PROTO_HEADER_LEN, data + 1, size - 1);
    int got;
    ProtobufCMessage *m;
    if (spes_proto_decode(buf, SPES_PROTO_HEADER_LEN + size - 1, &got, &m) == 0) {
        uint8_t *a, *b;
        size_t na, nb;
        ProtobufCMessage *m2;
        if (got != type || spes_proto_encode(type, m, &a, &na) != 0)
            abort();
        if (spes_proto_decode(a, na, &got, &m2) != 0 || spes_proto_encode(got, m2, &b, &nb) != 0)
            abort();
        if (na != nb || memcmp(a, b, na) != 0)
            abort();
        spes_proto_free(m2);
        spes_proto_free(m);
        free(a);
        free(b);
    }
    free(buf);
    return 0;
}
