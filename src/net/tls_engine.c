/* tls_engine.c: an nng 1.5 TLS engine on OpenSSL 3, so that spes can check the
 * peer certificate's role and name and read the peer identity of a pipe.
 *
 * nng drives it through <nng/supplemental/tls/engine.h>: it moves ciphertext with
 * nng_tls_engine_send/recv; we keep OpenSSL on two memory BIOs in between. All
 * hooks run on nng threads with nng's per-connection lock held.
 * Two thread-local hand-offs stand in for what nng 1.5 cannot pass:
 *   - spes__tls_config_alloc puts the endpoint's binding in tl_bind around
 *     nng_tls_config_alloc, whose config init() (same thread, synchronous) takes it;
 *   - verified() (called synchronously by nng_pipe_get_bool(NNG_OPT_TLS_VERIFIED))
 *     copies the connection's peer identity to spes__tls_peer_tl.
 * A config nng makes by itself (a transport default) has no binding and refuses
 * every handshake: this engine fails closed. Never weakens verification. */
#include "net/net_internal.h"

#include "core/error.h"
#include "core/log.h"

#include <nng/supplemental/tls/engine.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OUT_CAP 32768
#define IN_CHUNK 16384
#define WRITE_MAX 16384

_Thread_local spes_pki_identity spes__tls_peer_tl;
_Thread_local int spes__tls_peer_tl_set;
static _Thread_local spes__tls_bind *tl_bind;
static int conn_ex_idx = -1;

struct nng_tls_engine_config {
    spes__tls_bind *bind; /* NULL: not made by spes_net, refuses all connections */
    int min_version;
};

struct nng_tls_engine_conn {
    void *tls; /* nng's handle for nng_tls_engine_send/recv */
    SSL *ssl;
    BIO *rbio, *wbio;
    spes__tls_bind *bind;
    uint8_t *out;
    size_t out_off, out_len;
    int verified;
    int failed;
    int got_data;
    int ended_counted; /* a refusal by the peer was counted for this connection */
    int closed;        /* conn_close ran: every later call fails (see conn_close) */
    spes_pki_identity peer;
    char reason[200];
};

void spes__tls_bind_release(spes__tls_bind *b)
{
    if (b && __atomic_sub_fetch(&b->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        spes_net_tls_free(b->tls);
        free(b);
    }
}

static spes__tls_bind *bind_hold(spes__tls_bind *b)
{
    __atomic_add_fetch(&b->refs, 1, __ATOMIC_ACQ_REL);
    return b;
}

/* ---- configuration hooks ---- */

static int cfg_init(nng_tls_engine_config *cfg, nng_tls_mode mode)
{
    (void)mode;
    cfg->min_version = TLS1_2_VERSION;
    cfg->bind = tl_bind ? bind_hold(tl_bind) : NULL;
    tl_bind = NULL;
    return 0;
}

static void cfg_fini(nng_tls_engine_config *cfg)
{
    spes__tls_bind_release(cfg->bind);
    cfg->bind = NULL;
}

static int cfg_server(nng_tls_engine_config *cfg, const char *name)
{
    (void)cfg; /* peers are checked by CN and role in verify_cb, not by host name */
    (void)name;
    return 0;
}

static int cfg_auth(nng_tls_engine_config *cfg, nng_tls_auth_mode mode)
{
    /* a spes endpoint always requires a verified peer; refuse to pretend otherwise */
    return (cfg->bind && mode != NNG_TLS_AUTH_MODE_REQUIRED) ? NNG_ENOTSUP : 0;
}

static int cfg_ca_chain(nng_tls_engine_config *cfg, const char *certs, const char *crl)
{
    (void)certs; /* trust comes from the bound spes_net_tls (reloadable), see net.h */
    (void)crl;
    return cfg->bind ? NNG_ENOTSUP : 0;
}

static int cfg_own_cert(nng_tls_engine_config *cfg, const char *cert, const char *key, const char *pass)
{
    (void)cert;
    (void)key;
    (void)pass;
    return cfg->bind ? NNG_ENOTSUP : 0;
}

static int cfg_version(nng_tls_engine_config *cfg, nng_tls_version lo, nng_tls_version hi)
{
    if (hi < NNG_TLS_1_2 || lo > NNG_TLS_1_3 || lo > hi)
        return NNG_ENOTSUP; /* never below TLS 1.2 */
    cfg->min_version = lo >= NNG_TLS_1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;
    return 0;
}

/* ---- certificate checks ---- */

__attribute__((format(printf, 2, 3))) static void set_reason(nng_tls_engine_conn *c, const char *fmt, ...)
{
    if (c->reason[0])
        return; /* keep the first, most specific reason */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->reason, sizeof c->reason, fmt, ap);
    va_end(ap);
}

