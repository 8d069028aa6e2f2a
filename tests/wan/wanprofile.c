/* wanprofile.c: reads a WAN lab profile (JSON) into per-node links and a
 * per-pair delay matrix. Every field is checked by name and range; an
 * unknown field is an error naming the file and where it sits. */
#include "tests/wan/wanprofile.h"
#include "core/error.h"

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct lfield {
    const char *name;
    size_t off;
    double lo, hi;
} lfield;

#define LF(f, lo, hi)                                                                                        \
    {                                                                                                        \
#f, offsetof(wan_link, f), lo, hi                                                                    \
    }
static const lfield lfields[] = {
    LF(up_mbit, 0.001, 100000), LF(down_mbit, 0.001, 100000), LF(delay_ms, 0, 10000),  LF(loss, 0, 1),
    LF(buffer_ms, 0.1, 10000),  LF(burst_len, 0, 1000000),    LF(burst_loss, 0.01, 1),
};
#define NLFIELDS (sizeof lfields / sizeof lfields[0])

static const wan_link link_default = {.up_mbit = 1000,
                                      .down_mbit = 1000,
                                      .delay_ms = 0,
                                      .loss = 0,
                                      .buffer_ms = 50,
                                      .burst_len = 0,
                                      .burst_loss = 1};

/* read_link overrides l's fields with those present in object o (at WHERE in PATH). */
static int read_link(wan_link *l, json_t *o, const char *path, const char *where)
{
    if (!json_is_object(o))
        return spes_errf(SPES_EFORMAT, "%s: %s must be an object of link fields", path, where);
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        const lfield *f = NULL;
        for (size_t i = 0; i < NLFIELDS && !f; i++)
            if (!strcmp(lfields[i].name, key))
                f = &lfields[i];
        if (!f)
            return spes_errf(SPES_EINVAL, "%s: %s: unknown field \"%s\"", path, where, key);
        if (!json_is_number(v))
            return spes_errf(SPES_EINVAL, "%s: %s.%s must be a number", path, where, key);
        double x = json_number_value(v);
        if (!(x >= f->lo && x <= f->hi) && !(x == 0 && !strcmp(key, "burst_len")))
            return spes_errf(SPES_ERANGE, "%s: %s.%s = %g is outside [%g, %g]", path, where, key, x, f->lo,
                             f->hi);
        *(double *)((char *)l + f->off) = x;
    }
    if (l->burst_len != 0 && l->burst_len < 1)
        return spes_errf(SPES_ERANGE, "%s: %s.burst_len must be 0 (no bursts) or at least 1 packet", path,
                         where);
    if (l->burst_len >= 1 && l->loss > l->burst_loss)
        return spes_errf(SPES_ERANGE, "%s: %s: loss %g exceeds burst_loss %g", path, where, l->loss,
                         l->burst_loss);
    return 0;
}

/* parse_node reads a node index ("0".."63") from S; -1 if it is not one. */
static int parse_node(const char *s, const char **end)
{
    if (*s < '0' || *s > '9')
        return -1;
    long k = strtol(s, (char **)end, 10);
    return k >= 0 && k < WAN_MAX_NODES ? (int)k : -1;
}

static int read_nodes(wan_profile *p, json_t *o, const char *path, const wan_link *def)
{
    if (!json_is_object(o))
        return spes_errf(SPES_EFORMAT, "%s: \"nodes\" must be an object (node index -> link fields)", path);
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        const char *end;
        int k = parse_node(key, &end);
        if (k < 0 || *end)
            return spes_errf(SPES_EINVAL, "%s: nodes: \"%s\" is not a node index (0..%d)", path, key,
                             WAN_MAX_NODES - 1);
        wan_link l = *def;
        char where[64];
        snprintf(where, sizeof where, "nodes.%s", key);
        int rc = read_link(&l, v, path, where);
        if (rc)
            return rc;
        if (k < p->n)
            p->node[k] = l;
    }
    return 0;
}

