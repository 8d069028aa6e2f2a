/* store.c: the on-disk blob store: put (buffer or file, streaming), has, read
 * a chunk, delete, usage and GC, and a small cache of decoded manifests for
 * serving. A blob file only ever appears by rename after its whole-blob hash
 * is known to match its name, and its manifest is written before it; this file
 * never keeps a whole blob in memory and never modifies a blob once named. */
#include "blob/blob_internal.h"

#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define IO_BUF (1u << 20)

const char *spes__blob_hex(const uint8_t hash[32], char out[65])
{
    spes_hex_encode(hash, 32, out);
    return out;
}

int spes__blob_file(const spes_blob_store *s, const uint8_t hash[32], const char *suffix, char *out, size_t n)
{
    char hex[65];
    int w = snprintf(out, n, "%s/%s%s", s->dir, spes__blob_hex(hash, hex), suffix ? suffix : "");
    if (w < 0 || (size_t)w >= n)
        return spes_errf(SPES_ERANGE, "%s: blob path too long", s->dir);
    return 0;
}

int spes__blob_pread_full(int fd, void *buf, size_t len, uint64_t off, const char *path)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t r = pread(fd, p, len, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return spes_errf_errno(SPES_EIO, "%s: read at %llu failed", path, (unsigned long long)off);
        if (r == 0)
            return spes_errf(SPES_EIO, "%s: file ends before byte %llu", path, (unsigned long long)off);
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

int spes__blob_pwrite_full(int fd, const void *buf, size_t len, uint64_t off, const char *path)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t r = pwrite(fd, p, len, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return spes_errf_errno(SPES_EIO, "%s: write at %llu failed", path, (unsigned long long)off);
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

int spes_blob_store_open(spes_blob_store **out, const char *dir, const spes_blob_store_opts *o)
{
    spes_blob_store_opts def = {0};
    if (!o)
        o = &def;
    uint32_t cs = o->chunk_size ? o->chunk_size : SPES_CHUNK_SIZE_DEFAULT;
    if (cs < SPES_CHUNK_SIZE_MIN || cs > SPES_CHUNK_SIZE_MAX)
        return spes_errf(SPES_EINVAL, "%s: chunk size %u not in %u..%u", dir, cs, SPES_CHUNK_SIZE_MIN,
                         SPES_CHUNK_SIZE_MAX);
    int rc = spes_mkdir_p(dir, 0700);
    if (rc)
        return rc;
    spes_blob_store *s = calloc(1, sizeof *s);
    if (!s || !(s->dir = strdup(dir))) {
        free(s);
        return SPES_ENOMEM;
    }
    s->chunk_size = cs;
    s->max_bytes = o->max_bytes;
    s->keep = o->keep;
    s->keep_arg = o->keep_arg;
    pthread_mutex_init(&s->mu, NULL);
    *out = s;
    return 0;
}

static void mref_free(spes__blob_mref *r)
{
    spes_manifest_fini(&r->m);
    free(r);
}

void spes_blob_store_close(spes_blob_store *s)
{
    if (!s)
        return;
    for (int i = 0; i < SPES__BLOB_MCACHE; i++)
        if (s->cache[i])
            mref_free(s->cache[i]); /* callers must have released their references */
    pthread_mutex_destroy(&s->mu);
    free(s->dir);
    free(s);
}

const char *spes_blob_store_dir(const spes_blob_store *s)
{
    return s->dir;
}

/* ---- manifests ---- */

static int manifest_load(spes_blob_store *s, const uint8_t hash[32], spes_manifest *m)
{
    char path[4096];
    int rc = spes__blob_file(s, hash, ".manifest", path, sizeof path);
    if (rc)
        return rc;
    char *buf = NULL;
    size_t len = 0;
    if ((rc = spes_read_file(path, SPES_MANIFEST_HEADER_LEN + 32u * SPES_MANIFEST_MAX_CHUNKS, &buf, &len)) !=
        0)
        return rc;
    rc = spes_manifest_decode((const uint8_t *)buf, len, m);
    free(buf);
    if (rc)
        return spes_errf(rc, "%s: bad manifest: %s", path, spes_errmsg());
    if (memcmp(m->blob_hash, hash, 32) != 0) {
        spes_manifest_fini(m);
        return spes_errf(SPES_EFORMAT, "%s: manifest names another blob", path);
    }
    return 0;
}

static void cache_evict_locked(spes_blob_store *s, int i)
{
    spes__blob_mref *r = s->cache[i];
    s->cache[i] = NULL;
    r->cached = 0;
    if (r->refs == 0)
        mref_free(r);
}

static spes__blob_mref *cache_find_locked(spes_blob_store *s, const uint8_t hash[32])
{
    for (int i = 0; i < SPES__BLOB_MCACHE; i++)
        if (s->cache[i] && memcmp(s->cache[i]->hash, hash, 32) == 0)
            return s->cache[i];
    return NULL;
}

static void cache_insert_locked(spes_blob_store *s, spes__blob_mref *r)
{
    int slot = -1;
    for (int i = 0; i < SPES__BLOB_MCACHE && slot < 0; i++)
        if (!s->cache[i])
            slot = i;
    if (slot < 0) {
        slot = 0;
        for (int i = 1; i < SPES__BLOB_MCACHE; i++)
            if (s->cache[i]->used < s->cache[slot]->used)
                slot = i;
        cache_evict_locked(s, slot);
    }
    r->cached = 1;
    s->cache[slot] = r;
}

int spes__blob_mref_get(spes_blob_store *s, const uint8_t hash[32], spes__blob_mref **out)
{
    pthread_mutex_lock(&s->mu);
    spes__blob_mref *r = cache_find_locked(s, hash);
    if (r) {
        r->refs++;
        r->used = ++s->tick;
        pthread_mutex_unlock(&s->mu);
        *out = r;
        return 0;
    }
    pthread_mutex_unlock(&s->mu);
    if (!spes_blob_has(s, hash)) {
        char hex[65];
        return spes_errf(SPES_ENOENT, "blob %s: not held here", spes__blob_hex(hash, hex));
    }
    if (!(r = calloc(1, sizeof *r)))
        return SPES_ENOMEM;
    int rc = manifest_load(s, hash, &r->m);
    if (rc) {
        free(r);
        return rc;
    }
    memcpy(r->hash, hash, 32);
    pthread_mutex_lock(&s->mu);
    spes__blob_mref *other = cache_find_locked(s, hash);
    if (other) { /* another thread loaded it meanwhile */
        mref_free(r);
        r = other;
    } else {
        cache_insert_locked(s, r);
    }
    r->refs++;
    r->used = ++s->tick;
    pthread_mutex_unlock(&s->mu);
    *out = r;
    return 0;
}

void spes__blob_mref_put(spes_blob_store *s, spes__blob_mref *r)
{
    pthread_mutex_lock(&s->mu);
    int gone = --r->refs == 0 && !r->cached;
    pthread_mutex_unlock(&s->mu);
    if (gone)
        mref_free(r);
}

int spes_blob_manifest_get(spes_blob_store *s, const uint8_t hash[32], spes_manifest *out)
{
    spes__blob_mref *r;
    int rc = spes__blob_mref_get(s, hash, &r);
    if (rc)
        return rc;
    *out = r->m;
    size_t n = (size_t)r->m.chunk_count * 32;
    out->chunk_hashes = malloc(n ? n : 1);
    if (out->chunk_hashes && n)
        memcpy(out->chunk_hashes, r->m.chunk_hashes, n);
    spes__blob_mref_put(s, r);
    return out->chunk_hashes ? 0 : SPES_ENOMEM;
}

/* ---- put ---- */

int spes_blob_has(spes_blob_store *s, const uint8_t hash[32])
{
    char p[4096], pm[4096];
    struct stat st;
    if (spes__blob_file(s, hash, NULL, p, sizeof p) || spes__blob_file(s, hash, ".manifest", pm, sizeof pm))
        return 0;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode) && stat(pm, &st) == 0;
}

int spes_blob_path(const spes_blob_store *s, const uint8_t hash[32], char *out, size_t n)
{
    return spes__blob_file(s, hash, NULL, out, n);
}

int spes__blob_install(spes_blob_store *s, const char *tmp_path, const spes_manifest *m)
{
    char path[4096], mpath[4096];
    uint8_t *enc = NULL;
    size_t len = 0;
    int rc = spes__blob_file(s, m->blob_hash, NULL, path, sizeof path);
    if (!rc)
        rc = spes__blob_file(s, m->blob_hash, ".manifest", mpath, sizeof mpath);
    if (!rc)
        rc = spes_manifest_encode(m, &enc, &len);
    if (!rc)
        rc = spes_write_file_atomic(mpath, enc, len);
    free(enc);
    if (rc)
        return rc;
    if (rename(tmp_path, path) != 0)
        return spes_errf_errno(SPES_EIO, "%s: cannot rename to %s", tmp_path, path);
    if ((rc = spes_fsync_dir(s->dir)) != 0)
        return rc;
    if (s->max_bytes) {
        int n = 0;
        if (spes_blob_gc(s, s->max_bytes, m->blob_hash, &n) != 0)
            log_warnx("%s: blob store over its limit: %s", s->dir, spes_errmsg());
        else if (n)
            log_info("%s: GC removed %d blob(s)", s->dir, n);
    }
    return 0;
}

static int put_tmp(spes_blob_store *s, char *tmp, size_t n, int *fd)
{
    snprintf(tmp, n, "%s/.put-XXXXXX", s->dir);
    if ((*fd = mkstemp(tmp)) < 0)
        return spes_errf_errno(SPES_EIO, "%s: cannot create a temporary blob file", s->dir);
    return 0;
}

static int put_finish(spes_blob_store *s, int fd, const char *tmp, spes_manifest *m, uint8_t hash_out[32])
{
    int rc = 0;
    if (fdatasync(fd) != 0)
        rc = spes_errf_errno(SPES_EIO, "%s: fsync failed", tmp);
    close(fd);
    if (!rc && spes_blob_has(s, m->blob_hash))
        unlink(tmp); /* already held: identical bytes by construction */
    else if (!rc)
        rc = spes__blob_install(s, tmp, m);
    if (rc)
        unlink(tmp);
    else if (hash_out)
        memcpy(hash_out, m->blob_hash, 32);
    spes_manifest_fini(m);
    return rc;
}

int spes_blob_put(spes_blob_store *s, const void *data, size_t len, uint8_t hash_out[32])
{
    spes_manifest m;
    char tmp[4096];
    int fd;
    int rc = spes_manifest_build(data, len, s->chunk_size, &m);
    if (rc)
        return rc;
    if (spes_blob_has(s, m.blob_hash)) {
        if (hash_out)
            memcpy(hash_out, m.blob_hash, 32);
        spes_manifest_fini(&m);
        return 0;
    }
    if ((rc = put_tmp(s, tmp, sizeof tmp, &fd)) != 0) {
        spes_manifest_fini(&m);
        return rc;
    }
    if ((rc = spes__blob_pwrite_full(fd, data, len, 0, tmp)) != 0) {
        close(fd);
        unlink(tmp);
        spes_manifest_fini(&m);
        return rc;
    }
    return put_finish(s, fd, tmp, &m, hash_out);
}

/* copy_hashing streams src into dst through one buffer, building the manifest. */
static int copy_hashing(int src, const char *path, int dst, const char *tmp, spes_manifest_builder *b)
{
    uint8_t *buf = malloc(IO_BUF);
    if (!buf)
        return SPES_ENOMEM;
    uint64_t off = 0;
    int rc = 0;
    for (;;) {
        ssize_t r = read(src, buf, IO_BUF);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = spes_errf_errno(SPES_EIO, "%s: read failed", path);
            break;
        }
        if (r == 0)
            break;
        if ((rc = spes_manifest_builder_update(b, buf, (size_t)r)) != 0 ||
            (rc = spes__blob_pwrite_full(dst, buf, (size_t)r, off, tmp)) != 0)
            break;
        off += (uint64_t)r;
    }
    free(buf);
    return rc;
}

