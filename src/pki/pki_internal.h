/* pki_internal.h: helpers shared by the pki files (not part of the public API). */
#ifndef SPES_PKI_INTERNAL_H
#define SPES_PKI_INTERNAL_H

#include "pki/pki.h"

#include <openssl/evp.h>
#include <openssl/x509.h>

/* spes__pki_sslerr returns OpenSSL's most recent error reason (or "unknown") and clears the queue. */
const char *spes__pki_sslerr(void);

/* spes__pki_wrap re-records the last error message as "<prefix>: <message>" and returns rc
 * (spes_errf cannot take spes_errmsg() as an argument: same buffer). */
int spes__pki_wrap(int rc, const char *prefix);

/* spes__pki_write_pem writes the contents of a memory BIO durably to path with the given mode. */
int spes__pki_write_bio(const char *path, BIO *mem, unsigned mode);

/* spes__pki_write_key writes a private key as unencrypted PKCS#8 PEM, mode 0600. */
int spes__pki_write_key(const char *path, EVP_PKEY *key);

/* spes__pki_write_cert writes a certificate as PEM, mode 0644. */
int spes__pki_write_cert(const char *path, X509 *cert);

/* spes__pki_pem says which object spes__pki_read_pem decodes. */
typedef enum { SPES__PKI_PEM_CERT, SPES__PKI_PEM_KEY, SPES__PKI_PEM_CSR } spes__pki_pem;

/* spes__pki_read_pem reads the first object of a PEM file of at most 1 MiB into *out
 * (X509 *, EVP_PKEY * or X509_REQ *, as kind says); the file's bytes are wiped after. */
int spes__pki_read_pem(const char *path, spes__pki_pem kind, void **out);

/* spes__pki_read_cert reads the first certificate of a PEM file. */
int spes__pki_read_cert(const char *path, X509 **out);

/* spes__pki_read_key reads a PEM private key file. */
int spes__pki_read_key(const char *path, EVP_PKEY **out);

/* spes__pki_new_key generates an EC P-256 key. */
int spes__pki_new_key(EVP_PKEY **out);

/* spes__pki_file returns malloc'd "dir/name" or NULL. */
char *spes__pki_file(const char *dir, const char *name);

/* spes__pki_ca is a loaded CA: key, certificate and directory. */
typedef struct spes__pki_ca {
    EVP_PKEY *key;
    X509 *cert;
    const char *dir;
} spes__pki_ca;

/* spes__pki_ca_load reads ca.key and ca.crt from dir. */
int spes__pki_ca_load(spes__pki_ca *ca, const char *dir);

/* spes__pki_ca_fini frees a loaded CA. */
void spes__pki_ca_fini(spes__pki_ca *ca);

/* spes__pki_index_append records an issued certificate in dir/index.tsv. */
int spes__pki_index_append(const char *dir, X509 *cert, const char *name, int role);

/* spes__pki_index_has_valid returns 1 if a non-revoked, unexpired certificate for name is indexed. */
int spes__pki_index_has_valid(const char *dir, const char *name);

#endif
