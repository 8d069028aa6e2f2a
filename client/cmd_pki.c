/* cmd_pki.c: spesctl's PKI verbs: ca init, cert issue|request|sign|revoke|show, crl.
 * Thin wrappers over src/pki; every check (names, roles, refusing to overwrite a
 * CA key) lives in the library so daemons and tests get the same behaviour. */
#include "client/spesctl.h"

#include "core/error.h"
#include "pki/pki.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int days_opt(const char *s, int def, int *out)
{
    if (!s) {
        *out = def;
        return 0;
    }
    return spesctl_parse_int(s, 1, 36500, "--days", out);
}

static int need(const char *v, const char *flag, const char *cmd)
{
    if (v)
        return 0;
    fprintf(stderr, "spesctl %s: %s is required\n", cmd, flag);
    return -1;
}

static int role_opt(const char *s, const char *cmd, int *role)
{
    if (need(s, "--role node|operator", cmd))
        return -1;
    *role = spes_pki_role_parse(s);
    if (*role == SPES_ROLE_NONE) {
        fprintf(stderr, "spesctl %s: --role must be node or operator, not '%s'\n", cmd, s);
        return -1;
    }
    return 0;
}

static int cmd_ca_init(int argc, char **argv)
{
    const char *dir = NULL, *name = NULL, *days_s = NULL;
    const spesctl_opt o[] = {{"dir", 1, &dir}, {"name", 1, &name}, {"days", 1, &days_s}, {0}};
    int days;
    if (spesctl_parse(argc, argv, o, NULL, 0, "ca init") < 0 || need(dir, "--dir", "ca init") ||
        days_opt(days_s, SPES_PKI_CA_DEFAULT_DAYS, &days))
        return SPESCTL_USAGE;
    spes_pki_validity v;
    spes_pki_validity_days(&v, days);
    if (spes_pki_ca_init(dir, name, &v) != 0)
        return spesctl_fail("ca init");
    printf("run CA '%s' created in %s (ca.crt, ca.key)\n", name ? name : "spes-run", dir);
    return SPESCTL_OK;
}

static int cmd_cert_issue(int argc, char **argv)
{
    const char *pos[1], *role_s = NULL, *ca = NULL, *out = NULL, *days_s = NULL;
    const spesctl_opt o[] = {
        {"role", 1, &role_s}, {"ca", 1, &ca}, {"out", 1, &out}, {"days", 1, &days_s}, {0}};
    int role, days;
    int n = spesctl_parse(argc, argv, o, pos, 1, "cert issue");
    if (n != 1) {
        if (n == 0)
            fprintf(stderr, "spesctl cert issue: NAME is required\n");
        return SPESCTL_USAGE;
    }
    if (role_opt(role_s, "cert issue", &role) || need(ca, "--ca", "cert issue") ||
        need(out, "--out", "cert issue") || days_opt(days_s, SPES_PKI_DEFAULT_DAYS, &days))
        return SPESCTL_USAGE;
    spes_pki_validity v;
    spes_pki_validity_days(&v, days);
    if (spes_pki_cert_issue(ca, pos[0], role, &v, out) != 0)
        return spesctl_fail("cert issue");
    printf("%s/%s.crt and %s/%s.key (%s, %d days)\n", out, pos[0], out, pos[0], spes_pki_role_name(role),
           days);
    return SPESCTL_OK;
}

static int cmd_cert_request(int argc, char **argv)
{
    const char *pos[1], *out = NULL;
    const spesctl_opt o[] = {{"out", 1, &out}, {0}};
    int n = spesctl_parse(argc, argv, o, pos, 1, "cert request");
    if (n != 1 || need(out, "--out", "cert request")) {
        if (n == 0)
            fprintf(stderr, "spesctl cert request: NAME is required\n");
        return SPESCTL_USAGE;
    }
    if (spes_pki_cert_request(pos[0], out) != 0)
        return spesctl_fail("cert request");
    printf("%s/%s.csr (send it to the run operator) and %s/%s.key (keep it here)\n", out, pos[0], out,
           pos[0]);
    return SPESCTL_OK;
}