static int read_pairs(wan_profile *p, json_t *o, const char *path)
{
    if (!json_is_object(o))
        return spes_errf(SPES_EFORMAT, "%s: \"pairs\" must be an object (\"I-J\" -> one-way delay in ms)",
                         path);
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        const char *end;
        int i = parse_node(key, &end), j = -1;
        if (i >= 0 && *end == '-')
            j = parse_node(end + 1, &end);
        if (i < 0 || j < 0 || *end || i == j)
            return spes_errf(SPES_EINVAL, "%s: pairs: \"%s\" is not a pair of two node indices \"I-J\"", path,
                             key);
        if (!json_is_number(v))
            return spes_errf(SPES_EINVAL, "%s: pairs.%s must be a number (one-way delay in ms)", path, key);
        double d = json_number_value(v);
        if (!(d >= 0 && d <= 10000))
            return spes_errf(SPES_ERANGE, "%s: pairs.%s = %g is outside [0, 10000]", path, key, d);
        if (i < p->n && j < p->n)
            p->delay_ms[i][j] = p->delay_ms[j][i] = d;
    }
    return 0;
}

/* resolve reads the parsed profile root for n nodes into p; errors name path. */
static int resolve(wan_profile *p, json_t *root, const char *path, int n)
{
    int rc = 0;
    wan_link def = link_default;
    json_t *nodes = NULL, *pairs = NULL;
    if (!json_is_object(root)) {
        rc = spes_errf(SPES_EFORMAT, "%s: the top level must be a JSON object", path);
        goto done;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (!strcmp(key, "default"))
            rc = read_link(&def, v, path, "default");
        else if (!strcmp(key, "nodes"))
            nodes = v;
        else if (!strcmp(key, "pairs"))
            pairs = v;
        else if (!strcmp(key, "description"))
            rc = json_is_string(v) ? 0 : spes_errf(SPES_EINVAL, "%s: \"description\" must be a string", path);
        else
            rc = spes_errf(SPES_EINVAL, "%s: unknown field \"%s\"", path, key);
        if (rc)
            goto done;
    }
    for (int k = 0; k < n; k++)
        p->node[k] = def;
    if (nodes && (rc = read_nodes(p, nodes, path, &def)))
        goto done;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            p->delay_ms[i][j] = i == j ? 0 : p->node[i].delay_ms + p->node[j].delay_ms;
    if (pairs && (rc = read_pairs(p, pairs, path)))
        goto done;
done:
    return rc;
}

/* parse_root checks n, then resolves root (which it frees) for n nodes. */
static int parse_root(wan_profile *p, json_t *root, const json_error_t *jerr, const char *path, int n)
{
    memset(p, 0, sizeof *p);
    int rc;
    if (n < 1 || n > WAN_MAX_NODES)
        rc = spes_errf(SPES_ERANGE, "%s: %d nodes; the lab holds 1..%d", path, n, WAN_MAX_NODES);
    else if (!root)
        rc = spes_errf(SPES_EFORMAT, "%s:%d:%d: %s", path, jerr->line, jerr->column, jerr->text);
    else {
        p->n = n;
        rc = resolve(p, root, path, n);
    }
    json_decref(root);
    return rc;
}

int wan_profile_parse(wan_profile *p, const char *text, size_t len, const char *origin, int n)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    return parse_root(p, root, &jerr, origin, n);
}

int wan_profile_load(wan_profile *p, const char *path, int n)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    return parse_root(p, root, &jerr, path, n);
}

void wan_profile_print(const wan_profile *p)
{
    json_t *o = json_object(), *nodes = json_array(), *delay = json_array();
    for (int k = 0; k < p->n; k++) {
        json_t *l = json_object();
        for (size_t i = 0; i < NLFIELDS; i++)
            json_object_set_new(l, lfields[i].name,
                                json_real(*(const double *)((const char *)&p->node[k] + lfields[i].off)));
        json_array_append_new(nodes, l);
        json_t *row = json_array();
        for (int j = 0; j < p->n; j++)
            json_array_append_new(row, json_real(p->delay_ms[k][j]));
        json_array_append_new(delay, row);
    }
    json_object_set_new(o, "nodes", nodes);
    json_object_set_new(o, "delay_ms", delay);
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    printf("%s\n", s);
    free(s);
    json_decref(o);
}
