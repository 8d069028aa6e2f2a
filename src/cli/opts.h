/* opts.h: the command-line option parser shared by spesd's sub-commands and spesctl.
 * A command is a table of options (name, kind, destination, bounds, help line); one
 * parser reads argv against it, one function prints its help, and every error is
 * one message of the form "--steps: expected a positive integer, got 'x'" that the
 * caller prefixes with the command's name ("spesd train: ..."). Options are
 * `--name VALUE`, `--name=VALUE` or a one-letter `-n`; positional arguments may
 * come anywhere; `--` ends the options; `--help` and `-h` are built in. */
#ifndef SPES_CLI_OPTS_H
#define SPES_CLI_OPTS_H

#include <stdio.h>

#define SPES_OPT_LIST_MAX 64

/* spes_opt_kind says what an option's value is and where it goes. */
typedef enum spes_opt_kind {
    SPES_OPT_FLAG,   /* no value; sets *(int *)dst to 1 */
    SPES_OPT_STR,    /* a string; *(const char **)dst points into argv */
    SPES_OPT_LONG,   /* a decimal integer in [lo, hi]; *(long *)dst */
    SPES_OPT_DOUBLE, /* a number in [lo, hi]; *(double *)dst */
    SPES_OPT_LIST,   /* a repeatable string; appended to *(spes_opt_list *)dst */
} spes_opt_kind;

/* spes_opt_list collects the values of a repeatable option in order. */
typedef struct spes_opt_list {
    const char *v[SPES_OPT_LIST_MAX];
    int n;
} spes_opt_list;

/* spes_opt is one option of a command; a table ends with an entry whose name is NULL. */
typedef struct spes_opt {
    const char *name;   /* "steps" for --steps */
    char letter;        /* 'n' for -n, 0 for none */
    spes_opt_kind kind; /* what the value is */
    void *dst;          /* where the value goes (see spes_opt_kind) */
    double lo, hi;      /* bounds of a LONG or DOUBLE value */
    const char *arg;    /* the value's name in the help: "N", "DIR" */
    const char *help;   /* one line for the help */
} spes_opt;

/* spes_opt_cmd describes a command: its name, synopsis, options and positionals. */
typedef struct spes_opt_cmd {
    const char *name;     /* "spesd train", used in the help */
    const char *synopsis; /* what follows the name on the usage line */
    const spes_opt *opts; /* the option table, may be NULL */
    int min_pos, max_pos; /* how many positional arguments it takes */
    const char *notes;    /* text printed after the options, may be NULL */
} spes_opt_cmd;

enum { SPES_OPTS_HELP = 1 };

/* spes_opts_parse reads argv[1..argc) (argv[0] is the command word) against cmd's table,
 * stores positionals in pos (room for cmd->max_pos), and returns 0, SPES_OPTS_HELP after
 * --help, or a negative error whose message names the option and the value. */
int spes_opts_parse(const spes_opt_cmd *cmd, int argc, char **argv, const char **pos, int *npos);

/* spes_opts_usage prints the command's help: the usage line, one line per option, the notes. */
void spes_opts_usage(const spes_opt_cmd *cmd, FILE *fp);

/* spes_opts_long parses a decimal integer value of option flag (e.g. "--days") within [lo, hi]. */
int spes_opts_long(const char *flag, const char *val, long lo, long hi, long *out);

#endif
