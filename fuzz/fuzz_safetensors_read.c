/* fuzz_safetensors_read.c: libFuzzer target for the strict safetensors reader.
 * Any byte string is parsed as a whole file; if it is accepted, every tensor
 * that converts to float32 is read, so the offsets the reader accepted are
 * exercised against the buffer under ASan. It must never crash or leak. */
#include "safetensors/safetensors.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    spes_st_file *f;
    if (spes_st_parse(&f, data, size, "fuzz.safetensors") != 0)
        return 0;
    for (int i = 0; i < f->ntensors; i++) {
        const spes_st_tensor *t = &f->tensors[i];
        if (t->numel > size)
            continue; /* a tensor can only be that large if it is empty or 1-byte typed */
        float *out = malloc((size_t)t->numel * sizeof(float) + 1);
        if (out)
            spes_st_read_f32(f, t, out, (size_t)t->numel);
        free(out);
    }
    spes_st_meta(f, "format");
    spes_st_close(f);
    return 0;
}
