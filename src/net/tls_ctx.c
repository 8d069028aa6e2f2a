/* tls_ctx.c: a node's TLS material (run CA, own certificate and key, revocation list)
 * as an OpenSSL SSL_CTX that can be swapped atomically when the CRL is reloaded.
 * Trust comes only from the run CA file: system roots are never loaded. */
#include "net/net_internal.h"
#include "pki/pki_internal.h" /* shared PEM reading and OpenSSL error text */

#include "core/error.h"
#include "core/log.h"

#include <openssl/bn.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

struct spes_net_tls {
    pthread_mutex_t mu;
    int refs;
    SSL_CTX *ctx;
    X509_CRL *crl; /* the list in force, NULL if none */
    char *ca_path, *cert_path, *key_path, *crl_path;
    spes_pki_identity self;
    spes_net_stats stats;
    time_t last_log; /* refusal log rate limit */
    uint64_t quiet;
};

/* load_crl reads and checks a CRL file (signed by the run CA) into an X509_CRL. */
static int load_crl(const char *crl_path, const char *ca_path, X509_CRL **out)
{
    char *pem = NULL;
    int rc = spes_pki_crl_load(crl_path, ca_path, &pem);
    if (rc)
        return rc;
    BIO *b = BIO_new_mem_buf(pem, -1);
    *out = b ? PEM_read_bio_X509_CRL(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    free(pem);
    return *out ? 0 : spes_errf(SPES_EFORMAT, "%s: cannot use CRL: %s", crl_path, spes__pki_sslerr());
}

static int load_ca(SSL_CTX *ctx, const char *ca_path)
{
    X509 *ca = NULL;
    int rc = spes__pki_read_cert(ca_path, &ca);
    if (rc)
        return rc;
    if (X509_check_ca(ca) < 1)
        rc = spes_errf(SPES_EFORMAT, "%s: not a CA certificate", ca_path);
    else if (X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), ca) != 1 || SSL_CTX_add_client_CA(ctx, ca) != 1)
        rc = spes_errf(SPES_EIO, "%s: cannot use as trust anchor: %s", ca_path, spes__pki_sslerr());
    X509_free(ca);
    return rc;
}

/* build_ctx makes a fresh SSL_CTX from the files; crl may be NULL. */
static int build_ctx(const spes_net_tls *t, X509_CRL *crl, SSL_CTX **out)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    int rc = 0;
    if (!ctx)
        return spes_errf(SPES_ENOMEM, "cannot create a TLS context: %s", spes__pki_sslerr());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* every connection fully verified */
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_mode(ctx, SSL_MODE_NO_AUTO_CHAIN); /* send only our leaf: peers hold the run CA */
    SSL_CTX_set_verify_depth(ctx, 2);
    if (SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20") != 1)
        rc = spes_errf(SPES_EIO, "cannot set TLS 1.2 ciphers: %s", spes__pki_sslerr());
    if (!rc)
        rc = load_ca(ctx, t->ca_path);
    if (!rc && SSL_CTX_use_certificate_chain_file(ctx, t->cert_path) != 1)
        rc = spes_errf(SPES_EFORMAT, "%s: cannot use certificate: %s", t->cert_path, spes__pki_sslerr());
    if (!rc && SSL_CTX_use_PrivateKey_file(ctx, t->key_path, SSL_FILETYPE_PEM) != 1)
        rc = spes_errf(SPES_EFORMAT, "%s: cannot use key: %s", t->key_path, spes__pki_sslerr());
    if (!rc && SSL_CTX_check_private_key(ctx) != 1)
        rc = spes_errf(SPES_EFORMAT, "%s does not match %s", t->key_path, t->cert_path);
    if (!rc && crl) {
        X509_STORE *st = SSL_CTX_get_cert_store(ctx);
        if (X509_STORE_add_crl(st, crl) != 1)
            rc = spes_errf(SPES_EFORMAT, "%s: cannot use CRL: %s", t->crl_path, spes__pki_sslerr());
        X509_STORE_set_flags(st, X509_V_FLAG_CRL_CHECK);
    }
    if (rc) {
        SSL_CTX_free(ctx);
        return rc;
    }
    *out = ctx;
    return 0;
}

static char *dup_or_null(const char *s, int *fail)
{
    char *d = s ? strdup(s) : NULL;
    if (s && !d)
        *fail = 1;
    return d;
}

/* warn_key_mode flags a private key others can read or anyone but its owner can write
 * (group read is fine: the systemd deployment shares keys with group spes, mode 0640). */
static void warn_key_mode(const char *key_path)
{
    struct stat st;
    if (stat(key_path, &st) == 0 && (st.st_mode & 027))
        log_warnx("%s: private key has mode %03o (others can read it or others than its owner can write it); "
                  "chmod 600 or 640",
                  key_path, (unsigned)(st.st_mode & 0777));
}

