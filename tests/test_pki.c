/* test_pki.c: the run PKI: CA and certificate contents, key file modes, CSR signing,
 * names and roles, revocation lists (ours and `openssl verify`'s view of them), the
 * CRL loader's refusals, and the spesctl verbs end to end. */
#include "core/error.h"
#include "core/fileio.h"
#include "pki/pki.h"

#include <check.h>
#include <dirent.h>
#include <stdarg.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmp[256];

static void setup(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/spes-test-pki-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmp));
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    ck_assert_int_eq(system(cmd), 0);
}

static const char *p(const char *rel)
{
    static char bufs[8][512];
    static int i;
    char *b = bufs[i++ % 8];
    snprintf(b, 512, "%s/%s", tmp, rel);
    return b;
}

static unsigned mode_of(const char *path)
{
    struct stat st;
    ck_assert_msg(stat(path, &st) == 0, "%s missing", path);
    return (unsigned)(st.st_mode & 0777);
}

static X509 *load_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    X509 *c = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    ck_assert_ptr_nonnull(c);
    return c;
}

/* sh runs a shell command and returns its exit status. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void no_temp_files(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    while ((e = readdir(d)))
        ck_assert_msg(strstr(e->d_name, ".tmp") == NULL, "leftover temporary file %s/%s", dir, e->d_name);
    closedir(d);
}

START_TEST(test_names_and_roles)
{
    const char *good[] = {"a", "node-0", "alice", "0", "a-b-c-9", NULL};
    const char *bad[] = {"", "Node", "a_b", "a.b", "a b", "é", "a/b", "operator:alice", NULL};
    for (int i = 0; good[i]; i++)
        ck_assert_msg(spes_pki_name_valid(good[i]) == 0, "%s rejected", good[i]);
    for (int i = 0; bad[i]; i++)
        ck_assert_msg(spes_pki_name_valid(bad[i]) == SPES_EINVAL, "%s accepted", bad[i]);
    char longname[80];
    memset(longname, 'a', 64);
    longname[64] = '\0';
    ck_assert_int_eq(spes_pki_name_valid(longname), SPES_EINVAL);
    longname[63] = '\0';
    ck_assert_int_eq(spes_pki_name_valid(longname), 0);
    ck_assert_int_eq(spes_pki_role_parse("node"), SPES_ROLE_NODE);
    ck_assert_int_eq(spes_pki_role_parse("operator"), SPES_ROLE_OPERATOR);
    ck_assert_int_eq(spes_pki_role_parse("admin"), SPES_ROLE_NONE);
    ck_assert_str_eq(spes_pki_role_name(SPES_ROLE_OPERATOR), "operator");
}
END_TEST

START_TEST(test_ca_init)
{
    ck_assert_msg(spes_pki_ca_init(p("ca"), "run-7", NULL) == 0, "%s", spes_errmsg());
    ck_assert_uint_eq(mode_of(p("ca/ca.key")), 0600);
    ck_assert_uint_eq(mode_of(p("ca")), 0700);
    X509 *ca = load_cert(p("ca/ca.crt"));
    ck_assert_int_eq(X509_check_ca(ca), 1);
    ck_assert(X509_get_key_usage(ca) & KU_KEY_CERT_SIGN);
    ck_assert(X509_get_key_usage(ca) & KU_CRL_SIGN);
    ck_assert(X509_get_extension_flags(ca) & EXFLAG_SS);
    char cn[64];
    X509_NAME_get_text_by_NID(X509_get_subject_name(ca), NID_commonName, cn, sizeof cn);
    ck_assert_str_eq(cn, "run-7");
    EVP_PKEY *pub = X509_get0_pubkey(ca);
    ck_assert_int_eq(EVP_PKEY_get_base_id(pub), EVP_PKEY_EC);
    ck_assert_int_eq(EVP_PKEY_get_bits(pub), 256);
    X509_free(ca);
    no_temp_files(p("ca"));
    /* never overwrite a CA key */
    ck_assert_int_eq(spes_pki_ca_init(p("ca"), "run-7", NULL), SPES_EEXIST);
    ck_assert_int_eq(spes_pki_ca_init(p("ca2"), "Bad Run", NULL), SPES_EINVAL);
}
END_TEST

