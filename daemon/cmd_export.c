/* cmd_export.c: `spesd export --checkpoint DIR --out DIR [--bf16]`: a Hugging
 * Face OLMoE directory (config.json + model.safetensors) from a checkpoint. */
#include <getopt.h>
#include <stdio.h>

#include "checkpoint/checkpoint.h"
#include "core/error.h"
#include "daemon/cli.h"
#include "daemon/commands.h"
#include "daemon/model_load.h"

int cmd_export(int argc, char **argv)
{
    static const struct option opts[] = {
        {"checkpoint", required_argument, 0, 'c'}, {"out", required_argument, 0, 'o'},
        {"bf16", no_argument, 0, 'b'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    const char *ckpt = NULL, *out = NULL;
    int bf16 = 0, c, rc = 0;
    optind = 1;
    opterr = 0;
    while (!rc && (c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c': ckpt = optarg; break;
        case 'o': out = optarg; break;
        case 'b': bf16 = 1; break;
        case 'h':
            printf("usage: spesd export --checkpoint DIR --out DIR [--bf16]\n"
                   "  writes DIR/config.json and DIR/model.safetensors (fp32, or bf16 with --bf16)\n");
            return 0;
        default: rc = spes_cli_bad_option(argv, optind);
        }
    }
    if (!rc && optind < argc)
        rc = spes_errf(SPES_EINVAL, "unexpected argument \"%s\"", argv[optind]);
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
