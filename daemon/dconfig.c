/* dconfig.c: the daemon config table and its JSON reader. */
#include "daemon/dconfig.h"
#include "core/error.h"
#include "core/log.h"

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum dtype { D_STR, D_INT, D_BOOL };

typedef struct dfield {
    const char *name;
    enum dtype type;
    size_t off, size;
    int lo, hi;
    const char *def;
} dfield;

#define STR(f, d) {#f, D_STR, offsetof(spes_dconfig, f), sizeof(((spes_dconfig *)0)->f), 0, 0, d}
#define INT(f, lo, hi, d) {#f, D_INT, offsetof(spes_dconfig, f), sizeof(int), lo, hi, #d}

static const dfield dfields[] = {
    STR(name, ""),
    STR(listen, ""),
    STR(coordinator, ""),
    STR(ca, ""),
    STR(cert, ""),
    STR(key, ""),
    STR(crl, ""),
    STR(run_config, ""),
    STR(data, ""),
    STR(state_dir, "/var/lib/spes"),
    STR(control_socket, ""),
    STR(admission, "auto"),
    STR(codec, "fp32"),
    STR(log_level, "info"),
    STR(fault, ""),
    INT(threads, 1, 256, 2),
    INT(heartbeat_ms, 50, 600000, 1000),
    INT(failure_timeout_ms, 200, 3600000, 15000),
    INT(round_deadline_ms, 200, 86400000, 120000),
    INT(min_nodes, 1, 4096, 1),
    INT(data_parts, 1, 65536, 1),
    INT(blob_quota_mb, 0, 2147483647, 0),
    {"plain", D_BOOL, offsetof(spes_dconfig, plain), sizeof(int), 0, 1, "0"},
    {"keep_blobs", D_BOOL, offsetof(spes_dconfig, keep_blobs), sizeof(int), 0, 1, "0"},
};
#define NDFIELDS (sizeof dfields / sizeof dfields[0])

static void set_default(spes_dconfig *c, const dfield *f)
{
    char *p = (char *)c + f->off;
    if (f->type == D_STR)
        snprintf(p, f->size, "%s", f->def);
    else
        *(int *)p = atoi(f->def);
}

static int set_field(spes_dconfig *c, const dfield *f, json_t *v, const char *path)
{
    char *p = (char *)c + f->off;
    if (f->type == D_STR) {
        if (!json_is_string(v))
            return spes_errf(SPES_EINVAL, "%s: \"%s\" must be a string", path, f->name);
        if (strlen(json_string_value(v)) >= f->size)
            return spes_errf(SPES_EINVAL, "%s: \"%s\" is longer than %zu characters", path, f->name, f->size - 1);
        snprintf(p, f->size, "%s", json_string_value(v));
        return 0;
    }
    if (f->type == D_BOOL) {
        if (!json_is_boolean(v))
            return spes_errf(SPES_EINVAL, "%s: \"%s\" must be true or false", path, f->name);
        *(int *)p = json_is_true(v);
        return 0;
    }
    if (!json_is_integer(v))
        return spes_errf(SPES_EINVAL, "%s: \"%s\" must be an integer", path, f->name);
    json_int_t x = json_integer_value(v);
    if (x < f->lo || x > f->hi)
        return spes_errf(SPES_ERANGE, "%s: \"%s\" = %lld is outside [%d, %d]", path, f->name, (long long)x, f->lo,
                         f->hi);
    *(int *)p = (int)x;
    return 0;
}

int spes_dconfig_load(spes_dconfig *c, const char *path)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < NDFIELDS; i++)
        set_default(c, &dfields[i]);
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return spes_errf(SPES_EFORMAT, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    int rc = 0;
    if (!json_is_object(root))
        rc = spes_errf(SPES_EFORMAT, "%s: the top level must be a JSON object", path);
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (rc)
            break;
        const dfield *f = NULL;
        for (size_t i = 0; i < NDFIELDS && !f; i++)
            if (!strcmp(dfields[i].name, key))
                f = &dfields[i];
        rc = f ? set_field(c, f, v, path) : spes_errf(SPES_EINVAL, "%s: unknown field \"%s\"", path, key);
    }
    json_decref(root);
    if (!rc && !c->control_socket[0])
        snprintf(c->control_socket, sizeof c->control_socket, "%.400s/control.sock", c->state_dir);
    return rc;
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
    if (!c->listen[0])
        return spes_errf(SPES_EINVAL, "daemon config: \"listen\" is required (e.g. tls+tcp://0.0.0.0:7600)");
    if (!c->plain) {
        if ((rc = need_file("ca", c->ca)) || (rc = need_file("cert", c->cert)) || (rc = need_file("key", c->key)))
            return rc;
        if (c->crl[0] && (rc = need_file("crl", c->crl)))
            return rc;
        if (strncmp(c->listen, "tls+tcp://", 10) != 0)
            return spes_errf(SPES_EINVAL, "daemon config: listen %s must be a tls+tcp:// URL", c->listen);
    }
    if (spes_dconfig_is_coordinator(c) && (rc = need_file("run_config", c->run_config)))
        return rc;
    if (strcmp(c->admission, "auto") && strcmp(c->admission, "approve"))
        return spes_errf(SPES_EINVAL, "daemon config: admission \"%s\" is not auto or approve", c->admission);
    if (strcmp(c->codec, "fp32") && strcmp(c->codec, "bf16"))
        return spes_errf(SPES_EINVAL, "daemon config: codec \"%s\" is not fp32 or bf16", c->codec);
    if (c->fault[0] && strcmp(c->fault, "nan") && strcmp(c->fault, "wrong-hash") && strcmp(c->fault, "diverge"))
        return spes_errf(SPES_EINVAL, "daemon config: fault \"%s\" is not nan, wrong-hash or diverge", c->fault);
    if (spes_log_parse_level(c->log_level) < 0)
        return spes_errf(SPES_EINVAL, "daemon config: log_level \"%s\" is not error, warn, info or debug", c->log_level);
    if (c->failure_timeout_ms <= c->heartbeat_ms)
        return spes_errf(SPES_EINVAL, "daemon config: failure_timeout_ms must exceed heartbeat_ms");
    return 0;
}

void spes_dconfig_print(const spes_dconfig *c)
{
    json_t *o = json_object();
    for (size_t i = 0; i < NDFIELDS; i++) {
        const dfield *f = &dfields[i];
        const char *p = (const char *)c + f->off;
        json_object_set_new(o, f->name, f->type == D_STR    ? json_string(p)
                                        : f->type == D_BOOL ? json_boolean(*(const int *)p)
                                                            : json_integer(*(const int *)p));
    }
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    printf("%s\n", s);
    free(s);
    json_decref(o);
}
