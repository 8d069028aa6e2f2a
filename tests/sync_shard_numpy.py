"""sync_shard_numpy.py: the shard plan and a shard's round (src/sync/shard.c) against numpy, bit for bit.
Usage: sync_shard_numpy.py TEST_SYNC_EXE. Written from the rules, not from the C:
  plan: K0 = min(capable, n // 262144) within 1..256 (capable <= 0 counts as 1); L = ceil(n / K0)
        rounded up to a multiple of 128; shard j is [j L, min((j + 1) L, n)), empty trailing shards
        dropped; n = 0 is one empty shard. `test_sync --plan N CAPABLE` prints K and the K + 1 offsets.
  round: `test_sync --group CODEC IN OUT` encodes every contributor's shard (a group blob of kind 1,
        u = (value - base) + e), decodes them (w = base + D), averages them (one: w exactly; else
        base + (the fp32 sum of w - base in order) / k) into A, encodes A as kind 2 (no residual) and
        decodes it. Every blob (header "SPESGRP1", u32 1, kind, codec, i64 round, i32 node, u32 shard,
        shards, u64 offset, count, u32 contributors), every new residual and the decoded new values must
        equal numpy's. q8ef: per block of 128: s = max|u| / 127 (fp32), q = clamp(rint(u / s), -127, 127)
        (0 when s is 0), the block is s then q, D = q * s; fp32 carries the values themselves."""
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

exe = sys.argv[1]
f32 = np.float32
SHARD_MIN, SHARD_MAX, B = 262144, 256, 128
fails = checks = 0


