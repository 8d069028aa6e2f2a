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


def case(rng, S, C, E, owners, lr, mu, d):
    base = rng.standard_normal(S + E * C).astype(f32)
    mom = (rng.standard_normal(S + E * C) * 0.01).astype(f32)
    contribs = []
    for node, cols in owners:
        v = np.concatenate([base[:S]] + [base[S + c * C:S + (c + 1) * C] for c in cols]).astype(f32)
        v = (v + (rng.standard_normal(v.size) * 0.03).astype(f32)).astype(f32)
        contribs.append(dict(node=node, cols=cols, val=v))
    inp, out = os.path.join(d, "in.bin"), os.path.join(d, "out.bin")
    with open(inp, "wb") as f:
        f.write(struct.pack("<4i2f", S, C, E, len(contribs), lr, mu))
        f.write(base.tobytes() + mom.tobytes())
        for c in contribs:
            f.write(struct.pack("<2i%di" % len(c["cols"]), c["node"], len(c["cols"]), *c["cols"]))
            f.write(c["val"].tobytes())
    subprocess.run([exe, "--outer", inp, out], check=True)
    got = np.fromfile(out, dtype="<f4")
    n = S + E * C
    want_p, want_m = outer(S, C, E, f32(lr), f32(mu), base, mom, contribs)
    ok = got.size == 2 * n and got[:n].tobytes() == want_p.tobytes() and got[n:].tobytes() == want_m.tobytes()
    global fails
    if not ok:
        fails += 1
    print("%s: S=%d C=%d E=%d owners=%s lr=%g mu=%g" % ("ok" if ok else "FAIL", S, C, E, owners, lr, mu))


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
