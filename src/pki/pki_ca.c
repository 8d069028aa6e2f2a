/* pki_ca.c: the run CA: create it, issue certificates, sign volunteers' CSRs.
 * Every certificate gets its role, key usage and validity from here, never from
 * a CSR. Never reads or writes a private key other than the CA's and the one it
 * generates for `issue`/`request`. */
#include "pki/pki_internal.h"

#include "core/error.h"
#include "core/fileio.h"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return spes_errf(SPES_EINVAL, "cannot make extension %s=%s: %s", OBJ_nid2sn(nid), value,
                         spes__pki_sslerr());
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 0 : spes_errf(SPES_ENOMEM, "cannot add extension %s", OBJ_nid2sn(nid));
}

static int random_serial(X509 *cert)
{
    unsigned char b[16];
    if (RAND_bytes(b, sizeof b) != 1)
        return spes_errf(SPES_EIO, "no randomness for a serial number: %s", spes__pki_sslerr());
    b[0] = (unsigned char)((b[0] & 0x7f) | 0x40); /* positive, full 127 bits, never zero */
    BIGNUM *bn = BN_bin2bn(b, sizeof b, NULL);
    ASN1_INTEGER *ai = bn ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
    int ok = ai && X509_set_serialNumber(cert, ai) == 1;
    ASN1_INTEGER_free(ai);
    BN_free(bn);
    return ok ? 0 : SPES_ENOMEM;
}

static int set_validity(X509 *cert, const spes_pki_validity *v, int default_days)
{
    spes_pki_validity d;
    if (!v) {
        spes_pki_validity_days(&d, default_days);
        v = &d;
    }
    if (v->not_after <= v->not_before)
        return spes_errf(SPES_EINVAL, "validity window is empty (notAfter <= notBefore)");
    if (!ASN1_TIME_set(X509_getm_notBefore(cert), (time_t)v->not_before) ||
        !ASN1_TIME_set(X509_getm_notAfter(cert), (time_t)v->not_after))
        return spes_errf(SPES_EINVAL, "cannot encode validity dates");
    return 0;
}

/* build_cert fills everything except signature; issuer NULL means self-signed. */
static int build_cert(X509 *cert, EVP_PKEY *pub, X509 *issuer, const char *run, const char *ou,
                      const char *cn, const spes_pki_validity *v, int days)
{
    X509_NAME *nm = X509_get_subject_name(cert);
    int rc = random_serial(cert);
    if (rc)
        return rc;
    if (X509_set_version(cert, 2) != 1 || X509_set_pubkey(cert, pub) != 1)
        return spes_errf(SPES_ENOMEM, "cannot build certificate for %s", cn);
    if (X509_NAME_add_entry_by_NID(nm, NID_organizationName, MBSTRING_UTF8, (const unsigned char *)run, -1,
                                   -1, 0) != 1 ||
        (ou && X509_NAME_add_entry_by_NID(nm, NID_organizationalUnitName, MBSTRING_UTF8,
                                          (const unsigned char *)ou, -1, -1, 0) != 1) ||
        X509_NAME_add_entry_by_NID(nm, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0) !=
            1)
        return spes_errf(SPES_EINVAL, "cannot encode subject name for %s", cn);
    if (X509_set_issuer_name(cert, issuer ? X509_get_subject_name(issuer) : nm) != 1)
        return SPES_ENOMEM;
    return set_validity(cert, v, days);
}

static const char *run_name_of(X509 *ca)
{
    static _Thread_local char run[128];
    const X509_NAME *nm = X509_get_subject_name(ca);
    int idx = X509_NAME_get_index_by_NID(nm, NID_commonName, -1);
    run[0] = '\0';
    if (idx >= 0) {
        const ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(nm, idx));
        snprintf(run, sizeof run, "%.*s", ASN1_STRING_length(s), (const char *)ASN1_STRING_get0_data(s));
    }
    return run[0] ? run : "spes-run";
}

