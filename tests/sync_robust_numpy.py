"""sync_robust_numpy.py: the robust aggregation of src/sync/robust.c against numpy, bit for bit.
Usage: sync_robust_numpy.py TEST_SYNC_EXE. Random states and contributions (several owners per
column, one attacker whose deltas are scaled, a column nobody owns) go to
`test_sync --robust MODE PARAM IN OUT` (the file format of sync_outer_numpy.py); S_{r+1} and the
momentum it writes must equal numpy's recomputation in float32 exactly:
  trimmed_mean: per coordinate, t = floor(trim * k); the deltas (v - S, fp32) sorted ascending,
    the t smallest and t largest dropped, the rest summed in fp32 in ascending order, / (k - 2t);
  clipped_mean: norms |v - S| (fp32 differences, squares summed in fp64 in index order), tau = clip x
    the median norm of the group (shared block: over the contributions; columns: over every carried
    column); a delta with norm > tau times float32(tau / norm); fp32 sum in node order, / k;
  a segment where nothing is dropped or scaled: the mean of sync_outer_numpy.py; then the outer step."""
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sync_outer_numpy import mean_delta, same_output, write_case  # noqa: E402

exe = sys.argv[1]
f32, f64 = np.float32, np.float64
fails = 0


def norm(v, base):
    d = (v - base).astype(f32).astype(f64)
    return math.sqrt(np.cumsum(d * d)[-1]) if d.size else 0.0


def median(x):
    x = sorted(x)
    n = len(x)
    if n == 0:
        return 0.0
    return x[n // 2] if n % 2 else (x[n // 2 - 1] + x[n // 2]) / 2


def robust_delta(mode, param, base, vs, tau):
    """the segment's robust delta, or None where it equals the mean"""
    k = len(vs)
    if mode == "trimmed_mean":
        t = int(math.floor(param * k))
        if t <= 0 or 2 * t >= k:
            return None
        d = np.sort(np.stack([(v - base).astype(f32) for v in vs]), axis=0)
        acc = np.zeros_like(base)
        for j in range(t, k - t):
            acc = (acc + d[j]).astype(f32)
        return (acc / f32(k - 2 * t)).astype(f32)
    norms = [norm(v, base) for v in vs]
    if not any(n > tau for n in norms):
        return None
    acc = np.zeros_like(base)
    for v, n in zip(vs, norms):
        s = f32(tau / n) if n > tau else f32(1.0)
        acc = (acc + ((v - base).astype(f32) * s).astype(f32)).astype(f32)
    return (acc / f32(k)).astype(f32)


def aggregate(mode, param, S, C, E, lr, mu, base, mom, contribs):
    p, m = base.copy(), mom.copy()
    segs = [(slice(0, S), [c["val"][:S] for c in contribs])]
    for e in range(E):
        vs = [c["val"][S + j * C:S + (j + 1) * C] for c in contribs for j, col in enumerate(c["cols"]) if col == e]
        segs.append((slice(S + e * C, S + (e + 1) * C), vs))
    tau_shared = param * median([norm(c["val"][:S], base[:S]) for c in contribs])
    tau_col = param * median([norm(c["val"][S + j * C:S + (j + 1) * C], base[S + col * C:S + (col + 1) * C])
                              for c in contribs for j, col in enumerate(c["cols"])])
    for sl, vs in segs:
        if not vs:
            continue
        d = robust_delta(mode, param, base[sl], vs, tau_shared if sl.start == 0 else tau_col)
        if d is None:
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


def case(rng, mode, param, S, C, E, owners, lr, mu, d, attacker=None):
    base, mom, contribs, inp, out = write_case(rng, S, C, E, owners, lr, mu, d, attacker)
    subprocess.run([exe, "--robust", mode, repr(param), inp, out], check=True)
    want_p, want_m = aggregate(mode, param, S, C, E, f32(lr), f32(mu), base, mom, contribs)
    ok = same_output(out, S + E * C, want_p, want_m)
    global fails
    if not ok:
        fails += 1
    print("%s: %s %g S=%d C=%d E=%d owners=%s lr=%g mu=%g attacker=%s" %
          ("ok" if ok else "FAIL", mode, param, S, C, E, owners, lr, mu, attacker))


rng = np.random.default_rng(23)
with tempfile.TemporaryDirectory(prefix="spes-robust-numpy-") as d:
    four = [(0, [0, 4]), (1, [1, 5]), (2, [2, 6]), (3, [3, 7])]
    shared = [(0, [0, 1]), (2, [1, 2]), (5, [0, 2]), (7, [0, 1, 2]), (9, [1])]  # several owners per column
    for mode, param in (("trimmed_mean", 0.25), ("trimmed_mean", 0.34), ("trimmed_mean", 0.45),
                        ("clipped_mean", 2.0), ("clipped_mean", 1.0), ("clipped_mean", 0.5)):
        case(rng, mode, param, 1000, 300, 8, four, 1.0, 0.0, d, attacker=2)
        case(rng, mode, param, 777, 129, 4, shared, 1.0, 0.0, d, attacker=5)  # column 3 orphaned
        case(rng, mode, param, 777, 129, 4, shared, 0.7, 0.9, d, attacker=7)  # through the outer step
        case(rng, mode, param, 500, 64, 3, [(0, [0]), (1, [1]), (2, [2])], 1.0, 0.0, d)  # honest
        case(rng, mode, param, 500, 64, 4, [(3, [0, 1, 2, 3])], 1.0, 0.0, d)  # one contributor
        case(rng, mode, param, 500, 64, 4, [], 0.7, 0.9, d)  # nobody: nothing moves
sys.exit(1 if fails else 0)
