/* fetch.c: parallel verified downloads with the curl multi interface.
 * Bytes go to DEST.part and are hashed as they arrive; DEST appears only after
 * the size and SHA-256 match (fsync, rename, fsync dir). This file must never
 * rename an unverified file into place, nor keep a .part that failed a check. */
#include "fetch/fetch.h"
#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"
#include "core/sha256.h"
#include "fetch/fetch_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

enum job_state { J_WAIT, J_RUN, J_DONE, J_FAIL };
enum write_err { W_NONE, W_DISK, W_TOOBIG, W_RANGE };

typedef struct job {
    const spes_fetch_item *it;
    const spes_fetch_opts *o;
    size_t index;
    char *part; /* DEST.part */
    int fd;     /* the .part while a transfer runs, else -1 */
    CURL *easy;
    enum job_state state;
    uint8_t want[SPES_SHA256_LEN];
    int has_want;
    spes_sha256_ctx sha; /* covers exactly the first `have` bytes of .part while sha_live */
    int sha_live;
    int64_t have;        /* bytes in .part */
    int64_t best;        /* most bytes .part ever held: progress means beating it */
    int64_t start;       /* offset asked for in this attempt */
    int64_t total;       /* size for progress: the item's, else from the response, -1 unknown */
    int checked;         /* response status looked at by the write callback */
    int64_t range_start; /* start in Content-Range of the current response, -1 if none */
    enum write_err werr;
    int werrno;
    int stalled;              /* no byte for low_speed_secs: the transfer was cut by on_xfer */
    curl_off_t last_dn;       /* bytes received when on_xfer last saw a change */
    double last_move;         /* time of that change */
    int attempts, fails, bad; /* requests; failures in a row without progress; failed checks */
    double retry_at;
    int err; /* SPES_E* of the final failure */
    char why[512];
    char curlerr[CURL_ERROR_SIZE];
} job;

typedef struct run {
    job *jobs;
    size_t n;
    const spes_fetch_opts *o;
    CURLM *multi;
    int running;
    spes__fetch_meter meter;
    spes_rng rng;
} run;

static void sha_drop(job *j)
{
    if (j->sha_live) {
        uint8_t d[SPES_SHA256_LEN];
        spes_sha256_final(&j->sha, d);
        j->sha_live = 0;
    }
}

static int sha_restart(job *j)
{
    sha_drop(j);
    if (spes_sha256_init(&j->sha) != 0)
        return spes_errf(SPES_ENOMEM, "%s: out of memory for SHA-256", j->it->url);
    j->sha_live = 1;
    return 0;
}

static void close_part(job *j)
{
    if (j->fd >= 0)
        close(j->fd);
    j->fd = -1;
}

/* discard_part deletes a .part whose bytes cannot be trusted, so the next try starts at zero. */
static void discard_part(job *j)
{
    close_part(j);
    sha_drop(j);
    unlink(j->part);
    j->have = 0;
    j->best = 0;
}

/* fail_now ends a job for good; the message names the URL. */
static void fail_now(job *j, int err)
{
    j->state = J_FAIL;
    j->err = err;
    if (j->have == 0 && err != SPES_EEXIST)
        unlink(j->part); /* an empty .part is not worth keeping for a resume */
    close_part(j);
    sha_drop(j);
    log_warnx("%s: download failed after %d attempt%s: %s", j->it->url, j->attempts,
              j->attempts == 1 ? "" : "s", j->why);
}

/* retry_later schedules the next attempt with backoff, or gives up after max_attempts. */
static void retry_later(run *r, job *j, int err)
{
    close_part(j);
    if (j->fails >= r->o->max_attempts || j->bad >= r->o->max_attempts) {
        fail_now(j, err);
        return;
    }
    int k = j->fails > j->bad ? j->fails : j->bad;
    long ms = spes__fetch_backoff_ms(r->o, k > 0 ? k : 1, &r->rng);
    j->retry_at = spes_mono_s() + (double)ms / 1000.0;
    j->state = J_WAIT;
    j->err = err;
    log_warnx("%s: %s; retrying in %.2f s", j->it->url, j->why, (double)ms / 1000.0);
}

static int hash_prefix(job *j, int64_t len)
{
    static _Thread_local unsigned char buf[1 << 16];
    int rc = sha_restart(j);
    for (int64_t off = 0; !rc && off < len;) {
        size_t want = (size_t)(len - off < (int64_t)sizeof buf ? len - off : (int64_t)sizeof buf);
        ssize_t got = pread(j->fd, buf, want, off);
        if (got <= 0)
            return spes_errf_errno(SPES_EIO, "%s: cannot read back", j->part);
        spes_sha256_update(&j->sha, buf, (size_t)got);
        off += got;
    }
    return rc;
}

