"""ref_selftest.py: checks the PyTorch reference (olmoe_ref.py) on its own, without the C model.

A second, naive per-token implementation written straight from docs/design.md must give the same
logits and losses; finite differences in float64 must agree with autograd; the load-balance
loss must be exactly 1 (summed over layers) for a uniform router; the schedule, the SPES
factor, AdamW and the safetensors reader are checked against hand-computed values.
It must never depend on the C build. Exit status 0 when everything holds.
"""
import math
import os
import struct
import json
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import olmoe_ref as R  # noqa: E402

FAIL = []


def check(ok, what):
    print("%s %s" % ("ok  " if ok else "FAIL", what))
    if not ok:
        FAIL.append(what)


def tiny(**kw):
    d = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, rms_norm_eps=1e-5, rope_theta=10000.0)
    d.update(kw)
    return R.Cfg(d)


def random_arrays(cfg, seed):
    g = np.random.default_rng(seed)
    out = {}
    for name, shape, _, _ in R.layout(cfg):
        if len(shape) == 1:
            out[name] = 1.0 + 0.1 * g.standard_normal(shape)
        else:
            out[name] = 0.3 * g.standard_normal(shape)  # large enough that routing is not uniform
    return out


def naive_forward(A, c, toks, tgts, lbw, zw, fac, trained):
    """Per-token loops with plain numpy float64; shares no code with olmoe_ref.forward."""
    def rms(v, w):
        return w * v / math.sqrt(float(np.mean(v * v)) + c.rms_norm_eps)

    def rope(v, pos):
        D = len(v)
        o = np.empty(D)
        for j in range(D // 2):
            ang = pos * c.rope_theta ** (-2.0 * j / D)
            o[j] = v[j] * math.cos(ang) - v[j + D // 2] * math.sin(ang)
            o[j + D // 2] = v[j + D // 2] * math.cos(ang) + v[j] * math.sin(ang)
        return o

    B, T = toks.shape
    N = B * T
    D = c.D
    X = np.array([[A["model.embed_tokens.weight"][toks[b, t]] for t in range(T)] for b in range(B)])
    lb = z = 0.0
    for l in range(c.L):
        p = "model.layers.%d." % l
        Q = np.zeros((B, T, c.NH, D))
        Kk = np.zeros((B, T, c.NKV, D))
        Vv = np.zeros((B, T, c.NKV, D))
        for b in range(B):
            for t in range(T):
                h = rms(X[b, t], A[p + "input_layernorm.weight"])
                q = rms(A[p + "self_attn.q_proj.weight"] @ h, A[p + "self_attn.q_norm.weight"])
                k = rms(A[p + "self_attn.k_proj.weight"] @ h, A[p + "self_attn.k_norm.weight"])
                v = A[p + "self_attn.v_proj.weight"] @ h
                for hh in range(c.NH):
                    Q[b, t, hh] = rope(q[hh * D:(hh + 1) * D], t)
                for hh in range(c.NKV):
                    Kk[b, t, hh] = rope(k[hh * D:(hh + 1) * D], t)
                    Vv[b, t, hh] = v[hh * D:(hh + 1) * D]
        X2 = X.copy()
        for b in range(B):
            for t in range(T):
                y = np.zeros(c.NH * D)
                for hh in range(c.NH):
                    kv = hh // (c.NH // c.NKV)
                    s = np.array([Q[b, t, hh] @ Kk[b, u, kv] / math.sqrt(D) for u in range(t + 1)])
                    a = np.exp(s - s.max())
                    a /= a.sum()
                    y[hh * D:(hh + 1) * D] = sum(a[u] * Vv[b, u, kv] for u in range(t + 1))
                X2[b, t] = X[b, t] + A[p + "self_attn.o_proj.weight"] @ y
        X = X2
        count = np.zeros(c.E)
        psum = np.zeros(c.E)
        for b in range(B):
            for t in range(T):
                h = rms(X[b, t], A[p + "post_attention_layernorm.weight"])
                lg = A[p + "mlp.gate.weight"] @ h
                m = lg.max()
                lse = m + math.log(np.exp(lg - m).sum())
                z += lse * lse / N
                pr = np.exp(lg - lse)
                psum += pr
                top = sorted(range(c.E), key=lambda e: -pr[e])[:c.K]
                ws = sum(pr[e] for e in top) if c.norm_topk_prob else 1.0
                out = np.zeros(c.H)
                for e in top:
                    count[e] += 1
                    q = p + "mlp.experts.%d." % e
                    g = A[q + "gate_proj.weight"] @ h
                    u = A[q + "up_proj.weight"] @ h
                    out += pr[e] / ws * (A[q + "down_proj.weight"] @ (g / (1 + np.exp(-g)) * u))
                X[b, t] = X[b, t] + out
        f = np.array([fac if tr else 1.0 for tr in trained])
        lb += c.E / (c.L * N * c.K) * float(np.sum(count * f * psum / N))
    head = A["model.embed_tokens.weight"] if c.tie_word_embeddings else A["lm_head.weight"]
    ce = 0.0
    logits = np.zeros((B, T, c.V))
    for b in range(B):
        for t in range(T):
            lg = head @ rms(X[b, t], A["model.norm.weight"])
            logits[b, t] = lg
            m = lg.max()
            ce += (m + math.log(np.exp(lg - m).sum()) - lg[tgts[b, t]]) / N
    return dict(loss=ce + lbw * lb + zw * z, ce_loss=ce, lb_loss=lb, z_loss=z, logits=logits)


def test_naive(cfgkw, trained, tag):
    c = tiny(**cfgkw)
    A = random_arrays(c, 1)
    g = np.random.default_rng(2)
    toks = g.integers(0, c.V, (2, 6))
    tgts = g.integers(0, c.V, (2, 6))
    P = R.make_params(A, c, trained=trained)
    out = R.forward(P, c, torch.tensor(toks), torch.tensor(tgts), 0.1, 0.01, 0.7, trained)
    ref = naive_forward(A, c, toks, tgts, 0.1, 0.01, 0.7, trained or [True] * c.E)
    for k in ("loss", "ce_loss", "lb_loss", "z_loss"):
        check(abs(out[k].item() - ref[k]) < 1e-10 * max(1, abs(ref[k])),
              "%s: %s %.12f == naive %.12f" % (tag, k, out[k].item(), ref[k]))
    d = np.abs(out["logits"].detach().numpy() - ref["logits"]).max()
    check(d < 1e-10, "%s: logits max diff %.3g vs naive" % (tag, d))


def test_fd(cfgkw, trained, tag):
    """Directional finite differences: (L(p+hd) - L(p-hd)) / 2h == <grad, d> in float64."""
    c = tiny(**cfgkw)
    A = random_arrays(c, 3)
    g = np.random.default_rng(4)
    toks = torch.tensor(g.integers(0, c.V, (2, 8)))
    tgts = torch.tensor(g.integers(0, c.V, (2, 8)))
    P = R.make_params(A, c, trained=trained)
    out = R.forward(P, c, toks, tgts, 0.1, 0.01, 0.8, trained)
    out["loss"].backward()
    for name, t in P.items():
        if not t.requires_grad:
            check(t.grad is None, "%s: frozen %s has no gradient" % (tag, name))
    for trial in range(3):
        dirs = {n: torch.tensor(g.standard_normal(t.shape)) for n, t in P.items() if t.requires_grad}
        analytic = sum((P[n].grad * d).sum().item() for n, d in dirs.items())
        h = 1e-6

        def loss_at(sign):
            Q = {n: (t.detach() + sign * h * dirs[n]) if n in dirs else t.detach() for n, t in P.items()}
            return R.forward(Q, c, toks, tgts, 0.1, 0.01, 0.8, trained)["loss"].item()
        fd = (loss_at(1) - loss_at(-1)) / (2 * h)
        check(abs(fd - analytic) < 1e-6 * max(1.0, abs(analytic)),
              "%s: directional derivative %d: autograd %.10f fd %.10f" % (tag, trial, analytic, fd))


def test_gradcheck():
    """torch.autograd.gradcheck on the router and q_norm of layer 0 (all losses flow through them)."""
    c = tiny()
    A = random_arrays(c, 5)
    g = np.random.default_rng(6)
    toks = torch.tensor(g.integers(0, c.V, (1, 5)))
    tgts = torch.tensor(g.integers(0, c.V, (1, 5)))
    P = R.make_params(A, c)
    names = ["model.layers.0.mlp.gate.weight", "model.layers.0.self_attn.q_norm.weight",
             "model.layers.1.mlp.experts.2.down_proj.weight"]

    def f(*ts):
        Q = dict((n, t.detach()) for n, t in P.items())
        Q.update(dict(zip(names, ts)))
        return R.forward(Q, c, toks, tgts, 0.5, 0.1, 0.7)["loss"]
    ok = torch.autograd.gradcheck(f, tuple(P[n].detach().clone().requires_grad_(True) for n in names),
                                  eps=1e-6, atol=1e-7, rtol=1e-5)
    check(ok, "gradcheck on %s" % ", ".join(names))


def test_balance():
    c = tiny()
    A = random_arrays(c, 7)
    for l in range(c.L):
        A["model.layers.%d.mlp.gate.weight" % l][:] = 0.0  # uniform router: p = 1/E everywhere
    P = R.make_params(A, c)
    toks = torch.arange(32).view(2, 16) % c.V
    out = R.forward(P, c, toks, toks, 0.01, 0.001, 1.0)
    check(abs(out["lb_loss"].item() - 1.0) < 1e-12, "uniform router: lb_loss %.15f == 1 (1/L per layer)"
          % out["lb_loss"].item())
    zz = c.L * math.log(c.E) ** 2
    check(abs(out["z_loss"].item() - zz) < 1e-12, "uniform router: z_loss %.12f == L*log(E)^2" % out["z_loss"].item())


def test_schedule():
    tr = dict(lr=1e-3, warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    want = {0: 2.5e-4, 3: 1e-3, 4: 1e-3, 9: 1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * 0.5)), 14: 1e-4, 20: 1e-4}
    for s, v in want.items():
        check(abs(R.lr_at(s, tr) - v) < 1e-15, "lr_at(%d) = %.6g" % (s, R.lr_at(s, tr)))
    sp = dict(lb_factor_start=0.7, lb_factor_ramp=0.2)
    tr = dict(max_steps=100)
    for s, v in {0: 0.7, 10: 0.85, 20: 1.0, 50: 1.0}.items():
        check(abs(R.lb_factor_at(s, tr, sp) - v) < 1e-12, "lb_factor_at(%d) = %.4f" % (s, R.lb_factor_at(s, tr, sp)))


def test_adamw():
    p = torch.tensor([0.5, -0.2, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    grads = [torch.tensor([0.3, -0.1, 2.0]), torch.tensor([-0.2, 0.4, 1.0])]
    ref = np.array([0.5, -0.2, 0.0])
    m = np.zeros(3)
    v = np.zeros(3)
    for t, gr in enumerate(grads, 1):
        p.grad = gr.to(torch.float64)
        opt.step()
        gn = gr.numpy().astype(np.float64)
        m = 0.9 * m + 0.1 * gn
        v = 0.95 * v + 0.05 * gn * gn
        ref = ref * (1 - 0.1 * 0.1) - 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.95 ** t)) + 1e-8)
    d = np.abs(p.detach().numpy() - ref).max()
    check(d < 1e-12, "torch AdamW == decoupled-decay formula (max diff %.3g)" % d)


def test_safetensors():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1.5, -2.0], dtype=np.float32)
    hdr = {"__metadata__": {"format": "pt"}, "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [24, 32]}}
    h = json.dumps(hdr).encode()
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "m.safetensors")
        with open(f, "wb") as fp:
            fp.write(struct.pack("<Q", len(h)) + h + a.tobytes() + b.tobytes())
        t, meta = R.read_safetensors(f)
    check(meta == {"format": "pt"} and (t["a"] == a).all() and (t["b"] == b).all(), "safetensors reader")


def main():
    torch.manual_seed(0)
    test_naive({}, None, "naive all")
    test_naive(dict(norm_topk_prob=True, tie_word_embeddings=True), [True, False, True, False], "naive topk+tie+frozen")
    test_naive(dict(num_key_value_heads=4, num_experts_per_tok=1), None, "naive mha k1")
    test_fd({}, None, "fd all")
    test_fd(dict(norm_topk_prob=True), [True, False, True, False], "fd topk frozen{1,3}")
    test_fd(dict(tie_word_embeddings=True), None, "fd tied")
    test_gradcheck()
    test_balance()
    test_schedule()
    test_adamw()
    test_safetensors()
    print("ref_selftest: %s (%d failures)" % ("FAIL" if FAIL else "PASS", len(FAIL)))
    return 1 if FAIL else 0


if __name__ == "__main__":
    sys.exit(main())