static int has_eku(X509 *c, uint32_t bit)
{
    return (X509_get_extension_flags(c) & EXFLAG_XKUSAGE) && (X509_get_extended_key_usage(c) & bit);
}

START_TEST(test_issue_node_and_operator)
{
    ck_assert(spes_pki_ca_init(p("ca"), "run", NULL) == 0);
    ck_assert_msg(spes_pki_cert_issue(p("ca"), "node-3", SPES_ROLE_NODE, NULL, p("out")) == 0, "%s",
                  spes_errmsg());
    ck_assert(spes_pki_cert_issue(p("ca"), "alice", SPES_ROLE_OPERATOR, NULL, p("out")) == 0);
    ck_assert_uint_eq(mode_of(p("out/node-3.key")), 0600);
    ck_assert_uint_eq(mode_of(p("out/alice.key")), 0600);
    ck_assert_uint_eq(mode_of(p("out/node-3.crt")), 0644);
    no_temp_files(p("out"));
    spes_pki_identity id;
    ck_assert(spes_pki_cert_identity(p("out/node-3.crt"), &id) == 0);
    ck_assert_str_eq(id.name, "node-3");
    ck_assert_int_eq(id.role, SPES_ROLE_NODE);
    ck_assert_uint_ge(strlen(id.serial), 16);
    ck_assert(spes_pki_cert_identity(p("out/alice.crt"), &id) == 0);
    ck_assert_str_eq(id.name, "alice");
    ck_assert_int_eq(id.role, SPES_ROLE_OPERATOR);
    X509 *node = load_cert(p("out/node-3.crt")), *op = load_cert(p("out/alice.crt"));
    ck_assert(has_eku(node, XKU_SSL_SERVER) && has_eku(node, XKU_SSL_CLIENT));
    ck_assert(has_eku(op, XKU_SSL_CLIENT) && !has_eku(op, XKU_SSL_SERVER));
    ck_assert_int_eq(X509_check_ca(node), 0);
    X509_free(node);
    X509_free(op);
    /* chains verify with OpenSSL's own tool and with ours */
    ck_assert_int_eq(sh("openssl verify -CAfile %s %s %s >/dev/null", p("ca/ca.crt"), p("out/node-3.crt"),
                        p("out/alice.crt")),
                     0);
    ck_assert_int_eq(sh("openssl verify -purpose sslserver -CAfile %s %s >/dev/null 2>&1", p("ca/ca.crt"),
                        p("out/alice.crt")),
                     2);
    ck_assert_int_eq(spes_pki_verify_file(p("out/node-3.crt"), p("ca/ca.crt"), NULL), 0);
    /* the key on disk belongs to the certificate */
    ck_assert_int_eq(sh("test \"$(openssl pkey -in %s -pubout)\" = \"$(openssl x509 -in %s -noout -pubkey)\"",
                        p("out/node-3.key"), p("out/node-3.crt")),
                     0);
    /* one valid certificate per name; bad names and roles refused */
    ck_assert_int_eq(spes_pki_cert_issue(p("ca"), "node-3", SPES_ROLE_NODE, NULL, p("out")), SPES_EEXIST);
    ck_assert_int_eq(spes_pki_cert_issue(p("ca"), "Node_3", SPES_ROLE_NODE, NULL, p("out")), SPES_EINVAL);
    ck_assert_int_eq(spes_pki_cert_issue(p("ca"), "x", SPES_ROLE_NONE, NULL, p("out")), SPES_EINVAL);
    ck_assert_int_ne(spes_pki_cert_issue(p("nope"), "x", SPES_ROLE_NODE, NULL, p("out")), 0);
    /* the CA's own certificate carries no role, so it is no peer identity */
    ck_assert_int_eq(spes_pki_cert_identity(p("ca/ca.crt"), &id), SPES_EFORMAT);
}
END_TEST

