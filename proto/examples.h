/* examples.h: representative messages of every type, for tests, fuzz seeds and docs. */
#ifndef SPES_PROTO_EXAMPLES_H
#define SPES_PROTO_EXAMPLES_H

#include "proto/proto.h"

/* spes_proto_example_encode encodes a fully populated example message of
 * type (every field set) into a malloc'd envelope; the caller frees it. */
int spes_proto_example_encode(int type, uint8_t **out, size_t *len);

#endif
