/* cfgtab.c: the configuration table engine (see cfgtab.h). Never exits: errors name
 * the origin and the field. */
#include "config/cfgtab.h"
#include "core/error.h"
#include "core/fileio.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FILE_BYTES (16u << 20)

/* field_name writes "section.name", or "name" in a flat table */
static const char *field_name(const spes_cfg_field *f, char *buf, size_t n)
{
    if (f->section)
        snprintf(buf, n, "%s.%s", f->section, f->name);
    else
        snprintf(buf, n, "%s", f->name);
    return buf;
}

static void *fptr(void *obj, const spes_cfg_field *f)
{
    return (char *)obj + f->off;
}

static const void *fcptr(const void *obj, const spes_cfg_field *f)
{
    return (const char *)obj + f->off;
}

void spes_cfg_defaults(const spes_cfg_table *t, void *obj)
{
    for (size_t i = 0; i < t->nfields; i++) {
        const spes_cfg_field *f = &t->fields[i];
        void *p = fptr(obj, f);
        switch (f->type) {
        case SPES_CFG_INT:
        case SPES_CFG_BOOL: *(int *)p = (int)f->def; break;
        case SPES_CFG_I64: *(int64_t *)p = (int64_t)f->def; break;
        case SPES_CFG_DBL: *(double *)p = f->def; break;
        case SPES_CFG_STR: snprintf(p, f->size, "%s", f->sdef ? f->sdef : ""); break;
        case SPES_CFG_CUSTOM: break;
        }
    }
}

const spes_cfg_field *spes_cfg_find(const spes_cfg_table *t, const char *section, const char *name)
{
    for (size_t i = 0; i < t->nfields; i++) {
        const spes_cfg_field *f = &t->fields[i];
        int same_section = f->section ? section && !strcmp(f->section, section) : !section;
        if (same_section && !strcmp(f->name, name))
            return f;
    }
    return NULL;
}

/* is_whole tells whether d is an integer value; the range test comes first because
 * converting a double outside long long's range (or NaN) is undefined behaviour. */
static int is_whole(double d)
{
    return d >= -9.0e18 && d <= 9.0e18 && d == (double)(long long)d;
}

static void fmt_num(char *buf, size_t n, double v, int integer)
{
    if (integer && is_whole(v))
        snprintf(buf, n, "%lld", (long long)v);
    else
        snprintf(buf, n, "%g", v);
}

static int run_check(const spes_cfg_field *f, void *obj, const char *origin)
{
    char why[256] = "", name[128];
    if (!f->check || f->check(fcptr(obj, f), why, sizeof why) == 0)
        return 0;
    return spes_errf(SPES_EINVAL, "%s: %s %s", origin, field_name(f, name, sizeof name), why);
}

static int set_number(const spes_cfg_field *f, void *obj, double v, int is_int, const char *origin)
{
    char name[128], sv[32], slo[32], shi[32];
    int integer = f->type != SPES_CFG_DBL;
    if (integer && !is_int)
        return spes_errf(SPES_EINVAL, "%s: %s must be an integer", origin, field_name(f, name, sizeof name));
    if (!(v >= f->lo && v <= f->hi)) {
        fmt_num(sv, sizeof sv, v, integer);
        fmt_num(slo, sizeof slo, f->lo, integer);
        fmt_num(shi, sizeof shi, f->hi, integer);
        return spes_errf(SPES_ERANGE, "%s: %s = %s is outside [%s, %s]", origin,
                         field_name(f, name, sizeof name), sv, slo, shi);
    }
    void *p = fptr(obj, f);
    switch (f->type) {
    case SPES_CFG_INT: *(int *)p = (int)v; break;
    case SPES_CFG_I64: *(int64_t *)p = (int64_t)v; break;
    default: *(double *)p = v; break;
    }
    return run_check(f, obj, origin);
}