START_TEST(test_expired_certificate)
{
    ck_assert(spes_pki_ca_init(p("ca"), "run", NULL) == 0);
    spes_pki_validity v;
    spes_pki_validity_days(&v, -2);
    ck_assert(spes_pki_cert_issue(p("ca"), "old", SPES_ROLE_NODE, &v, p("out")) == 0);
    ck_assert_int_eq(spes_pki_verify_file(p("out/old.crt"), p("ca/ca.crt"), NULL), SPES_EAUTH);
    ck_assert_msg(strstr(spes_errmsg(), "expired"), "%s", spes_errmsg());
    ck_assert_int_ne(sh("openssl verify -CAfile %s %s >/dev/null 2>&1", p("ca/ca.crt"), p("out/old.crt")), 0);
    /* an expired certificate does not block a new one for the same name */
    ck_assert_msg(spes_pki_cert_issue(p("ca"), "old", SPES_ROLE_NODE, NULL, p("out")) == 0, "%s",
                  spes_errmsg());
    spes_pki_validity empty = {100, 100};
    ck_assert_int_eq(spes_pki_cert_issue(p("ca"), "x", SPES_ROLE_NODE, &empty, p("out")), SPES_EINVAL);
}
END_TEST

/* tamper_csr flips one bit of a CSR's signature and writes it back as PEM. */
static void tamper_csr(const char *in, const char *out)
{
    FILE *f = fopen(in, "r");
    ck_assert_ptr_nonnull(f);
    X509_REQ *req = PEM_read_X509_REQ(f, NULL, NULL, NULL);
    fclose(f);
    ck_assert_ptr_nonnull(req);
    unsigned char *der = NULL;
    int len = i2d_X509_REQ(req, &der);
    ck_assert_int_gt(len, 16);
    der[len - 5] ^= 1; /* inside the ECDSA signature's last integer */
    const unsigned char *q = der;
    X509_REQ *bad = d2i_X509_REQ(NULL, &q, len);
    ck_assert_ptr_nonnull(bad);
    f = fopen(out, "w");
    ck_assert(PEM_write_X509_REQ(f, bad) == 1);
    fclose(f);
    X509_REQ_free(bad);
    X509_REQ_free(req);
    OPENSSL_free(der);
}

START_TEST(test_request_and_sign)
{
    ck_assert(spes_pki_ca_init(p("ca"), "run", NULL) == 0);
    ck_assert_msg(spes_pki_cert_request("vol-1", p("vol")) == 0, "%s", spes_errmsg());
    ck_assert_uint_eq(mode_of(p("vol/vol-1.key")), 0600);
    ck_assert_int_eq(sh("openssl req -in %s -noout -verify >/dev/null 2>&1", p("vol/vol-1.csr")), 0);
    ck_assert_msg(spes_pki_cert_sign(p("ca"), p("vol/vol-1.csr"), SPES_ROLE_NODE, NULL, p("vol/vol-1.crt")) ==
                      0,
                  "%s", spes_errmsg());
    spes_pki_identity id;
    ck_assert(spes_pki_cert_identity(p("vol/vol-1.crt"), &id) == 0);
    ck_assert_str_eq(id.name, "vol-1");
    ck_assert_int_eq(id.role, SPES_ROLE_NODE);
    ck_assert_int_eq(sh("openssl verify -CAfile %s %s >/dev/null", p("ca/ca.crt"), p("vol/vol-1.crt")), 0);
    ck_assert_int_eq(sh("test \"$(openssl pkey -in %s -pubout)\" = \"$(openssl x509 -in %s -noout -pubkey)\"",
                        p("vol/vol-1.key"), p("vol/vol-1.crt")),
                     0);
    /* a CSR asking for CA powers or another CN gets neither */
    ck_assert_int_eq(
        sh("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout %s -out %s "
           "-subj '/CN=evil/OU=operator' -addext basicConstraints=critical,CA:TRUE 2>/dev/null",
           p("evil.key"), p("evil.csr")),
        0);
    ck_assert(spes_pki_cert_sign(p("ca"), p("evil.csr"), SPES_ROLE_NODE, NULL, p("evil.crt")) == 0);
    X509 *evil = load_cert(p("evil.crt"));
    ck_assert_int_eq(X509_check_ca(evil), 0);
    X509_free(evil);
    ck_assert(spes_pki_cert_identity(p("evil.crt"), &id) == 0);
    ck_assert_int_eq(id.role, SPES_ROLE_NODE);
    /* bad names and broken signatures are refused */
    ck_assert_int_eq(
        sh("openssl req -new -key %s -out %s -subj '/CN=Bad Name' 2>/dev/null", p("evil.key"), p("bad.csr")),
        0);
    ck_assert_int_eq(spes_pki_cert_sign(p("ca"), p("bad.csr"), SPES_ROLE_NODE, NULL, p("bad.crt")),
                     SPES_EFORMAT);
    tamper_csr(p("vol/vol-1.csr"), p("tampered.csr"));
    ck_assert_int_ne(spes_pki_cert_sign(p("ca"), p("tampered.csr"), SPES_ROLE_NODE, NULL, p("t.crt")), 0);
    ck_assert_msg(strstr(spes_errmsg(), "signature does not verify"), "%s", spes_errmsg());
    ck_assert_int_ne(access(p("t.crt"), F_OK), 0);
}
END_TEST

