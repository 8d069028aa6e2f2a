/* cfgtab.h: the table engine behind both configuration files (the run config,
 * config.h, and the daemon config, dconfig.h). A table lists every field once:
 * section, name, type, offset in the struct, bounds, default and an optional
 * validator; defaults, the JSON reader, `section.field=value` overrides and the
 * JSON writer all walk it. Unknown sections and fields are refused by name, and
 * every error is one line naming the origin (the file, or "override") and the field. */
#ifndef SPES_CONFIG_CFGTAB_H
#define SPES_CONFIG_CFGTAB_H

#include <jansson.h>
#include <stddef.h>

/* spes_cfg_type is the type of a field's value in its struct. */
typedef enum spes_cfg_type {
    SPES_CFG_INT,    /* int, a JSON integer (or a whole real) in [lo, hi] */
    SPES_CFG_I64,    /* int64_t, as INT */
    SPES_CFG_DBL,    /* double, a JSON number in [lo, hi] */
    SPES_CFG_BOOL,   /* int 0/1, a JSON true/false */
    SPES_CFG_STR,    /* char[size], a JSON string shorter than size, optionally one of choices */
    SPES_CFG_CUSTOM, /* anything: read and write callbacks handle the JSON value */
} spes_cfg_type;

/* spes_cfg_field is one row of a table. */
typedef struct spes_cfg_field {
    const char *section; /* "model"; NULL in a table without sections */
    const char *name;    /* "hidden_size" */
    spes_cfg_type type;
    size_t off;                 /* offset of the value in the struct */
    size_t size;                /* STR: the size of the char array */
    double lo, hi;              /* INT, I64, DBL: the accepted range */
    double def;                 /* INT, I64, DBL, BOOL: the default */
    const char *sdef;           /* STR: the default */
    const char *const *choices; /* STR: the accepted values (NULL-terminated), NULL: any */
    /* check, when set, validates a value after it is stored: returns 0, or non-zero with
     * a reason in why ("is not HOST:PORT") */
    int (*check)(const void *value, char *why, size_t n);
    /* CUSTOM: read stores the JSON value into the struct (the error names origin and field);
     * write returns the value as a new JSON reference */
    int (*read)(void *obj, json_t *v, const char *origin);
    json_t *(*write)(const void *obj);
} spes_cfg_field;

/* spes_cfg_table is a whole table: its rows, with each section's rows next to each other. */
typedef struct spes_cfg_table {
    const spes_cfg_field *fields;
    size_t nfields;
} spes_cfg_table;

/* spes_cfg_defaults sets every field of obj to its default (CUSTOM fields are left as they are). */
void spes_cfg_defaults(const spes_cfg_table *t, void *obj);

/* spes_cfg_find returns the row of section.name (section NULL in a flat table), or NULL. */
const spes_cfg_field *spes_cfg_find(const spes_cfg_table *t, const char *section, const char *name);

/* spes_cfg_read_json stores one JSON value into the field f of obj. */
int spes_cfg_read_json(const spes_cfg_field *f, void *obj, json_t *v, const char *origin);

/* spes_cfg_parse reads a JSON text (an object, of section objects when the table has sections)
 * into obj over what it holds; origin names the text in errors. */
int spes_cfg_parse(const spes_cfg_table *t, void *obj, const char *text, const char *origin);

/* spes_cfg_load is spes_cfg_parse of the file at path (at most 16 MiB, no NUL bytes). */
int spes_cfg_load(const spes_cfg_table *t, void *obj, const char *path);

/* spes_cfg_set overrides one field from "section.field=value" ("field=value" in a flat table). */
int spes_cfg_set(const spes_cfg_table *t, void *obj, const char *assignment);

/* spes_cfg_write_json returns the JSON value of the field f of obj (a new reference). */
json_t *spes_cfg_write_json(const spes_cfg_field *f, const void *obj);

/* spes_cfg_to_json returns obj as a JSON object in table order (a new reference). */
json_t *spes_cfg_to_json(const spes_cfg_table *t, const void *obj);

#endif
