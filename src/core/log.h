/* log.h: levelled logging to stderr (journald picks it up under systemd).
 * log_warn appends strerror(errno); log_warnx does not (OpenBSD habit). */
#ifndef SPES_CORE_LOG_H
#define SPES_CORE_LOG_H

enum spes_log_level { SPES_LOG_ERROR = 0, SPES_LOG_WARN, SPES_LOG_INFO, SPES_LOG_DEBUG };

/* spes_log_set_level sets the most verbose level printed. */
void spes_log_set_level(int level);

/* spes_log_parse_level maps "error|warn|info|debug" to a level, or -1. */
int spes_log_parse_level(const char *name);

/* spes_log_set_prefix sets a tag printed on every line (e.g. the node name). */
void spes_log_set_prefix(const char *prefix);

/* spes_log prints one line at the given level; errno_too appends strerror(errno). */
void spes_log(int level, int errno_too, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define log_error(...) spes_log(SPES_LOG_ERROR, 0, __VA_ARGS__)
#define log_warn(...) spes_log(SPES_LOG_WARN, 1, __VA_ARGS__)
#define log_warnx(...) spes_log(SPES_LOG_WARN, 0, __VA_ARGS__)
#define log_info(...) spes_log(SPES_LOG_INFO, 0, __VA_ARGS__)
#define log_debug(...) spes_log(SPES_LOG_DEBUG, 0, __VA_ARGS__)

#endif