/* open_part opens DEST.part under an exclusive lock and makes the hash cover what it holds. */
static int open_part(job *j)
{
    j->fd = open(j->part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (j->fd < 0)
        return spes_errf_errno(SPES_EIO, "%s: cannot open", j->part);
    if (flock(j->fd, LOCK_EX | LOCK_NB) != 0)
        return spes_errf(SPES_EEXIST, "%s: another process is downloading it", j->part);
    struct stat st;
    if (fstat(j->fd, &st) != 0)
        return spes_errf_errno(SPES_EIO, "%s: cannot stat", j->part);
    int64_t size = (int64_t)st.st_size;
    if (j->sha_live && size == j->have)
        return 0;
    if (j->it->size >= 0 && size > j->it->size) {
        if (ftruncate(j->fd, 0) != 0)
            return spes_errf_errno(SPES_EIO, "%s: cannot truncate", j->part);
        size = 0;
    }
    j->have = size;
    if (size > j->best)
        j->best = size;
    return hash_prefix(j, size);
}

/* verify checks size and digest of a complete .part and moves it to DEST durably. */
static void verify(run *r, job *j)
{
    const char *url = j->it->url;
    if (j->it->size >= 0 && j->have != j->it->size) {
        snprintf(j->why, sizeof j->why, "size mismatch: expected %" PRId64 " bytes, got %" PRId64,
                 j->it->size, j->have);
        discard_part(j);
        j->bad++;
        retry_later(r, j, SPES_EFORMAT);
        return;
    }
    uint8_t got[SPES_SHA256_LEN];
    spes_sha256_final(&j->sha, got);
    j->sha_live = 0;
    if (j->has_want && memcmp(got, j->want, sizeof got) != 0) {
        char hg[2 * SPES_SHA256_LEN + 1];
        spes_hex_encode(got, sizeof got, hg);
        snprintf(j->why, sizeof j->why, "sha256 mismatch: expected %.64s, got %s", j->it->sha256, hg);
        discard_part(j);
        j->bad++;
        retry_later(r, j, SPES_EFORMAT);
        return;
    }
    int rc = 0;
    if (fsync(j->fd) != 0)
        rc = spes_errf_errno(SPES_EIO, "%s: fsync failed", j->part);
    close_part(j);
    if (!rc && rename(j->part, j->it->dest) != 0)
        rc = spes_errf_errno(SPES_EIO, "%s: rename to %s failed", j->part, j->it->dest);
    if (!rc)
        rc = spes_fsync_dir(j->it->dest);
    if (rc) {
        snprintf(j->why, sizeof j->why, "%s", spes_errmsg());
        fail_now(j, rc);
        return;
    }
    j->state = J_DONE;
    j->total = j->have;
    log_debug("%s: %" PRId64 " bytes verified into %s", url, j->have, j->it->dest);
}

/* restart_body handles a 200 answer to a Range request: the server sends the whole file again. */
static int restart_body(job *j)
{
    log_info("%s: server ignored the Range request; downloading from the start", j->it->url);
    if (ftruncate(j->fd, 0) != 0)
        return -1;
    j->have = 0;
    return sha_restart(j) ? -1 : 0;
}

static int check_response(job *j)
{
    long code = 0;
    curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &code);
    j->checked = 1;
    if (j->start > 0 && code == 206 && j->range_start != j->start) {
        j->werr = W_RANGE;
        return -1;
    }
    if (j->start == 0 && code == 206) {
        j->werr = W_RANGE;
        return -1;
    }
    if (j->start > 0 && code != 206 && restart_body(j) != 0) {
        j->werr = W_DISK;
        j->werrno = errno;
        return -1;
    }
    curl_off_t cl = -1;
    curl_easy_getinfo(j->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
    if (j->it->size < 0 && cl >= 0)
        j->total = j->have + (int64_t)cl;
    return 0;
}

static size_t on_body(char *data, size_t sz, size_t nmemb, void *arg)
{
    job *j = arg;
    size_t n = sz * nmemb;
    if (!j->checked && check_response(j) != 0)
        return 0;
    if (j->it->size >= 0 && j->have + (int64_t)n > j->it->size) {
        j->werr = W_TOOBIG;
        return 0;
    }
    for (size_t off = 0; off < n;) {
        ssize_t w = pwrite(j->fd, data + off, n - off, (off_t)(j->have + (int64_t)off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            j->werr = W_DISK;
            j->werrno = w < 0 ? errno : EIO;
            return 0;
        }
        off += (size_t)w;
    }
    spes_sha256_update(&j->sha, data, n);
    j->have += (int64_t)n;
    return n;
}

static size_t on_header(char *line, size_t sz, size_t nmemb, void *arg)
{
    job *j = arg;
    size_t n = sz * nmemb;
    if (n >= 5 && strncmp(line, "HTTP/", 5) == 0)
        j->range_start = -1;
    else if (n > 14 && strncasecmp(line, "Content-Range:", 14) == 0) {
        long long a;
        char buf[128];
        size_t m = n - 14 < sizeof buf - 1 ? n - 14 : sizeof buf - 1;
        memcpy(buf, line + 14, m);
        buf[m] = '\0';
        if (sscanf(buf, " bytes %lld-", &a) == 1)
            j->range_start = a;
    }
    return n;
}

/* on_xfer stops a transfer on cancel, or when no byte came for low_speed_secs: curl's own
 * low-speed check averages over a few seconds and so is slow to see a stall after a burst. */
static int on_xfer(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt, (void)ut, (void)un;
    job *j = arg;
    if (spes__fetch_cancelled(j->o))
        return 1;
    if (spes__fetch_stalled(dn, &j->last_dn, &j->last_move, j->o->low_speed_secs)) {
        j->stalled = 1;
        return 1;
    }
    return 0;
}

/* start begins one attempt: opens .part, and either verifies it (already complete) or asks for the rest. */
static void start(run *r, job *j)
{
    j->attempts++;
    int rc = open_part(j);
    if (rc) {
        snprintf(j->why, sizeof j->why, "%s", spes_errmsg());
        fail_now(j, rc);
        return;
    }
    if (j->it->size >= 0 && j->have == j->it->size) {
        verify(r, j);
        return;
    }
    if (!(j->easy = curl_easy_init())) {
        snprintf(j->why, sizeof j->why, "out of memory for a curl handle");
        fail_now(j, SPES_ENOMEM);
        return;
    }
    CURL *e = j->easy;
    spes__fetch_easy_common(e, j->it->url, r->o, j->curlerr);
    curl_easy_setopt(e, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 256L * 1024);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, j);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_xfer);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, j);
    curl_easy_setopt(e, CURLOPT_PRIVATE, j);
    char range[32];
    if (j->have > 0) {
        snprintf(range, sizeof range, "%" PRId64 "-", j->have);
        curl_easy_setopt(e, CURLOPT_RANGE, range); /* copied by curl */
    }
    j->start = j->have;
    j->checked = 0;
    j->range_start = -1;
    j->werr = W_NONE;
    j->stalled = 0;
    j->last_dn = 0;
    j->last_move = 0.0;
    curl_multi_add_handle(r->multi, e);
    j->state = J_RUN;
    r->running++;
}

