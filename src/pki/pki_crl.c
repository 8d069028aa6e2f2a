/* pki_crl.c: the CA index, revocation, and X.509 CRLs (writing, checking, loading).
 * spes_pki_crl_parse handles outside bytes (a CRL file a daemon loads, fuzzed
 * by fuzz/fuzz_pki_crl.c): it bounds the size and never trusts a CRL that is
 * not signed by the run CA. Never aborts on malformed input. */
#include "pki/pki_internal.h"

#include "core/error.h"
#include "core/fileio.h"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define INDEX_MAX_BYTES (64u << 20)

typedef struct index_entry {
    char serial[41];
    char name[SPES_PKI_NAME_MAX + 1];
    char role[16];
    int64_t not_after;
    char status; /* 'V' valid, 'R' revoked */
    int64_t revoked_at;
} index_entry;

typedef struct index_tab {
    index_entry *e;
    size_t n, cap;
} index_tab;

static int index_load(const char *dir, index_tab *t, char **path_out)
{
    memset(t, 0, sizeof *t);
    char *path = spes__pki_file(dir, "index.tsv");
    char *buf = NULL, *save = NULL;
    size_t len = 0;
    if (!path)
        return SPES_ENOMEM;
    int rc = spes_read_file(path, INDEX_MAX_BYTES, &buf, &len);
    if (rc == SPES_ENOENT || (rc && access(path, F_OK) != 0)) {
        rc = 0; /* a CA with nothing issued yet */
        buf = NULL;
    }
    int lineno = 0;
    for (char *line = buf ? strtok_r(buf, "\n", &save) : NULL; !rc && line;
         line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        if (t->n == t->cap) {
            size_t nc = t->cap ? t->cap * 2 : 16;
            index_entry *ne = realloc(t->e, nc * sizeof *ne);
            if (!ne) {
                rc = SPES_ENOMEM;
                break;
            }
            t->e = ne;
            t->cap = nc;
        }
        index_entry *e = &t->e[t->n];
        memset(e, 0, sizeof *e);
        if (sscanf(line, "%40[0-9a-f]\t%63[a-z0-9-]\t%15[a-z]\t%" SCNd64 "\t%c\t%" SCNd64, e->serial, e->name,
                   e->role, &e->not_after, &e->status, &e->revoked_at) != 6 ||
            (e->status != 'V' && e->status != 'R'))
            rc = spes_errf(SPES_EFORMAT, "%s:%d: malformed index line", path, lineno);
        else
            t->n++;
    }
    free(buf);
    if (rc) {
        free(t->e);
        memset(t, 0, sizeof *t);
        free(path);
        return rc;
    }
    *path_out = path;
    return 0;
}

static int index_store(const char *path, const index_tab *t)
{
    spes_atomic_file af;
    int rc = spes_atomic_open(&af, path);
    for (size_t i = 0; !rc && i < t->n; i++) {
        char line[256];
        const index_entry *e = &t->e[i];
        int n = snprintf(line, sizeof line, "%s\t%s\t%s\t%" PRId64 "\t%c\t%" PRId64 "\n", e->serial, e->name,
                         e->role, e->not_after, e->status, e->revoked_at);
        rc = spes_atomic_write(&af, line, (size_t)n);
        if (rc)
            spes_atomic_abort(&af);
    }
    return rc ? rc : spes_atomic_commit(&af);
}

int spes__pki_index_append(const char *dir, X509 *cert, const char *name, int role)
{
    index_tab t;
    char *path = NULL;
    spes_pki_identity id;
    int rc = index_load(dir, &t, &path);
    if (rc)
        return rc;
    index_entry *ne = realloc(t.e, (t.n + 1) * sizeof *ne);
    if (!ne) {
        rc = SPES_ENOMEM;
        goto done;
    }
    t.e = ne;
    index_entry *e = &t.e[t.n++];
    memset(e, 0, sizeof *e);
    /* the identity parser needs OU, which a fresh leaf has; reuse it for serial+notAfter */
    if ((rc = spes_pki_identity_from_x509(cert, &id)) != 0)
        goto done;
    snprintf(e->serial, sizeof e->serial, "%s", id.serial);
    snprintf(e->name, sizeof e->name, "%s", name);
    snprintf(e->role, sizeof e->role, "%s", spes_pki_role_name(role));
    e->not_after = id.not_after;
    e->status = 'V';
    rc = index_store(path, &t);
done:
    free(t.e);
    free(path);
    return rc;
}

int spes__pki_index_has_valid(const char *dir, const char *name)
{
    index_tab t;
    char *path = NULL;
    if (index_load(dir, &t, &path) != 0)
        return 0;
    int64_t now = (int64_t)time(NULL);
    int found = 0;
    for (size_t i = 0; i < t.n; i++)
        if (t.e[i].status == 'V' && t.e[i].not_after > now && strcmp(t.e[i].name, name) == 0)
            found = 1;
    free(t.e);
    free(path);
    return found;
}