START_TEST(test_revoke_and_crl)
{
    ck_assert(spes_pki_ca_init(p("ca"), "run", NULL) == 0);
    ck_assert(spes_pki_cert_issue(p("ca"), "node-1", SPES_ROLE_NODE, NULL, p("out")) == 0);
    ck_assert(spes_pki_cert_issue(p("ca"), "node-2", SPES_ROLE_NODE, NULL, p("out")) == 0);
    ck_assert(spes_pki_cert_issue(p("ca"), "bob", SPES_ROLE_OPERATOR, NULL, p("out")) == 0);
    /* an empty list first */
    ck_assert(spes_pki_crl_write(p("ca"), 30, p("crl0.pem")) == 0);
    char *pem = NULL;
    int n = -1;
    ck_assert_msg(spes_pki_crl_load(p("crl0.pem"), p("ca/ca.crt"), &pem) == 0, "%s", spes_errmsg());
    ck_assert(spes_pki_crl_parse(pem, strlen(pem), NULL, &n) == 0);
    ck_assert_int_eq(n, 0);
    free(pem);
    /* revoke by name and by serial (upper-case accepted) */
    int count = 0;
    ck_assert(spes_pki_cert_revoke(p("ca"), "node-2", &count) == 0);
    ck_assert_int_eq(count, 1);
    spes_pki_identity bob;
    ck_assert(spes_pki_cert_identity(p("out/bob.crt"), &bob) == 0);
    char upper[64];
    for (size_t i = 0; i <= strlen(bob.serial); i++)
        upper[i] =
            (char)((bob.serial[i] >= 'a' && bob.serial[i] <= 'f') ? bob.serial[i] - 32 : bob.serial[i]);
    ck_assert(spes_pki_cert_revoke(p("ca"), upper, &count) == 0);
    ck_assert_int_eq(spes_pki_cert_revoke(p("ca"), "node-2", NULL), SPES_ENOENT);
    ck_assert_int_eq(spes_pki_cert_revoke(p("ca"), "nobody", NULL), SPES_ENOENT);
    ck_assert(spes_pki_crl_write(p("ca"), 30, p("crl.pem")) == 0);
    ck_assert(spes_pki_crl_load(p("crl.pem"), p("ca/ca.crt"), &pem) == 0);
    ck_assert(spes_pki_crl_parse(pem, strlen(pem), NULL, &n) == 0);
    ck_assert_int_eq(n, 2);
    free(pem);
    /* OpenSSL agrees: revoked certificates fail, the others pass */
    const char *vf = "openssl verify -crl_check -CAfile %s -CRLfile %s %s >/dev/null 2>&1";
    ck_assert_int_eq(sh(vf, p("ca/ca.crt"), p("crl.pem"), p("out/node-1.crt")), 0);
    ck_assert_int_ne(sh(vf, p("ca/ca.crt"), p("crl.pem"), p("out/node-2.crt")), 0);
    ck_assert_int_ne(sh(vf, p("ca/ca.crt"), p("crl.pem"), p("out/bob.crt")), 0);
    ck_assert_int_eq(spes_pki_verify_file(p("out/node-1.crt"), p("ca/ca.crt"), p("crl.pem")), 0);
    ck_assert_int_eq(spes_pki_verify_file(p("out/node-2.crt"), p("ca/ca.crt"), p("crl.pem")), SPES_EAUTH);
    ck_assert_msg(strstr(spes_errmsg(), "revoked"), "%s", spes_errmsg());
    /* the CRL number increases */
    ck_assert_int_eq(sh("openssl crl -in %s -noout -crlnumber | grep -Eq '^crlNumber=0x0*2$'", p("crl.pem")),
                     0);
    /* a revoked name can be issued again */
    ck_assert(spes_pki_cert_issue(p("ca"), "node-2", SPES_ROLE_NODE, NULL, p("out2")) == 0);
    ck_assert_int_eq(spes_pki_crl_write(p("ca"), 0, p("x.pem")), SPES_EINVAL);
}
END_TEST

