/* ckpt_priv.h: internals shared by ckpt.c and hf.c (not part of the public API). */
#ifndef SPES_CHECKPOINT_CKPT_PRIV_H
#define SPES_CHECKPOINT_CKPT_PRIV_H

/* spes__ckpt_make_dir creates dir (and parents) and fsyncs its parent, so a new directory's
 * name is as durable as the files later renamed into it. */
int spes__ckpt_make_dir(const char *dir);

#endif
