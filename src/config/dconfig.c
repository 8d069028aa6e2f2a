/* dconfig.c: the daemon config table, read and written by the table engine (cfgtab.h). */
#include "config/dconfig.h"
#include "config/cfgtab.h"
#include "config/config.h"
#include "core/error.h"

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OFF(f) offsetof(spes_dconfig, f)
#define SIZE(f) sizeof(((spes_dconfig *)0)->f)
#define STR(f, d)                                                                                            \
    {                                                                                                        \
        .name = #f, .type = SPES_CFG_STR, .off = OFF(f), .size = SIZE(f), .sdef = d                          \
    }
#define CHOICE(f, d, ch)                                                                                     \
    {                                                                                                        \
        .name = #f, .type = SPES_CFG_STR, .off = OFF(f), .size = SIZE(f), .sdef = d, .choices = ch           \
    }
#define CHECKED(f, chk)                                                                                      \
    {                                                                                                        \
        .name = #f, .type = SPES_CFG_STR, .off = OFF(f), .size = SIZE(f), .sdef = "", .check = chk           \
    }
#define INT(f, l, h, d)                                                                                      \
    {                                                                                                        \
        .name = #f, .type = SPES_CFG_INT, .off = OFF(f), .lo = l, .hi = h, .def = d                          \
    }
#define BOOL(f) BOOL_D(f, 0)
#define BOOL_D(f, d)                                                                                         \
    {                                                                                                        \
        .name = #f, .type = SPES_CFG_BOOL, .off = OFF(f), .lo = 0, .hi = 1, .def = d                         \
    }

static const char *const admissions[] = {"auto", "approve", NULL};
static const char *const codecs[] = {"fp32", "bf16", NULL};
static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};
static const char *const faults[] = {
    "",       "nan",         "wrong-hash", "diverge",         "other-node",      "all-columns",
    "scaled", "scaled-late", "late",       "mute-aggregator", "lying-aggregate", NULL};

/* check_url accepts an empty value or SCHEME://HOST:PORT */
static int check_url(const void *value, char *why, size_t n)
{
    const char *s = value, *sep = strstr(s, "://");
    if (!s[0] || (sep && sep > s && strrchr(sep + 3, ':')))
        return 0;
    snprintf(why, n, "\"%s\" is not a URL of the form SCHEME://HOST:PORT", s);
    return 1;
}

/* check_host_port accepts an empty value or HOST:PORT with a port in 1..65535 */
static int check_host_port(const void *value, char *why, size_t n)
{
    const char *s = value, *colon = strrchr(s, ':');
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (!s[0] || (colon && colon > s && colon[1] && !*end && port >= 1 && port <= 65535))
        return 0;
    snprintf(why, n, "\"%s\" is not HOST:PORT (e.g. 127.0.0.1:9464)", s);
    return 1;
}