/* classify turns a finished failed attempt into a reason, and whether retrying is pointless. */
static int classify(job *j, CURLcode res, long code, int *permanent, int *err)
{
    *permanent = 0;
    *err = SPES_ENET;
    if (j->werr == W_DISK) {
        snprintf(j->why, sizeof j->why, "cannot write %s: %s", j->part, strerror(j->werrno));
        *permanent = 1;
        *err = SPES_EIO;
    } else if (j->werr == W_TOOBIG) {
        snprintf(j->why, sizeof j->why, "server sent more than the expected %" PRId64 " bytes", j->it->size);
        *err = SPES_EFORMAT;
        return 1;
    } else if (j->werr == W_RANGE) {
        snprintf(j->why, sizeof j->why,
                 "server answered a request for offset %" PRId64 " with a range starting at %" PRId64,
                 j->start, j->range_start);
        return 1;
    } else if (j->stalled) {
        snprintf(j->why, sizeof j->why, "stalled: no data for %ld s", j->o->low_speed_secs);
        *err = SPES_ETIMEDOUT;
    } else if (res == CURLE_HTTP_RETURNED_ERROR || res == CURLE_OK) {
        snprintf(j->why, sizeof j->why, "HTTP %ld%s", code,
                 spes__fetch_http_permanent(code) && code != 416 ? " (not retried)" : "");
        *permanent = spes__fetch_http_permanent(code) && code != 416;
        *err = code == 404 || code == 410     ? SPES_ENOENT
               : (code == 401 || code == 403) ? SPES_EAUTH
                                              : SPES_ENET;
        return code == 416; /* our offset is past the server's end: start again */
    } else {
        snprintf(j->why, sizeof j->why, "curl error %d: %s", (int)res,
                 j->curlerr[0] ? j->curlerr : curl_easy_strerror(res));
        *permanent = spes__fetch_curl_permanent(res);
        *err = res == CURLE_OPERATION_TIMEDOUT ? SPES_ETIMEDOUT : SPES_ENET;
    }
    return 0;
}

