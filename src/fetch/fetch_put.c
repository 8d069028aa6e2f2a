/* fetch_put.c: streaming HTTP PUT of one file (presigned object-store URLs) with retries.
 * It must never report success without a 2xx answer, nor retry a 4xx refusal. */
#include "core/error.h"
#include "core/log.h"
#include "fetch/fetch.h"
#include "fetch/fetch_int.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct put {
    const char *url;
    const char *path;
    int fd;
    int64_t size;
    int64_t off;    /* next byte to send */
    char body[256]; /* start of the answer, for error messages (object stores explain there) */
    size_t body_len;
    const spes_fetch_opts *o;
    spes__fetch_meter meter;
    int stalled;     /* no byte moved for low_speed_secs */
    int read_failed; /* the file could not be read back (it shrank or failed) */
    curl_off_t last_moved;
    double last_move;
    char curlerr[CURL_ERROR_SIZE];
} put;

static size_t on_read(char *buf, size_t sz, size_t nmemb, void *arg)
{
    put *p = arg;
    size_t want = sz * nmemb;
    if ((int64_t)want > p->size - p->off)
        want = (size_t)(p->size - p->off);
    if (want == 0)
        return 0;
    ssize_t got;
    do
        got = pread(p->fd, buf, want, (off_t)p->off);
    while (got < 0 && errno == EINTR);
    if (got <= 0) {
        p->read_failed = 1;
        return CURL_READFUNC_ABORT;
    }
    p->off += got;
    return (size_t)got;
}

static int on_seek(void *arg, curl_off_t offset, int origin)
{
    put *p = arg;
    if (origin != SEEK_SET || offset < 0 || offset > p->size)
        return CURL_SEEKFUNC_FAIL;
    p->off = offset;
    return CURL_SEEKFUNC_OK;
}

static size_t on_answer(char *data, size_t sz, size_t nmemb, void *arg)
{
    put *p = arg;
    size_t n = sz * nmemb;
    size_t room = sizeof p->body - 1 - p->body_len;
    size_t m = n < room ? n : room;
    memcpy(p->body + p->body_len, data, m);
    p->body_len += m;
    p->body[p->body_len] = '\0';
    return n;
}

static int on_xfer(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt;
    put *p = arg;
    if (spes__fetch_cancelled(p->o))
        return 1;
    if (spes__fetch_stalled(un + dn, &p->last_moved, &p->last_move, p->o->low_speed_secs)) {
        p->stalled = 1; /* curl's low-speed check averages over seconds; see fetch.c */
        return 1;
    }
    spes_fetch_progress pr = {.url = p->url,
                              .done = un,
                              .total = ut ? ut : p->size,
                              .all_done = un,
                              .all_total = p->size,
                              .files = 1};
    spes__fetch_report(p->o, &p->meter, &pr, 0);
    return 0;
}

/* answer_text flattens the start of the answer body to one printable line. */
static const char *answer_text(put *p)
{
    for (size_t i = 0; i < p->body_len; i++)
        if (!isprint((unsigned char)p->body[i]))
            p->body[i] = ' ';
    return p->body;
}

/* attempt sends the file once; 0 on 2xx, else an error with *retry telling whether to try again. */
static int attempt(put *p, int *retry)
{
    *retry = 0;
    CURL *e = curl_easy_init();
    if (!e)
        return spes_errf(SPES_ENOMEM, "%s: out of memory for a curl handle", p->url);
    p->off = 0;
    p->stalled = 0;
    p->read_failed = 0;
    p->last_moved = 0;
    p->last_move = 0.0;
    p->body_len = 0;
    p->body[0] = '\0';
    spes__fetch_easy_common(e, p->url, p->o, p->curlerr);
    curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)p->size);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(e, CURLOPT_READDATA, p);
    curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, on_seek);
    curl_easy_setopt(e, CURLOPT_SEEKDATA, p);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_answer);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, p);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_xfer);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, p);
    CURLcode res = curl_easy_perform(e);
    long code = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(e);
    if (p->read_failed)
        return spes_errf(SPES_EIO, "%s: cannot read at offset %" PRId64 " (did it change during the upload?)",
                         p->path, p->off);
    if (res == CURLE_ABORTED_BY_CALLBACK && !p->stalled)
        return spes_errf(SPES_EINTR, "%s: upload cancelled", p->url);
    if (p->stalled) {
        *retry = 1;
        return spes_errf(SPES_ETIMEDOUT, "%s: upload of %s stalled: nothing moved for %ld s", p->url, p->path,
                         p->o->low_speed_secs);
    }
    if (res != CURLE_OK) {
        *retry = !spes__fetch_curl_permanent(res) && res != CURLE_READ_ERROR;
        return spes_errf(res == CURLE_OPERATION_TIMEDOUT ? SPES_ETIMEDOUT : SPES_ENET,
                         "%s: upload of %s failed: curl error %d: %s", p->url, p->path, (int)res,
                         p->curlerr[0] ? p->curlerr : curl_easy_strerror(res));
    }
    if (code / 100 == 2)
        return 0;
    *retry = !spes__fetch_http_permanent(code);
    return spes_errf(code == 401 || code == 403 ? SPES_EAUTH : SPES_ENET,
                     "%s: upload of %s refused: HTTP %ld%s%s%s", p->url, p->path, code,
                     *retry ? "" : " (not retried)", p->body_len ? ": " : "", answer_text(p));
}

/* nap sleeps ms milliseconds in short slices so that a cancel is noticed. */
static int nap(const spes_fetch_opts *o, long ms)
{
    double end = spes_mono_s() + (double)ms / 1000.0;
    while (spes_mono_s() < end) {
        if (spes__fetch_cancelled(o))
            return 1;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return spes__fetch_cancelled(o);
}

int spes_fetch_put(const char *url, const char *path, const spes_fetch_opts *opts)
{
    spes_fetch_opts tmp;
    put p = {.url = url, .path = path, .fd = -1};
    int rc = spes_fetch_global_init();
    if (!rc)
        rc = spes__fetch_opts(opts, &tmp, &p.o);
    if (!rc)
        rc = spes__fetch_check_url(url);
    if (rc)
        return rc;
    struct stat st;
    if ((p.fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return spes_errf_errno(errno == ENOENT ? SPES_ENOENT : SPES_EIO, "%s: cannot open", path);
    if (fstat(p.fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(p.fd);
        return spes_errf(SPES_EIO, "%s: not a regular file", path);
    }
    p.size = (int64_t)st.st_size;
    spes_rng rng;
    spes__fetch_rng_seed(&rng);
    for (int n = 1;; n++) {
        int retry;
        rc = attempt(&p, &retry);
        if (!rc || !retry || n >= p.o->max_attempts)
            break;
        long ms = spes__fetch_backoff_ms(p.o, n, &rng);
        log_warnx("%s; retrying in %.2f s", spes_errmsg(), (double)ms / 1000.0);
        if (nap(p.o, ms)) {
            rc = spes_errf(SPES_EINTR, "%s: upload cancelled", url);
            break;
        }
    }
    close(p.fd);
    if (!rc) {
        spes_fetch_progress pr = {.url = url,
                                  .done = p.size,
                                  .total = p.size,
                                  .all_done = p.size,
                                  .all_total = p.size,
                                  .files_done = 1,
                                  .files = 1};
        spes__fetch_report(p.o, &p.meter, &pr, 1);
    }
    return rc;
}