static int set_string(const spes_cfg_field *f, void *obj, const char *s, const char *origin)
{
    char name[128];
    if (strlen(s) >= f->size)
        return spes_errf(SPES_EINVAL, "%s: %s is longer than %zu characters", origin,
                         field_name(f, name, sizeof name), f->size - 1);
    if (f->choices) {
        int ok = 0;
        char list[256] = "";
        for (int i = 0; f->choices[i]; i++) {
            ok |= !strcmp(s, f->choices[i]);
            size_t k = strlen(list);
            snprintf(list + k, sizeof list - k, "%s%s", i ? ", " : "",
                     f->choices[i][0] ? f->choices[i] : "\"\"");
        }
        if (!ok)
            return spes_errf(SPES_EINVAL, "%s: %s \"%s\" is not one of %s", origin,
                             field_name(f, name, sizeof name), s, list);
    }
    snprintf(fptr(obj, f), f->size, "%s", s);
    return run_check(f, obj, origin);
}

int spes_cfg_read_json(const spes_cfg_field *f, void *obj, json_t *v, const char *origin)
{
    char name[128];
    switch (f->type) {
    case SPES_CFG_CUSTOM: return f->read(obj, v, origin);
    case SPES_CFG_BOOL:
        if (!json_is_boolean(v))
            return spes_errf(SPES_EINVAL, "%s: %s must be true or false", origin,
                             field_name(f, name, sizeof name));
        *(int *)fptr(obj, f) = json_is_true(v);
        return run_check(f, obj, origin);
    case SPES_CFG_STR:
        if (!json_is_string(v))
            return spes_errf(SPES_EINVAL, "%s: %s must be a string", origin,
                             field_name(f, name, sizeof name));
        return set_string(f, obj, json_string_value(v), origin);
    default:
        if (json_is_integer(v))
            return set_number(f, obj, (double)json_integer_value(v), 1, origin);
        if (json_is_real(v))
            return set_number(f, obj, json_real_value(v), is_whole(json_real_value(v)), origin);
        return spes_errf(SPES_EINVAL, "%s: %s must be a number", origin, field_name(f, name, sizeof name));
    }
}

/* read_object reads the fields of one section (NULL: a flat table) from the object o */
static int read_object(const spes_cfg_table *t, void *obj, const char *section, json_t *o, const char *origin)
{
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        const spes_cfg_field *f = spes_cfg_find(t, section, key);
        if (!f)
            return section ? spes_errf(SPES_EINVAL, "%s: unknown field %s.%s", origin, section, key)
                           : spes_errf(SPES_EINVAL, "%s: unknown field %s", origin, key);
        int rc = spes_cfg_read_json(f, obj, v, origin);
        if (rc)
            return rc;
    }
    return 0;
}

/* section_list writes the table's sections in order, comma-separated */
static void section_list(const spes_cfg_table *t, char *buf, size_t n)
{
    buf[0] = '\0';
    for (size_t i = 0; i < t->nfields; i++) {
        const char *s = t->fields[i].section;
        if (i && !strcmp(s, t->fields[i - 1].section))
            continue;
        size_t k = strlen(buf);
        snprintf(buf + k, n - k, "%s%s", k ? ", " : "", s);
    }
}

int spes_cfg_parse(const spes_cfg_table *t, void *obj, const char *text, const char *origin)
{
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return spes_errf(SPES_EFORMAT, "%s:%d:%d: invalid JSON: %s", origin, jerr.line, jerr.column,
                         jerr.text);
    int rc = 0, sectioned = t->nfields && t->fields[0].section;
    if (!json_is_object(root)) {
        rc = spes_errf(SPES_EFORMAT, "%s: the top level must be a JSON object", origin);
        goto out;
    }
    if (!sectioned) {
        rc = read_object(t, obj, NULL, root, origin);
        goto out;
    }
    const char *sec;
    json_t *so;
    json_object_foreach(root, sec, so)
    {
        int known = 0;
        for (size_t i = 0; i < t->nfields && !known; i++)
            known = !strcmp(t->fields[i].section, sec);
        if (!known) {
            char list[256];
            section_list(t, list, sizeof list);
            rc = spes_errf(SPES_EINVAL, "%s: unknown section \"%s\" (expected %s)", origin, sec, list);
            goto out;
        }
        if (!json_is_object(so)) {
            rc = spes_errf(SPES_EINVAL, "%s: \"%s\" must be an object", origin, sec);
            goto out;
        }
        if ((rc = read_object(t, obj, sec, so, origin)) != 0)
            goto out;
    }
out:
    json_decref(root);
    return rc;
}

