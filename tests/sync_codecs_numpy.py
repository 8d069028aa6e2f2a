"""sync_codecs_numpy.py: the q8ef and topk codecs of src/sync/sync.c against numpy, bit for bit.
Usage: sync_codecs_numpy.py TEST_SYNC_EXE. Random deltas u and residuals e (several scales, a block of
zeros, a partial last block, values at +-max, tiny values whose scale underflows, ties) go to
`test_sync --q8|--topk IN OUT`; the encoded group and the new residual must equal numpy's, written
from docs/design.md ("Codecs"). v = u + e, then
  q8ef: per block of 128: s = max|v| / 127 (fp32), q = clamp(rint(v / s), -127, 127) as int8 (0 when
        s is 0); the block is s (f32 LE) then q; the residual is v - q * s (fp32).
  topk: per chunk of 4096: the k = min(64, len) largest |v| (ties: lower index); sorted by value
        (ties: index), rank groups [k c / 4, k (c + 1) / 4) with fp32 means (sequential sums) as the
        4 levels; the chunk is the levels, the kept indices ascending as 12-bit fields, their 2-bit
        codes (LSB first); the residual is v - level at kept values, v elsewhere.
A non-finite value must be refused (exit 3)."""
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

exe = sys.argv[1]
f32 = np.float32
B = 128
fails = 0


def reference(u, e):
    v = (u + e).astype(f32)
    out, res = bytearray(), np.empty_like(v)
    for at in range(0, v.size, B):
        blk = v[at:at + B]
        s = f32(np.max(np.abs(blk)) / f32(127))
        if s > 0:
            with np.errstate(over="ignore", divide="ignore"):
                q = np.clip(np.rint((blk / s).astype(f32)), -127, 127).astype(np.int8)
        else:
            q = np.zeros(blk.size, np.int8)
        out += struct.pack("<f", s) + q.tobytes()
        res[at:at + B] = (blk - (q.astype(f32) * s).astype(f32)).astype(f32)
    return bytes(out), res


def pack(fields, width):
    bits = 0
    for i, f in enumerate(fields):
        bits |= int(f) << (i * width)
    return bits.to_bytes((len(fields) * width + 7) // 8, "little")


def reference_topk(u, e):
    v = (u + e).astype(f32)
    out, res = bytearray(), v.copy()
    for at in range(0, v.size, 4096):
        ch = v[at:at + 4096]
        k = min(64, ch.size)
        order = sorted(range(ch.size), key=lambda i: (-abs(float(ch[i])), i))[:k]
        idx = sorted(order)
        byval = sorted(order, key=lambda i: (float(ch[i]), i))
        level, code = [f32(0)] * 4, {}
        for c in range(4):
            lo, hi = k * c // 4, k * (c + 1) // 4
            acc = f32(0)
            for r in range(lo, hi):
                acc = f32(acc + ch[byval[r]])
                code[byval[r]] = c
            level[c] = f32(acc / f32(hi - lo)) if hi > lo else f32(0)
        out += struct.pack("<4f", *level) + pack(idx, 12) + pack([code[i] for i in idx], 2)
        for i in idx:
            res[at + i] = f32(ch[i] - level[code[i]])
    return bytes(out), res


def run(u, e, flag="--q8"):
    with tempfile.TemporaryDirectory() as d:
        inp, outp = os.path.join(d, "in"), os.path.join(d, "out")
        with open(inp, "wb") as f:
            f.write(struct.pack("<Q", u.size) + u.astype("<f4").tobytes() + e.astype("<f4").tobytes())
        rc = subprocess.run([exe, flag, inp, outp]).returncode
        if rc:
            return rc, None, None
        b = open(outp, "rb").read()
        n = u.size
        enc = b[:len(b) - 4 * n]
        return 0, enc, np.frombuffer(b[len(b) - 4 * n:], dtype="<f4")


rng = np.random.default_rng(11)
cases = []
for n in (1, 127, 128, 129, 1000, 4096 + 77):
    for scale in (1e-6, 1e-3, 1.0, 300.0):
        u = (rng.standard_normal(n) * scale).astype(f32)
        e = (rng.standard_normal(n) * scale * 0.01).astype(f32)
        cases.append((f"n={n} scale={scale}", u, e))
u = (rng.standard_normal(512) * 0.01).astype(f32)
u[128:256] = 0
cases.append(("a block of zeros", u, np.zeros_like(u)))
u = np.full(300, -2.5, f32)
u[7] = 2.5
cases.append(("+-max and ties", u, np.zeros_like(u)))
u = np.full(200, 1e-43, f32)  # subnormal: max / 127 underflows to 0 in part of the block
cases.append(("subnormal", u, np.zeros_like(u)))
u = (rng.standard_normal(256) * 0.5).astype(f32)
u[5::17] = np.round(u[5::17] * 4) / 4  # halfway cases for rint
cases.append(("halfway", u, np.zeros_like(u)))

u = (rng.standard_normal(9000) * 0.1).astype(f32)
u[100:300] = 0.75  # ties among the largest
cases.append(("topk ties and two chunks", u, (rng.standard_normal(9000) * 0.001).astype(f32)))
runs = [(name, u, e, flag, ref) for name, u, e in cases
        for flag, ref in (("--q8", reference), ("--topk", reference_topk))]
for name, u, e, flag, ref in runs:
    name = "%s %s" % (flag[2:], name)
    rc, enc, res = run(u, e, flag)
    want_enc, want_res = ref(u, e)
    if rc != 0:
        print(f"FAIL {name}: exit {rc}")
        fails += 1
    elif enc != want_enc:
        diff = next(i for i in range(min(len(enc), len(want_enc))) if enc[i] != want_enc[i]) \
            if len(enc) == len(want_enc) else "length"
        print(f"FAIL {name}: encoded bytes differ (first at {diff})")
        fails += 1
    elif res.tobytes() != want_res.astype("<f4").tobytes():
        print(f"FAIL {name}: residual differs at {int(np.argmax(res != want_res))}")
        fails += 1
    else:
        print(f"ok   {name}")

for flag in ("--q8", "--topk"):
    for bad in (np.nan, np.inf, -np.inf):
        u = np.ones(300, f32)
        u[200] = bad
        rc, _, _ = run(u, np.zeros_like(u), flag)
        if rc != 3:
            print(f"FAIL {flag[2:]} {bad}: not refused (exit {rc})")
            fails += 1
        else:
            print(f"ok   {flag[2:]} {bad} refused")

print(f"{len(runs) + 6 - fails} of {len(runs) + 6} cases equal numpy bit for bit")
sys.exit(1 if fails else 0)