int spes_blob_put_file(spes_blob_store *s, const char *path, uint8_t hash_out[32])
{
    int src = open(path, O_RDONLY | O_CLOEXEC);
    if (src < 0)
        return spes_errf_errno(errno == ENOENT ? SPES_ENOENT : SPES_EIO, "%s: cannot open", path);
    spes_manifest_builder b;
    spes_manifest m;
    char tmp[4096];
    int fd = -1;
    int rc = spes_manifest_builder_init(&b, s->chunk_size);
    if (rc) {
        close(src);
        return rc;
    }
    if ((rc = put_tmp(s, tmp, sizeof tmp, &fd)) == 0)
        rc = copy_hashing(src, path, fd, tmp, &b);
    close(src);
    if (rc) {
        spes_manifest_builder_abort(&b);
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        return rc;
    }
    if ((rc = spes_manifest_builder_finish(&b, &m)) != 0) {
        close(fd);
        unlink(tmp);
        return rc;
    }
    return put_finish(s, fd, tmp, &m, hash_out);
}

/* ---- read ---- */

/* open_blob opens path, the file of blob hash, for reading. */
static int open_blob(const char *path, const uint8_t hash[32], int *fd)
{
    if ((*fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        char hex[65];
        if (errno == ENOENT)
            return spes_errf(SPES_ENOENT, "blob %s: not held here", spes__blob_hex(hash, hex));
        return spes_errf_errno(SPES_EIO, "%s: cannot open", path);
    }
    return 0;
}

int spes_blob_open(spes_blob_store *s, const uint8_t hash[32], int *fd)
{
    char path[4096];
    int rc = spes__blob_file(s, hash, NULL, path, sizeof path);
    return rc ? rc : open_blob(path, hash, fd);
}

int spes__blob_chunk_header(const spes__blob_mref *r, uint32_t index, spes_chunk_header *h)
{
    if (index >= r->m.chunk_count) {
        char hex[65];
        return spes_errf(SPES_ERANGE, "blob %s: chunk %u does not exist (%u chunks)",
                         spes__blob_hex(r->hash, hex), index, r->m.chunk_count);
    }
    return spes_chunk_header_for(&r->m, index, h);
}

int spes__blob_chunk_pread(spes_blob_store *s, const spes_chunk_header *h, void *buf)
{
    char path[4096];
    int fd;
    int rc = spes__blob_file(s, h->blob_hash, NULL, path, sizeof path);
    if (rc || (rc = open_blob(path, h->blob_hash, &fd)) != 0)
        return rc;
    rc = spes__blob_pread_full(fd, buf, h->length, h->offset, path);
    close(fd);
    return rc;
}

int spes_blob_chunk_read(spes_blob_store *s, const uint8_t hash[32], uint32_t index, void *buf, size_t cap,
                         spes_chunk_header *h)
{
    spes__blob_mref *r;
    int rc = spes__blob_mref_get(s, hash, &r);
    if (rc)
        return rc;
    rc = spes__blob_chunk_header(r, index, h);
    spes__blob_mref_put(s, r);
    if (rc)
        return rc;
    if (cap < h->length) {
        char hex[65];
        return spes_errf(SPES_EINVAL, "blob %s: chunk %u needs %u bytes, buffer has %zu",
                         spes__blob_hex(hash, hex), index, h->length, cap);
    }
    return spes__blob_chunk_pread(s, h, buf);
}

/* ---- delete, usage, GC ---- */

int spes_blob_delete(spes_blob_store *s, const uint8_t hash[32])
{
    static const char *const suffix[] = {"", ".manifest", ".part", ".part.map", ".part.manifest"};
    char path[4096];
    int found = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < SPES__BLOB_MCACHE; i++)
        if (s->cache[i] && memcmp(s->cache[i]->hash, hash, 32) == 0)
            cache_evict_locked(s, i);
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < sizeof suffix / sizeof *suffix; i++) {
        int rc = spes__blob_file(s, hash, suffix[i], path, sizeof path);
        if (rc)
            return rc;
        if (unlink(path) == 0)
            found = 1;
        else if (errno != ENOENT)
            return spes_errf_errno(SPES_EIO, "%s: cannot remove", path);
    }
    if (!found) {
        char hex[65];
        return spes_errf(SPES_ENOENT, "blob %s: not held here", spes__blob_hex(hash, hex));
    }
    return spes_fsync_dir(s->dir);
}

