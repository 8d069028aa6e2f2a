/* fuzz_proto_envelope.c: libFuzzer target for spes_proto_decode on arbitrary
 * bytes. A decoded message must re-encode (our encoder accepts what our
 * decoder accepts), the re-encoding must decode to the same type, and
 * encoding is idempotent from there on (canonical form). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int type, type2;
    ProtobufCMessage *m, *m2;
    uint8_t *a, *b;
    size_t na, nb;
    if (spes_proto_decode(data, size, &type, &m) != 0)
        return 0;
    if (spes_proto_encode(type, m, &a, &na) != 0)
        abort();
    if (spes_proto_decode(a, na, &type2, &m2) != 0 || type2 != type)
        abort();
    if (spes_proto_encode(type2, m2, &b, &nb) != 0)
        abort();
    if (na != nb || memcmp(a, b, na) != 0)
        abort();
    spes_proto_free(m2);
    spes_proto_free(m);
    free(a);
    free(b);
    return 0;
}
