/* pki.h: a run's own certificate authority, made and used with OpenSSL 3.
 *
 * A run CA lives in one directory (mode 0700):
 *   ca.key      EC P-256 private key, mode 0600
 *   ca.crt      self-signed CA certificate (CA:TRUE, keyCertSign|cRLSign)
 *   index.tsv   one line per issued certificate:
 *               serial-hex TAB name TAB role TAB notAfter TAB V|R TAB revoked-at
 *   crlnumber   the last CRL number issued (decimal)
 *
 * Identity and role (the choice, documented in the README):
 *   subject CN  = the identity, a name matching [a-z0-9-]{1,63}
 *   subject OU  = the role, "node" or "operator" (authoritative)
 *   extendedKeyUsage: node = serverAuth+clientAuth, operator = clientAuth only,
 *   so an operator certificate can never serve a TLS endpoint; keyUsage is
 *   digitalSignature only.
 * Keys are written through a 0600 temporary file, fsynced and renamed. No
 * private key is ever read by `cert sign`: it only takes a CSR's public key and
 * CN (requested extensions in a CSR are ignored; the CA sets them).
 * This module never does network I/O and never hand-rolls cryptography. */
#ifndef SPES_PKI_PKI_H
#define SPES_PKI_PKI_H

#include <stddef.h>
#include <stdint.h>

struct x509_st;

enum spes_role {
    SPES_ROLE_NONE = 0,
    SPES_ROLE_NODE = 1,
    SPES_ROLE_OPERATOR = 2,
};
#define SPES_ROLE_MASK(r) (1u << (r))
#define SPES_PKI_NAME_MAX 63
#define SPES_PKI_DEFAULT_DAYS 365
#define SPES_PKI_CA_DEFAULT_DAYS 3650
#define SPES_PKI_CRL_DEFAULT_DAYS 365
/* spes_pki_crl_parse refuses inputs larger than this (outside bytes). */
#define SPES_PKI_CRL_MAX_BYTES (4u << 20)

/* spes_pki_identity is what a certificate says about its holder. */
typedef struct spes_pki_identity {
    char name[SPES_PKI_NAME_MAX + 1]; /* CN */
    int role;                         /* enum spes_role */
    char serial[41];                  /* lower-case hex, no leading zeros */
    int64_t not_after;                /* unix seconds */
} spes_pki_identity;

/* spes_pki_validity is a certificate's validity window in unix seconds. */
typedef struct spes_pki_validity {
    int64_t not_before;
    int64_t not_after;
} spes_pki_validity;

/* spes_pki_validity_days sets [now - 5 min, now + days) (days may be negative for tests). */
void spes_pki_validity_days(spes_pki_validity *v, int days);

/* spes_pki_name_valid returns 0 if name matches [a-z0-9-]{1,63}, else SPES_EINVAL with a message. */
int spes_pki_name_valid(const char *name);

/* spes_pki_role_name returns "node", "operator" or "none". */
const char *spes_pki_role_name(int role);

/* spes_pki_role_parse maps "node"/"operator" to a role, or returns SPES_ROLE_NONE. */
int spes_pki_role_parse(const char *s);

/* spes_pki_ca_init creates a run CA in dir (refuses if dir already holds ca.key);
 * run_name is the CA's CN ("spes-run" if NULL); v NULL means 3650 days. */
int spes_pki_ca_init(const char *dir, const char *run_name, const spes_pki_validity *v);

/* spes_pki_cert_issue makes out_dir/NAME.key (0600) and out_dir/NAME.crt signed by the
 * CA in ca_dir; v NULL means 365 days. Refuses a name that already has a valid certificate. */
int spes_pki_cert_issue(const char *ca_dir, const char *name, int role, const spes_pki_validity *v,
                        const char *out_dir);

/* spes_pki_cert_request makes out_dir/NAME.key (0600) and out_dir/NAME.csr. */
int spes_pki_cert_request(const char *name, const char *out_dir);

/* spes_pki_cert_sign verifies a CSR's signature and name and writes a certificate
 * for it with the given role to out_path; v NULL means 365 days. */
int spes_pki_cert_sign(const char *ca_dir, const char *csr_path, int role, const spes_pki_validity *v,
                       const char *out_path);

/* spes_pki_cert_revoke marks every valid certificate of NAME (or the one with
 * that hex SERIAL) revoked in the CA index; *n_revoked (optional) gets the count.
 * Returns SPES_ENOENT if nothing matched. */
int spes_pki_cert_revoke(const char *ca_dir, const char *name_or_serial, int *n_revoked);

/* spes_pki_crl_write writes a CRL (PEM, signed by the CA, nextUpdate in days) listing
 * every revoked certificate of the index to out_path. */
int spes_pki_crl_write(const char *ca_dir, int days, const char *out_path);

/* spes_pki_crl_parse checks PEM bytes holding exactly one X.509 CRL: well formed,
 * issued by and signed with ca_pem's certificate (if ca_pem is not NULL), and
 * returns the number of revoked entries in *n_revoked (optional). Pure, no I/O. */
int spes_pki_crl_parse(const void *pem, size_t len, const char *ca_pem, int *n_revoked);

/* spes_pki_crl_load reads a CRL file and checks it with spes_pki_crl_parse against the
 * CA file; on success *pem_out is the malloc'd, NUL-terminated PEM text (caller frees). */
int spes_pki_crl_load(const char *crl_path, const char *ca_path, char **pem_out);

/* spes_pki_identity_from_x509 reads CN, OU role, serial and notAfter from a certificate;
 * SPES_EFORMAT if the CN is not a valid name or the role is missing. */
int spes_pki_identity_from_x509(const struct x509_st *cert, spes_pki_identity *out);

/* spes_pki_cert_identity reads a PEM certificate file and returns its identity. */
int spes_pki_cert_identity(const char *cert_path, spes_pki_identity *out);

/* spes_pki_verify_file checks a certificate file against the CA certificate (and CRL file if
 * not NULL) as a TLS peer would, at the current time; 0 if it verifies, SPES_EAUTH with
 * OpenSSL's reason otherwise. */
int spes_pki_verify_file(const char *cert_path, const char *ca_path, const char *crl_path);

#endif