int spes_pki_cert_revoke(const char *ca_dir, const char *name_or_serial, int *n_revoked)
{
    index_tab t;
    char *path = NULL;
    int rc = index_load(ca_dir, &t, &path);
    if (rc)
        return rc;
    char want[64];
    snprintf(want, sizeof want, "%s", name_or_serial);
    for (char *p = want; *p; p++)
        if (*p >= 'A' && *p <= 'F')
            *p = (char)(*p + 32);
    int n = 0;
    for (size_t i = 0; i < t.n; i++) {
        index_entry *e = &t.e[i];
        if (e->status != 'V' || (strcmp(e->name, name_or_serial) != 0 && strcmp(e->serial, want) != 0))
            continue;
        e->status = 'R';
        e->revoked_at = (int64_t)time(NULL);
        n++;
    }
    if (n == 0)
        rc = spes_errf(SPES_ENOENT, "%s: no valid certificate named or numbered '%s'", path, name_or_serial);
    else
        rc = index_store(path, &t);
    if (n_revoked)
        *n_revoked = n;
    free(t.e);
    free(path);
    return rc;
}

static int next_crl_number(const char *dir, long *out)
{
    char *path = spes__pki_file(dir, "crlnumber"), *buf = NULL;
    size_t len = 0;
    long n = 0;
    if (!path)
        return SPES_ENOMEM;
    if (spes_read_file(path, 64, &buf, &len) == 0)
        n = strtol(buf, NULL, 10);
    free(buf);
    if (n < 0)
        n = 0;
    if (n == LONG_MAX) { /* would overflow: refuse rather than restart the numbering */
        int rc = spes_errf(SPES_EFORMAT, "%s: CRL number is out of range", path);
        free(path);
        return rc;
    }
    n++;
    char txt[32];
    int l = snprintf(txt, sizeof txt, "%ld\n", n);
    int rc = spes_write_file_atomic(path, txt, (size_t)l);
    free(path);
    *out = n;
    return rc;
}

static int add_revoked(X509_CRL *crl, const index_entry *e)
{
    BIGNUM *bn = NULL;
    int ok = BN_hex2bn(&bn, e->serial) > 0;
    ASN1_INTEGER *ai = ok ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
    ASN1_TIME *when = ASN1_TIME_set(NULL, (time_t)e->revoked_at);
    X509_REVOKED *r = X509_REVOKED_new();
    ok = ai && when && r && X509_REVOKED_set_serialNumber(r, ai) == 1 &&
         X509_REVOKED_set_revocationDate(r, when) == 1 && X509_CRL_add0_revoked(crl, r) == 1;
    if (!ok)
        X509_REVOKED_free(r);
    ASN1_INTEGER_free(ai);
    ASN1_TIME_free(when);
    BN_free(bn);
    return ok ? 0 : spes_errf(SPES_EFORMAT, "cannot add serial %s to the CRL", e->serial);
}

static int crl_fill(X509_CRL *crl, spes__pki_ca *ca, const index_tab *t, int days, long number)
{
    time_t now = time(NULL);
    ASN1_TIME *last = ASN1_TIME_set(NULL, now), *next = ASN1_TIME_set(NULL, now + (time_t)days * 86400);
    ASN1_INTEGER *num = ASN1_INTEGER_new();
    int rc = 0;
    if (!last || !next || !num || ASN1_INTEGER_set(num, number) != 1 || X509_CRL_set_version(crl, 1) != 1 ||
        X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca->cert)) != 1 ||
        X509_CRL_set1_lastUpdate(crl, last) != 1 || X509_CRL_set1_nextUpdate(crl, next) != 1 ||
        X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0) != 1)
        rc = spes_errf(SPES_ENOMEM, "cannot build the CRL");
    for (size_t i = 0; !rc && i < t->n; i++)
        if (t->e[i].status == 'R')
            rc = add_revoked(crl, &t->e[i]);
    if (!rc) {
        X509V3_CTX ctx;
        X509V3_set_ctx_nodb(&ctx);
        X509V3_set_ctx(&ctx, ca->cert, NULL, NULL, crl, 0);
        X509_EXTENSION *aki = X509V3_EXT_conf_nid(NULL, &ctx, NID_authority_key_identifier, "keyid:always");
        if (!aki || X509_CRL_add_ext(crl, aki, -1) != 1)
            rc = spes_errf(SPES_EIO, "cannot add the CRL key identifier: %s", spes__pki_sslerr());
        X509_EXTENSION_free(aki);
    }
    if (!rc && (X509_CRL_sort(crl) != 1 || X509_CRL_sign(crl, ca->key, EVP_sha256()) <= 0))
        rc = spes_errf(SPES_EIO, "cannot sign the CRL: %s", spes__pki_sslerr());
    ASN1_TIME_free(last);
    ASN1_TIME_free(next);
    ASN1_INTEGER_free(num);
    return rc;
}