/* finish handles the end of one transfer: verify on success, else retry or give up. */
static void finish(run *r, job *j, CURLcode res)
{
    long code = 0;
    curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &code);
    curl_multi_remove_handle(r->multi, j->easy);
    curl_easy_cleanup(j->easy);
    j->easy = NULL;
    r->running--;
    if (res == CURLE_ABORTED_BY_CALLBACK && !j->stalled) { /* cancelled; the run loop reports it */
        close_part(j);
        j->state = J_WAIT;
        j->retry_at = 0;
        return;
    }
    if (res == CURLE_OK && code / 100 == 2 && j->werr == W_NONE) {
        verify(r, j);
        return;
    }
    int permanent, err;
    int discard = classify(j, res, code, &permanent, &err);
    if (discard) {
        discard_part(j);
        j->bad += err == SPES_EFORMAT;
    }
    if (permanent) {
        fail_now(j, err);
        return;
    }
    if (j->have > j->best) {
        j->best = j->have;
        j->fails = 0; /* a resumable failure that made progress starts a fresh count */
    } else if (err != SPES_EFORMAT) {
        j->fails++;
    }
    retry_later(r, j, err);
}

/* already_there tells whether DEST holds the expected bytes (needs a digest to be sure). */
static int already_there(job *j)
{
    struct stat st;
    if (!j->has_want || stat(j->it->dest, &st) != 0 || !S_ISREG(st.st_mode))
        return 0;
    if (j->it->size >= 0 && (int64_t)st.st_size != j->it->size)
        return 0;
    uint8_t got[SPES_SHA256_LEN];
    if (spes_sha256_file(j->it->dest, got) != 0 || memcmp(got, j->want, sizeof got) != 0) {
        log_info("%s: present but does not match its SHA-256; fetching it again", j->it->dest);
        return 0;
    }
    j->have = j->total = (int64_t)st.st_size;
    return 1;
}

static int make_parent(const char *dest)
{
    char *copy = strdup(dest);
    if (!copy)
        return SPES_ENOMEM;
    int rc = spes_mkdir_p(dirname(copy), 0);
    free(copy);
    return rc;
}

static int job_init(job *j, const spes_fetch_item *it, size_t index, const spes_fetch_opts *o)
{
    memset(j, 0, sizeof *j);
    j->it = it;
    j->o = o;
    j->index = index;
    j->fd = -1;
    j->total = it->size;
    int rc = spes__fetch_check_url(it->url);
    if (rc)
        return rc;
    if (!it->dest || !*it->dest)
        return spes_errf(SPES_EINVAL, "%s: no destination path", it->url);
    if (it->size < -1)
        return spes_errf(SPES_EINVAL, "%s: size %" PRId64 " is not a size", it->url, it->size);
    if (it->sha256) {
        if (strlen(it->sha256) != 2 * SPES_SHA256_LEN ||
            spes_hex_decode(it->sha256, j->want, SPES_SHA256_LEN) != 0)
            return spes_errf(SPES_EINVAL, "%s: sha256 must be 64 hex digits", it->url);
        j->has_want = 1;
    }
    size_t len = strlen(it->dest) + 6;
    if (!(j->part = malloc(len)))
        return SPES_ENOMEM;
    snprintf(j->part, len, "%s.part", it->dest);
    if (already_there(j)) {
        j->state = J_DONE;
        log_debug("%s: already present and verified", it->dest);
        return 0;
    }
    j->state = J_WAIT;
    return make_parent(it->dest);
}

static int cmp_dest(const void *a, const void *b)
{
    return strcmp((*(const job *const *)a)->it->dest, (*(const job *const *)b)->it->dest);
}

