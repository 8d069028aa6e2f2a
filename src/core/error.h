/* error.h: error codes and the thread-local "last error" message.
 * Functions return 0 or a negative SPES_E* code; the code that detects a
 * failure records one human sentence with spes_errf() naming what and where
 * (file, peer, field), and the caller that reports it prints spes_errmsg().
 * Never put a trailing newline in a message. */
#ifndef SPES_CORE_ERROR_H
#define SPES_CORE_ERROR_H

#include <stddef.h>

enum {
    SPES_OK = 0,
    SPES_ENOMEM = -1,  /* allocation failed */
    SPES_EINVAL = -2,  /* bad argument or configuration value */
    SPES_EIO = -3,     /* operating-system I/O error */
    SPES_EFORMAT = -4, /* malformed input bytes (file, peer) */
    SPES_ERANGE = -5,  /* a value outside its allowed range */
    SPES_ENOENT = -6,  /* missing file or object */
    SPES_EEXIST = -7,  /* already exists or already held */
    SPES_ESTATE = -8,  /* operation not valid in the current state */
    SPES_ENET = -9,    /* network or peer failure */
    SPES_EAUTH = -10,  /* authentication or authorisation refused */
    SPES_ETIMEDOUT = -11,
    SPES_EINTR = -12,    /* interrupted by a shutdown request */
    SPES_EVERSION = -13, /* peer speaks an unsupported protocol version */
};

/* spes_strerror returns a short name for an error code. */
const char *spes_strerror(int err);

/* spes_errf records the calling thread's last error message and returns err,
 * so a failure site reads `return spes_errf(SPES_EFORMAT, "%s: ...", path);`. */
int spes_errf(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* spes_errf_errno is spes_errf with ": strerror(errno)" appended. */
int spes_errf_errno(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* spes_errmsg returns the calling thread's last error message ("" if none). */
const char *spes_errmsg(void);

/* spes_errclear forgets the calling thread's last error message. */
void spes_errclear(void);

#endif