static int cmd_cert_sign(int argc, char **argv)
{
    const char *pos[1], *role_s = NULL, *ca = NULL, *out = NULL, *days_s = NULL;
    const spesctl_opt o[] = {
        {"role", 1, &role_s}, {"ca", 1, &ca}, {"out", 1, &out}, {"days", 1, &days_s}, {0}};
    int role, days;
    int n = spesctl_parse(argc, argv, o, pos, 1, "cert sign");
    if (n != 1) {
        if (n == 0)
            fprintf(stderr, "spesctl cert sign: CSR is required\n");
        return SPESCTL_USAGE;
    }
    if (role_opt(role_s, "cert sign", &role) || need(ca, "--ca", "cert sign") ||
        need(out, "--out", "cert sign") || days_opt(days_s, SPES_PKI_DEFAULT_DAYS, &days))
        return SPESCTL_USAGE;
    spes_pki_validity v;
    spes_pki_validity_days(&v, days);
    spes_pki_identity id;
    if (spes_pki_cert_sign(ca, pos[0], role, &v, out) != 0 || spes_pki_cert_identity(out, &id) != 0)
        return spesctl_fail("cert sign");
    printf("%s: certificate for '%s' (%s), serial %s\n", out, id.name, spes_pki_role_name(id.role),
           id.serial);
    return SPESCTL_OK;
}

static int cmd_cert_revoke(int argc, char **argv)
{
    const char *pos[1], *ca = NULL;
    const spesctl_opt o[] = {{"ca", 1, &ca}, {0}};
    int n = spesctl_parse(argc, argv, o, pos, 1, "cert revoke");
    if (n != 1 || need(ca, "--ca", "cert revoke")) {
        if (n == 0)
            fprintf(stderr, "spesctl cert revoke: NAME or SERIAL is required\n");
        return SPESCTL_USAGE;
    }
    int count = 0;
    if (spes_pki_cert_revoke(ca, pos[0], &count) != 0)
        return spesctl_fail("cert revoke");
    printf("revoked %d certificate%s of '%s'; run `spesctl crl` and reload the daemons (SIGHUP)\n", count,
           count == 1 ? "" : "s", pos[0]);
    return SPESCTL_OK;
}

static int cmd_cert_show(int argc, char **argv)
{
    const char *pos[1];
    int n = spesctl_parse(argc, argv, NULL, pos, 1, "cert show");
    if (n != 1) {
        if (n == 0)
            fprintf(stderr, "spesctl cert show: FILE is required\n");
        return SPESCTL_USAGE;
    }
    spes_pki_identity id;
    if (spes_pki_cert_identity(pos[0], &id) != 0)
        return spesctl_fail("cert show");
    char when[32];
    time_t t = (time_t)id.not_after;
    struct tm tm;
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    printf("name %s\nrole %s\nserial %s\nnot_after %s\n", id.name, spes_pki_role_name(id.role), id.serial,
           when);
    return SPESCTL_OK;
}

static int cmd_crl(int argc, char **argv)
{
    const char *ca = NULL, *out = NULL, *days_s = NULL;
    const spesctl_opt o[] = {{"ca", 1, &ca}, {"out", 1, &out}, {"days", 1, &days_s}, {0}};
    int days, nrev = 0;
    if (spesctl_parse(argc, argv, o, NULL, 0, "crl") < 0 || need(ca, "--ca", "crl") ||
        need(out, "--out", "crl") || days_opt(days_s, SPES_PKI_CRL_DEFAULT_DAYS, &days))
        return SPESCTL_USAGE;
    char *pem = NULL, *cap = NULL;
    if (spes_pki_crl_write(ca, days, out) != 0)
        return spesctl_fail("crl");
    size_t n = strlen(ca) + 8;
    char capbuf[4096];
    if (n < sizeof capbuf) {
        snprintf(capbuf, sizeof capbuf, "%s/ca.crt", ca);
        cap = capbuf;
    }
    if (spes_pki_crl_load(out, cap, &pem) == 0) {
        spes_pki_crl_parse(pem, strlen(pem), NULL, &nrev);
        free(pem);
    }
    printf("%s: CRL with %d revoked certificate%s, valid %d days\n", out, nrev, nrev == 1 ? "" : "s", days);
    return SPESCTL_OK;
}

const spesctl_cmd spesctl_pki_cmds[] = {
    {"ca", "init", cmd_ca_init, "--dir DIR [--name RUN] [--days N]"},
    {"cert", "issue", cmd_cert_issue, "NAME --role node|operator --ca DIR --out DIR [--days N]"},
    {"cert", "request", cmd_cert_request, "NAME --out DIR"},
    {"cert", "sign", cmd_cert_sign, "CSR --role node|operator --ca DIR --out FILE [--days N]"},
    {"cert", "revoke", cmd_cert_revoke, "NAME|SERIAL --ca DIR"},
    {"cert", "show", cmd_cert_show, "FILE"},
    {"crl", NULL, cmd_crl, "--ca DIR --out FILE [--days N]"},
    {NULL, NULL, NULL, NULL},
};