/* check_unique refuses two items with one destination: they would share a .part file. */
static int check_unique(run *r)
{
    job **v = malloc(r->n * sizeof *v);
    if (!v)
        return SPES_ENOMEM;
    for (size_t i = 0; i < r->n; i++)
        v[i] = &r->jobs[i];
    qsort(v, r->n, sizeof *v, cmp_dest);
    int rc = 0;
    for (size_t i = 1; i < r->n && !rc; i++)
        if (strcmp(v[i - 1]->it->dest, v[i]->it->dest) == 0)
            rc = spes_errf(SPES_EINVAL, "%s: destination listed twice", v[i]->it->dest);
    free(v);
    return rc;
}

static void report(run *r, job *only, int force)
{
    spes_fetch_progress p = {.files = r->n};
    for (size_t i = 0; i < r->n; i++) {
        job *j = &r->jobs[i];
        p.all_done += j->have;
        p.all_total += j->total >= 0 ? j->total : j->have;
        p.files_done += j->state == J_DONE;
    }
    for (size_t i = 0; i < r->n; i++) {
        job *j = &r->jobs[i];
        if (only ? j != only : j->state != J_RUN)
            continue;
        p.index = j->index;
        p.url = j->it->url;
        p.done = j->have;
        p.total = j->total;
        spes__fetch_report(r->o, &r->meter, &p, force);
    }
}

/* step starts due attempts, drives curl once and handles finished transfers; returns work left. */
static int step(run *r, double *next_due)
{
    double now = spes_mono_s();
    int left = 0;
    *next_due = now + 0.2;
    for (size_t i = 0; i < r->n; i++) {
        job *j = &r->jobs[i];
        if (j->state == J_WAIT && j->retry_at <= now && r->running < r->o->parallel) {
            start(r, j);
            if (j->state == J_DONE)
                report(r, j, 1);
        }
        if (j->state == J_WAIT && j->retry_at < *next_due)
            *next_due = j->retry_at;
        left += j->state == J_WAIT || j->state == J_RUN;
    }
    int still = 0;
    curl_multi_perform(r->multi, &still);
    CURLMsg *m;
    while ((m = curl_multi_info_read(r->multi, &still)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        job *j = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
        finish(r, j, m->data.result);
        if (j->state == J_DONE)
            report(r, j, 1);
    }
    return left;
}

static void run_free(run *r)
{
    for (size_t i = 0; i < r->n; i++) {
        job *j = &r->jobs[i];
        if (j->easy) {
            curl_multi_remove_handle(r->multi, j->easy);
            curl_easy_cleanup(j->easy);
        }
        close_part(j);
        sha_drop(j);
        free(j->part);
    }
    if (r->multi)
        curl_multi_cleanup(r->multi);
    free(r->jobs);
}

static int loop(run *r)
{
    double last_tick = 0.0;
    for (;;) {
        if (spes__fetch_cancelled(r->o))
            return spes_errf(SPES_EINTR, "fetch cancelled; partial files are kept for resume");
        double due;
        if (step(r, &due) == 0)
            return 0;
        double now = spes_mono_s();
        if (now - last_tick >= 0.2) {
            report(r, NULL, 1);
            last_tick = now;
        }
        int ms = (int)((due - now) * 1000.0);
        ms = ms < 1 ? 1 : ms > 200 ? 200 : ms;
        curl_multi_poll(r->multi, NULL, 0, ms, NULL);
    }
}

int spes_fetch(const spes_fetch_item *items, size_t n, const spes_fetch_opts *opts)
{
    spes_fetch_opts tmp;
    run r = {.n = n};
    int rc = spes_fetch_global_init();
    if (!rc)
        rc = spes__fetch_opts(opts, &tmp, &r.o);
    if (rc)
        return rc;
    if (n == 0)
        return 0;
    if (!(r.jobs = calloc(n, sizeof *r.jobs)))
        return SPES_ENOMEM;
    for (size_t i = 0; i < n && !rc; i++)
        if ((rc = job_init(&r.jobs[i], &items[i], i, r.o)) != 0)
            r.n = i + 1;
    if (!rc)
        rc = check_unique(&r);
    if (!rc && !(r.multi = curl_multi_init()))
        rc = spes_errf(SPES_ENOMEM, "fetch: curl_multi_init failed");
    if (!rc) {
        spes__fetch_rng_seed(&r.rng);
        rc = loop(&r);
    }
    if (!rc) {
        report(&r, NULL, 1);
        for (size_t i = 0; i < n; i++) {
            job *j = &r.jobs[i];
            if (j->state == J_FAIL) {
                rc = spes_errf(j->err, "%s: download failed after %d attempt%s: %s", j->it->url, j->attempts,
                               j->attempts == 1 ? "" : "s", j->why);
                break;
            }
        }
    }
    run_free(&r);
    return rc;
}