def plan(n, capable):
    k0 = max(1, min(max(capable, 1), n // SHARD_MIN, SHARD_MAX))
    if n == 0:
        return [0, 0]
    size = -(-n // k0)
    size = -(-size // B) * B
    off = [min(j * size, n) for j in range(k0 + 1)]
    k = sum(1 for j in range(k0) if j * size < n)
    return off[:k] + [n]


def q8(u):
    """q8ef bytes of u and D(u)."""
    n = u.size
    nb = -(-n // B)
    blk = np.zeros(nb * B, f32)
    blk[:n] = u
    blk = blk.reshape(nb, B)
    s = (np.max(np.abs(blk), axis=1) / f32(127)).astype(f32)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        q = np.where(s[:, None] > 0, np.clip(np.rint((blk / s[:, None]).astype(f32)), -127, 127), 0)
    q = q.astype(np.int8)
    rows = np.concatenate([s.astype("<f4").view(np.uint8).reshape(nb, 4), q.view(np.uint8)], axis=1)
    d = (q.astype(f32) * s[:, None]).astype(f32).reshape(-1)[:n]
    return rows.reshape(-1)[:4 * nb + n].tobytes(), d


def header(kind, codec, rnd, node, shard, shards, offset, count, contributors):
    return struct.pack("<8sIIIqiIIQQI", b"SPESGRP1", 1, kind, codec, rnd, node, shard, shards, offset, count,
                       contributors)


def reference(codec, rnd, agg, shard, shards, offset, nodes, base, vals, efs):
    """The blobs, residuals and decoded new values of one shard's round, as test_sync --group writes them."""
    code = {"fp32": 1, "q8ef": 3}[codec]
    n, out, ws = base.size, bytearray(), []
    for node, v, e in zip(nodes, vals, efs):
        if codec == "q8ef":
            u = ((v - base).astype(f32) + e).astype(f32)
            enc, d = q8(u)
            e = (u - d).astype(f32)
            ws.append((base + d).astype(f32))
        else:
            enc = v.astype("<f4").tobytes()
            ws.append(v)
        out += header(1, code, rnd, node, shard, shards, offset, n, 0) + enc + e.astype("<f4").tobytes()
    if len(ws) == 1:
        mean = ws[0]
    else:
        acc = np.zeros(n, f32)
        for w in ws:
            acc = (acc + (w - base).astype(f32)).astype(f32)
        mean = (base + (acc / f32(len(ws))).astype(f32)).astype(f32)
    if codec == "q8ef":
        enc, d = q8(((mean - base).astype(f32) + f32(0)).astype(f32))
        new = (base + d).astype(f32)
    else:
        enc, new = mean.astype("<f4").tobytes(), mean
    out += header(2, code, rnd, agg, shard, shards, offset, n, len(ws)) + enc + new.astype("<f4").tobytes()
    return bytes(out)


def run_round(codec, rnd, agg, shard, shards, offset, nodes, base, vals, efs):
    with tempfile.TemporaryDirectory() as d:
        inp, outp = os.path.join(d, "in"), os.path.join(d, "out")
        with open(inp, "wb") as f:
            f.write(struct.pack("<qiIIQQI", rnd, agg, shard, shards, offset, base.size, len(nodes)))
            f.write(np.asarray(nodes, "<i4").tobytes() + base.astype("<f4").tobytes())
            for v, e in zip(vals, efs):
                f.write(v.astype("<f4").tobytes() + e.astype("<f4").tobytes())
        rc = subprocess.run([exe, "--group", codec, inp, outp]).returncode
        return rc, open(outp, "rb").read() if rc == 0 else None


def check(name, ok, why=""):
    global fails, checks
    checks += 1
    if ok:
        print(f"ok   {name}")
    else:
        fails += 1
        print(f"FAIL {name}: {why}")


M = SHARD_MIN
sizes = [0, 1, 1000, 2 * M - 1, 2 * M, 2 * M + 1, 3 * M + 1, 5 * M + 127, 5 * M + 128, 7 * M + 5, 64 * M + 1,
         255 * M + 99999, 256 * M, 300 * M + 77, 1000 * M + 1]
for n in sizes:
    for capable in (-1, 0, 1, 2, 3, 7, 64, 255, 256, 300):
        got = subprocess.run([exe, "--plan", str(n), str(capable)], capture_output=True,
                             text=True).stdout.split()
        want = plan(n, capable)
        got_off = [int(x) for x in got[1:]]
        check(f"plan n={n} capable={capable}", got and int(got[0]) == len(want) - 1 and got_off == want,
              f"got {got[:4]}... want K={len(want) - 1} {want[:3]}...")

rng = np.random.default_rng(5)


def round_case(name, codec, base, vals, efs, nodes, shard=1, shards=3, offset=262272, agg=4, rnd=11):
    rc, got = run_round(codec, rnd, agg, shard, shards, offset, nodes, base, vals, efs)
    if rc:
        check(name, False, f"exit {rc}")
        return
    want = reference(codec, rnd, agg, shard, shards, offset, nodes, base, vals, efs)
    first = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), None)
    check(name, got == want, f"{len(got)} bytes against {len(want)}, first difference at {first}")


for codec in ("q8ef", "fp32"):
    for n in (1, 127, 300, 1000):
        for k in (1, 2, 3, 5):
            for scale in (1e-5, 0.01, 3.0):
                base = (rng.standard_normal(n) * 0.1).astype(f32)
                vals = [(base + rng.standard_normal(n).astype(f32) * f32(scale)).astype(f32)
                        for _ in range(k)]
                efs = [(rng.standard_normal(n) * scale * 0.01).astype(f32) for _ in range(k)]
                nodes = sorted(rng.choice(50, k, replace=False).tolist())
                round_case(f"{codec} n={n} k={k} scale={scale}", codec, base, vals, efs, nodes)
# zero blocks, a value far beyond the rest, halfway cases for rint
n = 640
base = np.full(n, 0.25, f32)
vals = [base.copy() for _ in range(3)]
vals[0][300] = 40.0
vals[1][::7] = (base[::7] + np.round(rng.standard_normal(92) * 4) / 8).astype(f32)
round_case("q8ef zero blocks and outliers", "q8ef", base, vals, [np.zeros(n, f32)] * 3, [1, 2, 9])
# a shared block of 2 x 256 Ki + 1000 among 3 capable nodes: the plan's shards, each through a round
n = 2 * M + 1000
got = subprocess.run([exe, "--plan", str(n), "3"], capture_output=True, text=True).stdout.split()
off = [int(x) for x in got[1:]]
check("plan of the block", off == plan(n, 3), f"got {off}")
base = (rng.standard_normal(n) * 0.05).astype(f32)
vals = [(base + rng.standard_normal(n).astype(f32) * f32(0.002)).astype(f32) for _ in range(3)]
efs = [(rng.standard_normal(n) * 1e-5).astype(f32) for _ in range(3)]
for j in range(len(off) - 1):
    s = slice(off[j], off[j + 1])
    round_case(f"q8ef shard {j} of the block", "q8ef", base[s], [v[s] for v in vals], [e[s] for e in efs],
               [0, 3, 6], shard=j, shards=len(off) - 1, offset=off[j], agg=3 + j)

print(f"{checks - fails} of {checks} checks equal numpy bit for bit")
sys.exit(1 if fails else 0)
