/* spesctl.h: the operator client's command table and shared helpers.
 * Each verb group lives in its own file (cmd_pki.c, cmd_ops.c, cmd_top.c) and
 * exports one table terminated by an entry with verb == NULL; main.c lists the
 * tables. A command returns an exit status: 0 ok, 1 failure (reason printed on
 * stderr by the command), 2 usage error. Commands never call exit() themselves. */
#ifndef SPES_CLIENT_SPESCTL_H
#define SPES_CLIENT_SPESCTL_H

/* spesctl_cmd is one command: `spesctl VERB [SUB] ARGS...`. */
typedef struct spesctl_cmd {
    const char *verb;                  /* "cert" */
    const char *sub;                   /* "issue", or NULL for a verb without sub-commands */
    int (*run)(int argc, char **argv); /* argv[0] is the first word after VERB [SUB] */
    const char *usage;                 /* one line of arguments, shown by `spesctl help` */
} spesctl_cmd;

enum { SPESCTL_OK = 0, SPESCTL_FAIL = 1, SPESCTL_USAGE = 2 };

/* spesctl_pki_cmds is the PKI verb group (ca, cert, crl). */
extern const spesctl_cmd spesctl_pki_cmds[];

/* spesctl_opt describes one --long option of a command. */
typedef struct spesctl_opt {
    const char *name; /* "ca" for --ca */
    int has_arg;      /* 1 if it takes a value */
    const char **val; /* where the value (or "1" for a flag) is stored */
} spesctl_opt;

/* SPESCTL_MAX_OPTS is the most options one command's table may hold. */
#define SPESCTL_MAX_OPTS 32

/* spesctl_parse parses argv into opts and positional arguments (at most max_pos, stored in pos);
 * returns the number of positionals, or -1 after printing a usage error. */
int spesctl_parse(int argc, char **argv, const spesctl_opt *opts, const char **pos, int max_pos,
                  const char *cmdname);

/* spesctl_fail prints "spesctl: <what>: <spes_errmsg()>" and returns SPESCTL_FAIL. */
int spesctl_fail(const char *what);

/* spesctl_parse_int parses a decimal int within [lo, hi] or prints an error and returns -1. */
int spesctl_parse_int(const char *s, int lo, int hi, const char *flag, int *out);

#endif