static int check_leaf(nng_tls_engine_conn *c, X509 *cert, X509_STORE_CTX *sctx)
{
    spes_pki_identity id;
    const spes__tls_bind *b = c->bind;
    if (spes_pki_identity_from_x509(cert, &id) != 0) {
        set_reason(c, "%s", spes_errmsg());
        goto refuse;
    }
    snprintf(c->peer.name, sizeof c->peer.name, "%s", id.name);
    if (!(b->peer_roles & SPES_ROLE_MASK(id.role))) {
        set_reason(c, "a %s certificate is not accepted here (%s)", spes_pki_role_name(id.role),
                   b->peer_roles == SPES_ROLE_MASK(SPES_ROLE_OPERATOR) ? "operator required"
                                                                       : "node required");
        goto refuse;
    }
    if (b->peer_name[0] && strcmp(b->peer_name, id.name) != 0) {
        set_reason(c, "expected peer '%s', got '%s'", b->peer_name, id.name);
        goto refuse;
    }
    c->peer = id;
    return 1;
refuse:
    X509_STORE_CTX_set_error(sctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
}

static int verify_cb(int ok, X509_STORE_CTX *sctx)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(sctx, SSL_get_ex_data_X509_STORE_CTX_idx());
    nng_tls_engine_conn *c = ssl ? SSL_get_ex_data(ssl, conn_ex_idx) : NULL;
    if (!c)
        return 0;
    X509 *cert = X509_STORE_CTX_get_current_cert(sctx);
    int depth = X509_STORE_CTX_get_error_depth(sctx);
    if (!ok) {
        char cn[SPES_PKI_NAME_MAX + 1] = "";
        X509 *leaf = X509_STORE_CTX_get0_cert(sctx); /* name the peer, whatever depth failed */
        if (leaf &&
            X509_NAME_get_text_by_NID(X509_get_subject_name(leaf), NID_commonName, cn, sizeof cn) > 0 &&
            spes_pki_name_valid(cn) == 0 && !c->peer.name[0])
            snprintf(c->peer.name, sizeof c->peer.name, "%s", cn);
        set_reason(c, "%s%s", X509_verify_cert_error_string(X509_STORE_CTX_get_error(sctx)),
                   depth ? " (issuer)" : "");
        return 0;
    }
    return depth == 0 ? check_leaf(c, cert, sctx) : 1;
}

/* ---- ciphertext pump between OpenSSL's BIOs and nng ---- */

static int flush_out(nng_tls_engine_conn *c)
{
    for (;;) {
        if (c->out_len == 0) {
            int n = BIO_read(c->wbio, c->out, OUT_CAP);
            if (n <= 0)
                return 0;
            c->out_off = 0;
            c->out_len = (size_t)n;
        }
        size_t sz = c->out_len;
        int rv = nng_tls_engine_send(c->tls, c->out + c->out_off, &sz);
        if (rv)
            return rv; /* NNG_EAGAIN: nng calls us again when its buffer drains */
        c->out_off += sz;
        c->out_len -= sz;
    }
}

static int fill_in(nng_tls_engine_conn *c)
{
    uint8_t buf[IN_CHUNK];
    size_t sz = sizeof buf;
    int rv = nng_tls_engine_recv(c->tls, buf, &sz);
    if (rv)
        return rv;
    if (sz && BIO_write(c->rbio, buf, (int)sz) != (int)sz)
        return NNG_ENOMEM;
    return 0;
}

/* ---- connection hooks ---- */

