/* model_load.h: opening a trained model for inference from either kind of
 * checkpoint directory: the project's own (DIR/spes.ckpt) or a Hugging Face
 * export (DIR/config.json + DIR/model.safetensors). */
#ifndef SPES_TOOLS_MODEL_LOAD_H
#define SPES_TOOLS_MODEL_LOAD_H

#include "core/parallel.h"
#include "model/model.h"

/* spes_load_model allocates an inference model for batches up to B x T and
 * fills its parameters from dir. */
int spes_load_model(spes_model **out, const char *dir, int B, int T, spes_pool *pool);

#endif