int spes_pki_ca_init(const char *dir, const char *run_name, const spes_pki_validity *v)
{
    if (!run_name)
        run_name = "spes-run";
    int rc = spes_pki_name_valid(run_name);
    if (rc)
        return spes__pki_wrap(rc, "run name");
    char *kp = spes__pki_file(dir, "ca.key"), *cp = spes__pki_file(dir, "ca.crt");
    char *ip = spes__pki_file(dir, "index.tsv");
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    if (!kp || !cp || !ip) {
        rc = SPES_ENOMEM;
        goto done;
    }
    if (access(kp, F_OK) == 0) {
        rc = spes_errf(SPES_EEXIST, "%s: a CA key already exists; refusing to overwrite it", kp);
        goto done;
    }
    if ((rc = spes_mkdir_p(dir, 0700)) != 0 || (rc = spes__pki_new_key(&key)) != 0)
        goto done;
    if (!(cert = X509_new())) {
        rc = SPES_ENOMEM;
        goto done;
    }
    if ((rc = build_cert(cert, key, NULL, run_name, NULL, run_name, v, SPES_PKI_CA_DEFAULT_DAYS)) ||
        (rc = add_ext(cert, cert, NID_basic_constraints, "critical,CA:TRUE")) ||
        (rc = add_ext(cert, cert, NID_key_usage, "critical,keyCertSign,cRLSign")) ||
        (rc = add_ext(cert, cert, NID_subject_key_identifier, "hash")) ||
        (rc = add_ext(cert, cert, NID_authority_key_identifier, "keyid:always")))
        goto done;
    if (X509_sign(cert, key, EVP_sha256()) <= 0) {
        rc = spes_errf(SPES_EIO, "cannot self-sign the CA: %s", spes__pki_sslerr());
        goto done;
    }
    if ((rc = spes__pki_write_key(kp, key)) || (rc = spes__pki_write_cert(cp, cert)))
        goto done;
    if (access(ip, F_OK) != 0)
        rc = spes_write_file_atomic(ip, "", 0);
done:
    EVP_PKEY_free(key);
    X509_free(cert);
    free(kp);
    free(cp);
    free(ip);
    return rc;
}

/* sign_leaf makes and signs a leaf certificate for pub, then records it in the index. */
static int sign_leaf(spes__pki_ca *ca, EVP_PKEY *pub, const char *name, int role, const spes_pki_validity *v,
                     X509 **out)
{
    const char *ou = spes_pki_role_name(role);
    const char *eku = role == SPES_ROLE_NODE ? "serverAuth,clientAuth" : "clientAuth";
    int rc;
    if (role != SPES_ROLE_NODE && role != SPES_ROLE_OPERATOR)
        return spes_errf(SPES_EINVAL, "role must be node or operator");
    if ((rc = spes_pki_name_valid(name)) != 0)
        return rc;
    if (spes__pki_index_has_valid(ca->dir, name))
        return spes_errf(SPES_EEXIST, "'%s' already has a valid certificate; revoke it first", name);
    X509 *cert = X509_new();
    if (!cert)
        return SPES_ENOMEM;
    if ((rc = build_cert(cert, pub, ca->cert, run_name_of(ca->cert), ou, name, v, SPES_PKI_DEFAULT_DAYS)) ||
        (rc = add_ext(cert, ca->cert, NID_basic_constraints, "critical,CA:FALSE")) ||
        (rc = add_ext(cert, ca->cert, NID_key_usage, "critical,digitalSignature")) ||
        (rc = add_ext(cert, ca->cert, NID_ext_key_usage, eku)) ||
        (rc = add_ext(cert, ca->cert, NID_subject_key_identifier, "hash")) ||
        (rc = add_ext(cert, ca->cert, NID_authority_key_identifier, "keyid:always")))
        goto fail;
    if (X509_sign(cert, ca->key, EVP_sha256()) <= 0) {
        rc = spes_errf(SPES_EIO, "cannot sign certificate for %s: %s", name, spes__pki_sslerr());
        goto fail;
    }
    if ((rc = spes__pki_index_append(ca->dir, cert, name, role)) != 0)
        goto fail;
    *out = cert;
    return 0;
fail:
    X509_free(cert);
    return rc;
}

static char *out_file(const char *dir, const char *name, const char *ext)
{
    size_t n = strlen(name) + strlen(ext) + 1;
    char *base = malloc(n);
    if (!base)
        return NULL;
    snprintf(base, n, "%s%s", name, ext);
    char *p = spes__pki_file(dir, base);
    free(base);
    return p;
}

int spes_pki_cert_issue(const char *ca_dir, const char *name, int role, const spes_pki_validity *v,
                        const char *out_dir)
{
    spes__pki_ca ca;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    char *kp = NULL, *cp = NULL;
    int rc = spes_pki_name_valid(name);
    if (rc)
        return rc;
    if ((rc = spes__pki_ca_load(&ca, ca_dir)) != 0)
        return rc;
    if (!(kp = out_file(out_dir, name, ".key")) || !(cp = out_file(out_dir, name, ".crt"))) {
        rc = SPES_ENOMEM;
        goto done;
    }
    if ((rc = spes_mkdir_p(out_dir, 0700)) || (rc = spes__pki_new_key(&key)) ||
        (rc = sign_leaf(&ca, key, name, role, v, &cert)))
        goto done;
    if ((rc = spes__pki_write_key(kp, key)) == 0)
        rc = spes__pki_write_cert(cp, cert);
done:
    spes__pki_ca_fini(&ca);
    EVP_PKEY_free(key);
    X509_free(cert);
    free(kp);
    free(cp);
    return rc;
}

