"""xcheck_grads.py: the C model's losses, logits and every gradient vs the PyTorch reference.

Runs tests/xcheck/xcheck_dump (built from model.h only) on tiny configurations, loads its
dumped parameters into olmoe_ref (float64, see there why), recomputes, and compares with a
norm-relative metric max|c - ref| / max(max|ref|, 1e-6) per tensor (llm.c's test prints the
same). Also checks the tensor table (names, shapes, order, offsets) against model.h's documented
layout, that frozen columns have no gradients, and the init statistics. It never modifies
anything outside its temporary directory. Exit status 0 iff every check holds.

usage: xcheck_grads.py --driver build/tests/xcheck_dump [--tol 1e-4] [--keep DIR] [--only NAME]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import olmoe_ref as R  # noqa: E402

TINY = dict(V=64, H=32, I=48, L=2, NH=4, NKV=2, E=4, K=2, B=2, T=16)
# name, dims overrides, extra driver flags, columns, accumulate
VARIANTS = [
    ("all", {}, [], None, 1),
    ("cols02", {}, [], [0, 2], 1),
    ("norm_topk", {"norm-topk": 1}, [], None, 1),
    ("tied", {"tie": 1}, [], None, 1),
    ("threads2", {}, ["--threads", "2"], [1, 3], 1),
    ("accumulate2", {}, [], None, 2),
    ("odd_shapes", dict(V=50, H=24, I=20, L=1, NH=3, NKV=1, E=5, K=3, B=3, T=7, eps=1e-6, theta=500.0),
     [], [4], 1),
    ("mha_k1", dict(NKV=4, K=1, L=3, **{"norm-topk": 1}), [], None, 1),
    ("below_capacity", dict(B=2, T=11), ["--cap-B", "3", "--cap-T", "16"], [2], 1),
    ("medium", dict(V=256, H=128, I=96, L=2, NH=8, NKV=4, E=8, K=2, B=2, T=64), ["--threads", "2"],
     [0, 3, 5, 6], 1),
    # weights edited after init: sharp routing, large activations, norm weights != 1
    ("perturbed", {}, ["--scale-matrices", "5", "--perturb-norms", "0.3"], None, 1),
    ("perturbed_cols", {"tie": 1, "norm-topk": 1}, ["--scale-matrices", "10", "--perturb-norms", "0.5"], [0, 3], 1),
]
LOSS_W = dict(lb=0.1, z=0.01, factor=0.7)  # large enough that the aux-loss gradients matter
FAILS = []


def check(ok, what):
    if not ok:
        FAILS.append(what)
    print("%s %s" % ("ok  " if ok else "FAIL", what))
    return ok


def model_cfg(d):
    return R.Cfg(dict(vocab_size=d["V"], hidden_size=d["H"], intermediate_size=d["I"], num_hidden_layers=d["L"],
                      num_attention_heads=d["NH"], num_key_value_heads=d["NKV"], num_experts=d["E"],
                      num_experts_per_tok=d["K"], rms_norm_eps=d.get("eps", 1e-5),
                      rope_theta=d.get("theta", 10000.0), norm_topk_prob=bool(d.get("norm-topk", 0)),
                      tie_word_embeddings=bool(d.get("tie", 0))))


def run_driver(driver, out, d, extra, columns, accumulate, seed, tokfile):
    cmd = [driver, "--out", out, "--seed", str(seed), "--tokens", tokfile, "--accumulate", str(accumulate),
           "--lb-weight", repr(LOSS_W["lb"]), "--z-weight", repr(LOSS_W["z"]), "--lb-factor", repr(LOSS_W["factor"])]
    for k, v in d.items():
        cmd += ["--" + k, repr(v) if isinstance(v, float) else str(v)]
    if columns is not None:
        cmd += ["--columns", ",".join(map(str, columns))]
    cmd += extra
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), r.returncode, r.stderr.strip()))
    with open(os.path.join(out, "result.json")) as f:
        return json.load(f)


def check_layout(tag, cfg, res, trained):
    want = R.layout(cfg)
    got = res["tensors"]
    names_ok = [t["name"] for t in got] == [w[0] for w in want]
    check(names_ok, "%s: tensor table names and order match model.h (%d tensors)" % (tag, len(want)))
    if not names_ok:
        return
    off, bad = 0, []
    for t, (name, shape, col, layer) in zip(got, want):
        if (tuple(t["shape"]) != shape or t["offset"] != off or t["numel"] != int(np.prod(shape))
                or t["column"] != col or t["layer"] != layer or t["ndim"] != len(shape)):
            bad.append(name)
        off += int(np.prod(shape))
    check(not bad, "%s: shapes, offsets, column and layer fields%s" % (tag, (" wrong for " + ", ".join(bad[:5])) if bad else ""))
    shared = sum(int(np.prod(s)) for _, s, c, _ in want if c < 0)
    colsz = sum(int(np.prod(s)) for _, s, c, _ in want if c == 0)
    nt = sum(trained)
    check((res["shared_numel"], res["column_numel"], res["total_numel"], res["ntrained"], res["grads_numel"]) ==
          (shared, colsz, shared + cfg.E * colsz, nt, shared + nt * colsz),
          "%s: shared/column/total/grads numel %d/%d/%d/%d (ntrained %d)" %
          (tag, res["shared_numel"], res["column_numel"], res["total_numel"], res["grads_numel"], res["ntrained"]))
    has = [t["has_grad"] for t in got]
    exp = [c < 0 or trained[c] for _, _, c, _ in want]
    check(has == exp, "%s: gradients exist exactly for shared tensors and trained columns" % tag)
    check(res["grad_column"] == [1 if t else 0 for t in trained],
          "%s: spes_model_grad_column: %s (1 trained block at its first tensor, 0 NULL)" % (tag, res["grad_column"]))


def check_init(tag, params):
    bad = []
    for name, a in params.items():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            if not (a == 1.0).all():
                bad.append(name + " (norm weight not all 1)")
        elif a.size >= 1000 and not (abs(a.mean()) < 0.004 and abs(a.std() - 0.02) < 0.002):
            bad.append("%s (mean %.4g std %.4g)" % (name, a.mean(), a.std()))
    check(not bad, "%s: init: norm weights 1, matrices mean 0 std 0.02%s" % (tag, ("; " + "; ".join(bad)) if bad else ""))


def check_repeatable(args, tmp, name, over, extra, columns, accumulate, seed=1337):
    """The same run twice (same thread count) must give bit-identical losses, logits and gradients."""
    d = dict(TINY)
    d.update(over)
    cfg = model_cfg(d)
    tokfile = os.path.join(tmp, name + ".tok")
    outs = [os.path.join(tmp, name + ".rep%d" % i) for i in range(2)]
    res = [run_driver(args.driver, o, d, extra, columns, accumulate, seed, tokfile) for o in outs]
    g = [R.load_dir_npy(o, cfg, "grads") for o in outs]
    lg = [np.load(os.path.join(o, "logits.npy")) for o in outs]
    same = (res[0] == res[1] and np.array_equal(lg[0], lg[1]) and sorted(g[0]) == sorted(g[1])
            and all(np.array_equal(g[0][n], g[1][n]) for n in g[0]))
    check(same, "%s: two runs give bit-identical losses, logits and gradients" % name)


def compare_variant(args, tmp, name, over, extra, columns, accumulate, seed=1337):
    d = dict(TINY)
    d.update(over)
    cfg = model_cfg(d)
    trained = [True] * cfg.E if columns is None else [e in columns for e in range(cfg.E)]
    out = os.path.join(tmp, name)
    g = np.random.default_rng(seed + 7)
    toks = g.integers(0, cfg.V, d["B"] * d["T"] + 1).astype("<i4")
    tokfile = os.path.join(tmp, name + ".tok")
    toks.tofile(tokfile)
    print("== %s: %s columns=%s accumulate=%d %s" % (name, d, columns, accumulate, " ".join(extra)))
    res = run_driver(args.driver, out, {k: v for k, v in d.items()}, extra, columns, accumulate, seed, tokfile)
    check_layout(name, cfg, res, trained)
    params = R.load_dir_npy(out, cfg, "params")
    grads = R.load_dir_npy(out, cfg, "grads")
    if "--scale-matrices" not in extra:
        check_init(name, params)
    P = R.make_params(params, cfg, torch.float64, trained)
    x = torch.tensor(toks[:-1].astype(np.int64)).view(d["B"], d["T"])
    y = torch.tensor(toks[1:].astype(np.int64)).view(d["B"], d["T"])
    stats = {}
    ref = R.forward(P, cfg, x, y, LOSS_W["lb"], LOSS_W["z"], LOSS_W["factor"], trained, stats)
    ref["logits"].retain_grad()
    ref["loss"].backward()
    gap = min(stats["min_topk_gap"])
    print("   smallest gap between the k-th and (k+1)-th router probability: %.3g%s" %
          (gap, "  (routing ties within fp32 noise: a mismatch may be legitimate)" if gap < 1e-5 else ""))
    worst = 0.0
    for k in ("loss", "ce_loss", "lb_loss", "z_loss"):
        r = ref[k].item()
        rel = abs(res[k] - r) / max(abs(r), 1e-6)
        worst = max(worst, rel)
        check(rel < args.tol, "%s: %-7s C %.8f ref %.8f rel %.2e" % (name, k, res[k], r, rel))
    if accumulate > 1:
        check(res["first_loss"] == [res["loss"], res["ce_loss"], res["lb_loss"], res["z_loss"]],
              "%s: a repeated forward gives bit-identical losses" % name)
    lg = np.load(os.path.join(out, "logits.npy"))
    rel = R.max_rel(lg, ref["logits"].detach().numpy())
    check(rel < args.tol, "%s: logits max rel %.2e" % (name, rel))
    dl = np.load(os.path.join(out, "dlogits.npy"))
    rel = R.max_rel(dl, ref["logits"].grad.numpy())
    # model.h says backward turns the logits into dloss/dlogits in place; only "logits are valid until
    # backward" is a contract callers need, so this is reported, not failed.
    print("%s %s: after backward the logits buffer holds dloss/dlogits (max rel %.2e)" %
          ("ok  " if rel < args.tol else "note", name, rel))
    bad = []
    print("   %-52s %10s %10s %10s" % ("gradient", "max|diff|", "max|ref|", "rel"))
    for tname, t in P.items():
        if not t.requires_grad:
            if tname in grads or t.grad is not None:
                bad.append(tname + " (frozen but has a gradient)")
            continue
        rg = t.grad.numpy() * accumulate
        if tname not in grads:
            bad.append(tname + " (no C gradient)")
            continue
        diff = float(np.abs(grads[tname] - rg).max())
        rel = R.max_rel(grads[tname], rg)
        worst = max(worst, rel)
        flag = "" if rel < args.tol else "  <-- MISMATCH"
        print("   %-52s %10.3e %10.3e %10.3e%s" % (tname, diff, np.abs(rg).max(), rel, flag))
        if rel >= args.tol:
            bad.append("%s (rel %.2e)" % (tname, rel))
    more = " (and %d more)" % (len(bad) - 6) if len(bad) > 6 else ""
    check(not bad, "%s: every gradient within %.0e%s" % (name, args.tol, ("; " + "; ".join(bad[:6]) + more) if bad else ""))
    print("   %s: worst relative difference %.2e" % (name, worst))
    return params


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--keep", help="keep the dumps in this directory")
    ap.add_argument("--only", help="run only this variant")
    args = ap.parse_args()
    if not os.access(args.driver, os.X_OK):
        print("xcheck_grads: driver %s is missing; build the xcheck_dump target" % args.driver)
        return 2
    tmp = args.keep or tempfile.mkdtemp(prefix="xcheck_grads.")
    os.makedirs(tmp, exist_ok=True)
    try:
        init = {}
        for name, over, extra, columns, acc in VARIANTS:
            if args.only and name != args.only:
                continue
            try:
                init[name] = compare_variant(args, tmp, name, over, extra, columns, acc)
            except Exception as e:  # a crashed driver is a failure of this variant, the others still run
                check(False, "%s: %s" % (name, e))
        for name, over, extra, columns, acc in VARIANTS:
            if name == "threads2" and name in init:
                try:
                    check_repeatable(args, tmp, name, over, extra, columns, acc)
                except Exception as e:
                    check(False, "%s repeat: %s" % (name, e))
        if "all" in init and "cols02" in init:
            same = all(np.array_equal(init["all"][n], init["cols02"][n]) for n in init["all"])
            check(same, "init weights do not depend on which columns are trained")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print("xcheck_grads: %s (%d failures)" % ("FAIL" if FAILS else "PASS", len(FAILS)))
    for f in FAILS:
        print("  FAILED: " + f)
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
