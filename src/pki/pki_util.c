/* pki_util.c: names, roles, identities and PEM file helpers for the run PKI.
 * Keys only ever reach the disk through spes__pki_write_key (0600, atomic).
 * Never trusts a certificate's fields without checking them (names are re-validated). */
#include "pki/pki_internal.h"

#include "core/error.h"
#include "core/fileio.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

const char *spes__pki_sslerr(void)
{
    static _Thread_local char buf[256];
    unsigned long e = ERR_get_error();
    if (e == 0)
        snprintf(buf, sizeof buf, "unknown OpenSSL error");
    else
        ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    return buf;
}

int spes__pki_wrap(int rc, const char *prefix)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", spes_errmsg());
    return spes_errf(rc, "%s: %s", prefix, msg);
}

void spes_pki_validity_days(spes_pki_validity *v, int days)
{
    int64_t now = (int64_t)time(NULL);
    v->not_before = now - 300;
    v->not_after = now + (int64_t)days * 86400;
    if (days < 0) /* an already-expired window for tests: both ends in the past */
        v->not_before = v->not_after - 86400;
}

int spes_pki_name_valid(const char *name)
{
    if (!name || !*name)
        return spes_errf(SPES_EINVAL, "empty name: names are [a-z0-9-]{1,63}");
    size_t n = strlen(name);
    if (n > SPES_PKI_NAME_MAX)
        return spes_errf(SPES_EINVAL, "name '%.70s...' is longer than 63 characters", name);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return spes_errf(SPES_EINVAL, "name '%s': character %zu is not one of [a-z0-9-]", name, i + 1);
    }
    return 0;
}

const char *spes_pki_role_name(int role)
{
    switch (role) {
    case SPES_ROLE_NODE: return "node";
    case SPES_ROLE_OPERATOR: return "operator";
    default: return "none";
    }
}

int spes_pki_role_parse(const char *s)
{
    if (s && strcmp(s, "node") == 0)
        return SPES_ROLE_NODE;
    if (s && strcmp(s, "operator") == 0)
        return SPES_ROLE_OPERATOR;
    return SPES_ROLE_NONE;
}

char *spes__pki_file(const char *dir, const char *name)
{
    return spes_path_join(dir, name);
}

int spes__pki_write_bio(const char *path, BIO *mem, unsigned mode)
{
    char *data = NULL;
    long len = BIO_get_mem_data(mem, &data);
    if (len <= 0)
        return spes_errf(SPES_EIO, "%s: nothing to write (%s)", path, spes__pki_sslerr());
    spes_atomic_file af;
    int rc = spes_atomic_open(&af, path);
    if (rc)
        return rc;
    /* narrow the mode before any byte lands in the temporary file */
    if (fchmod(fileno(af.fp), mode) != 0) {
        rc = spes_errf_errno(SPES_EIO, "%s: cannot set mode %o", af.tmp, mode);
        spes_atomic_abort(&af);
        return rc;
    }
    if ((rc = spes_atomic_write(&af, data, (size_t)len)) != 0) {
        spes_atomic_abort(&af);
        return rc;
    }
    return spes_atomic_commit(&af);
}

int spes__pki_write_key(const char *path, EVP_PKEY *key)
{
    BIO *mem = BIO_new(BIO_s_mem());
    if (!mem)
        return SPES_ENOMEM;
    int rc = 0;
    if (PEM_write_bio_PrivateKey(mem, key, NULL, NULL, 0, NULL, NULL) != 1)
        rc = spes_errf(SPES_EIO, "%s: cannot encode key: %s", path, spes__pki_sslerr());
    else
        rc = spes__pki_write_bio(path, mem, 0600);
    BIO_free(mem);
    return rc;
}

int spes__pki_write_cert(const char *path, X509 *cert)
{
    BIO *mem = BIO_new(BIO_s_mem());
    if (!mem)
        return SPES_ENOMEM;
    int rc = 0;
    if (PEM_write_bio_X509(mem, cert) != 1)
        rc = spes_errf(SPES_EIO, "%s: cannot encode certificate: %s", path, spes__pki_sslerr());
    else
        rc = spes__pki_write_bio(path, mem, 0644);
    BIO_free(mem);
    return rc;
}

int spes__pki_read_pem(const char *path, spes__pki_pem kind, void **out)
{
    static const char *const what[] = {"certificate", "private key", "certificate request"};
    char *buf = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = spes_read_file(path, 1u << 20, &buf, &len);
    if (rc)
        return rc;
    BIO *b = BIO_new_mem_buf(buf, (int)len);
    if (b) {
        switch (kind) {
        case SPES__PKI_PEM_CERT: *out = PEM_read_bio_X509(b, NULL, NULL, NULL); break;
        case SPES__PKI_PEM_KEY: *out = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL); break;
        case SPES__PKI_PEM_CSR: *out = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL); break;
        }
    }
    BIO_free(b);
    OPENSSL_cleanse(buf, len);
    free(buf);
    if (!*out)
        return spes_errf(SPES_EFORMAT, "%s: not a PEM %s: %s", path, what[kind], spes__pki_sslerr());
    return 0;
}

int spes__pki_read_cert(const char *path, X509 **out)
{
    void *p = NULL;
    int rc = spes__pki_read_pem(path, SPES__PKI_PEM_CERT, &p);
    *out = p;
    return rc;
}

int spes__pki_read_key(const char *path, EVP_PKEY **out)
{
    void *p = NULL;
    int rc = spes__pki_read_pem(path, SPES__PKI_PEM_KEY, &p);
    *out = p;
    return rc;
}