typedef struct held_blob {
    uint8_t hash[32];
    uint64_t bytes; /* blob + manifest, or a partial fetch's files */
    int64_t mtime;
    int partial; /* H.part: a fetch that stopped (or runs) */
} held_blob;

/* scan lists held blobs (*list, malloc'd) and sums every store file's bytes. */
static int scan(spes_blob_store *s, held_blob **list, int *n, uint64_t *total)
{
    DIR *d = opendir(s->dir);
    if (!d)
        return spes_errf_errno(SPES_EIO, "%s: cannot list", s->dir);
    int cap = 0, rc = 0;
    *list = NULL;
    *n = 0;
    *total = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, 0) != 0 || !S_ISREG(st.st_mode))
            continue;
        uint8_t h[32];
        char hex[65];
        if (strlen(e->d_name) < 64)
            continue;
        memcpy(hex, e->d_name, 64); /* the name of a blob's manifest or partial fetch starts with it too */
        hex[64] = '\0';
        if (spes_hex_decode(hex, h, 32) != 0)
            continue;
        *total += (uint64_t)st.st_size;
        int partial = strcmp(e->d_name + 64, ".part") == 0;
        if (e->d_name[64] != '\0' && !partial)
            continue; /* a manifest or a partial fetch's map: counted, collected with their blob */
        if (*n == cap) {
            cap = cap ? 2 * cap : 64;
            held_blob *nl = realloc(*list, (size_t)cap * sizeof *nl);
            if (!nl) {
                rc = SPES_ENOMEM;
                break;
            }
            *list = nl;
        }
        held_blob *b = &(*list)[(*n)++];
        memcpy(b->hash, h, 32);
        b->bytes = (uint64_t)st.st_size;
        b->mtime = (int64_t)st.st_mtime;
        b->partial = partial;
    }
    closedir(d);
    return rc;
}