static char *slurp(const char *path, size_t *len)
{
    char *b = NULL;
    ck_assert(spes_read_file(path, 1u << 24, &b, len) == 0);
    return b;
}

START_TEST(test_crl_loader_refusals)
{
    ck_assert(spes_pki_ca_init(p("ca"), "run", NULL) == 0);
    ck_assert(spes_pki_ca_init(p("other"), "run", NULL) == 0); /* same name, different key */
    ck_assert(spes_pki_ca_init(p("third"), "third", NULL) == 0);
    ck_assert(spes_pki_crl_write(p("ca"), 30, p("crl.pem")) == 0);
    ck_assert(spes_pki_crl_write(p("other"), 30, p("other.pem")) == 0);
    ck_assert(spes_pki_crl_write(p("third"), 30, p("third.pem")) == 0);
    size_t ca_len, crl_len, other_len;
    char *ca = slurp(p("ca/ca.crt"), &ca_len), *crl = slurp(p("crl.pem"), &crl_len);
    char *other = slurp(p("other.pem"), &other_len);
    ck_assert_int_eq(spes_pki_crl_parse(crl, crl_len, ca, NULL), 0);
    ck_assert_int_eq(spes_pki_crl_parse(other, other_len, ca, NULL), SPES_EAUTH);
    ck_assert_msg(strstr(spes_errmsg(), "signature"), "%s", spes_errmsg());
    ck_assert_int_eq(spes_pki_crl_load(p("third.pem"), p("ca/ca.crt"), &(char *){NULL}), SPES_EAUTH);
    ck_assert_msg(strstr(spes_errmsg(), "third.pem") && strstr(spes_errmsg(), "not issued"), "%s",
                  spes_errmsg());
    ck_assert_int_eq(spes_pki_crl_parse("garbage", 7, ca, NULL), SPES_EFORMAT);
    ck_assert_int_eq(spes_pki_crl_parse(crl, 0, ca, NULL), SPES_EFORMAT);
    ck_assert_int_eq(spes_pki_crl_parse(crl, SPES_PKI_CRL_MAX_BYTES + 1, ca, NULL), SPES_EFORMAT);
    ck_assert_int_eq(spes_pki_crl_parse(crl, crl_len / 2, ca, NULL), SPES_EFORMAT);
    char *two = malloc(2 * crl_len);
    memcpy(two, crl, crl_len);
    memcpy(two + crl_len, crl, crl_len);
    ck_assert_int_eq(spes_pki_crl_parse(two, 2 * crl_len, ca, NULL), SPES_EFORMAT);
    ck_assert_msg(strstr(spes_errmsg(), "more than one"), "%s", spes_errmsg());
    /* a certificate is not a CRL */
    ck_assert_int_eq(spes_pki_crl_parse(ca, ca_len, ca, NULL), SPES_EFORMAT);
    ck_assert_int_eq(spes_pki_crl_load(p("missing.pem"), p("ca/ca.crt"), &(char *){NULL}), SPES_ENOENT);
    free(two);
    free(ca);
    free(crl);
    free(other);
}
END_TEST

