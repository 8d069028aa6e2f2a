"""olmoe_ref.py: an independent PyTorch reference of the spes model and its training.

Written from docs/design.md ("The model", the learning-rate schedule, clipping, AdamW,
batching), never from the C sources, so that the cross-check tests compare two
implementations that share nothing but the specification. It must never import or
parse anything of the C model beyond the dumped tensors and the tensor names.

Parameters are a dict {Hugging Face OLMoE name: tensor}. The comparison reference
runs in float64: then its own rounding error (~1e-16) is negligible and every
difference measured against the C model (float32) is the C model's error, so the
tolerances can be tight without false alarms from the reference side.
"""
import json
import math

import numpy as np
import torch

MODEL_DEFAULTS = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, num_experts=8, num_experts_per_tok=2,
                      rms_norm_eps=1e-5, rope_theta=10000.0, norm_topk_prob=False,
                      tie_word_embeddings=False, max_position_embeddings=4096)
TRAIN_DEFAULTS = dict(seq_len=128, batch_size=8, lr=3e-3, min_lr_ratio=0.1, warmup_steps=20, max_steps=500,
                      weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.0,
                      lb_loss_weight=0.01, z_loss_weight=0.001, seed=1337)
SPES_DEFAULTS = dict(lb_factor_start=0.7, lb_factor_ramp=0.2)


class Cfg:
    """Model dimensions under their Hugging Face config.json names."""

    def __init__(self, d):
        m = dict(MODEL_DEFAULTS)
        m.update(d)
        for k, v in m.items():
            setattr(self, k, v)
        self.V, self.H, self.I = self.vocab_size, self.hidden_size, self.intermediate_size
        self.L, self.NH, self.NKV = self.num_hidden_layers, self.num_attention_heads, self.num_key_value_heads
        self.E, self.K = self.num_experts, self.num_experts_per_tok
        self.D = self.H // self.NH


def layout(cfg):
    """Tensors in the memory order of the C layout (model.h): (name, shape, column, layer)."""
    c = cfg
    out = [("model.embed_tokens.weight", (c.V, c.H), -1, -1)]
    for l in range(c.L):
        p = "model.layers.%d." % l
        out += [(p + "input_layernorm.weight", (c.H,), -1, l),
                (p + "self_attn.q_proj.weight", (c.NH * c.D, c.H), -1, l),
                (p + "self_attn.k_proj.weight", (c.NKV * c.D, c.H), -1, l),
                (p + "self_attn.v_proj.weight", (c.NKV * c.D, c.H), -1, l),
                (p + "self_attn.o_proj.weight", (c.H, c.NH * c.D), -1, l),
                (p + "self_attn.q_norm.weight", (c.NH * c.D,), -1, l),
                (p + "self_attn.k_norm.weight", (c.NKV * c.D,), -1, l),
                (p + "post_attention_layernorm.weight", (c.H,), -1, l),
                (p + "mlp.gate.weight", (c.E, c.H), -1, l)]
    out.append(("model.norm.weight", (c.H,), -1, -1))
    if not c.tie_word_embeddings:
        out.append(("lm_head.weight", (c.V, c.H), -1, -1))
    for e in range(c.E):
        for l in range(c.L):
            p = "model.layers.%d.mlp.experts.%d." % (l, e)
            out += [(p + "gate_proj.weight", (c.I, c.H), e, l),
                    (p + "up_proj.weight", (c.I, c.H), e, l),
                    (p + "down_proj.weight", (c.H, c.I), e, l)]
    return out


def column_of(name):
    """Expert index of a tensor name, or -1 for a shared tensor."""
    if ".mlp.experts." not in name:
        return -1
    return int(name.split(".mlp.experts.")[1].split(".")[0])


def rms_norm(x, w, eps):
    # DESIGN: RMSNorm in (at least) fp32; float64 here is more than that.
    xf = x.to(torch.float64) if x.dtype == torch.float64 else x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * y.to(x.dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_cos_sin(cfg, T, dtype):
    D = cfg.D
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)  # (T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, D): pairs j and j + D/2 share a frequency
    return emb.cos().to(dtype), emb.sin().to(dtype)


