/* fuzz_config_json.c: libFuzzer target for the run-config reader (the coordinator sends
 * the run config to every node as JSON text, so nodes read it from outside). The input is a
 * JSON text; parsing must succeed or fail with a message; a parsed config must validate or
 * fail with a message, and its JSON must parse back into the same values. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "core/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    spes_run_config c, d;
    spes_config_defaults(&c);
    if (spes_config_parse_json(&c, text, "fuzz.json") != 0) {
        if (!spes_errmsg()[0])
            abort();
    } else {
        if (spes_config_validate(&c) != 0 && !spes_errmsg()[0])
            abort();
        char *js = spes_config_to_json(&c);
        spes_config_defaults(&d);
        if (!js || spes_config_parse_json(&d, js, "round-trip") != 0 ||
            memcmp(&c.model, &d.model, sizeof c.model) || memcmp(&c.spes, &d.spes, sizeof c.spes) ||
            c.data.nfiles != d.data.nfiles || strcmp(c.data.dtype, d.data.dtype) ||
            strcmp(c.data.format, d.data.format))
            abort();
        free(js);
        spes_config_fini(&d);
    }
    spes_config_fini(&c);
    free(text);
    return 0;
}
