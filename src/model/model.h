/* model.h: the OLMoE-architecture MoE language model, forward and backward.
 * The math is docs/design.md's "The model" section exactly (same as Hugging Face
 * OlmoeForCausalLM). This module never does I/O and never allocates inside
 * forward or backward: everything is allocated in spes_model_alloc.
 *
 * Dimension letters, used in every shape comment:
 *   B batch, T sequence, V vocab, H hidden, NH heads, NKV kv heads, D = H/NH
 *   head dim, I expert intermediate, E experts, K experts per token, L layers.
 *
 * Parameter memory is ONE float array laid out as
 *   [ shared | column 0 | column 1 | ... | column E-1 ]
 * shared, in this order: embed_tokens (V,H); per layer l: input_layernorm (H),
 *   q_proj (NH*D,H), k_proj (NKV*D,H), v_proj (NKV*D,H), o_proj (H,NH*D),
 *   q_norm (NH*D), k_norm (NKV*D), post_attention_layernorm (H), mlp.gate (E,H);
 *   then model.norm (H), then lm_head (V,H) unless tie_word_embeddings.
 * column e (expert e of every layer, contiguous): per layer l:
 *   gate_proj (I,H), up_proj (I,H), down_proj (H,I).
 * So a SPES contribution (shared delta, owned columns) is a few contiguous ranges.
 * Gradients exist only for what this model trains: [ shared | trained columns
 * in increasing index ], and frozen columns cost no gradient memory. */
#ifndef SPES_MODEL_MODEL_H
#define SPES_MODEL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "core/parallel.h"

#define SPES_TENSOR_NAME_MAX 96

/* spes_tensor describes one named parameter tensor inside the flat array. */
typedef struct spes_tensor {
    char name[SPES_TENSOR_NAME_MAX]; /* Hugging Face name, e.g. model.layers.0.mlp.gate.weight */
    int ndim;                        /* 1 or 2 */
    int64_t shape[2];                /* rows, cols (cols unused when ndim == 1) */
    size_t offset;                   /* in floats, from the start of params */
    size_t numel;
    int column; /* expert index, or -1 for shared tensors */
    int layer;  /* layer index, or -1 */
} spes_tensor;

/* spes_layout is the parameter table of one model configuration. */
typedef struct spes_layout {
    size_t shared_numel; /* floats before column 0 */
    size_t column_numel; /* floats in one expert column (all layers) */
    size_t total_numel;  /* shared_numel + E * column_numel */
    int ntensors;
    spes_tensor *tensors; /* in memory order */
} spes_layout;

/* spes_layout_build computes the table for a configuration (validated or not:
 * it returns SPES_EINVAL with a message for impossible shapes). */
int spes_layout_build(spes_layout *lo, const spes_model_config *c);

/* spes_layout_fini frees the table. */
void spes_layout_fini(spes_layout *lo);

/* spes_layout_find returns the tensor with this name, or NULL. */
const spes_tensor *spes_layout_find(const spes_layout *lo, const char *name);

/* spes_loss_opts weights the auxiliary losses of one training step. */
typedef struct spes_loss_opts {
    double lb_weight; /* lb_loss_weight */
    double z_weight;  /* z_loss_weight */
    double lb_factor; /* SPES decayed factor for the counts of the trained (own) experts */
} spes_loss_opts;

/* spes_model is a model with its gradients and activations (opaque parts private). */
typedef struct spes_model {
    spes_model_config cfg;
    spes_layout layout;
    float *params;    /* (total_numel) */
    uint8_t *trained; /* (E) 1 where the column's weights are trained here */
    int ntrained;     /* count of trained columns */
    float *grads;     /* (shared_numel + ntrained * column_numel), or NULL if inference only */
    size_t grads_numel;
    int B, T; /* activation capacity given at allocation */
    /* results of the last forward with targets: */
    float loss;    /* ce + lb_weight * lb + z_weight * z */
    float ce_loss; /* mean cross-entropy over B*T targets */
    float lb_loss; /* load-balance loss, summed over layers (unweighted, factor applied) */
    float z_loss;  /* router z-loss, summed over layers (unweighted) */
    struct spes_model_priv *priv;
} spes_model;

/* spes_model_alloc makes a model for configuration c: params, gradients for
 * the trained columns (trained may be NULL for "all"), and activations for
 * batches up to B x T; training = 0 allocates no gradients or backward
 * activations (eval, generate). pool may be NULL: then products use OpenBLAS
 * with the caller's thread count. With a pool of several threads, forward and
 * backward set OpenBLAS to 1 thread for the pass (restoring it after) and
 * split every product, attention and elementwise work over the pool. */
int spes_model_alloc(spes_model **out, const spes_model_config *c, const uint8_t *trained, int B, int T,
                     int training, spes_pool *pool);

/* spes_model_free releases everything the model owns. */
void spes_model_free(spes_model *m);

/* spes_model_init_weights sets every weight to normal(0, 0.02) and every
 * RMSNorm weight to 1, deterministically from seed (spes_rng, tensors in
 * layout order, elements in row-major order). */
void spes_model_init_weights(spes_model *m, uint64_t seed);

/* spes_model_forward runs tokens (B,T) through the model. With targets (B,T),
 * it computes the losses into m->loss etc. and keeps what backward needs.
 * B and T may be smaller than the capacity. Returns SPES_ERANGE for a token
 * id outside [0, V) (checked, never trusted). */
int spes_model_forward(spes_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                       const spes_loss_opts *opts);

/* spes_model_zero_grad sets all gradients to zero. */
void spes_model_zero_grad(spes_model *m);

/* spes_model_backward accumulates d(loss)/d(trained params) into m->grads for
 * the last forward (which must have had targets). Frozen columns pass input
 * gradients through but get no weight gradients. */
void spes_model_backward(spes_model *m);

/* spes_model_logits returns the (B,T,V) logits of the last forward. On a
 * training model they are valid until the next spes_model_backward, which
 * turns them into d(loss)/d(logits) in place (it saves N*V floats). */
const float *spes_model_logits(const spes_model *m);

/* spes_model_grad_of returns the gradient of tensor t (same shape), or NULL
 * if it belongs to a frozen column. */
float *spes_model_grad_of(spes_model *m, const spes_tensor *t);

/* spes_model_grad_column returns column e's gradient block (column_numel), or NULL if frozen. */
float *spes_model_grad_column(spes_model *m, int e);

/* spes_model_route_counts returns the rows routed to each expert by the last
 * forward, (*layers, E) floats, read-only; *layers is L for a training model
 * and 1 (the last layer) otherwise. */
const float *spes_model_route_counts(const spes_model *m, int *layers);

/* spes_model_flops_per_token returns forward+backward FLOPs per trained token
 * (matmuls and attention), for model-FLOPs-utilisation reports. Per layer,
 * forward: 2*H*(2*NH*D + 2*NKV*D) (q,k,v,o) + 2*H*E (router)
 * + 4*NH*D*(T+1)/2 (causal QK^T and PV at the capacity T) + K*6*H*I (the K
 * routed experts); plus 2*H*V for the LM head. Backward counts 2x forward for
 * everything trained (shared weights, attention, LM head) and for experts
 * K*6*H*I*(1 + ntrained/E): input gradients always, weight gradients only for
 * the trained fraction of columns. Recomputation in backward (norms, q/k/v,
 * attention, expert gate/up) is NOT counted: these are model FLOPs. */
double spes_model_flops_per_token(const spes_model *m);

/* spes_model_activation_numel returns the floats in the activation
 * allocation (kept activations plus scratch), for memory reports. */
size_t spes_model_activation_numel(const spes_model *m);

#endif