static int conn_init(nng_tls_engine_conn *c, void *tls, nng_tls_engine_config *cfg)
{
    c->tls = tls;
    if (!cfg->bind) {
        log_warnx("tls: refusing a connection on an nng TLS config not made by spes_net");
        return NNG_ECRYPTO;
    }
    c->bind = bind_hold(cfg->bind);
    if (c->bind->server)
        spes__guard_kick(); /* a connection was accepted: the caps apply to it now */
    SSL_CTX *ctx = spes__tls_ctx(c->bind->tls);
    c->ssl = ctx ? SSL_new(ctx) : NULL;
    SSL_CTX_free(ctx);
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    c->out = malloc(OUT_CAP);
    if (!c->ssl || !c->rbio || !c->wbio || !c->out) {
        BIO_free(c->rbio);
        BIO_free(c->wbio);
        c->rbio = c->wbio = NULL;
        return NNG_ENOMEM; /* fini frees the rest */
    }
    BIO_set_mem_eof_return(c->rbio, -1);
    SSL_set_bio(c->ssl, c->rbio, c->wbio);
    SSL_set_min_proto_version(c->ssl, cfg->min_version);
    SSL_set_verify(c->ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_cb);
    SSL_set_purpose(c->ssl, c->bind->server ? X509_PURPOSE_SSL_CLIENT : X509_PURPOSE_SSL_SERVER);
    SSL_set_ex_data(c->ssl, conn_ex_idx, c);
    if (c->bind->server)
        SSL_set_accept_state(c->ssl);
    else
        SSL_set_connect_state(c->ssl);
    return 0;
}

/* conn_release frees what the engine holds for a connection (idempotent). */
static void conn_release(nng_tls_engine_conn *c)
{
    SSL_free(c->ssl); /* frees both BIOs */
    free(c->out);
    spes__tls_bind_release(c->bind);
    c->ssl = NULL;
    c->out = NULL;
    c->bind = NULL;
}

/* conn_close sends no close_notify: SP messages are length-framed, so truncation cannot
 * go unseen, and writing while nng tears the TCP stream down only adds races.
 * After it every call fails with NNG_ECLOSED. nng 1.5.2's TLS layer never sets
 * its own "closed" flag, and once its TCP aios are closed a new TCP read or
 * write silently never starts: an engine that answered NNG_EAGAIN would leave
 * the caller's aio queued forever, and the pipe's teardown (which waits for
 * that aio) would hang nng_close. Failing here completes the aio instead.
 * The OpenSSL state (about 110 KiB with our output buffer) is freed here, not
 * only at finalisation: nng 1.5.2 sometimes never finalises a connection whose
 * handshake was refused (LeakSanitizer sees it in test_net), and a daemon that
 * a refused peer keeps redialling must not lose that much each time. */
static void conn_close(nng_tls_engine_conn *c)
{
    /* A server that refuses our certificate after a TLS 1.3 handshake sends an alert and
     * closes; the close meets our unread bytes and becomes a reset. When the alert and the
     * reset are both queued before nng's poller wakes, nng 1.5.2 fails the stream on the
     * reset without reading the alert (tcp_cb), and read_failed never runs. A client
     * connection closed after our handshake and before any byte of data is that refusal. */
    if (!c->closed && c->bind && !c->bind->server && c->verified && !c->got_data && !c->ended_counted) {
        c->ended_counted = 1;
        spes__tls_count(c->bind->tls, 0, c->peer.name[0] ? c->peer.name : NULL,
                        "it ended the connection after the TLS handshake without a word: "
                        "it refused our certificate or was full (its log says which)");
    }
    c->closed = 1;
    ERR_clear_error();
    conn_release(c);
}

static int handshake_failed(nng_tls_engine_conn *c)
{
    if (!c->reason[0]) {
        unsigned long e = ERR_peek_last_error();
        const char *why = e ? ERR_reason_error_string(e) : NULL;
        if (why)
            snprintf(c->reason, sizeof c->reason, "%s", why);
        else
            snprintf(c->reason, sizeof c->reason, "TLS handshake failed");
    }
    (void)flush_out(c); /* the alert, if nng still sends it */
    ERR_clear_error();
    c->failed = 1;
    spes__tls_count(c->bind->tls, c->bind->server, c->peer.name[0] ? c->peer.name : NULL, c->reason);
    return NNG_EPEERAUTH;
}

