#!/usr/bin/python3
"""bench/torch_moe.py: the bench model in PyTorch, as a fair baseline.

The same OLMoE architecture as spes (docs/design.md), written the way Hugging Face's
OlmoeForCausalLM runs on CPU in eager mode: fp32, sparse expert dispatch (only
the tokens routed to an expert go through it, like OlmoeSparseMoeBlock), manual
causal attention, AdamW from torch.optim. Prints one JSON line with tokens/s of
forward + backward + clip + AdamW step.

usage: torch_moe.py CONFIG.json TOKENS.bin THREADS STEPS
THREADS is PyTorch's own (intra-op) thread count; the matrix products run in
OpenBLAS, whose thread count is OPENBLAS_NUM_THREADS (all CPUs when unset):
bench/run sets both, and the JSON line records both.
"""
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


class Attn(torch.nn.Module):
    def __init__(s, c):
        super().__init__()
        H, NH, NKV = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
        s.NH, s.NKV, s.D, s.eps = NH, NKV, H // NH, c["rms_norm_eps"]
        s.q = torch.nn.Linear(H, NH * s.D, bias=False)
        s.k = torch.nn.Linear(H, NKV * s.D, bias=False)
        s.v = torch.nn.Linear(H, NKV * s.D, bias=False)
        s.o = torch.nn.Linear(NH * s.D, H, bias=False)
        s.qn = torch.nn.Parameter(torch.ones(NH * s.D))
        s.kn = torch.nn.Parameter(torch.ones(NKV * s.D))
        inv = c["rope_theta"] ** (-torch.arange(0, s.D, 2, dtype=torch.float32) / s.D)
        s.register_buffer("inv", inv)

    def forward(s, x):
        B, T, _ = x.shape
        q = rms(s.q(x), s.qn, s.eps).view(B, T, s.NH, s.D).transpose(1, 2)
        k = rms(s.k(x), s.kn, s.eps).view(B, T, s.NKV, s.D).transpose(1, 2)
        v = s.v(x).view(B, T, s.NKV, s.D).transpose(1, 2)
        f = torch.outer(torch.arange(T, dtype=torch.float32), s.inv)
        emb = torch.cat([f, f], -1)
        cos, sin = emb.cos(), emb.sin()
        q = q * cos + rot(q) * sin
        k = k * cos + rot(k) * sin
        rep = s.NH // s.NKV
        if rep > 1:
            k = k.repeat_interleave(rep, 1)
            v = v.repeat_interleave(rep, 1)
        a = (q @ k.transpose(-1, -2)) / math.sqrt(s.D)
        a = a.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        return s.o((a @ v).transpose(1, 2).reshape(B, T, -1))


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rot(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


class MoE(torch.nn.Module):
    def __init__(s, c):
        super().__init__()
        H, I, s.E, s.K = c["hidden_size"], c["intermediate_size"], c["num_experts"], c["num_experts_per_tok"]
        s.norm_topk = c.get("norm_topk_prob", False)
        s.gate = torch.nn.Linear(H, s.E, bias=False)
        s.g = torch.nn.ModuleList(torch.nn.Linear(H, I, bias=False) for _ in range(s.E))
        s.u = torch.nn.ModuleList(torch.nn.Linear(H, I, bias=False) for _ in range(s.E))
        s.d = torch.nn.ModuleList(torch.nn.Linear(I, H, bias=False) for _ in range(s.E))

    def forward(s, x):
        B, T, H = x.shape
        xf = x.reshape(-1, H)
        logits = s.gate(xf)
        p = logits.softmax(-1)
        w, idx = p.topk(s.K, -1)
        if s.norm_topk:
            w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(xf)
        mask = F.one_hot(idx, s.E).permute(2, 1, 0)  # (E, K, N)
        for e in range(s.E):
            kk, tok = torch.where(mask[e])
            if tok.numel() == 0:
                continue
            xe = xf[tok]
            ye = s.d[e](F.silu(s.g[e](xe)) * s.u[e](xe)) * w[tok, kk, None]
            out.index_add_(0, tok, ye)
        count = F.one_hot(idx, s.E).sum((0, 1)).float().detach()
        N = xf.shape[0]
        lb = s.E / (N * s.K) * (count * p.mean(0)).sum()
        z = torch.logsumexp(logits, -1).pow(2).mean()
        return out.view(B, T, H), lb, z


class Model(torch.nn.Module):
    def __init__(s, c):
        super().__init__()
        V, H, s.L, s.eps = c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["rms_norm_eps"]
        s.emb = torch.nn.Embedding(V, H)
        s.attn = torch.nn.ModuleList(Attn(c) for _ in range(s.L))
        s.moe = torch.nn.ModuleList(MoE(c) for _ in range(s.L))
        s.n1 = torch.nn.ParameterList(torch.nn.Parameter(torch.ones(H)) for _ in range(s.L))
        s.n2 = torch.nn.ParameterList(torch.nn.Parameter(torch.ones(H)) for _ in range(s.L))
        s.nf = torch.nn.Parameter(torch.ones(H))
        s.head = torch.nn.Linear(H, V, bias=False)
        for p in s.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, 0, 0.02)

    def forward(s, tok, tgt, lbw, zw):
        x = s.emb(tok)
        lbs = zs = 0.0
        for l in range(s.L):
            x = x + s.attn[l](rms(x, s.n1[l], s.eps))
            y, lb, z = s.moe[l](rms(x, s.n2[l], s.eps))
            x = x + y
            lbs = lbs + lb / s.L
            zs = zs + z
        logits = s.head(rms(x, s.nf, s.eps))
        ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt.view(-1))
        return ce + lbw * lbs + zw * zs, ce


def main():
    cfg = json.load(open(sys.argv[1]))
    data = np.fromfile(sys.argv[2], dtype=np.uint16).astype(np.int64)
    threads, steps = int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m, tr = cfg["model"], cfg["train"]
    B, T = tr["batch_size"], tr["seq_len"]
    model = Model(m)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    warm, times, loss = 2, [], None
    for s in range(steps + warm):
        chunk = torch.from_numpy(data[s * B * T:(s * B * T) + B * T + 1])
        tok, tgt = chunk[:-1].view(B, T), chunk[1:].view(B, T)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total, ce = model(tok, tgt, 0.01, 0.001)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if s >= warm:
            times.append(time.perf_counter() - t0)
        loss = ce.item()
    # the statistic bench/run takes for spesd too: the median step over the second half
    half = sorted(B * T / t for t in times[len(times) // 2:])
    blas = int(os.environ.get("OPENBLAS_NUM_THREADS", os.cpu_count() or 1))
    print(json.dumps({"threads": threads, "blas_threads": blas, "steps": steps, "tokens_per_s": half[(len(half) - 1) // 2],
                      "mean_tokens_per_s": steps * B * T / sum(times), "last_loss": loss}))


if __name__ == "__main__":
    main()