int spes_pki_cert_request(const char *name, const char *out_dir)
{
    EVP_PKEY *key = NULL;
    X509_REQ *req = NULL;
    BIO *mem = NULL;
    char *kp = NULL, *rp = NULL;
    int rc = spes_pki_name_valid(name);
    if (rc)
        return rc;
    if (!(kp = out_file(out_dir, name, ".key")) || !(rp = out_file(out_dir, name, ".csr")) ||
        !(req = X509_REQ_new()) || !(mem = BIO_new(BIO_s_mem()))) {
        rc = SPES_ENOMEM;
        goto done;
    }
    if ((rc = spes_mkdir_p(out_dir, 0700)) || (rc = spes__pki_new_key(&key)))
        goto done;
    X509_NAME *nm = X509_REQ_get_subject_name(req);
    if (X509_REQ_set_version(req, 0) != 1 || X509_REQ_set_pubkey(req, key) != 1 ||
        X509_NAME_add_entry_by_NID(nm, NID_commonName, MBSTRING_UTF8, (const unsigned char *)name, -1, -1,
                                   0) != 1 ||
        X509_REQ_sign(req, key, EVP_sha256()) <= 0 || PEM_write_bio_X509_REQ(mem, req) != 1) {
        rc = spes_errf(SPES_EIO, "cannot make a CSR for %s: %s", name, spes__pki_sslerr());
        goto done;
    }
    if ((rc = spes__pki_write_key(kp, key)) == 0)
        rc = spes__pki_write_bio(rp, mem, 0644);
done:
    BIO_free(mem);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
    free(kp);
    free(rp);
    return rc;
}

static int read_csr(const char *path, X509_REQ **out, char *name, size_t cap)
{
    void *p = NULL;
    int rc = spes__pki_read_pem(path, SPES__PKI_PEM_CSR, &p);
    if (rc)
        return rc;
    X509_REQ *req = p;
    EVP_PKEY *pub = X509_REQ_get0_pubkey(req);
    if (!pub || X509_REQ_verify(req, pub) != 1) {
        X509_REQ_free(req);
        return spes_errf(SPES_EFORMAT, "%s: CSR signature does not verify", path);
    }
    const X509_NAME *nm = X509_REQ_get_subject_name(req);
    int idx = X509_NAME_get_index_by_NID(nm, NID_commonName, -1);
    const ASN1_STRING *s = idx >= 0 ? X509_NAME_ENTRY_get_data(X509_NAME_get_entry(nm, idx)) : NULL;
    if (!s || ASN1_STRING_length(s) <= 0 || (size_t)ASN1_STRING_length(s) >= cap ||
        memchr(ASN1_STRING_get0_data(s), 0, (size_t)ASN1_STRING_length(s))) {
        X509_REQ_free(req);
        return spes_errf(SPES_EFORMAT, "%s: CSR has no usable common name", path);
    }
    memcpy(name, ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s));
    name[ASN1_STRING_length(s)] = '\0';
    if ((rc = spes_pki_name_valid(name)) != 0) {
        X509_REQ_free(req);
        return spes__pki_wrap(SPES_EFORMAT, path);
    }
    *out = req;
    return 0;
}

int spes_pki_cert_sign(const char *ca_dir, const char *csr_path, int role, const spes_pki_validity *v,
                       const char *out_path)
{
    char name[SPES_PKI_NAME_MAX + 1];
    X509_REQ *req = NULL;
    X509 *cert = NULL;
    spes__pki_ca ca;
    int rc = read_csr(csr_path, &req, name, sizeof name);
    if (rc)
        return rc;
    if ((rc = spes__pki_ca_load(&ca, ca_dir)) != 0) {
        X509_REQ_free(req);
        return rc;
    }
    /* only the public key and the validated CN are taken from the request */
    if ((rc = sign_leaf(&ca, X509_REQ_get0_pubkey(req), name, role, v, &cert)) == 0)
        rc = spes__pki_write_cert(out_path, cert);
    spes__pki_ca_fini(&ca);
    X509_free(cert);
    X509_REQ_free(req);
    return rc;
}
