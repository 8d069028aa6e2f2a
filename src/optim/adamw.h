/* adamw.h: AdamW with PyTorch's semantics, the learning-rate schedule, global
 * gradient-norm clipping and the SPES decayed load-balance factor (docs/design.md, "Training").
 * Moments exist only for what is trained; they are laid out like the model's
 * gradients, so one segment table maps gradients and moments to parameters. */
#ifndef SPES_OPTIM_ADAMW_H
#define SPES_OPTIM_ADAMW_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "core/parallel.h"

/* spes_segment maps a run of gradients/moments onto the parameter array. */
typedef struct spes_segment {
    size_t param_off; /* floats into params */
    size_t grad_off;  /* floats into grads, m and v */
    size_t len;
} spes_segment;

/* spes_adamw is the optimizer state for n trained floats. */
typedef struct spes_adamw {
    size_t n;
    float *m;  /* (n) first moments */
    float *v;  /* (n) second moments */
    int64_t t; /* steps taken (bias correction) */
    double beta1, beta2, eps, weight_decay;
} spes_adamw;

/* spes_adamw_init allocates zeroed moments for n floats with the config's hyper-parameters. */
int spes_adamw_init(spes_adamw *o, size_t n, const spes_train_config *tc);

/* spes_adamw_fini frees the moments. */
void spes_adamw_fini(spes_adamw *o);

/* spes_adamw_step applies one update with learning rate lr to the segments,
 * exactly as torch.optim.AdamW (decoupled decay, bias correction), in fp32,
 * on the gradients times grad_scale (spes_clip_coef's value; 1 for none):
 * the same bits as clipping the gradients in place first, one pass fewer. */
void spes_adamw_step(spes_adamw *o, float *params, const float *grads, const spes_segment *seg, int nseg,
                     double lr, float grad_scale, spes_pool *pool);

/* spes_lr_at returns the learning rate of 0-based step s (warmup then cosine). */
double spes_lr_at(const spes_train_config *tc, int64_t s);

/* spes_lb_factor_at returns the SPES decayed load-balance factor at step s. */
double spes_lb_factor_at(const spes_spes_config *sc, int max_steps, int64_t s);

/* spes_grad_norm returns the L2 norm of n gradients (double accumulation in a
 * fixed order for a given thread count). */
double spes_grad_norm(const float *g, size_t n, spes_pool *pool);

/* spes_clip_coef returns torch's clip_grad_norm_ factor min(1, clip / (norm + 1e-6))
 * in fp32; 1 when clip <= 0. */
float spes_clip_coef(double norm, double clip);

/* spes_clip_grads scales g by clip / (norm + 1e-6) when norm > clip (torch's
 * clip_grad_norm_); returns the norm before clipping. clip <= 0 disables it. */
double spes_clip_grads(float *g, size_t n, double clip, spes_pool *pool);

#endif
