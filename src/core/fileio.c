/* fileio.c: atomic writes and bounded whole-file reads. */
#include "core/fileio.h"
#include "core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *spes_path_join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *p = malloc(la + lb + 2);
    if (!p)
        return NULL;
    memcpy(p, a, la);
    size_t o = la;
    if (la && a[la - 1] != '/')
        p[o++] = '/';
    memcpy(p + o, b, lb + 1);
    return p;
}

int spes_fsync_dir(const char *path)
{
    struct stat st;
    char *copy = strdup(path);
    if (!copy)
        return SPES_ENOMEM;
    const char *dir = (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) ? copy : dirname(copy);
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) {
        int rc = spes_errf_errno(SPES_EIO, "%s: cannot open directory to fsync", dir);
        free(copy);
        return rc;
    }
    int rc = 0;
    if (fsync(fd) != 0 && errno != EINVAL)
        rc = spes_errf_errno(SPES_EIO, "%s: fsync of directory failed", dir);
    close(fd);
    free(copy);
    return rc;
}

int spes_mkdir_p(const char *path, unsigned mode)
{
    if (mode == 0)
        mode = 0755;
    char *p = strdup(path);
    if (!p)
        return SPES_ENOMEM;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, mode) != 0 && errno != EEXIST) {
            int rc = spes_errf_errno(SPES_EIO, "%s: cannot create directory", p);
            free(p);
            return rc;
        }
        *s = '/';
    }
    int rc = 0;
    if (mkdir(p, mode) != 0 && errno != EEXIST)
        rc = spes_errf_errno(SPES_EIO, "%s: cannot create directory", p);
    free(p);
    return rc;
}

int spes_atomic_open(spes_atomic_file *af, const char *path)
{
    memset(af, 0, sizeof *af);
    af->path = strdup(path);
    size_t n = strlen(path) + 32;
    af->tmp = malloc(n);
    if (!af->path || !af->tmp) {
        free(af->path);
        free(af->tmp);
        return SPES_ENOMEM;
    }
    snprintf(af->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(af->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || !(af->fp = fdopen(fd, "wb"))) {
        int rc = spes_errf_errno(SPES_EIO, "%s: cannot create temporary file", af->tmp);
        if (fd >= 0)
            close(fd);
        free(af->path);
        free(af->tmp);
        memset(af, 0, sizeof *af);
        return rc;
    }
    return 0;
}

int spes_atomic_write(spes_atomic_file *af, const void *data, size_t len)
{
    if (len && fwrite(data, 1, len, af->fp) != len)
        return spes_errf_errno(SPES_EIO, "%s: write failed", af->tmp);
    return 0;
}

void spes_atomic_abort(spes_atomic_file *af)
{
    if (af->fp)
        fclose(af->fp);
    if (af->tmp)
        unlink(af->tmp);
    free(af->path);
    free(af->tmp);
    memset(af, 0, sizeof *af);
}

int spes_atomic_commit(spes_atomic_file *af)
{
    int rc = 0;
    if (fflush(af->fp) != 0)
        rc = spes_errf_errno(SPES_EIO, "%s: flush failed", af->tmp);
    else if (fsync(fileno(af->fp)) != 0)
        rc = spes_errf_errno(SPES_EIO, "%s: fsync failed", af->tmp);
    int crc = fclose(af->fp);
    af->fp = NULL;
    if (!rc && crc != 0)
        rc = spes_errf_errno(SPES_EIO, "%s: close failed", af->tmp);
    if (!rc && rename(af->tmp, af->path) != 0)
        rc = spes_errf_errno(SPES_EIO, "%s: rename to %s failed", af->tmp, af->path);
    if (!rc)
        rc = spes_fsync_dir(af->path);
    else
        unlink(af->tmp);
    free(af->path);
    free(af->tmp);
    memset(af, 0, sizeof *af);
    return rc;
}

int spes_write_file_atomic(const char *path, const void *data, size_t len)
{
    spes_atomic_file af;
    int rc = spes_atomic_open(&af, path);
    if (rc)
        return rc;
    if ((rc = spes_atomic_write(&af, data, len)) != 0) {
        spes_atomic_abort(&af);
        return rc;
    }
    return spes_atomic_commit(&af);
}

int spes_read_file(const char *path, size_t max_len, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return spes_errf_errno(errno == ENOENT ? SPES_ENOENT : SPES_EIO, "%s: cannot open", path);
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(fp);
        return spes_errf(SPES_EIO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_len) {
        fclose(fp);
        return spes_errf(SPES_ERANGE, "%s: file is %lld bytes, more than the limit of %zu", path,
                         (long long)st.st_size, max_len);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(fp);
        return SPES_ENOMEM;
    }
    if (n && fread(buf, 1, n, fp) != n) {
        int rc = spes_errf_errno(SPES_EIO, "%s: short read", path);
        free(buf);
        fclose(fp);
        return rc;
    }
    fclose(fp);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

int spes_dir_check_writable(const char *path)
{
    int rc = spes_mkdir_p(path, 0);
    if (rc)
        return rc; /* the message names the directory */
    char *probe = spes_path_join(path, ".spes-write-check-XXXXXX");
    if (!probe)
        return SPES_ENOMEM;
    int fd = mkstemp(probe);
    if (fd < 0) {
        rc = spes_errf_errno(SPES_EIO, "%s: cannot write in this directory", path);
    } else {
        close(fd);
        unlink(probe);
    }
    free(probe);
    return rc;
}
