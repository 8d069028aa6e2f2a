"""sync_outer_numpy.py: the outer optimizer of src/sync/outer.c against numpy, bit for bit.
Usage: sync_outer_numpy.py TEST_SYNC_EXE. Random states and contributions (several owners per
column, a column nobody owns, one contributor, none) go to `test_sync --outer IN OUT`; S_{r+1} and
the momentum it writes must equal numpy's recomputation in float32 exactly:
  d = mean delta (one contributor: v - S; several: fp32 sum of (v - S) in node order, / k)
  mu = 0: S + lr * d;  else m = mu * m + d, S + lr * (d + mu * m); uncovered segments unchanged."""
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

exe = sys.argv[1]
f32 = np.float32
fails = 0


def mean_delta(base, vals):
    if len(vals) == 1:
        return (vals[0] - base).astype(f32)
    acc = np.zeros_like(base)
    for v in vals:
        acc = (acc + (v - base)).astype(f32)
    return (acc / f32(len(vals))).astype(f32)


def outer(S, C, E, lr, mu, base, mom, contribs):
    p, m = base.copy(), mom.copy()
    segs = [(slice(0, S), [c["val"][:S] for c in contribs])]
    for e in range(E):
        vs = [c["val"][S + j * C:S + (j + 1) * C] for c in contribs for j, col in enumerate(c["cols"]) if col == e]
        segs.append((slice(S + e * C, S + (e + 1) * C), vs))
    for sl, vs in segs:
        if not vs:
            continue
        if lr == 1 and mu == 0 and len(vs) == 1:
            p[sl] = vs[0]  # plain averaging: a single contributor's values exactly
            continue
        d = mean_delta(base[sl], vs)
        if mu == 0:
            p[sl] = base[sl] + f32(lr) * d
        else:
            m[sl] = f32(mu) * m[sl] + d
            p[sl] = base[sl] + f32(lr) * (d + f32(mu) * m[sl])
    return p, m


def write_case(rng, S, C, E, owners, lr, mu, d, attacker=None):
    """A random S_r, outer momentum and contributions (the attacker's noise 1000 times larger),
    written to d/in.bin in test_sync's --outer/--robust input format.
    Returns (base, mom, contribs, input path, output path)."""
    base = rng.standard_normal(S + E * C).astype(f32)
    mom = (rng.standard_normal(S + E * C) * 0.01).astype(f32)
    contribs = []
    for node, cols in owners:
        v = np.concatenate([base[:S]] + [base[S + c * C:S + (c + 1) * C] for c in cols]).astype(f32)
        scale = 1000.0 if node == attacker else 1.0
        v = (v + (rng.standard_normal(v.size) * 0.03 * scale).astype(f32)).astype(f32)
        contribs.append(dict(node=node, cols=cols, val=v))
    inp, out = os.path.join(d, "in.bin"), os.path.join(d, "out.bin")
    with open(inp, "wb") as f:
        f.write(struct.pack("<4i2f", S, C, E, len(contribs), lr, mu))
        f.write(base.tobytes() + mom.tobytes())
        for c in contribs:
            f.write(struct.pack("<2i%di" % len(c["cols"]), c["node"], len(c["cols"]), *c["cols"]))
            f.write(c["val"].tobytes())
    return base, mom, contribs, inp, out


def same_output(out, n, want_p, want_m):
    """Whether test_sync's output (params then momentum, n floats each) equals numpy's bit for bit."""
    got = np.fromfile(out, dtype="<f4")
    ok = got.size == 2 * n and got[:n].tobytes() == want_p.tobytes() and got[n:].tobytes() == want_m.tobytes()
    if not ok and got.size == 2 * n:
        print("  differing values: %d" % int(np.sum(got[:n].view(np.uint32) != want_p.view(np.uint32))))
    return ok


def case(rng, S, C, E, owners, lr, mu, d):
    base, mom, contribs, inp, out = write_case(rng, S, C, E, owners, lr, mu, d)
    subprocess.run([exe, "--outer", inp, out], check=True)
    want_p, want_m = outer(S, C, E, f32(lr), f32(mu), base, mom, contribs)
    ok = same_output(out, S + E * C, want_p, want_m)
    global fails
    if not ok:
        fails += 1
    print("%s: S=%d C=%d E=%d owners=%s lr=%g mu=%g" % ("ok" if ok else "FAIL", S, C, E, owners, lr, mu))


if __name__ == "__main__":
    rng = np.random.default_rng(19)
    with tempfile.TemporaryDirectory(prefix="spes-outer-numpy-") as d:
        four = [(0, [0, 4]), (1, [1, 5]), (2, [2, 6]), (3, [3, 7])]
        case(rng, 1000, 300, 8, four, 0.7, 0.9, d)
        case(rng, 1000, 300, 8, four, 0.5, 0.0, d)
        case(rng, 1000, 300, 8, four, 1.0, 0.9, d)
        case(rng, 777, 129, 3, [(0, [0, 1]), (2, [1]), (7, [0, 1])], 0.8, 0.6, d)  # shared owners, column 2 orphaned
        case(rng, 500, 64, 4, [(3, [0, 1, 2, 3])], 0.7, 0.9, d)  # one contributor
        case(rng, 500, 64, 4, [], 0.7, 0.9, d)  # nobody: nothing moves
        case(rng, 500, 64, 4, [(0, [0, 2]), (1, [1, 2])], 1.0, 0.0, d)  # plain averaging
    sys.exit(1 if fails else 0)