int spes_net_tls_alloc(spes_net_tls **out, const spes_net_tls_files *f)
{
    int rc = spes_net_init();
    if (rc)
        return rc;
    if (!f || !f->ca || !f->cert || !f->key)
        return spes_errf(SPES_EINVAL, "TLS needs the run CA, a certificate and a key");
    spes_net_tls *t = calloc(1, sizeof *t);
    int fail = 0;
    if (!t)
        return SPES_ENOMEM;
    pthread_mutex_init(&t->mu, NULL);
    t->refs = 1;
    t->ca_path = dup_or_null(f->ca, &fail);
    t->cert_path = dup_or_null(f->cert, &fail);
    t->key_path = dup_or_null(f->key, &fail);
    t->crl_path = dup_or_null(f->crl, &fail);
    if (fail) {
        rc = SPES_ENOMEM;
        goto fail;
    }
    if ((rc = spes_pki_cert_identity(t->cert_path, &t->self)) != 0)
        goto fail;
    if (t->crl_path && (rc = load_crl(t->crl_path, t->ca_path, &t->crl)) != 0)
        goto fail;
    if ((rc = build_ctx(t, t->crl, &t->ctx)) != 0)
        goto fail;
    warn_key_mode(t->key_path);
    if (spes_pki_verify_file(t->cert_path, t->ca_path, t->crl_path) != 0)
        log_warnx("own certificate will be refused by peers: %s", spes_errmsg());
    *out = t;
    return 0;
fail:
    t->refs = 1;
    spes_net_tls_free(t);
    return rc;
}

int spes_net_tls_reload_crl(spes_net_tls *t, const char *crl_path)
{
    X509_CRL *crl = NULL;
    SSL_CTX *ctx = NULL;
    char *newpath = NULL;
    pthread_mutex_lock(&t->mu);
    const char *path = crl_path ? crl_path : t->crl_path;
    int rc = path ? 0 : spes_errf(SPES_EINVAL, "no revocation list configured to reload");
    if (!rc && !(newpath = strdup(path)))
        rc = SPES_ENOMEM;
    if (!rc)
        rc = load_crl(newpath, t->ca_path, &crl);
    if (!rc) {
        char *keep = t->crl_path;
        t->crl_path = newpath;
        if ((rc = build_ctx(t, crl, &ctx)) != 0) {
            t->crl_path = keep;
        } else {
            free(keep);
            newpath = NULL;
        }
    }
    if (!rc) {
        SSL_CTX_free(t->ctx); /* connections made with it keep their own reference */
        X509_CRL_free(t->crl);
        t->ctx = ctx;
        t->crl = crl;
        crl = NULL;
    }
    pthread_mutex_unlock(&t->mu);
    X509_CRL_free(crl);
    free(newpath);
    if (rc)
        log_warnx("revocation list not reloaded, the previous one stays in force: %s", spes_errmsg());
    else
        log_info("revocation list %s loaded", path);
    return rc;
}

int spes__tls_is_revoked(spes_net_tls *t, const char *serial_hex)
{
    BIGNUM *bn = NULL;
    X509_REVOKED *rev = NULL;
    int revoked = 0;
    if (BN_hex2bn(&bn, serial_hex) <= 0)
        return 0;
    ASN1_INTEGER *ai = BN_to_ASN1_INTEGER(bn, NULL);
    pthread_mutex_lock(&t->mu);
    if (ai && t->crl)
        revoked = X509_CRL_get0_by_serial(t->crl, &rev, ai) == 1;
    pthread_mutex_unlock(&t->mu);
    ASN1_INTEGER_free(ai);
    BN_free(bn);
    return revoked;
}

const spes_pki_identity *spes_net_tls_identity(const spes_net_tls *t)
{
    return &t->self;
}

void spes_net_tls_stats(spes_net_tls *t, spes_net_stats *out)
{
    pthread_mutex_lock(&t->mu);
    *out = t->stats;
    pthread_mutex_unlock(&t->mu);
}

void spes__tls_count(spes_net_tls *t, int server, const char *peer, const char *reason)
{
    char msg[sizeof t->stats.last_refusal];
    int show = 0;
    uint64_t quiet = 0;
    if (reason)
        snprintf(msg, sizeof msg, "%s: %s%s%s refused: %s", server ? "listener" : "dialer", peer ? "'" : "",
                 peer ? peer : "peer", peer ? "'" : "", reason);
    pthread_mutex_lock(&t->mu);
    if (!reason) {
        t->stats.accepted++;
    } else {
        /* a peer retrying with a bad certificate logs once per 10 s, not per attempt */
        time_t now = time(NULL);
        t->stats.refused++;
        show = strcmp(msg, t->stats.last_refusal) != 0 || now - t->last_log >= 10;
        if (show) {
            quiet = t->quiet;
            t->quiet = 0;
            t->last_log = now;
        } else {
            t->quiet++;
        }
        snprintf(t->stats.last_refusal, sizeof t->stats.last_refusal, "%s", msg);
    }
    pthread_mutex_unlock(&t->mu);
    if (show)
        log_warnx("tls %s%s", msg, quiet ? " (and earlier refusals not logged)" : "");
}

SSL_CTX *spes__tls_ctx(spes_net_tls *t)
{
    pthread_mutex_lock(&t->mu);
    SSL_CTX *ctx = t->ctx;
    if (ctx)
        SSL_CTX_up_ref(ctx);
    pthread_mutex_unlock(&t->mu);
    return ctx;
}

void spes__tls_hold(spes_net_tls *t)
{
    pthread_mutex_lock(&t->mu);
    t->refs++;
    pthread_mutex_unlock(&t->mu);
}

void spes_net_tls_free(spes_net_tls *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    int last = --t->refs == 0;
    pthread_mutex_unlock(&t->mu);
    if (!last)
        return;
    SSL_CTX_free(t->ctx);
    X509_CRL_free(t->crl);
    free(t->ca_path);
    free(t->cert_path);
    free(t->key_path);
    free(t->crl_path);
    pthread_mutex_destroy(&t->mu);
    free(t);
}
