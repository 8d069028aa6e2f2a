/* close.c: closing nng sockets without letting nng 1.5.2 hang the caller.
 *
 * In nng 1.5.2 the tls+tcp transport can strand a pipe for ever: when a pipe
 * is closed (its peer died) while the protocol hands it a message, the
 * transport queues the message, tries to start the TLS write with an aio that
 * the close has already stopped, and that start fails silently; the message's
 * aio then waits in the queue with nothing to complete it, and the pipe's
 * teardown, hence nng_close(), waits for it for ever (seen as about 1 in 8
 * large fetches whose peer is killed; analysed with nng 1.5.2's sources under
 * gdb: req0_pipe_stop waiting on aio_send, queued in tlstran's sendq, whose
 * txaio was closed by tlstran_pipe_close). Plain tcp:// never showed it.
 * Nothing outside nng can complete that aio, so the close runs on a helper
 * thread: the caller waits a bounded time, and if nng has not returned by
 * then it logs once and goes on, leaving the socket (and whatever its
 * callbacks may still touch) to the helper. Nothing is freed under nng. */
#include "net/net_internal.h"

#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int refs; /* the caller and the helper; the last one frees */
    void (*fn)(void *);
    void *arg;
} bounded;

static void bounded_unref(bounded *b)
{
    pthread_mutex_lock(&b->mu);
    int last = --b->refs == 0;
    pthread_mutex_unlock(&b->mu);
    if (last) {
        pthread_mutex_destroy(&b->mu);
        pthread_cond_destroy(&b->cv);
        free(b);
    }
}

static void *bounded_main(void *arg)
{
    bounded *b = arg;
    b->fn(b->arg);
    pthread_mutex_lock(&b->mu);
    b->done = 1;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    bounded_unref(b);
    return NULL;
}

int spes__run_bounded(void (*fn)(void *), void *arg, int timeout_ms)
{
    bounded *b = calloc(1, sizeof *b);
    if (!b) {
        fn(arg); /* no memory for a thread: do it here, unbounded */
        return 0;
    }
    pthread_mutex_init(&b->mu, NULL);
    spes_cond_init_mono(&b->cv);
    b->refs = 2;
    b->fn = fn;
    b->arg = arg;
    pthread_t th;
    int rv = pthread_create(&th, NULL, bounded_main, b);
    if (rv != 0) {
        b->refs = 1;
        bounded_unref(b);
        fn(arg);
        return 0;
    }
    struct timespec until;
    spes_mono_deadline(&until, timeout_ms);
    pthread_mutex_lock(&b->mu);
    while (!b->done)
        if (pthread_cond_timedwait(&b->cv, &b->mu, &until) == ETIMEDOUT)
            break;
    int done = b->done;
    pthread_mutex_unlock(&b->mu);
    bounded_unref(b);
    /* joined when it finished, so that its thread-exit work (OpenSSL frees the thread's
     * error queue then) is done before we go on; otherwise it is left to run alone */
    if (done)
        pthread_join(th, NULL);
    else
        pthread_detach(th);
    return done ? 0 : 1;
}

typedef struct {
    nng_socket s;
} close_arg;

static void close_main(void *arg)
{
    close_arg *c = arg;
    nng_close(c->s);
    free(c);
}

int spes__nng_close_bounded(nng_socket s, const char *what)
{
    close_arg *c = malloc(sizeof *c);
    if (!c) {
        nng_close(s);
        return 0;
    }
    c->s = s;
    if (spes__run_bounded(close_main, c, SPES_NNG_CLOSE_MS) == 0)
        return 0;
    log_warnx("net: closing the socket of %s did not finish within %d ms (nng 1.5.2 can strand a TLS "
              "connection whose peer died); leaving it to a background thread",
              what, SPES_NNG_CLOSE_MS);
    return 1;
}