def attention(P, cfg, l, x):
    c = cfg
    B, T, _ = x.shape
    p = "model.layers.%d.self_attn." % l
    q = rms_norm(x @ P[p + "q_proj.weight"].t(), P[p + "q_norm.weight"], c.rms_norm_eps)
    k = rms_norm(x @ P[p + "k_proj.weight"].t(), P[p + "k_norm.weight"], c.rms_norm_eps)
    v = x @ P[p + "v_proj.weight"].t()
    q = q.view(B, T, c.NH, c.D).transpose(1, 2)   # (B, NH, T, D)
    k = k.view(B, T, c.NKV, c.D).transpose(1, 2)  # (B, NKV, T, D)
    v = v.view(B, T, c.NKV, c.D).transpose(1, 2)
    cos, sin = rope_cos_sin(c, T, x.dtype)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    rep = c.NH // c.NKV  # query head h uses kv head h // rep (Hugging Face repeat_kv)
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(c.D)
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)
    s = s.masked_fill(causal, float("-inf"))
    a = torch.softmax(s.to(torch.float64) if s.dtype == torch.float64 else s.float(), dim=-1).to(x.dtype)
    y = (a @ v).transpose(1, 2).reshape(B, T, c.NH * c.D)
    return y @ P[p + "o_proj.weight"].t()


def moe(P, cfg, l, x, factor):
    """Returns (output, LB_l unweighted with factors, Z_l, top-k indices)."""
    c = cfg
    B, T, H = x.shape
    N = B * T
    xf = x.reshape(N, H)
    p = "model.layers.%d.mlp." % l
    logits = xf @ P[p + "gate.weight"].t()  # (N, E)
    prob = torch.softmax(logits, dim=-1)
    topw, topi = torch.topk(prob, c.K, dim=-1)  # (N, K)
    if c.norm_topk_prob:
        topw = topw / topw.sum(-1, keepdim=True)
    out = torch.zeros_like(xf)
    for e in range(c.E):
        w = (topw * (topi == e)).sum(-1)  # (N,), zero where e was not chosen
        q = p + "experts.%d." % e
        g = xf @ P[q + "gate_proj.weight"].t()
        u = xf @ P[q + "up_proj.weight"].t()
        y = (torch.nn.functional.silu(g) * u) @ P[q + "down_proj.weight"].t()
        out = out + w[:, None] * y
    count = torch.nn.functional.one_hot(topi, c.E).sum((0, 1)).to(x.dtype).detach()  # (E,)
    lb = c.E / (c.L * N * c.K) * (count * factor * prob.mean(0)).sum()
    z = torch.logsumexp(logits, dim=-1).pow(2).mean()
    return out.view(B, T, H), lb, z, topi, prob


def forward(P, cfg, tokens, targets=None, lb_weight=0.01, z_weight=0.001, lb_factor=1.0, trained=None,
            stats=None):
    """tokens, targets: (B, T) int64. trained: per-column bools (None = all).
    Returns dict(loss, ce_loss, lb_loss, z_loss, logits) as tensors."""
    c = cfg
    dt = P["model.embed_tokens.weight"].dtype
    trained = [True] * c.E if trained is None else trained
    factor = torch.tensor([lb_factor if t else 1.0 for t in trained], dtype=dt)
    x = P["model.embed_tokens.weight"][tokens]
    lb_sum = torch.zeros((), dtype=dt)
    z_sum = torch.zeros((), dtype=dt)
    for l in range(c.L):
        pre = "model.layers.%d." % l
        x = x + attention(P, c, l, rms_norm(x, P[pre + "input_layernorm.weight"], c.rms_norm_eps))
        y, lb, z, topi, prob = moe(P, c, l, rms_norm(x, P[pre + "post_attention_layernorm.weight"], c.rms_norm_eps),
                                   factor)
        x = x + y
        lb_sum = lb_sum + lb
        z_sum = z_sum + z
        if stats is not None:
            srt = prob.detach().sort(-1, descending=True).values
            gap = (srt[:, c.K - 1] - srt[:, c.K]).min().item() if c.K < c.E else 1.0
            stats.setdefault("min_topk_gap", []).append(gap)
    x = rms_norm(x, P["model.norm.weight"], c.rms_norm_eps)
    head = P["model.embed_tokens.weight"] if c.tie_word_embeddings else P["lm_head.weight"]
    logits = x @ head.t()
    out = dict(logits=logits, lb_loss=lb_sum, z_loss=z_sum)
    if targets is not None:
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, c.V), targets.reshape(-1))
        out["ce_loss"] = ce
        out["loss"] = ce + lb_weight * lb_sum + z_weight * z_sum
    return out