static int handshake_done(nng_tls_engine_conn *c)
{
    X509 *peer = SSL_get0_peer_certificate(c->ssl);
    if (!peer || SSL_get_verify_result(c->ssl) != X509_V_OK || !c->peer.name[0] ||
        c->peer.role == SPES_ROLE_NONE) {
        set_reason(c, "peer certificate missing or not verified");
        return handshake_failed(c);
    }
    c->verified = 1;
    spes__tls_count(c->bind->tls, c->bind->server, c->peer.name, NULL);
    log_debug("tls: %s '%s' (%s) verified, %s", c->bind->server ? "client" : "server", c->peer.name,
              spes_pki_role_name(c->peer.role), SSL_get_version(c->ssl));
    return 0;
}

static int conn_handshake(nng_tls_engine_conn *c)
{
    if (c->closed)
        return NNG_ECLOSED;
    if (c->verified)
        return 0;
    if (c->failed)
        return NNG_EPEERAUTH;
    for (;;) {
        ERR_clear_error();
        int r = SSL_do_handshake(c->ssl);
        int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, r);
        int fr = flush_out(c);
        if (fr && fr != NNG_EAGAIN)
            return fr;
        if (r == 1)
            return fr ? NNG_EAGAIN : handshake_done(c); /* finish sending our last flight first */
        if (e != SSL_ERROR_WANT_READ)
            return handshake_failed(c);
        int rr = fill_in(c);
        if (rr)
            return rr;
    }
}

/* read_failed reports an alert that ends a connection before any data: with TLS 1.3
 * that is how a server's refusal of our certificate reaches the client. */
static int read_failed(nng_tls_engine_conn *c)
{
    unsigned long e = ERR_peek_last_error();
    const char *why = e ? ERR_reason_error_string(e) : NULL;
    if (!c->got_data && !c->bind->server && !c->ended_counted) {
        c->ended_counted = 1;
        char reason[160];
        snprintf(reason, sizeof reason, "it ended the connection: %s", why ? why : "TLS error");
        spes__tls_count(c->bind->tls, 0, c->peer.name[0] ? c->peer.name : NULL, reason);
    }
    ERR_clear_error();
    return NNG_ECRYPTO;
}

/* ensure_handshake lets nng versions that never call handshake() (1.5.x drives the
 * handshake through send/recv, as mbedtls does implicitly) get the same checks. */
static int ensure_handshake(nng_tls_engine_conn *c)
{
    if (c->closed)
        return NNG_ECLOSED;
    return c->verified ? 0 : conn_handshake(c);
}

/* sp_header_ok: the peer's first bytes are an SP header that nng's TLS transport accepts
 * ("\0SP\0", protocol, two zero bytes). After reading one, nng does no more I/O before it adds
 * the pipe, so only a stopped listener leaves such a header without a pipe (listener_watch);
 * garbage from a peer must not look like one. */
static int sp_header_ok(const uint8_t *b, size_t n)
{
    return n >= 8 && b[0] == 0 && b[1] == 'S' && b[2] == 'P' && b[3] == 0 && b[6] == 0 && b[7] == 0;
}