/* The spesctl verbs end to end (skipped when built without the client). */
START_TEST(test_spesctl_verbs)
{
#ifdef SPESCTL_PATH
    const char *s = SPESCTL_PATH;
    ck_assert_int_eq(sh("%s ca init --dir %s --name run-x --days 10 >/dev/null", s, p("ca")), 0);
    ck_assert_int_eq(sh("%s cert issue node-0 --role node --ca %s --out %s >/dev/null", s, p("ca"), p("pki")),
                     0);
    ck_assert_int_eq(sh("%s cert issue operator --role operator --ca %s --out %s --days 5 >/dev/null", s,
                        p("ca"), p("pki")),
                     0);
    ck_assert_uint_eq(mode_of(p("pki/node-0.key")), 0600);
    ck_assert_uint_eq(mode_of(p("pki/operator.key")), 0600);
    ck_assert_int_eq(sh("%s cert request vol-2 --out %s >/dev/null", s, p("vol")), 0);
    ck_assert_int_eq(sh("%s cert sign %s --role node --ca %s --out %s >/dev/null", s, p("vol/vol-2.csr"),
                        p("ca"), p("vol/vol-2.crt")),
                     0);
    ck_assert_int_eq(sh("%s cert show %s | grep -q '^role operator$'", s, p("pki/operator.crt")), 0);
    ck_assert_int_eq(sh("openssl verify -CAfile %s %s %s %s >/dev/null", p("ca/ca.crt"), p("pki/node-0.crt"),
                        p("pki/operator.crt"), p("vol/vol-2.crt")),
                     0);
    ck_assert_int_eq(sh("%s cert revoke vol-2 --ca %s >/dev/null", s, p("ca")), 0);
    ck_assert_int_eq(sh("%s crl --ca %s --out %s >/dev/null", s, p("ca"), p("crl.pem")), 0);
    ck_assert_int_ne(sh("openssl verify -crl_check -CAfile %s -CRLfile %s %s >/dev/null 2>&1", p("ca/ca.crt"),
                        p("crl.pem"), p("vol/vol-2.crt")),
                     0);
    /* usage errors exit 2, failures 1, each with one line on stderr */
    ck_assert_int_eq(sh("%s cert issue x --ca %s --out %s 2>/dev/null", s, p("ca"), p("pki")), 2);
    ck_assert_int_eq(sh("%s cert issue x --role admin --ca %s --out %s 2>/dev/null", s, p("ca"), p("pki")),
                     2);
    ck_assert_int_eq(sh("%s ca init --dir %s 2>/dev/null", s, p("ca")), 1);
    ck_assert_int_eq(sh("%s cert issue Bad --role node --ca %s --out %s 2>/dev/null", s, p("ca"), p("pki")),
                     1);
    ck_assert_int_eq(sh("%s frobnicate 2>/dev/null", s), 2);
    ck_assert_int_eq(sh("%s ca init --dir %s --days 0 2>/dev/null", s, p("ca9")), 2);
    ck_assert_int_eq(sh("test $(%s cert issue x --role node --ca %s --out %s 2>&1 >/dev/null | wc -l) = 1", s,
                        p("nope"), p("pki")),
                     0);
#else
    fprintf(stderr, "test_spesctl_verbs: skipped, built without spesctl\n");
#endif
}
END_TEST

static Suite *pki_suite(void)
{
    Suite *s = suite_create("pki");
    TCase *tc = tcase_create("ca");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_names_and_roles);
    tcase_add_test(tc, test_ca_init);
    tcase_add_test(tc, test_issue_node_and_operator);
    tcase_add_test(tc, test_expired_certificate);
    tcase_add_test(tc, test_request_and_sign);
    tcase_add_test(tc, test_revoke_and_crl);
    tcase_add_test(tc, test_crl_loader_refusals);
    tcase_add_test(tc, test_spesctl_verbs);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(pki_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