def make_params(arrays, cfg, dtype=torch.float64, trained=None):
    """Tensors from {name: numpy array}; frozen columns get requires_grad False."""
    trained = [True] * cfg.E if trained is None else trained
    P = {}
    for name, shape, col, _ in layout(cfg):
        a = np.asarray(arrays[name])
        if tuple(a.shape) != tuple(shape):
            raise ValueError("%s: shape %s, expected %s" % (name, a.shape, shape))
        t = torch.tensor(a, dtype=dtype)
        t.requires_grad_(col < 0 or bool(trained[col]))
        P[name] = t
    return P


def lr_at(s, tr):
    """DESIGN's schedule: linear warm-up over W steps, then cosine to min_lr_ratio * lr."""
    lr, W, S = tr["lr"], tr["warmup_steps"], tr["max_steps"]
    if s < W:
        return lr * (s + 1) / W
    mn = tr["min_lr_ratio"] * lr
    frac = min(1.0, (s - W) / max(1, S - W))
    return mn + (lr - mn) * 0.5 * (1.0 + math.cos(math.pi * frac))


def lb_factor_at(s, tr, sp):
    start, ramp = sp["lb_factor_start"], sp["lb_factor_ramp"]
    span = ramp * tr["max_steps"]
    if span <= 0:
        return 1.0
    return start + (1.0 - start) * min(1.0, s / span)


def batch_at(data, s, B, T):
    """Step s uses the B*T+1 tokens from token s*B*T (indices taken modulo the data length)."""
    n = len(data)
    idx = (np.arange(B * T + 1, dtype=np.int64) + s * B * T) % n
    buf = torch.tensor(np.asarray(data)[idx].astype(np.int64))
    return buf[:-1].view(B, T), buf[1:].view(B, T)


def train(P, cfg, tr, sp, data, steps, trained=None, log=None, on_grads=None):
    """Trains P in place for `steps` steps; returns the per-step mean CE (before each update)
    and the per-step pre-clip gradient norms. tr/sp: the run config's train/spes dicts.
    on_grads(s, P) is called after each backward, before clipping."""
    trained = [True] * cfg.E if trained is None else trained
    params = [t for t in P.values() if t.requires_grad]
    opt = torch.optim.AdamW(params, lr=tr["lr"], betas=(tr["beta1"], tr["beta2"]), eps=tr["eps"],
                            weight_decay=tr["weight_decay"])
    B, T = tr["batch_size"], tr["seq_len"]
    losses, norms = [], []
    for s in range(steps):
        x, y = batch_at(data, s, B, T)
        opt.zero_grad(set_to_none=False)
        out = forward(P, cfg, x, y, tr["lb_loss_weight"], tr["z_loss_weight"], lb_factor_at(s, tr, sp), trained)
        out["loss"].backward()
        if on_grads:
            on_grads(s, P)
        norm = torch.sqrt(sum((p.grad.to(torch.float64) ** 2).sum() for p in params)).item()
        if norm > tr["grad_clip"]:
            scale = tr["grad_clip"] / (norm + 1e-6)
            for p in params:
                p.grad.mul_(scale)
        for g in opt.param_groups:
            g["lr"] = lr_at(s, tr)
        opt.step()
        losses.append(out["ce_loss"].item())
        norms.append(norm)
        if log:
            log("ref step %d loss %.6f lr %.6g norm %.4f" % (s, losses[-1], lr_at(s, tr), norm))
    return losses, norms


def load_dir_npy(d, cfg, sub):
    """{name: array} from d/sub/<name>.npy for every layout tensor that exists there."""
    import os
    out = {}
    for name, _, _, _ in layout(cfg):
        f = os.path.join(d, sub, name + ".npy")
        if os.path.exists(f):
            out[name] = np.load(f)
    return out


def read_safetensors(path):
    """{name: numpy array} from a .safetensors file (F32/F64/F16/BF16), plus its __metadata__."""
    with open(path, "rb") as f:
        buf = f.read()
    n = int.from_bytes(buf[:8], "little")
    hdr = json.loads(buf[8:8 + n].decode("utf-8"))
    base = 8 + n
    meta = hdr.pop("__metadata__", None)
    out = {}
    for name, info in hdr.items():
        a, b = info["data_offsets"]
        raw = buf[base + a:base + b]
        dt = info["dtype"]
        if dt == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype={"F32": "<f4", "F64": "<f8", "F16": "<f2"}[dt])
        out[name] = arr.reshape(info["shape"]).copy()
    return out, meta


def max_rel(a, b):
    """Norm-relative difference max|a-b| / max(max|b|, 1e-6), b the reference."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-6)) if b.size else 0.0