static int conn_recv(nng_tls_engine_conn *c, uint8_t *buf, size_t *szp)
{
    int fr = ensure_handshake(c);
    if (fr)
        return fr;
    fr = flush_out(c);
    if (fr && fr != NNG_EAGAIN)
        return fr;
    /* hand nng as much as is already here: one completion per buffer, not per record */
    size_t total = 0;
    while (total < *szp) {
        size_t n = 0;
        ERR_clear_error();
        int r = SSL_read_ex(c->ssl, buf + total, *szp - total, &n);
        if (r == 1) {
            if (!c->got_data && c->bind->server && sp_header_ok(buf + total, n))
                __atomic_add_fetch(&c->bind->heard, 1, __ATOMIC_RELEASE);
            c->got_data = 1;
            total += n;
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        fr = flush_out(c);
        if (fr && fr != NNG_EAGAIN)
            return fr;
        if (e == SSL_ERROR_WANT_READ) {
            int rr = fill_in(c);
            if (rr == 0)
                continue;
            if (total)
                break;
            return rr;
        }
        if (total)
            break; /* deliver what we have; the error comes back on the next call */
        if (e == SSL_ERROR_ZERO_RETURN)
            return NNG_ECLOSED;
        return read_failed(c);
    }
    *szp = total;
    return 0;
}

static int conn_send(nng_tls_engine_conn *c, const uint8_t *buf, size_t *szp)
{
    int fr = ensure_handshake(c);
    if (fr)
        return fr;
    fr = flush_out(c);
    if (fr)
        return fr; /* EAGAIN while earlier records are still queued: bounded memory */
    size_t n = 0, len = *szp < WRITE_MAX ? *szp : WRITE_MAX;
    ERR_clear_error();
    if (SSL_write_ex(c->ssl, buf, len, &n) != 1) {
        ERR_clear_error();
        return NNG_ECRYPTO;
    }
    *szp = n;
    fr = flush_out(c);
    return (fr && fr != NNG_EAGAIN) ? fr : 0;
}

static bool conn_verified(nng_tls_engine_conn *c)
{
    spes__tls_peer_tl = c->peer;
    spes__tls_peer_tl_set = c->verified;
    return c->verified != 0;
}

static nng_tls_engine_config_ops config_ops = {
    .size = sizeof(nng_tls_engine_config),
    .init = cfg_init,
    .fini = cfg_fini,
    .server = cfg_server,
    .auth = cfg_auth,
    .ca_chain = cfg_ca_chain,
    .own_cert = cfg_own_cert,
    .version = cfg_version,
};

static nng_tls_engine_conn_ops conn_ops = {
    .size = sizeof(nng_tls_engine_conn),
    .init = conn_init,
    .fini = conn_release,
    .close = conn_close,
    .handshake = conn_handshake,
    .recv = conn_recv,
    .send = conn_send,
    .verified = conn_verified,
};

static nng_tls_engine engine = {
    .version = NNG_TLS_ENGINE_VERSION,
    .config_ops = &config_ops,
    .conn_ops = &conn_ops,
    .name = "spes-openssl",
    .description = "spes OpenSSL 3 engine (run CA, roles, CRL)",
    .fips_mode = false,
};

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_rc;

static void do_init(void)
{
    conn_ex_idx = SSL_get_ex_new_index(0, "spes conn", NULL, NULL, NULL);
    (void)nng_tls_engine_name(); /* initialise nng first, or its own engine would replace ours */
    int rv = nng_tls_engine_register(&engine);
    if (conn_ex_idx < 0 || rv != 0 || strcmp(nng_tls_engine_name(), engine.name) != 0)
        init_rc = spes_errf(SPES_ENET, "cannot register the OpenSSL TLS engine with nng: %s",
                            rv ? nng_strerror(rv) : "engine not in use");
}

int spes_net_init(void)
{
    pthread_once(&init_once, do_init);
    if (init_rc)
        return spes_errf(init_rc, "cannot register the OpenSSL TLS engine with nng");
    return 0;
}

int spes__tls_config_alloc(nng_tls_config **out, spes_net_tls *t, int server, unsigned peer_roles,
                           const char *peer_name, spes__tls_bind **bind)
{
    int rc = spes_net_init();
    if (rc)
        return rc;
    if (peer_name && spes_pki_name_valid(peer_name) != 0)
        return SPES_EINVAL; /* the message names the bad character */
    spes__tls_bind *b = calloc(1, sizeof *b);
    if (!b)
        return SPES_ENOMEM;
    spes__tls_hold(t);
    b->tls = t;
    b->refs = 1;
    b->server = server;
    b->peer_roles = peer_roles;
    snprintf(b->peer_name, sizeof b->peer_name, "%s", peer_name ? peer_name : "");
    tl_bind = b;
    int rv = nng_tls_config_alloc(out, server ? NNG_TLS_MODE_SERVER : NNG_TLS_MODE_CLIENT);
    int taken = tl_bind == NULL;
    tl_bind = NULL;
    if (rv || !taken) {
        spes__tls_bind_release(b);
        if (rv)
            return spes__nng_err(rv, "TLS configuration", NULL);
        nng_tls_config_free(*out);
        return spes_errf(SPES_ENET, "nng did not use the spes TLS engine");
    }
    if ((rv = nng_tls_config_auth_mode(*out, NNG_TLS_AUTH_MODE_REQUIRED)) != 0 ||
        (rv = nng_tls_config_version(*out, NNG_TLS_1_2, NNG_TLS_1_3)) != 0) {
        spes__tls_bind_release(b);
        nng_tls_config_free(*out);
        return spes__nng_err(rv, "TLS configuration", NULL);
    }
    if (bind)
        *bind = b; /* our reference passes to the caller; the config holds its own */
    else
        spes__tls_bind_release(b);
    return 0;
}