int spes_blob_store_usage(spes_blob_store *s, uint64_t *bytes, uint32_t *nblobs)
{
    held_blob *list;
    int n;
    uint64_t total;
    int rc = scan(s, &list, &n, &total);
    free(list);
    if (rc)
        return rc;
    if (bytes)
        *bytes = total;
    if (nblobs)
        *nblobs = (uint32_t)n;
    return 0;
}

static int by_mtime(const void *a, const void *b)
{
    const held_blob *x = a, *y = b;
    return x->mtime < y->mtime ? -1 : x->mtime > y->mtime;
}

/* partial_idle says whether the partial fetch of hash is stopped: nobody holds
 * the lock a running fetch keeps on its map file (fetch.c), and the blob is not
 * held (a partial beside a held blob is only an old leftover: collectable too). */
static int partial_idle(spes_blob_store *s, const uint8_t hash[32])
{
    char map[4096];
    if (spes__blob_file(s, hash, ".part.map", map, sizeof map) != 0)
        return 0;
    int fd = open(map, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT;
    int idle = flock(fd, LOCK_EX | LOCK_NB) == 0;
    close(fd); /* releases the lock */
    return idle;
}

/* delete_partial removes a stopped fetch's files, adding their sizes to *bytes. */
static int delete_partial(spes_blob_store *s, const uint8_t hash[32], uint64_t *bytes)
{
    static const char *const suffix[] = {".part", ".part.map", ".part.manifest"};
    char path[4096];
    *bytes = 0;
    for (size_t i = 0; i < sizeof suffix / sizeof *suffix; i++) {
        struct stat st;
        int rc = spes__blob_file(s, hash, suffix[i], path, sizeof path);
        if (rc)
            return rc;
        if (stat(path, &st) == 0)
            *bytes += (uint64_t)st.st_size;
        if (unlink(path) != 0 && errno != ENOENT)
            return spes_errf_errno(SPES_EIO, "%s: cannot remove", path);
    }
    return spes_fsync_dir(s->dir);
}

int spes_blob_gc(spes_blob_store *s, uint64_t max_bytes, const uint8_t *protect, int *ndeleted)
{
    held_blob *list;
    int n, deleted = 0;
    uint64_t total;
    int rc = scan(s, &list, &n, &total);
    if (rc) {
        free(list);
        return rc;
    }
    qsort(list, (size_t)n, sizeof *list, by_mtime);
    for (int i = 0; i < n && total > max_bytes; i++) {
        if (protect && memcmp(list[i].hash, protect, 32) == 0)
            continue;
        if (s->keep && s->keep(s->keep_arg, list[i].hash))
            continue;
        if (list[i].partial) {
            uint64_t freed = 0;
            if (!partial_idle(s, list[i].hash))
                continue; /* a fetch is writing it */
            if ((rc = delete_partial(s, list[i].hash, &freed)) != 0)
                break;
            total -= freed < total ? freed : total;
            deleted++;
            continue;
        }
        char mpath[4096];
        struct stat st;
        if (spes__blob_file(s, list[i].hash, ".manifest", mpath, sizeof mpath) == 0 && stat(mpath, &st) == 0)
            list[i].bytes += (uint64_t)st.st_size;
        if ((rc = spes_blob_delete(s, list[i].hash)) != 0)
            break;
        total -= list[i].bytes < total ? list[i].bytes : total;
        deleted++;
    }
    free(list);
    if (ndeleted)
        *ndeleted = deleted;
    if (!rc && total > max_bytes)
        rc = spes_errf(SPES_ERANGE,
                       "%s: %llu bytes held, over the limit of %llu, and nothing more may be removed", s->dir,
                       (unsigned long long)total, (unsigned long long)max_bytes);
    return rc;
}

void spes_blob_store_stats(spes_blob_store *s, spes_blob_serve_stats *out)
{
    out->manifests_served = s->manifests_served;
    out->chunks_served = s->chunks_served;
    out->bytes_served = s->bytes_served;
    out->refused = s->refused;
}
