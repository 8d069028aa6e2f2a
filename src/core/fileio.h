/* fileio.h: durable file writes (temp, fsync, rename, fsync dir) and bounded reads.
 * Every durable write in spes goes through here, so a killed process leaves
 * either the old file or the new one, never a torn one. */
#ifndef SPES_CORE_FILEIO_H
#define SPES_CORE_FILEIO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* spes_atomic_file is a file being written under a temporary name. */
typedef struct spes_atomic_file {
    FILE *fp;
    char *path; /* final name */
    char *tmp;  /* temporary name in the same directory */
} spes_atomic_file;

/* spes_atomic_open starts writing path through a temp file beside it. */
int spes_atomic_open(spes_atomic_file *af, const char *path);

/* spes_atomic_write writes len bytes; on error the file is left to spes_atomic_abort. */
int spes_atomic_write(spes_atomic_file *af, const void *data, size_t len);

/* spes_atomic_commit flushes, fsyncs, renames over path and fsyncs the directory. */
int spes_atomic_commit(spes_atomic_file *af);

/* spes_atomic_abort removes the temp file; the old file at path is untouched. */
void spes_atomic_abort(spes_atomic_file *af);

/* spes_write_file_atomic writes a whole buffer durably to path. */
int spes_write_file_atomic(const char *path, const void *data, size_t len);

/* spes_read_file reads a whole file of at most max_len bytes into a malloc'd
 * buffer (NUL-terminated for convenience, not counted in *len); caller frees. */
int spes_read_file(const char *path, size_t max_len, char **out, size_t *len);

/* spes_fsync_dir fsyncs the directory that holds path (or path itself if a directory). */
int spes_fsync_dir(const char *path);

/* spes_mkdir_p creates a directory and its parents (mode 0755 unless given). */
int spes_mkdir_p(const char *path, unsigned mode);

/* spes_dir_check_writable makes sure files can be created in directory path
 * (creating it and its parents if missing) by creating and removing a probe
 * file; the error names the path. For commands that write their results only
 * at the end: they check first. */
int spes_dir_check_writable(const char *path);

/* spes_path_join returns a malloc'd "a/b"; NULL on allocation failure. */
char *spes_path_join(const char *a, const char *b);

#endif
