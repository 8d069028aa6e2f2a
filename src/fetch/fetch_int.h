/* fetch_int.h: helpers shared by the download and upload halves of spes_fetch. */
#ifndef SPES_FETCH_INT_H
#define SPES_FETCH_INT_H

#include "core/clock.h"
#include "core/rng.h"
#include "fetch/fetch.h"

#include <curl/curl.h>

/* spes__fetch_meter is the state of the default once-a-second progress line. */
typedef struct spes__fetch_meter {
    double first;        /* time of the first report, seconds */
    int64_t first_bytes; /* all_done then */
    double last;         /* time of the last line, seconds */
    int64_t last_bytes;  /* all_done at that time */
    double last_call;    /* time of the last progress call, for the 200 ms rate limit */
} spes__fetch_meter;

/* spes__fetch_check_url refuses URLs whose scheme is not http or https. */
int spes__fetch_check_url(const char *url);

/* spes__fetch_opts returns opts, or the defaults in *tmp when opts is NULL, after validating them. */
int spes__fetch_opts(const spes_fetch_opts *opts, spes_fetch_opts *tmp, const spes_fetch_opts **out);

/* spes__fetch_easy_common sets the options every transfer shares (schemes, redirects, timeouts). */
void spes__fetch_easy_common(CURL *e, const char *url, const spes_fetch_opts *o, char *errbuf);

/* spes__fetch_backoff_ms returns the jittered delay before retry number fails (1-based). */
long spes__fetch_backoff_ms(const spes_fetch_opts *o, int fails, spes_rng *rng);

/* spes__fetch_rng_seed seeds rng from the clock and the process id (jitter only, not crypto). */
void spes__fetch_rng_seed(spes_rng *rng);

/* spes__fetch_http_permanent tells whether an HTTP error status is not worth retrying. */
int spes__fetch_http_permanent(long code);

/* spes__fetch_curl_permanent tells whether a curl error is not worth retrying. */
int spes__fetch_curl_permanent(CURLcode c);

/* spes__fetch_stalled tracks the byte count `moved` of a transfer and tells whether it has not
 * changed for more than secs seconds (*last, *last_move: its state, zero at the start). */
int spes__fetch_stalled(curl_off_t moved, curl_off_t *last, double *last_move, long secs);

/* spes__fetch_cancelled reads the cancel flag of o. */
int spes__fetch_cancelled(const spes_fetch_opts *o);

/* spes__fetch_report calls o->progress (or the default logger) with p, rate-limited unless force. */
void spes__fetch_report(const spes_fetch_opts *o, spes__fetch_meter *m, const spes_fetch_progress *p,
                        int force);

#endif
