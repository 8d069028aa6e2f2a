/* cmd_export.c: `spesd export --checkpoint DIR --out DIR [--bf16]`: a Hugging
 * Face OLMoE directory (config.json + model.safetensors) from a checkpoint. */
#include <stdio.h>

#include "checkpoint/checkpoint.h"
#include "core/error.h"
#include "cli/opts.h"
#include "tools/commands.h"
#include "tools/model_load.h"

int cmd_export(int argc, char **argv)
{
    const char *ckpt = NULL, *out = NULL;
    int bf16 = 0;
    const spes_opt opts[] = {
        {"checkpoint", 0, SPES_OPT_STR, &ckpt, 0, 0, "DIR", "a spesd checkpoint"},
        {"out", 0, SPES_OPT_STR, &out, 0, 0, "DIR", "writes DIR/config.json and DIR/model.safetensors"},
        {"bf16", 0, SPES_OPT_FLAG, &bf16, 0, 0, NULL, "store the tensors as bf16 (default fp32)"},
        {NULL, 0, 0, NULL, 0, 0, NULL, NULL},
    };
    const spes_opt_cmd cmd = {"spesd export", "--checkpoint DIR --out DIR [--bf16]", opts, 0, 0, NULL};
    int rc = spes_opts_parse(&cmd, argc, argv, NULL, NULL);
    if (rc == SPES_OPTS_HELP) {
        spes_opts_usage(&cmd, stdout);
        return 0;
    }
    if (!rc && (!ckpt || !out))
        rc = spes_errf(SPES_EINVAL, "--checkpoint DIR and --out DIR are required");
    spes_model *m = NULL;
    if (!rc)
        rc = spes_load_model(&m, ckpt, 1, 1, NULL);
    if (!rc)
        rc = spes_hf_export(out, &m->cfg, &m->layout, m->params, bf16);
    spes_model_free(m);
    if (rc) {
        fprintf(stderr, "spesd export: %s\n", spes_errmsg());
        return 1;
    }
    printf("exported %s to %s (%s)\n", ckpt, out, bf16 ? "bf16" : "fp32");
    return 0;
}