int spes__pki_new_key(EVP_PKEY **out)
{
    *out = EVP_EC_gen("P-256");
    if (!*out)
        return spes_errf(SPES_EIO, "cannot generate an EC P-256 key: %s", spes__pki_sslerr());
    return 0;
}

int spes__pki_ca_load(spes__pki_ca *ca, const char *dir)
{
    memset(ca, 0, sizeof *ca);
    ca->dir = dir;
    char *kp = spes__pki_file(dir, "ca.key"), *cp = spes__pki_file(dir, "ca.crt");
    int rc = (!kp || !cp) ? SPES_ENOMEM : 0;
    if (!rc)
        rc = spes__pki_read_cert(cp, &ca->cert);
    if (!rc)
        rc = spes__pki_read_key(kp, &ca->key);
    if (!rc && X509_check_private_key(ca->cert, ca->key) != 1)
        rc = spes_errf(SPES_EFORMAT, "%s: ca.key does not match ca.crt", dir);
    free(kp);
    free(cp);
    if (rc)
        spes__pki_ca_fini(ca);
    return rc;
}

void spes__pki_ca_fini(spes__pki_ca *ca)
{
    EVP_PKEY_free(ca->key);
    X509_free(ca->cert);
    ca->key = NULL;
    ca->cert = NULL;
}

static int name_entry(const X509_NAME *nm, int nid, char *out, size_t cap)
{
    int idx = X509_NAME_get_index_by_NID(nm, nid, -1);
    if (idx < 0 || X509_NAME_get_index_by_NID(nm, nid, idx) >= 0)
        return -1; /* missing, or ambiguous (two CNs) */
    const ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(nm, idx));
    int len = ASN1_STRING_length(s);
    const unsigned char *d = ASN1_STRING_get0_data(s);
    if (len <= 0 || (size_t)len >= cap || memchr(d, '\0', (size_t)len))
        return -1;
    memcpy(out, d, (size_t)len);
    out[len] = '\0';
    return 0;
}

int spes_pki_identity_from_x509(const struct x509_st *cert, spes_pki_identity *out)
{
    memset(out, 0, sizeof *out);
    const X509_NAME *subj = X509_get_subject_name(cert);
    char ou[32];
    if (!subj || name_entry(subj, NID_commonName, out->name, sizeof out->name) != 0)
        return spes_errf(SPES_EFORMAT, "certificate has no single valid common name");
    if (spes_pki_name_valid(out->name) != 0)
        return spes__pki_wrap(SPES_EFORMAT, "certificate name is not a valid spes name");
    if (name_entry(subj, NID_organizationalUnitName, ou, sizeof ou) != 0 ||
        (out->role = spes_pki_role_parse(ou)) == SPES_ROLE_NONE)
        return spes_errf(SPES_EFORMAT, "certificate of '%s' carries no role (OU=node|operator)", out->name);
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    if (hex) {
        size_t i = 0;
        for (; hex[i] && i + 1 < sizeof out->serial; i++)
            out->serial[i] = (char)((hex[i] >= 'A' && hex[i] <= 'F') ? hex[i] + 32 : hex[i]);
        out->serial[i] = '\0';
    }
    OPENSSL_free(hex);
    BN_free(bn);
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) == 1)
        out->not_after = (int64_t)timegm(&tm);
    return 0;
}

int spes_pki_cert_identity(const char *cert_path, spes_pki_identity *out)
{
    X509 *c = NULL;
    int rc = spes__pki_read_cert(cert_path, &c);
    if (rc)
        return rc;
    rc = spes_pki_identity_from_x509(c, out);
    if (rc)
        rc = spes__pki_wrap(rc, cert_path);
    X509_free(c);
    return rc;
}

int spes_pki_verify_file(const char *cert_path, const char *ca_path, const char *crl_path)
{
    X509 *leaf = NULL, *ca = NULL;
    X509_STORE *st = NULL;
    X509_STORE_CTX *ctx = NULL;
    char *crl_pem = NULL;
    int rc = spes__pki_read_cert(cert_path, &leaf);
    if (!rc)
        rc = spes__pki_read_cert(ca_path, &ca);
    if (!rc && crl_path)
        rc = spes_pki_crl_load(crl_path, ca_path, &crl_pem);
    if (rc)
        goto done;
    st = X509_STORE_new();
    ctx = X509_STORE_CTX_new();
    if (!st || !ctx || X509_STORE_add_cert(st, ca) != 1) {
        rc = spes_errf(SPES_ENOMEM, "cannot build a certificate store");
        goto done;
    }
    if (crl_pem) {
        BIO *b = BIO_new_mem_buf(crl_pem, -1);
        X509_CRL *crl = b ? PEM_read_bio_X509_CRL(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
        if (!crl || X509_STORE_add_crl(st, crl) != 1) {
            X509_CRL_free(crl);
            rc = spes_errf(SPES_EFORMAT, "%s: cannot use CRL", crl_path);
            goto done;
        }
        X509_CRL_free(crl);
        X509_STORE_set_flags(st, X509_V_FLAG_CRL_CHECK);
    }
    if (X509_STORE_CTX_init(ctx, st, leaf, NULL) != 1 || X509_verify_cert(ctx) != 1)
        rc = spes_errf(SPES_EAUTH, "%s: does not verify: %s", cert_path,
                       X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
done:
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
    X509_free(leaf);
    X509_free(ca);
    free(crl_pem);
    ERR_clear_error();
    return rc;
}
