/* cli.h: small helpers shared by the spesd sub-commands' argument parsing. */
#ifndef SPES_DAEMON_CLI_H
#define SPES_DAEMON_CLI_H

/* spes_cli_long parses a decimal integer option value within [lo, hi]. */
int spes_cli_long(const char *opt, const char *val, long lo, long hi, long *out);

/* spes_cli_bad_option records an "unknown option or missing value" error for the
 * option getopt_long just rejected (argv and optind as getopt left them). */
int spes_cli_bad_option(char **argv, int optind);

#endif
