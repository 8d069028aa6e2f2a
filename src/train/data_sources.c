/* data_sources.c: a run's data files given by URL (with size and SHA-256)
 * are downloaded into a cache directory before training, verified, and then
 * used like local files. Files already present and verified are not fetched
 * again (spes_fetch checks them). */
#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"
#include "fetch/fetch.h"
#include "train/trainer.h"

#include <stdlib.h>
#include <string.h>

int spes_data_fetch_urls(spes_run_config *cfg, const char *cache_dir, const volatile int *cancel)
{
    spes_data_config *d = &cfg->data;
    spes_fetch_item items[SPES_MAX_DATA_FILES];
    char *dests[SPES_MAX_DATA_FILES];
    int idx[SPES_MAX_DATA_FILES], n = 0, rc = 0;
    for (int i = 0; i < d->nfiles; i++) {
        const spes_data_file *f = &d->files[i];
        if (!strstr(f->path, "://"))
            continue;
        if (!f->sha256)
            return spes_errf(SPES_EINVAL, "data file %s is a URL without a sha256: it cannot be verified",
                             f->path);
        char name[80];
        snprintf(name, sizeof name, "%.64s.tokens", f->sha256); /* content-named: two URLs, one file */
        dests[n] = spes_path_join(cache_dir, name);
        if (!dests[n]) {
            rc = SPES_ENOMEM;
            break;
        }
        items[n] = (spes_fetch_item){.url = f->path, .dest = dests[n], .size = f->size, .sha256 = f->sha256};
        idx[n++] = i;
    }
    if (!rc && n > 0 && (rc = spes_mkdir_p(cache_dir, 0750)) == 0 && (rc = spes_fetch_global_init()) == 0) {
        spes_fetch_opts o;
        spes_fetch_opts_init(&o);
        o.cancel = cancel;
        log_info("data: %d file(s) by URL, cached in %s", n, cache_dir);
        rc = spes_fetch(items, (size_t)n, &o);
    }
    for (int k = 0; k < n; k++) {
        if (!rc) { /* the config now names the verified local copy */
            free(d->files[idx[k]].path);
            d->files[idx[k]].path = dests[k];
        } else {
            free(dests[k]);
        }
    }
    return rc;
}
