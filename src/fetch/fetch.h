/* fetch.h: verified downloads and uploads over HTTP(S) with libcurl.
 * A download is written to DEST.part, resumed with a Range request after a
 * broken connection, checked for size and SHA-256, and only then moved to DEST
 * (fsync, rename, fsync of the directory). Only http:// and https:// URLs are
 * accepted, also as redirect targets (at most 5 redirects).
 *
 * Program start: call spes_fetch_global_init() once from the main thread before
 * other threads start (it wraps curl_global_init); spes_fetch and
 * spes_fetch_put also call it, guarded by pthread_once, for programs that
 * forget. The functions below block the calling thread; run them on a worker
 * thread in an event-loop program and stop them with the cancel flag. */
#ifndef SPES_FETCH_FETCH_H
#define SPES_FETCH_FETCH_H

#include <stddef.h>
#include <stdint.h>

/* spes_fetch_item is one file to download; the caller owns the strings. */
typedef struct spes_fetch_item {
    const char *url;    /* http:// or https:// */
    const char *dest;   /* final path; DEST.part holds the bytes until verified */
    int64_t size;       /* expected size in bytes, or -1 if unknown */
    const char *sha256; /* expected digest as 64 hex digits, or NULL for a size check only */
} spes_fetch_item;

/* spes_fetch_progress is what a progress callback is told about one file and the whole list. */
typedef struct spes_fetch_progress {
    size_t index;      /* item reported (0 for an upload) */
    const char *url;   /* its URL */
    int64_t done;      /* bytes of this file on disk (downloads) or sent (uploads) */
    int64_t total;     /* its size, -1 while unknown */
    int64_t all_done;  /* bytes done over all items */
    int64_t all_total; /* sum of the sizes known so far */
    size_t files_done; /* items finished: fetched, or already present and verified */
    size_t files;      /* items in the list */
} spes_fetch_progress;

/* spes_fetch_progress_fn receives progress, at most every 200 ms per call and at each file's end. */
typedef void (*spes_fetch_progress_fn)(void *arg, const spes_fetch_progress *p);

/* spes_fetch_opts tunes transfers; spes_fetch_opts_init fills the defaults shown. */
typedef struct spes_fetch_opts {
    int parallel;                    /* transfers at once (4) */
    int max_attempts;                /* failures in a row without progress before giving up (5) */
    long retry_base_ms;              /* first retry delay, doubled per failure, jittered (500) */
    long retry_max_ms;               /* longest retry delay (30000) */
    long connect_timeout_ms;         /* TCP and TLS connect limit (15000) */
    long low_speed_bytes;            /* a transfer slower than this many bytes/s... (1024) */
    long low_speed_secs;             /* ...for this many seconds counts as stalled and is retried (30) */
    spes_fetch_progress_fn progress; /* NULL: log an info line at most once a second with MB/s */
    void *progress_arg;              /* passed to progress */
    const volatile int *cancel;      /* when *cancel turns nonzero, transfers stop with SPES_EINTR */
    const char *ca_file;             /* PEM certificates to trust for https, NULL for the system's */
} spes_fetch_opts;

/* spes_fetch_global_init runs curl_global_init once per process; 0 or SPES_ENET. */
int spes_fetch_global_init(void);

/* spes_fetch_opts_init fills o with the defaults. */
void spes_fetch_opts_init(spes_fetch_opts *o);

/* spes_fetch downloads n items (opts NULL for defaults) and returns 0 when every DEST is in place
 * and verified; a DEST already present with the expected size and SHA-256 is not fetched again
 * (without a sha256 it is always fetched), and a DEST.part left by an earlier run is resumed.
 * On failure the other items still finish, and the first failure's code is returned with a
 * message naming its URL and the reason (HTTP status, curl error, or expected vs. got digest);
 * a file that fails verification is deleted and fetched again from zero, and never reaches DEST.
 * 4xx answers (but 408 and 429) are not retried; 5xx, network errors and stalls are. */
int spes_fetch(const spes_fetch_item *items, size_t n, const spes_fetch_opts *opts);

/* spes_fetch_put uploads the file at path with HTTP PUT (e.g. a presigned object-store URL),
 * retrying 5xx and network errors; 0 on a 2xx answer, else an error naming the URL and status. */
int spes_fetch_put(const char *url, const char *path, const spes_fetch_opts *opts);

#endif