int spes_cfg_load(const spes_cfg_table *t, void *obj, const char *path)
{
    char *text;
    size_t len;
    int rc = spes_read_file(path, MAX_FILE_BYTES, &text, &len);
    if (rc)
        return rc;
    if (strlen(text) != len) {
        free(text);
        return spes_errf(SPES_EFORMAT, "%s: contains a NUL byte", path);
    }
    rc = spes_cfg_parse(t, obj, text, path);
    free(text);
    return rc;
}

int spes_cfg_set(const spes_cfg_table *t, void *obj, const char *assignment)
{
    int sectioned = t->nfields && t->fields[0].section;
    const char *eq = strchr(assignment, '='), *dot = strchr(assignment, '.');
    if (!eq || (sectioned && (!dot || dot > eq)))
        return spes_errf(SPES_EINVAL, "override \"%s\" is not of the form %s=value", assignment,
                         sectioned ? "section.field" : "field");
    char sec[32] = "", name[64];
    const char *nb = assignment;
    if (sectioned) {
        size_t ls = (size_t)(dot - assignment);
        if (ls >= sizeof sec)
            return spes_errf(SPES_EINVAL, "override \"%s\": name too long", assignment);
        memcpy(sec, assignment, ls);
        sec[ls] = '\0';
        nb = dot + 1;
    }
    size_t ln = (size_t)(eq - nb);
    if (ln >= sizeof name)
        return spes_errf(SPES_EINVAL, "override \"%s\": name too long", assignment);
    memcpy(name, nb, ln);
    name[ln] = '\0';
    const char *val = eq + 1;
    const spes_cfg_field *f = spes_cfg_find(t, sectioned ? sec : NULL, name);
    if (!f || f->type == SPES_CFG_CUSTOM)
        return sectioned ? spes_errf(SPES_EINVAL, "override: unknown field %s.%s", sec, name)
                         : spes_errf(SPES_EINVAL, "override: unknown field %s", name);
    char fname[128];
    field_name(f, fname, sizeof fname);
    if (f->type == SPES_CFG_STR)
        return set_string(f, obj, val, "override");
    if (f->type == SPES_CFG_BOOL) {
        if (strcmp(val, "true") && strcmp(val, "false") && strcmp(val, "1") && strcmp(val, "0"))
            return spes_errf(SPES_EINVAL, "override: %s must be true or false", fname);
        *(int *)fptr(obj, f) = !strcmp(val, "true") || !strcmp(val, "1");
        return run_check(f, obj, "override");
    }
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (end == val || *end || errno)
        return spes_errf(SPES_EINVAL, "override: %s: \"%s\" is not a number", fname, val);
    return set_number(f, obj, v, is_whole(v), "override");
}

json_t *spes_cfg_write_json(const spes_cfg_field *f, const void *obj)
{
    const void *p = fcptr(obj, f);
    switch (f->type) {
    case SPES_CFG_BOOL: return json_boolean(*(const int *)p);
    case SPES_CFG_INT: return json_integer(*(const int *)p);
    case SPES_CFG_I64: return json_integer((json_int_t) * (const int64_t *)p);
    case SPES_CFG_DBL: return json_real(*(const double *)p);
    case SPES_CFG_STR: return json_string(p);
    default: return f->write(obj);
    }
}

json_t *spes_cfg_to_json(const spes_cfg_table *t, const void *obj)
{
    json_t *root = json_object(), *sec = NULL;
    for (size_t i = 0; i < t->nfields; i++) {
        const spes_cfg_field *f = &t->fields[i];
        json_t *into = root;
        if (f->section) {
            if (!i || strcmp(f->section, t->fields[i - 1].section)) {
                sec = json_object();
                json_object_set_new(root, f->section, sec);
            }
            into = sec;
        }
        json_object_set_new(into, f->name, spes_cfg_write_json(f, obj));
    }
    return root;
}
