/* fetch_common.c: curl set-up, retry policy and progress shared by downloads and uploads.
 * It must never let a transfer use a scheme other than http or https. */
#include "fetch/fetch_int.h"
#include "core/error.h"
#include "core/log.h"

#include <pthread.h>
#include <strings.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_OK;

static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int spes_fetch_global_init(void)
{
    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK)
        return spes_errf(SPES_ENET, "curl_global_init failed: %s", curl_easy_strerror(global_rc));
    return 0;
}

void spes_fetch_opts_init(spes_fetch_opts *o)
{
    memset(o, 0, sizeof *o);
    o->parallel = 4;
    o->max_attempts = 5;
    o->retry_base_ms = 500;
    o->retry_max_ms = 30000;
    o->connect_timeout_ms = 15000;
    o->low_speed_bytes = 1024;
    o->low_speed_secs = 30;
}

int spes__fetch_opts(const spes_fetch_opts *opts, spes_fetch_opts *tmp, const spes_fetch_opts **out)
{
    if (!opts) {
        spes_fetch_opts_init(tmp);
        opts = tmp;
    }
    if (opts->parallel < 1 || opts->parallel > 256)
        return spes_errf(SPES_EINVAL, "fetch: parallel must be 1..256, not %d", opts->parallel);
    if (opts->max_attempts < 1)
        return spes_errf(SPES_EINVAL, "fetch: max_attempts must be at least 1, not %d", opts->max_attempts);
    if (opts->retry_base_ms < 0 || opts->retry_max_ms < opts->retry_base_ms)
        return spes_errf(SPES_EINVAL, "fetch: need 0 <= retry_base_ms <= retry_max_ms");
    if (opts->connect_timeout_ms < 1 || opts->low_speed_secs < 1 || opts->low_speed_bytes < 1)
        return spes_errf(SPES_EINVAL, "fetch: timeouts and low-speed limits must be positive");
    *out = opts;
    return 0;
}

int spes__fetch_check_url(const char *url)
{
    if (!url || !*url)
        return spes_errf(SPES_EINVAL, "fetch: empty URL");
    if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)
        return spes_errf(SPES_EINVAL, "%s: refused: only http:// and https:// URLs are allowed", url);
    return 0;
}

void spes__fetch_easy_common(CURL *e, const char *url, const spes_fetch_opts *o, char *errbuf)
{
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, o->low_speed_bytes);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, o->low_speed_secs);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "spes-fetch/1");
    if (o->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_file);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    errbuf[0] = '\0';
}

void spes__fetch_rng_seed(spes_rng *rng)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    spes_rng_seed(rng, (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40));
}

long spes__fetch_backoff_ms(const spes_fetch_opts *o, int fails, spes_rng *rng)
{
    double d = (double)o->retry_base_ms;
    for (int i = 1; i < fails && d < (double)o->retry_max_ms; i++)
        d *= 2.0;
    if (d > (double)o->retry_max_ms)
        d = (double)o->retry_max_ms;
    /* "Equal jitter": half fixed, half random, so that many clients do not retry in step. */
    return (long)(d * (0.5 + 0.5 * spes_rng_uniform(rng)));
}

int spes__fetch_http_permanent(long code)
{
    return code >= 400 && code < 500 && code != 408 && code != 429;
}

int spes__fetch_curl_permanent(CURLcode c)
{
    switch (c) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_TOO_MANY_REDIRECTS:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_LOGIN_DENIED:
    case CURLE_REMOTE_ACCESS_DENIED:
    case CURLE_OUT_OF_MEMORY: return 1;
    default: return 0;
    }
}

int spes__fetch_stalled(curl_off_t moved, curl_off_t *last, double *last_move, long secs)
{
    double now = spes_mono_s();
    if (moved != *last || *last_move == 0.0) {
        *last = moved;
        *last_move = now;
        return 0;
    }
    return now - *last_move > (double)secs;
}

int spes__fetch_cancelled(const spes_fetch_opts *o)
{
    return o->cancel && *o->cancel;
}

static void default_log(spes__fetch_meter *m, const spes_fetch_progress *p, double now)
{
    if (m->last == 0.0) {
        m->first = m->last = now;
        m->first_bytes = m->last_bytes = p->all_done;
        if (p->files_done < p->files)
            return;
    }
    int end = p->files_done == p->files;
    if (now - m->last < 1.0 && !end)
        return;
    /* while running: speed over the last second; at the end: the average of the whole run */
    double t = end ? now - m->first : now - m->last;
    int64_t b = p->all_done - (end ? m->first_bytes : m->last_bytes);
    double mbs = (double)b / 1e6 / (t > 1e-3 ? t : 1e-3);
    if (p->all_total > 0)
        log_info("fetch: %zu/%zu files, %.1f of %.1f MB, %.1f MB/s%s", p->files_done, p->files,
                 (double)p->all_done / 1e6, (double)p->all_total / 1e6, mbs, end ? " on average" : "");
    else
        log_info("fetch: %zu/%zu files, %.1f MB, %.1f MB/s%s", p->files_done, p->files,
                 (double)p->all_done / 1e6, mbs, end ? " on average" : "");
    m->last = now;
    m->last_bytes = p->all_done;
}

void spes__fetch_report(const spes_fetch_opts *o, spes__fetch_meter *m, const spes_fetch_progress *p,
                        int force)
{
    double now = spes_mono_s();
    if (!o->progress) {
        default_log(m, p, now);
        return;
    }
    if (!force && now - m->last_call < 0.2)
        return;
    m->last_call = now;
    o->progress(o->progress_arg, p);
}
