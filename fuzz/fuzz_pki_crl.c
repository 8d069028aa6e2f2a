/* fuzz_pki_crl.c: libFuzzer target for the revocation-list loader (spes_pki_crl_parse),
 * the one PKI decoder that reads outside bytes (a CRL file a daemon loads on SIGHUP).
 * Checked against the fuzz corpus CA below (its CRLs are in the seed corpus) and with
 * no CA at all; must never crash, leak or read out of bounds. */
#include "pki/pki.h"

#include <stddef.h>
#include <stdint.h>

/* The CA that signed fuzz/corpus/fuzz_pki_crl/crl_empty.pem and crl_two_revoked.pem. */
static const char corpus_ca[] = "-----BEGIN CERTIFICATE-----\n"
                                "MIIBsDCCAVWgAwIBAgIQcb2hCGsFVvcbYPU2N9y3QDAKBggqhkjOPQQDAjAmMREw\n"
                                "DwYDVQQKDAhmdXp6LXJ1bjERMA8GA1UEAwwIZnV6ei1ydW4wIBcNMjYxMTI3MDEz\n"
                                "MTIwWhgPMjEyNjExMDMwMTM2MjBaMCYxETAPBgNVBAoMCGZ1enotcnVuMREwDwYD\n"
                                "VQQDDAhmdXp6LXJ1bjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABLZdz4q3keVV\n"
                                "U/W9CYhfB70BcnIwM52eMyA5yajcvr48WIj4AmfnAzGOZmESHA9rBedMlgJAk4SR\n"
                                "zcdXIeWXbrWjYzBhMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMB0G\n"
                                "A1UdDgQWBBQLzHClUC1B9M8l6pTXHcL+eTObsDAfBgNVHSMEGDAWgBQLzHClUC1B\n"
                                "9M8l6pTXHcL+eTObsDAKBggqhkjOPQQDAgNJADBGAiEArzKfNNxrfsJrVQ5zspiU\n"
                                "FvRqmr5rg4RMBx98jmbd0ugCIQDrlX4t/+S4Xlx+zOS9hQWD/tpPPePiQr8f8jdB\n"
                                "/t6shA==\n"
                                "-----END CERTIFICATE-----\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int n = 0;
    (void)spes_pki_crl_parse(data, size, corpus_ca, &n);
    (void)spes_pki_crl_parse(data, size, NULL, &n);
    return 0;
}
