/* model_load.c: see model_load.h. */
#include "tools/model_load.h"
#include "checkpoint/checkpoint.h"
#include "config/config.h"
#include "core/error.h"
#include "core/fileio.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int load_own(spes_model **out, const char *dir, int B, int T, spes_pool *pool)
{
    spes_ckpt meta;
    spes_ckpt_reader *r;
    int rc = spes_ckpt_reader_open(&r, dir, &meta);
    if (rc)
        return rc;
    spes_run_config c;
    spes_config_defaults(&c);
    spes_model *m = NULL;
    if ((rc = spes_config_parse_json(&c, meta.config_json, dir)) == 0 &&
        (rc = spes_model_alloc(&m, &c.model, NULL, B, T, 0, pool)) == 0)
        rc = spes_ckpt_reader_read(r, m->params, NULL, NULL);
    spes_config_fini(&c);
    spes_ckpt_reader_close(r);
    spes_ckpt_fini(&meta);
    if (rc) {
        spes_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

static int load_hf(spes_model **out, const char *dir, int B, int T, spes_pool *pool)
{
    spes_model_config mc;
    int rc = spes_hf_read_config(dir, &mc);
    if (rc)
        return rc;
    spes_model *m;
    if ((rc = spes_model_alloc(&m, &mc, NULL, B, T, 0, pool)) != 0)
        return rc;
    if ((rc = spes_hf_import(dir, &m->layout, m->params)) != 0) {
        spes_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

int spes_load_model(spes_model **out, const char *dir, int B, int T, spes_pool *pool)
{
    char *own = spes_path_join(dir, SPES_CKPT_FILE), *hf = spes_path_join(dir, "model.safetensors");
    if (!own || !hf) {
        free(own);
        free(hf);
        return SPES_ENOMEM;
    }
    int has_own = access(own, F_OK) == 0, has_hf = access(hf, F_OK) == 0;
    free(own);
    free(hf);
    if (has_own)
        return load_own(out, dir, B, T, pool);
    if (has_hf)
        return load_hf(out, dir, B, T, pool);
    return spes_errf(SPES_ENOENT, "%s: no checkpoint there (neither %s nor model.safetensors)", dir,
                     SPES_CKPT_FILE);
}