/* check_cert_name accepts an empty value or a certificate name: [a-z0-9-]{1,63} (as spesctl issues them) */
static int check_cert_name(const void *value, char *why, size_t n)
{
    const char *s = value;
    size_t len = strlen(s);
    if (len <= 63 && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789-") == len)
        return 0;
    snprintf(why, n, "\"%.80s\" is not a certificate name ([a-z0-9-]{1,63})", s);
    return 1;
}

static const spes_cfg_field dfields[] = {
    STR(name, ""),
    STR(listen, ""),
    CHECKED(advertise, check_url),
    STR(coordinator, ""),
    CHECKED(coordinator_name, check_cert_name),
    STR(ca, ""),
    STR(cert, ""),
    STR(key, ""),
    STR(crl, ""),
    STR(run_config, ""),
    STR(data, ""),
    STR(state_dir, "/var/lib/spes"),
    STR(control_socket, ""),
    CHECKED(metrics, check_host_port),
    CHOICE(admission, "auto", admissions),
    CHOICE(codec, "fp32", codecs),
    CHOICE(log_level, "info", log_levels),
    CHOICE(fault, "", faults),
    INT(threads, 1, 256, 2),
    INT(heartbeat_ms, 50, 600000, 1000),
    INT(commit_poll_ms, 50, 600000, 100),
    INT(failure_timeout_ms, 200, 3600000, 15000),
    INT(round_deadline_ms, 200, 86400000, 120000),
    INT(round_deadline_min_ms, 200, 86400000, 10000),
    INT(min_nodes, 1, SPES_MAX_MEMBERS, 1),
    INT(data_parts, 1, 65536, 1),
    INT(blob_quota_mb, 0, 2147483647, 0),
    BOOL(plain),
    BOOL(keep_blobs),
    BOOL_D(reachable, 1),
};
static const spes_cfg_table dtable = {dfields, sizeof dfields / sizeof dfields[0]};

void spes_dconfig_defaults(spes_dconfig *c)
{
    memset(c, 0, sizeof *c);
    spes_cfg_defaults(&dtable, c);
}

int spes_dconfig_load(spes_dconfig *c, const char *path)
{
    spes_dconfig_defaults(c);
    int rc = spes_cfg_load(&dtable, c, path);
    if (rc)
        return rc;
    if (!c->control_socket[0])
        snprintf(c->control_socket, sizeof c->control_socket, "%.400s/control.sock", c->state_dir);
    if (!c->listen[0] || !c->reachable) /* outbound only: nobody dials it (docs/design.md, "Reachability") */
        c->advertise[0] = '\0';
    else if (!c->advertise[0])
        snprintf(c->advertise, sizeof c->advertise, "%s", c->listen);
    return 0;
}

int spes_dconfig_outbound_only(const spes_dconfig *c)
{
    return !c->advertise[0];
}

int spes_dconfig_is_coordinator(const spes_dconfig *c)
{
    return c->coordinator[0] == '\0';
}

static int need_file(const char *what, const char *path)
{
    if (!path[0])
        return spes_errf(SPES_EINVAL, "daemon config: \"%s\" is required", what);
    if (access(path, R_OK) != 0)
        return spes_errf_errno(SPES_ENOENT, "daemon config: %s %s cannot be read", what, path);
    return 0;
}

int spes_dconfig_validate(const spes_dconfig *c)
{
    int rc;
    if (!c->name[0])
        return spes_errf(SPES_EINVAL, "daemon config: \"name\" is required");
    if (spes_dconfig_is_coordinator(c) && (!c->listen[0] || !c->reachable))
        return spes_errf(SPES_EINVAL,
                         "daemon config: the coordinator needs a \"listen\" URL that every node can "
                         "reach (e.g. tls+tcp://0.0.0.0:7600)");
    if (!c->plain) {
        if ((rc = need_file("ca", c->ca)) || (rc = need_file("cert", c->cert)) ||
            (rc = need_file("key", c->key)))
            return rc;
        if (c->crl[0] && (rc = need_file("crl", c->crl)))
            return rc;
        if (c->listen[0] && strncmp(c->listen, "tls+tcp://", 10) != 0)
            return spes_errf(SPES_EINVAL, "daemon config: listen %s must be a tls+tcp:// URL", c->listen);
    }
    if (spes_dconfig_is_coordinator(c) && (rc = need_file("run_config", c->run_config)))
        return rc;
    if (spes_dconfig_is_coordinator(c) && c->coordinator_name[0] && strcmp(c->coordinator_name, c->name))
        return spes_errf(SPES_EINVAL,
                         "daemon config: coordinator_name \"%s\" differs from this coordinator's name \"%s\"",
                         c->coordinator_name, c->name);
    if (c->failure_timeout_ms <= c->heartbeat_ms)
        return spes_errf(SPES_EINVAL, "daemon config: failure_timeout_ms must exceed heartbeat_ms");
    return 0;
}

void spes_dconfig_print(const spes_dconfig *c)
{
    json_t *o = spes_cfg_to_json(&dtable, c);
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    printf("%s\n", s);
    free(s);
    json_decref(o);
}