int spes_pki_crl_write(const char *ca_dir, int days, const char *out_path)
{
    if (days <= 0 || days > 36500)
        return spes_errf(SPES_EINVAL, "CRL validity must be 1..36500 days, not %d", days);
    spes__pki_ca ca;
    index_tab t;
    char *ipath = NULL;
    X509_CRL *crl = NULL;
    BIO *mem = NULL;
    long number = 0;
    int rc = spes__pki_ca_load(&ca, ca_dir);
    if (rc)
        return rc;
    if ((rc = index_load(ca_dir, &t, &ipath)) != 0) {
        spes__pki_ca_fini(&ca);
        return rc;
    }
    if (!(crl = X509_CRL_new()) || !(mem = BIO_new(BIO_s_mem()))) {
        rc = SPES_ENOMEM;
        goto done;
    }
    if ((rc = next_crl_number(ca_dir, &number)) || (rc = crl_fill(crl, &ca, &t, days, number)))
        goto done;
    if (PEM_write_bio_X509_CRL(mem, crl) != 1)
        rc = spes_errf(SPES_EIO, "cannot encode the CRL: %s", spes__pki_sslerr());
    else
        rc = spes__pki_write_bio(out_path, mem, 0644);
done:
    BIO_free(mem);
    X509_CRL_free(crl);
    free(t.e);
    free(ipath);
    spes__pki_ca_fini(&ca);
    return rc;
}

int spes_pki_crl_parse(const void *pem, size_t len, const char *ca_pem, int *n_revoked)
{
    if (len == 0 || len > SPES_PKI_CRL_MAX_BYTES)
        return spes_errf(SPES_EFORMAT, "CRL is %zu bytes (allowed 1..%u)", len, SPES_PKI_CRL_MAX_BYTES);
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    X509_CRL *crl = b ? PEM_read_bio_X509_CRL(b, NULL, NULL, NULL) : NULL;
    X509_CRL *extra = crl ? PEM_read_bio_X509_CRL(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    X509 *ca = NULL;
    int rc = 0;
    if (!crl) {
        rc = spes_errf(SPES_EFORMAT, "not a PEM X.509 CRL: %s", spes__pki_sslerr());
        goto done;
    }
    if (extra) {
        rc = spes_errf(SPES_EFORMAT, "more than one CRL in one file");
        goto done;
    }
    if (ca_pem) {
        BIO *cb = BIO_new_mem_buf(ca_pem, -1);
        ca = cb ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
        BIO_free(cb);
        if (!ca) {
            rc = spes_errf(SPES_EFORMAT, "CA certificate is not PEM: %s", spes__pki_sslerr());
            goto done;
        }
        if (X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(ca)) != 0) {
            rc = spes_errf(SPES_EAUTH, "CRL was not issued by this run's CA");
            goto done;
        }
        if (X509_CRL_verify(crl, X509_get0_pubkey(ca)) != 1) {
            rc = spes_errf(SPES_EAUTH, "CRL signature does not verify with the run CA");
            goto done;
        }
    }
    if (!X509_CRL_get0_nextUpdate(crl)) {
        rc = spes_errf(SPES_EFORMAT, "CRL has no nextUpdate");
        goto done;
    }
    const STACK_OF(X509_REVOKED) *rev = X509_CRL_get_REVOKED(crl);
    if (n_revoked)
        *n_revoked = rev ? sk_X509_REVOKED_num(rev) : 0;
done:
    X509_CRL_free(crl);
    X509_CRL_free(extra);
    X509_free(ca);
    ERR_clear_error();
    return rc;
}

int spes_pki_crl_load(const char *crl_path, const char *ca_path, char **pem_out)
{
    char *crl = NULL, *ca = NULL;
    size_t len = 0, calen = 0;
    int rc = spes_read_file(crl_path, SPES_PKI_CRL_MAX_BYTES, &crl, &len);
    if (rc)
        return rc;
    if (ca_path && (rc = spes_read_file(ca_path, 1u << 20, &ca, &calen)) != 0) {
        free(crl);
        return rc;
    }
    rc = spes_pki_crl_parse(crl, len, ca, NULL);
    free(ca);
    if (rc) {
        rc = spes__pki_wrap(rc, crl_path);
        free(crl);
        return rc;
    }
    *pem_out = crl;
    return 0;
}
