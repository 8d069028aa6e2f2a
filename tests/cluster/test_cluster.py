#!/usr/bin/python3
"""tests/cluster/test_cluster.py: SPES runs of real spesd daemons on loopback.

Each scenario starts daemons over mutual TLS with fresh ports and proves an
outcome of docs/design.md's "What a run computes" from what the daemons wrote: digests
in their logs, status from spesctl, and the state and contribution blobs in
their stores, recomputed here independently with numpy.
usage: test_cluster.py BUILD_DIR [SCENARIO...]
"""
import itertools
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster as cluster_mod  # noqa: E402
from cluster import Cluster, read_contribution, read_group, read_state_blob, read_state_blob2  # noqa: E402

BUILD = sys.argv[1]
ONLY = sys.argv[2:]
failures, passed = [], 0


def check(ok, what):
    global passed
    if ok:
        passed += 1
        print("ok   " + what, flush=True)
    else:
        failures.append(what)
        print("FAIL " + what, flush=True)


def run_config(sync=5, merge_alpha=0.0, merge_interval=10, seed=5, E=4):
    return {"model": {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts": E,
                      "num_experts_per_tok": 2},
            "train": {"seq_len": 32, "batch_size": 4, "lr": 0.01, "warmup_steps": 2, "max_steps": 400,
                      "seed": seed},
            "spes": {"sync_interval": sync, "merge_interval": merge_interval, "merge_alpha": merge_alpha,
                     "merge_decay_steps": 200, "merge_topk": 1}}


def tokens(n=60000):
    text = ("SPES trains one mixture of experts together. Every node trains its own experts; "
            "the shared weights are averaged. ").encode()
    return np.frombuffer((text * (n // len(text) + 1))[:n], dtype=np.uint8)


def layout_sizes(cfg):
    m = cfg["model"]
    V, H, I, L, E = m["vocab_size"], m["hidden_size"], m["intermediate_size"], m["num_hidden_layers"], m["num_experts"]
    D = H // m["num_attention_heads"]
    NH, NKV = m["num_attention_heads"], m["num_key_value_heads"]
    per_layer = H + NH * D * H + 2 * NKV * D * H + H * NH * D + NH * D + NKV * D + H + E * H
    shared = V * H + L * per_layer + H + (0 if m.get("tie_word_embeddings") else V * H)
    return shared, L * 3 * I * H, I * H


def reference_round(cfg, S, contribs, step_end, M=None):
    """S_{r+1} from S_r and the round's contributions, written from docs/design.md; with the outer
    optimizer (spes.outer_lr, spes.outer_momentum, docs/convergence.md) M is the momentum of S_r,
    updated in place: d = mean delta, m = mu m + d, S_r + lr (d + mu m), columns nobody trained kept."""
    shared, column, per = layout_sizes(cfg)
    E, L = cfg["model"]["num_experts"], cfg["model"]["num_hidden_layers"]
    new = S.copy()
    contribs = sorted(contribs, key=lambda c: c["node"])
    lr = np.float32(cfg["spes"].get("outer_lr", 1.0))
    mu = np.float32(cfg["spes"].get("outer_momentum", 0.0))
    plain = lr == 1 and mu == 0

    def values(c, lo, hi, base):
        v = c["vals"][lo:hi]
        return v if c["codec"] == 1 else (base + v).astype(np.float32)

    def agg(dst, base, parts, lo=0):
        if plain and len(parts) == 1:
            dst[:] = parts[0]
            return
        acc = np.zeros_like(base)
        for p in parts:
            acc += (p - base).astype(np.float32)
        if plain:
            dst[:] = base + acc / np.float32(len(parts))
            return
        d = (parts[0] - base).astype(np.float32) if len(parts) == 1 else acc / np.float32(len(parts))
        if mu == 0:
            dst[:] = base + lr * d
            return
        m = M[lo:lo + d.size]
        m[:] = mu * m + d
        dst[:] = base + lr * (d + mu * m)

    if contribs:
        agg(new[:shared], S[:shared], [values(c, 0, shared, S[:shared]) for c in contribs])
    for e in range(E):
        lo = shared + e * column
        parts = []
        for c in contribs:
            if e in c["cols"]:
                j = c["cols"].index(e)
                parts.append(values(c, shared + j * column, shared + (j + 1) * column, S[lo:lo + column]))
        if parts:
            agg(new[lo:lo + column], S[lo:lo + column], parts, lo)
    return merge_warmup(cfg, new, step_end)


def merge_warmup(cfg, new, step_end):
    """The merge warm-up of docs/design.md on S_{r+1} (in place) at the round ending at step_end."""
    shared, column, per = layout_sizes(cfg)
    E, L = cfg["model"]["num_experts"], cfg["model"]["num_hidden_layers"]
    sp = cfg["spes"]
    alpha = 0.0
    if step_end > 0 and step_end % sp["merge_interval"] == 0:
        decay = sp["merge_decay_steps"] or cfg["train"]["max_steps"]  # 0: over the whole run
        alpha = max(0.0, sp["merge_alpha"] * (1 - step_end / decay))
    if alpha > 0:
        for l in range(L):
            old = np.stack([new[shared + e * column + l * 3 * per: shared + e * column + (l + 1) * 3 * per]
                            for e in range(E)]).astype(np.float64)
            g = old[:, :per]
            nrm = np.linalg.norm(g, axis=1)
            sim = (g @ g.T) / np.outer(nrm, nrm)
            for i in range(E):
                order = [j for j in np.argsort(-sim[i], kind="stable") if j != i][:sp["merge_topk"]]
                delta = sum(old[d] - old[i] for d in order) / len(order)
                seg = shared + i * column + l * 3 * per
                new[seg:seg + 3 * per] = (old[i] + alpha * delta).astype(np.float32)
    return new


def states_and_contribs(cl, k=0, hashes=False):
    """The agreed states (round -> params) and contributions (round -> list) among node k's blobs;
    hashes: each contribution also carries its blob's name (its hash in hex)."""
    states, contribs = {}, {}
    for p in cl.blobs(k):
        if p.endswith((".manifest", ".part", ".map")) or "." in os.path.basename(p):
            continue
        s = read_state_blob(p)
        if s:
            states[s[0]] = s[1]
            continue
        c = read_contribution(p)
        if c:
            if hashes:
                c["hash"] = os.path.basename(p)
            contribs.setdefault(c["round"], []).append(c)
    return states, contribs


def committed_contribs(cl, contribs, k):
    """round -> the contributions each round committed, as node k applied them (its debug line
    `round R: applying contributions id:hash ...`): a contribution a killed node published and
    then trained again, or one left out, is among the blobs but not applied. Needs
    states_and_contribs(..., hashes=True) and node k at log_level debug; a round whose committed
    blobs are not all held maps to None."""
    applied = {int(r): set(l.split()) for r, l in re.findall(r"round (\d+): applying contributions (.*)",
                                                              cl.log(k))}
    out = {}
    for r, want in applied.items():
        kept = [c for c in contribs.get(r, []) if "%d:%s" % (c["node"], c["hash"][:16]) in want]
        out[r] = kept if len(kept) == len(want) else None
    return out


def scenario_agree_and_reference():
    cfg = run_config(merge_alpha=0.2, merge_interval=10)
    cl = Cluster(BUILD, 3, cfg, tokens(), extra={k: {"keep_blobs": True} for k in range(3)})
    try:
        cl.start_all()
        cl.wait_round(8)
        cl.stop_all()
        logs = [cl.applied(k) for k in range(3)]
        common = sorted(set(logs[0]) & set(logs[1]) & set(logs[2]))
        check(len(common) >= 6 and all(logs[0][r] == logs[1][r] == logs[2][r] for r in common),
              "three nodes: every node's state digest is equal in each of %d rounds" % len(common))
        check("MISMATCH" not in cl.log(0), "the coordinator saw no digest mismatch")
        states, contribs = states_and_contribs(cl)
        rounds = [r for r in sorted(contribs) if r in states and r + 1 in states]
        merged = 0
        exact = True
        for r in rounds:
            step_end = (r + 1) * cfg["spes"]["sync_interval"]
            want = reference_round(cfg, states[r], contribs[r], step_end)
            merged += step_end % cfg["spes"]["merge_interval"] == 0
            if not np.array_equal(want, states[r + 1]):
                exact = False
                print("round %d: max |diff| %g" % (r, np.max(np.abs(want - states[r + 1]))))
        check(len(rounds) >= 5 and exact,
              "aggregated state equals an independent numpy computation from the contributions, bit for bit "
              "(%d rounds, %d with merge warm-up)" % (len(rounds), merged))
        check(merged >= 2, "merge warm-up rounds were among them")
    finally:
        cl.cleanup()


def scenario_column_owners():
    """spes.column_owners 2 with rotation: every column is trained by two of the three nodes (in each
    round all three contributed to), the nodes agree, and S_{r+1} equals numpy's mean over each
    column's two owners, bit for bit, merge rounds included."""
    cfg = run_config(merge_alpha=0.2, merge_interval=10)
    cfg["spes"].update(column_owners=2, rotate_interval=3)
    E = cfg["model"]["num_experts"]
    cl = Cluster(BUILD, 3, cfg, tokens(), extra={k: {"keep_blobs": True} for k in range(3)})
    try:
        cl.start_all()
        cl.wait_round(8)
        st = cl.status()
        trained = [0] * E
        for m in (st or {}).get("members", []):
            for e in m.get("columns", []):
                trained[e] += 1
        check(trained == [2] * E, "status: every column is trained by two members (%s)" % trained)
        cl.stop_all()
        logs = [cl.applied(k) for k in range(3)]
        common = sorted(set(logs[0]) & set(logs[1]) & set(logs[2]))
        check(len(common) >= 6 and all(logs[0][r] == logs[1][r] == logs[2][r] for r in common),
              "column_owners 2: the three nodes' digests are equal in each of %d rounds" % len(common))
        states, contribs = states_and_contribs(cl)
        full = [r for r in sorted(contribs) if len(contribs[r]) == 3]
        owners_ok = all(sorted(e for c in contribs[r] for e in c["cols"]) == sorted(list(range(E)) * 2)
                        for r in full)
        sets = {r: tuple(tuple(c["cols"]) for c in sorted(contribs[r], key=lambda c: c["node"])) for r in full}
        check(len(full) >= 6 and owners_ok and len(set(sets.values())) >= 2,
              "every column had two contributing owners in each of %d full rounds, and rotation changed "
              "who (%d deals)" % (len(full), len(set(sets.values()))))
        rounds = [r for r in sorted(contribs) if r in states and r + 1 in states]
        exact = True
        for r in rounds:
            want = reference_round(cfg, states[r], contribs[r], (r + 1) * cfg["spes"]["sync_interval"])
            if not np.array_equal(want, states[r + 1]):
                exact = False
                print("round %d: max |diff| %g" % (r, np.max(np.abs(want - states[r + 1]))))
        check(len(rounds) >= 5 and exact,
              "S_{r+1} equals numpy's mean over each column's owners, bit for bit (%d rounds)" % len(rounds))
    finally:
        cl.cleanup()


def join_kill_agree(cl, kill, what, join_timeout, apply_timeout):
    """Starts nodes 0-2, node-3 from round 3 until it contributes, kills node `kill` and starts it again,
    lets every node apply two more rounds and stops them; checks their digests agree (and names
    `what` in the check) and returns the rounds checked."""
    for k in range(3):
        cl.start(k)
    cl.wait_round(3)
    cl.start(3)
    cl.wait("node-3 contributes", lambda: re.search(r"round (\d+) committed: 4 contribution", cl.log(0)),
            join_timeout)
    cl.kill(kill)
    cl.start(kill)
    later = cl.wait_applied([0, 1, 2, 3], max(cl.applied(0)) + 2, timeout=apply_timeout)
    cl.stop_all()
    logs = [cl.applied(k) for k in range(4)]
    check(later and all(logs[0][x] == logs[k][x] for x in later for k in range(1, 4)),
          "%s: four nodes (one joined, one killed and restarted) agree on rounds %s" % (what, later))
    return later


def scenario_outer_optimizer():
    """Outer Nesterov momentum: nodes agree, S_{r+1} and the momentum equal numpy's, a joiner
    fetches the momentum with the state, a restarted node resumes its persisted momentum."""
    cfg = run_config(merge_alpha=0.2, merge_interval=10)
    cfg["spes"].update(outer_lr=0.7, outer_momentum=0.9)
    cl = Cluster(BUILD, 4, cfg, tokens(), min_nodes=3,
                 extra={k: {"keep_blobs": True, "log_level": "debug" if k == 0 else "info"} for k in range(4)})
    try:
        later = join_kill_agree(cl, 1, "outer momentum", 60, 120)
        check("fetching the agreed state" in cl.log(3), "the joiner fetched the agreed state (with its momentum)")
        check("MISMATCH" not in cl.log(0), "the coordinator saw no digest mismatch")
        states, contribs = {}, {}
        for p in cl.blobs(0):
            if "." in os.path.basename(p):
                continue
            st = read_state_blob2(p)
            if st:
                states[st[0]] = (st[1], st[2])
                continue
            c = read_contribution(p)
            if c:
                contribs.setdefault(c["round"], []).append(c)
        check(not any(read_state_blob(p) for p in cl.blobs(0) if "." not in os.path.basename(p)),
              "every state blob carries the momentum (SPESSTATE2)")
        rounds = [r for r in sorted(contribs) if r in states and r + 1 in states]
        exact = True
        for r in rounds:
            step_end = (r + 1) * cfg["spes"]["sync_interval"]
            M = states[r][1].copy()
            want = reference_round(cfg, states[r][0], contribs[r], step_end, M)
            if not (np.array_equal(want, states[r + 1][0]) and np.array_equal(M, states[r + 1][1])):
                exact = False
                print("round %d: max |diff| %g, momentum %g" % (r, np.max(np.abs(want - states[r + 1][0])),
                                                                np.max(np.abs(M - states[r + 1][1]))))
        check(len(rounds) >= 5 and exact and any(np.any(states[r][1]) for r in rounds),
              "S_{r+1} and its momentum equal numpy's outer Nesterov step, bit for bit (%d rounds)" % len(rounds))
    finally:
        cl.cleanup()


def scenario_q8ef_error_feedback(codec="q8ef"):
    """The q8ef codec: contributions are int8 blocks with error feedback; the nodes agree (one killed
    and restarted, one joined mid-run), S_{r+1} equals numpy's from the decoded blobs bit for bit
    (merge rounds included), blobs are 3.9x smaller than fp32, and every node keeps its residual
    with its state (residual.bin) and resumes it after kill -9. The same for topk (codec="topk"),
    with every member's columns handed to the next every 3 rounds (spes.rotate_interval)."""
    cfg = run_config(merge_alpha=0.2, merge_interval=10)
    cfg["spes"]["codec"] = codec
    if codec == "topk":
        cfg["spes"]["rotate_interval"] = 3
    cid, min_ratio = (3, 3.5) if codec == "q8ef" else (4, 20)
    cl = Cluster(BUILD, 4, cfg, tokens(), min_nodes=3,
                 extra={k: {"keep_blobs": True, "log_level": "debug" if k == 0 else "info"} for k in range(4)})
    try:
        for k in range(3):
            cl.start(k)
        cl.wait_round(3)
        cl.start(3)
        cl.wait("node-3 contributes", lambda: re.search(r"round (\d+) committed: 4 contribution", cl.log(0)), 60)
        cl.kill(1)
        cl.start(1)
        cl.wait_applied([0, 1, 2, 3], max(cl.applied(0)) + 1, timeout=120)
        for k in range(4):  # every daemon killed: each resumes its own state and residual
            cl.kill(k)
        for k in range(4):
            cl.start(k)
        later = cl.wait_applied([0, 1, 2, 3], max(cl.applied(0)) + 2, timeout=120)
        cl.stop_all()
        logs = [cl.applied(k) for k in range(4)]
        check(later and all(logs[0][x] == logs[k][x] for x in later for k in range(1, 4)),
              "%s: four nodes (one joined, one restarted, then all killed and restarted) agree on rounds %s"
              % (codec, later))
        check("MISMATCH" not in cl.log(0), "the coordinator saw no digest mismatch")
        resumed = [k for k in range(4) if "resuming from the local state" in cl.log(k)]
        check(len(resumed) >= 3 and not any("no error-feedback residual" in cl.log(k) for k in range(4)),
              "nodes %s resumed their own state with its residual after kill -9" % resumed)
        states, contribs = states_and_contribs(cl, hashes=True)
        check(contribs and all(c["codec"] == cid for cs in contribs.values() for c in cs),
              "every contribution is in %s" % codec)
        applied = committed_contribs(cl, contribs, 0)  # a killed node's retrained round is not applied
        rounds = [r for r in sorted(contribs) if r in states and r + 1 in states and r in applied]
        exact, merged = True, 0
        for r in rounds:
            step_end = (r + 1) * cfg["spes"]["sync_interval"]
            merged += step_end % cfg["spes"]["merge_interval"] == 0
            if applied[r] is None:
                exact = False
                print("round %d: not every committed blob is held" % r)
                continue
            want = reference_round(cfg, states[r], applied[r], step_end)
            if not np.array_equal(want, states[r + 1]):
                exact = False
                print("round %d: max |diff| %g" % (r, np.max(np.abs(want - states[r + 1]))))
        check(len(rounds) >= 5 and exact and merged >= 1,
              "S_{r+1} equals numpy's from the decoded %s blobs, bit for bit (%d rounds, %d merging)"
              % (codec, len(rounds), merged))
        if codec == "topk":  # the columns moved: some node contributed other columns in a later round
            owned = {}
            for r in sorted(contribs):
                for c in contribs[r]:
                    owned.setdefault(c["node"], set()).add(tuple(c["cols"]))
            rotations = cl.log(0).count("every member's columns go to the next member")
            check(rotations >= 2 and any(len(v) > 1 for v in owned.values()),
                  "columns rotated %d times; the nodes contributed columns %s" %
                  (rotations, {k: sorted(v) for k, v in sorted(owned.items())}))
        shared, column, _ = layout_sizes(cfg)

        def q8(n):
            return (n + 127) // 128 * 4 + n

        def topk(n):
            def chunk(ln):
                k = min(64, ln)
                return 16 + (12 * k + 7) // 8 + (2 * k + 7) // 8
            return n // 4096 * chunk(4096) + (chunk(n % 4096) if n % 4096 else 0)
        size_of = q8 if codec == "q8ef" else topk
        wire = [(os.path.getsize(p), read_contribution(p)) for p in cl.blobs(0) if "." not in os.path.basename(p)]
        wire = [(size, len(c["cols"])) for size, c in wire if c and c["codec"] == cid]
        exact_size = all(size == 64 + 4 * nc + size_of(shared) + nc * size_of(column) for size, nc in wire)
        ratio = min((64 + 4 * nc + 4 * (shared + nc * column)) / size for size, nc in wire) if wire else 0
        check(wire and exact_size and ratio > min_ratio,
              "every %s contribution has the codec's exact size, at least %.2fx smaller than fp32" % (codec, ratio))
        resid = []
        for k in range(4):
            state = os.path.join(cl.dir, "node-%d" % k, "node", "state")
            path = os.path.join(state, "residual.bin")
            if os.path.exists(path):
                b = open(path, "rb").read()
                ncols, rnd, numel = struct.unpack_from("<IqQ", b, 12)
                held = sum(b[32:32 + ncols])
                v = np.frombuffer(b, dtype="<f4", offset=32 + ncols, count=numel)
                # the state beside it: its round (a round applied while the node stopped is in the
                # state but not in the log, so the log's last round is one or two behind)
                (srnd,) = struct.unpack_from("<q", open(os.path.join(state, "spes.ckpt"), "rb").read(72), 64)
                ok = (b.startswith(b"SPESRESD") and rnd == srnd and srnd - max(cl.applied(k)) in (1, 2)
                      and np.any(v) and np.all(np.isfinite(v)) and 0 < held < ncols
                      and numel == shared + held * column)
                if not ok:
                    print("  node-%d residual.bin: round %d (the state's %d, applied up to %d in its log), %d of %d "
                          "columns held, %d values (shared %d + column %d each), non-zero %s, finite %s"
                          % (k, rnd, srnd, max(cl.applied(k)), held, ncols, numel, shared, column,
                             bool(np.any(v)), bool(np.all(np.isfinite(v)))))
                resid.append(ok)
        check(len(resid) == 4 and all(resid),
              "every node keeps a non-zero residual of its last applied round beside its state, for the shared "
              "block and its own columns only")
    finally:
        cl.cleanup()


def shard_plan(S, K):
    """The shared block's cut into K shards (src/sync/shard.h): ceil(S / K) rounded up to 128 values."""
    L = -(-S // K)
    L = -(-L // 128) * 128
    return [min(j * L, S) for j in range(K)] + [S]


def q8_decoded(u):
    """D(Q(u)) of the q8ef codec, from docs/design.md ("Codecs")."""
    out = np.empty_like(u)
    for at in range(0, u.size, 128):
        blk = u[at:at + 128]
        s = np.float32(np.max(np.abs(blk)) / np.float32(127))
        q = np.clip(np.rint((blk / s).astype(np.float32)), -127, 127) if s > 0 else np.zeros(blk.size)
        out[at:at + 128] = (q.astype(np.float32) * s).astype(np.float32)
    return out


def mean_of(base, parts):
    """spes_aggregate's mean: one part exactly, else base + (the fp32 sum of part - base) / k."""
    if len(parts) == 1:
        return parts[0].copy()
    acc = np.zeros_like(base)
    for p in parts:
        acc += (p - base).astype(np.float32)
    return (base + acc / np.float32(len(parts))).astype(np.float32)


def sharded_reference(cfg, S, cols, groups, r, K, step_end, want=None):
    """S_{r+1} of a sharded round from S_r, the committed column blobs `cols` and every node's shard
    blobs `groups` ((round, node, shard) -> the deltas of each blob published for it): each shard the
    q8ef-coded mean of the committed nodes' shards, each column the mean of its owners'; where a node
    published a shard twice, the combination that gives want's shard if any does. None if a shard
    blob is missing."""
    shared, column, _ = layout_sizes(cfg)
    new = S.copy()
    nodes = sorted(c["node"] for c in cols)
    off = shard_plan(shared, K)
    for j in range(K):
        lo, hi = off[j], off[j + 1]
        if any((r, n, j) not in groups for n in nodes):
            return None
        # a node that trained a round again (killed, or its columns dealt anew while it trained
        # ahead) published it twice: the committed shards are one of the candidates each
        for pick in itertools.product(*[groups[(r, n, j)] for n in nodes]):
            parts = [(S[lo:hi] + g).astype(np.float32) for g in pick]
            m = mean_of(S[lo:hi], parts) if parts else S[lo:hi]
            new[lo:hi] = S[lo:hi] + q8_decoded((m - S[lo:hi]).astype(np.float32)) if parts else S[lo:hi]
            if want is None or np.array_equal(new[lo:hi], want[lo:hi]):
                break
    for e in range(cfg["model"]["num_experts"]):
        lo = shared + e * column
        parts = [(S[lo:lo + column] + c["vals"][c["cols"].index(e) * column:(c["cols"].index(e) + 1) * column])
                 .astype(np.float32) for c in sorted(cols, key=lambda c: c["node"]) if e in c["cols"]]
        if parts:
            new[lo:lo + column] = mean_of(S[lo:lo + column], parts)
    return merge_warmup(cfg, new, step_end)


def sharded_run(overlap=0, outbound=False, lying=False):
    """A sharded run of four nodes (node-3 joining late, node-2 killed and restarted); overlap: rounds
    train while the round before travels; outbound: node-3 has no listener and pushes its shards;
    lying: every shard is audited and node-1's aggregates are off by 1e-3 (else node-1 fails to
    aggregate in round 5)."""
    cfg = run_config(sync=5, merge_alpha=0.2, merge_interval=10)
    cfg["model"].update(hidden_size=256, intermediate_size=32)
    cfg["spes"].update(codec="q8ef", sharded=1, overlap=overlap)
    if lying:
        cfg["spes"]["audit_fraction"] = 1
    shared, column, _ = layout_sizes(cfg)
    K = min(3, shared // 262144)
    extra = {k: {"keep_blobs": True, "log_level": "debug" if k == 0 else "info"} for k in range(4)}
    if outbound:
        extra[3].update(listen="")
    elif lying:
        extra[1].update(fault="lying-aggregate")  # every aggregate it makes is off by 1e-3
    else:
        extra[1].update(fault="mute-aggregator")  # round 5: shard 1's aggregator fails, its backup takes it
    cl = Cluster(BUILD, 4, cfg, tokens(), min_nodes=3, extra=extra)
    what = "sharded%s%s%s" % (", overlap" if overlap else "", ", node-3 outbound only" if outbound else "",
                              ", node-1 lying, every shard audited" if lying else "")
    try:
        join_kill_agree(cl, 2, what, 90, 150)
        check("DIGEST MISMATCH" not in cl.log(0), "the coordinator saw no digest mismatch")
        averaged = set()
        for k in range(4):
            averaged |= {(int(a), int(b)) for a, b in re.findall(r"shard (\d+) of (\d+) averaged", cl.log(k))}
        check(K >= 2 and {b for _, b in averaged} == {K} and {a for a, _ in averaged} == set(range(K)),
              "the shared block (%d values) is cut into %d shards, each averaged by an aggregator" % (shared, K))
        if lying:
            caught = re.findall(r"AUDIT MISMATCH: round (\d+), shard \d+: (\S+) and its auditor (\S+) differ; (\S+)'s "
                                r"aggregate is used", cl.log(0))
            check(len(caught) >= 3 and all("node-1" in (a, b) and u != "node-1" for _, a, b, u in caught),
                  "node-1's lies were caught in %d shard(s), and each time another node's aggregate was used"
                  % len(caught))
        if not outbound and not lying:
            took = re.findall(r"round 5: shard (\d+)'s aggregator node-1 missed its deadline; (\S+) takes it over",
                              cl.log(0))
            check(took and took[0][1] != "node-1" and "round 5 committed" in cl.log(0),
                  "round 5: node-1 failed to aggregate shard %s and %s took it over; the round committed"
                  % (took[0] if took else ("?", "?")))
        if outbound:
            pushed = cl.log(3).count("contribution pushed to the coordinator")
            check(pushed >= 2 * (K + 1) and not re.search(r"shard \d+ of \d+ (averaged|not averaged)", cl.log(3)),
                  "node-3 pushed its shards and columns (%d blobs) and aggregated nothing" % pushed)
        groups, aggs = {}, 0
        for k in range(4):
            for p in cl.blobs(k):
                g = read_group(p) if "." not in os.path.basename(p) else None
                if g and g["kind"] == 1:
                    have = groups.setdefault((g["round"], g["node"], g["shard"]), [])
                    if not any(np.array_equal(g["vals"], x) for x in have):
                        have.append(g["vals"])
                aggs += bool(g and g["kind"] == 2)
        states, contribs = states_and_contribs(cl, hashes=True)
        applied = committed_contribs(cl, contribs, 0)
        rounds = [r for r in sorted(applied) if r in states and r + 1 in states and applied[r]]
        exact, done, with3, checked, merged = True, 0, 0, [], 0
        for r in rounds:
            step_end = (r + 1) * cfg["spes"]["sync_interval"]
            want = sharded_reference(cfg, states[r], applied[r], groups, r, K, step_end, states[r + 1])
            if want is None:
                continue
            done += 1
            merged += step_end % cfg["spes"]["merge_interval"] == 0
            checked.append(r)
            with3 += any(c["node"] == 3 for c in applied[r])
            if not np.array_equal(want, states[r + 1]):
                exact = False
                print("round %d: max |diff| %g" % (r, np.max(np.abs(want - states[r + 1]))))
        check(done >= 5 and with3 >= 2 and merged >= 2 and exact and aggs > 0 and (outbound or lying or 5 in checked)
              and all(c["shared"] == 0 for cs in contribs.values() for c in cs),
              "S_{r+1} equals numpy's from the shards, the aggregates and the column-only contributions, bit for "
              "bit (rounds %s, %d with node-3's, %d merging)" % (checked, with3, merged))
        if overlap:
            ahead = [cl.log(k).count("overlapped with the sync of the round before") for k in range(4)]
            check(min(ahead) >= 2, "every node trained rounds beside the sync of the round before (%s)" % ahead)
    finally:
        cl.cleanup()


def scenario_sharded_round():
    """spes.sharded (docs/design.md, "The sharded round"): the shared block travels as 2 shards that
    aggregators check and average; the nodes agree, and every S_{r+1} equals numpy's from the shards,
    aggregates and column blobs on disk, bit for bit."""
    sharded_run()


def scenario_sharded_audit():
    """Audits: a second node recomputes every shard; node-1 makes every aggregate off by 1e-3. Each
    lie is caught (the coordinator's own node settles a disagreement it is not part of), the honest
    aggregate is used, the nodes agree, and S_{r+1} equals numpy's from the contributions' shards."""
    sharded_run(lying=True)


def scenario_sharded_overlap_outbound():
    """The sharded round with overlap and a volunteer nobody can dial (it pushes its shards to the
    coordinator, where their aggregators fetch them; it is never an aggregator)."""
    sharded_run(overlap=1, outbound=True)


def scenario_outbound_only():
    """A volunteer nobody can dial (docs/design.md, "Reachability"): node-3 has no listen URL. It
    pushes each contribution to the coordinator, which serves it to the others; its contributions
    are committed, the four nodes agree, numpy's S_{r+1} from the committed blobs equals the
    daemons', status shows it as outbound only, and it comes back after kill -9."""
    cfg = run_config(merge_alpha=0.2, merge_interval=10)
    cfg["spes"]["codec"] = "q8ef"
    extra = {k: {"keep_blobs": True, "log_level": "debug" if k == 0 else "info"} for k in range(4)}
    extra[3].update(listen="", log_level="debug")
    cl = Cluster(BUILD, 4, cfg, tokens(), min_nodes=3, extra=extra)
    try:
        cl.start_all()
        cl.wait("node-3 contributes", lambda: re.search(r"round \d+ committed: 4 contribution.*node-3", cl.log(0)),
                90)
        st = cl.status()
        m3 = [m for m in st["members"] if m["name"] == "node-3"]
        check(m3 and m3[0]["listen_url"] == "" and m3[0]["reachable"] is False
              and all(m["reachable"] for m in st["members"] if m["name"] != "node-3"),
              "status --json: node-3 is the one member that is not reachable")
        id3 = m3[0]["node_id"] if m3 else -1
        cl.kill(3)
        cl.start(3)
        seen = cl.log(3).count("contribution pushed to the coordinator")
        cl.wait("node-3 to push again after kill -9",
                lambda: cl.log(3).count("contribution pushed to the coordinator") > seen, 90)
        later = cl.wait_applied([0, 1, 2, 3], max(cl.applied(0)) + 2, timeout=120)
        cl.stop_all()
        logs = [cl.applied(k) for k in range(4)]
        check(later and all(logs[0][x] == logs[k][x] for x in later for k in range(1, 4)),
              "four nodes, one of them outbound only and killed once, agree on rounds %s" % later)
        check("MISMATCH" not in cl.log(0), "the coordinator saw no digest mismatch")
        log3 = cl.log(3)
        pushed = re.findall(r"round (\d+): contribution pushed to the coordinator \((\d+) bytes", log3)
        with3 = re.findall(r"round (\d+) committed: \d+ contribution\(s\)[^(]*\([^)]*node-3", cl.log(0))
        check(len(pushed) >= 3 and len(with3) >= 3 and "no listen URL" in log3,
              "node-3 has no listener, pushed %d contributions and %d rounds committed one" % (len(pushed), len(with3)))
        check("blob push" in cl.log(0) and "is held and served here" in cl.log(0),
              "the coordinator took the pushed blobs and serves them")
        states, contribs = states_and_contribs(cl, hashes=True)
        applied = committed_contribs(cl, contribs, 0)
        ids3 = {c["node"] for cs in contribs.values() for c in cs}
        # node-3's contributions reached node-1 though nobody could dial node-3: through the coordinator
        held1 = set()
        for p in cl.blobs(1):
            c = read_contribution(p) if "." not in os.path.basename(p) else None
            if c:
                held1.add((c["round"], c["node"]))
        rounds = [r for r in sorted(contribs) if r in states and r + 1 in states and applied.get(r)]
        exact, from3 = True, 0
        for r in rounds:
            step_end = (r + 1) * cfg["spes"]["sync_interval"]
            want = reference_round(cfg, states[r], applied[r], step_end)
            if not np.array_equal(want, states[r + 1]):
                exact = False
                print("round %d: max |diff| %g" % (r, np.max(np.abs(want - states[r + 1]))))
            from3 += len(applied[r]) == 4
        check(len(rounds) >= 4 and exact and from3 >= 2 and len(ids3) == 4,
              "S_{r+1} equals numpy's from the committed blobs, bit for bit (%d rounds, %d with node-3's)"
              % (len(rounds), from3))
        check(sum(1 for _, n in held1 if n == id3) >= 2,
              "node-1 holds %d of node-3's contributions: fetched from the coordinator, since nobody can dial "
              "node-3" % sum(1 for _, n in held1 if n == id3))
    finally:
        cl.cleanup()


def scenario_overlap():
    """spes.overlap = 1 (docs/design.md, "Overlap"): every node trains round r+1 while round r
    travels. A node joined mid-run, a node and the coordinator killed -9 while a round is in
    flight and restarted, a checkpoint taken with a round in flight and restored: the nodes
    agree, S_{r+1} equals numpy's from the contributions bit for bit, and the restored
    checkpoint holds the agreed state (each node's load checks it against the run's digest)."""
    cfg = run_config(merge_alpha=0.2, merge_interval=10)
    cfg["spes"].update(codec="q8ef", overlap=1)
    cfg["train"]["max_steps"] = 4000
    cl = Cluster(BUILD, 4, cfg, tokens(), min_nodes=3,
                 extra={k: {"keep_blobs": True, "log_level": "debug"} for k in range(4)})
    overlapped = "overlapped with the sync of the round before"

    def kill_while_overlapped(k):
        seen = cl.log(k).count(overlapped)
        cl.wait("node-%d to train a round beside a sync" % k, lambda: cl.log(k).count(overlapped) > seen, 60)
        cl.kill(k)
        cl.start(k)
    try:
        for k in range(3):
            cl.start(k)
        cl.wait_round(3)
        cl.start(3)
        cl.wait("node-3 contributes", lambda: re.search(r"round (\d+) committed: 4 contribution", cl.log(0)), 60)
        p = cl.ctl("checkpoint", "save", "--wait", "--json")
        ck = [c for c in json.loads(p.stdout)["checkpoints"] if c.get("complete")]
        check(p.returncode == 0 and ck, "a checkpoint is taken while rounds train overlapped")
        ckid, ckround = ck[-1]["id"], ck[-1]["round"]
        kill_while_overlapped(1)
        kill_while_overlapped(0)  # the coordinator
        later = cl.wait_applied([0, 1, 2, 3], max(cl.applied(2)) + 2, timeout=120)
        logs = [cl.applied(k) for k in range(4)]
        check(later and all(logs[0][x] == logs[k][x] for x in later for k in range(1, 4)),
              "overlap: four nodes (one joined, one and the coordinator killed with a round in flight) agree "
              "on rounds %s" % later)
        check("MISMATCH" not in cl.log(0), "the coordinator saw no digest mismatch")
        trained = [cl.log(k).count(overlapped) for k in range(4)]
        full = len(re.findall(r"round \d+ committed: 4 contribution", cl.log(0)))
        check(all(t >= 3 for t in trained) and full >= 2,
              "every node trained rounds beside the sync of the round before (%s), and rounds committed "
              "all four contributions (%d)" % (trained, full))
        states, contribs = states_and_contribs(cl, hashes=True)
        # what each round committed, as node-2 applied it (a killed node's retrained round is not)
        applied = committed_contribs(cl, contribs, 2)
        rounds = [r for r in sorted(contribs) if r in states and r + 1 in states and r in applied]
        exact, merged = True, 0
        for r in rounds:
            step_end = (r + 1) * cfg["spes"]["sync_interval"]
            merged += step_end % cfg["spes"]["merge_interval"] == 0
            kept = applied[r]
            if kept is None:
                exact = False
                print("round %d: not every committed blob is held" % r)
                continue
            want = reference_round(cfg, states[r], kept, step_end)
            if not np.array_equal(want, states[r + 1]):
                exact = False
                print("round %d: max |diff| %g" % (r, np.max(np.abs(want - states[r + 1]))))
        check(len(rounds) >= 6 and exact and merged >= 1,
              "S_{r+1} equals numpy's from the contributions, bit for bit (%d rounds, %d merging)"
              % (len(rounds), merged))
        cl.ctl("checkpoint", "restore", ckid)
        cl.wait("the run restored", lambda: (cl.status() or {}).get("round") == ckround and cl.status(), 30)
        line = "restoring the checkpoint of round %d" % ckround
        cl.wait("the nodes to load the checkpoint", lambda: all(line in cl.log(k) for k in range(3)), 90)
        cl.stop_all()
        restored = [k for k in range(3) if line in cl.log(k)]
        check(len(restored) == 3,
              "restore: nodes %s loaded checkpoint %s (round %d), taken with a round in flight, and its digest "
              "is the agreed one" % (restored, ckid, ckround))
    finally:
        cl.cleanup()


def scenario_error_feedback_outcomes():
    """The q8ef residual is settled by what became of the contribution: node-1 (test fault "late":
    from round 3 on it holds each contribution back past the round's deadline) is left out and keeps
    its residual; node-2 (fault "scaled-late": deltas x1000 from round 4 on) is refused and drops it.
    The nodes agree, and S_{r+1} equals numpy's from the committed contributions, bit for bit."""
    cfg = run_config()
    cfg["spes"]["codec"] = "q8ef"
    extra = {k: {"keep_blobs": True, "round_deadline_ms": 2500, "round_deadline_min_ms": 1000,
                 "failure_timeout_ms": 30000} for k in range(4)}
    extra[1]["fault"] = "late"
    extra[2]["fault"] = "scaled-late"
    cl = Cluster(BUILD, 4, cfg, tokens(), extra=extra)
    try:
        cl.start_all()
        late = cl.wait("node-1 left out", lambda: re.search(
            r"round (\d+): this node's contribution was left out; its residual is kept", cl.log(1)), 120)
        refused = cl.wait("node-2 refused", lambda: re.search(
            r"round (\d+): this node's contribution was refused; its residual is dropped", cl.log(2)), 120)
        ids = {m["id"]: m["node_id"] for m in cl.status()["members"]}
        later = cl.wait_applied([0, 1, 2, 3], max(cl.applied(0)) + 1, timeout=120)
        cl.stop_all()
        check(late is not None and int(late.group(1)) >= 3,
              "node-1, late from round 3, was left out and kept its residual (round %s)" % late.group(1))
        check(refused is not None and int(refused.group(1)) >= 4,
              "node-2, poisoning from round 4, was refused and dropped its residual (round %s)" % refused.group(1))
        logs = [cl.applied(k) for k in range(4)]
        check(later and all(logs[0][x] == logs[k][x] for x in later for k in range(1, 4)),
              "all four nodes agree on rounds %s" % later)
        drop = {(int(r), ids[name]) for r, name in
                re.findall(r"round (\d+): contribution of (node-\d+) refused", cl.log(0))}
        states, contribs = states_and_contribs(cl)
        rounds = [r for r in sorted(contribs) if r in states and r + 1 in states]
        exact = True
        for r in rounds:
            kept = [c for c in contribs[r] if (r, c["node"]) not in drop]
            want = reference_round(cfg, states[r], kept, (r + 1) * cfg["spes"]["sync_interval"])
            if not np.array_equal(want, states[r + 1]):
                exact = False
                print("round %d: max |diff| %g" % (r, np.max(np.abs(want - states[r + 1]))))
        check(len(rounds) >= 4 and exact and drop,
              "S_{r+1} equals numpy's from the committed q8ef contributions, bit for bit (%d rounds, %d refused "
              "left aside)" % (len(rounds), len(drop)))
    finally:
        cl.cleanup()


def scenario_topk_error_feedback():
    scenario_q8ef_error_feedback("topk")


def faults_env(**variables):
    """The environment that preloads tests/cluster/faults.c into a daemon."""
    lib = os.path.join(BUILD, "tests", "faults.so")
    if not os.path.exists(lib):
        raise RuntimeError("the fault library %s is not built" % lib)
    return dict(variables, LD_PRELOAD=lib,
                ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0")


def all_applying(cl):
    """Waits until the three nodes have all applied a round (a node that starts
    slowly joins after round 0); returns the first such round."""
    return min(cl.wait_applied([0, 1, 2], -1))


def finish_undisturbed(cl, cause, min_rounds, since):
    """Lets the three nodes apply one more round, stops them, and checks that
    cause disturbed nobody: no member marked failed, none joining again, every
    node applying every round from since on with equal digests. Returns the logs."""
    late = cl.wait_applied([0, 1, 2], cl.status()["round"], timeout=90)
    logs = [cl.log(k) for k in range(3)]  # before the stop: a draining node stops heartbeating
    cl.stop_all()
    check("marked failed" not in logs[0] and not any("joining again" in l for l in logs),
          "no member is marked failed for %s, and none has to join again" % cause)
    applied = [cl.applied(k) for k in range(3)]
    top = max(late) if late else -1
    missing = {k: [r for r in range(since, top + 1) if r not in applied[k]] for k in range(3)}
    differ = [r for r in range(since, top + 1) if all(r in a for a in applied) and
              not applied[0][r] == applied[1][r] == applied[2][r]]
    check(top >= min_rounds and not any(missing.values()) and not differ,
          "every node applied every round %d..%d and all agree%s" %
          (since, top, "" if not any(missing.values()) and not differ else
           " (missing %s, digests differ in %s)" % ({k: m for k, m in missing.items() if m}, differ)))
    return logs


def scenario_coordinator_stall():
    """The coordinator's loop blocks in a slow fsync for longer than the failure
    timeout: it must not blame its members (or itself) for its own stall."""
    cfg = run_config()
    cl = Cluster(BUILD, 3, cfg, tokens(), extra={k: {"failure_timeout_ms": 4000} for k in range(3)})
    trigger = cl.path("stall-trigger")
    cl.env[0] = faults_env(SPES_TEST_STALL_FILE=trigger, SPES_TEST_STALL_MATCH="last_commit.bin")
    try:
        cl.start_all()
        cl.wait_round(2)
        since = all_applying(cl)
        stalls = 2
        for _ in range(stalls):  # the fsync of the commit, on the coordinator's loop, takes 5.5 s (timeout 4 s)
            with open(trigger, "w") as f:
                f.write("5500")
            cl.wait("the stalled fsync", lambda: not os.path.exists(trigger), 60)
            cl.wait_round(cl.status()["round"] + 1)
        logs = finish_undisturbed(cl, "the coordinator's stall", 4, since)
        found = re.findall(r"did not run for (\d+) ms", logs[0])
        check(len(found) >= stalls and all(int(ms) >= 5000 for ms in found),
              "the coordinator notices its own stalls (%s ms)" % ", ".join(found))
    finally:
        cl.cleanup()


def scenario_wall_clock_steps():
    """The wall clock of the coordinator and of a node steps an hour back, then
    an hour forward (NTP, an operator): timeouts run on the monotonic clock."""
    cfg = run_config()
    cl = Cluster(BUILD, 3, cfg, tokens())
    clock = cl.path("clock-offset")
    for k in (0, 1):
        cl.env[k] = faults_env(SPES_TEST_CLOCK_FILE=clock)
    try:
        cl.start_all()
        cl.wait_round(2)
        since = all_applying(cl)
        for offset in ("-3600", "3600"):
            with open(clock + ".tmp", "w") as f:
                f.write(offset)
            os.rename(clock + ".tmp", clock)
            cl.wait_round(cl.status()["round"] + 2)
        finish_undisturbed(cl, "the wall clock's steps", 6, since)
    finally:
        cl.cleanup()


def scenario_node_stops_without_coordinator():
    """SIGTERM to a node whose coordinator was killed: its heartbeat to the dead
    coordinator is in flight (10 s timeout); the node must not wait it out.
    The kill comes as the node starts training a round, so no blob fetch of
    its is in flight (a fetch waits out its own requests: see the README)."""
    cl = Cluster(BUILD, 2, run_config(), tokens())
    try:
        cl.start_all()
        cl.wait_round(2)
        seen = len(re.findall("training columns", cl.log(1)))
        cl.wait("node-1 to start a round", lambda: len(re.findall("training columns", cl.log(1))) > seen, 60)
        cl.kill(0)
        time.sleep(1.0)  # heartbeats go every 200 ms: one is now waiting on the dead coordinator
        t0 = time.time()
        code = cl.kill(1, signal.SIGTERM)
        took = time.time() - t0
        check(code == 0 and took < 8 and "stopped" in cl.log(1),
              "a node whose coordinator is gone stops on SIGTERM in %.1f s (exit %s; the goodbye waits 3 s, "
              "calls in flight are cut short)" % (took, code))
    finally:
        cl.cleanup()


def scenario_kill_node():
    cfg = run_config(sync=40)
    cfg["train"]["max_steps"] = 4000  # the run must outlast the kill, the restart and the catch-up
    cl = Cluster(BUILD, 3, cfg, tokens(), extra={k: {"keep_blobs": True} for k in range(3)})
    try:
        cl.start_all()
        st = cl.wait_round(2)
        cols2 = [m["columns"] for m in st["members"] if m["id"] == "node-2"][0]
        # kill it mid-round: right after it starts training a round
        seen = len(re.findall("training columns", cl.log(2)))
        cl.wait("node-2 to start a round", lambda: len(re.findall("training columns", cl.log(2))) > seen, 60)
        cl.kill(2)
        killed_at = cl.status()["round"]
        since = len(cl.log(0))  # a slow round before the kill may have committed with 2 too
        got = cl.wait("a round committed without node-2",
                      lambda: re.search(r"round (\d+) committed: 2 contribution", cl.log(0)[since:]), 60)
        check(int(got.group(1)) >= killed_at, "after kill -9 the round commits without the node (round %s)" % got.group(1))
        # a contribution of node-2's committed just before the kill is still fetched by node-1:
        # the coordinator validated it, so it holds it too
        check("cannot apply the commit" not in cl.log(1),
              "the surviving nodes apply every commit (the coordinator serves the dead node's blob)")
        cl.wait_round(int(got.group(1)) + 2)
        states, contribs = states_and_contribs(cl)
        shared, column, _ = layout_sizes(cfg)
        # the first round from the kill on in which no contribution carries node-2's columns
        rounds = [r for r in sorted(contribs) if r >= killed_at and r in states and r + 1 in states and
                  not any(set(cols2) & set(c["cols"]) for c in contribs[r])]
        same = rounds and all(np.array_equal(states[rounds[0]][shared + e * column: shared + (e + 1) * column],
                                             states[rounds[0] + 1][shared + e * column: shared + (e + 1) * column])
                              for e in cols2)
        check(bool(same), "the killed node's columns %s keep their values in that round (%s)" % (cols2, rounds[:1]))
        restart_round = cl.status()["round"]
        cl.start(2)
        late = cl.wait_applied([0, 2], restart_round + 1, timeout=90)
        cl.stop_all()
        a0, a2 = cl.applied(0), cl.applied(2)
        check(late and all(a0[x] == a2[x] for x in late), "restarted, it catches up and agrees again (rounds %s)" % late)
    finally:
        cl.cleanup()


def scenario_join_mid_run():
    cfg = run_config()
    cl = Cluster(BUILD, 3, cfg, tokens(), min_nodes=2)
    try:
        cl.start(0)
        cl.start(1)
        cl.wait_round(3)
        cl.start(2)
        got = cl.wait("node-2 contributes",
                      lambda: re.search(r"round (\d+) committed: 3 contribution", cl.log(0)), 60)
        check(got is not None, "its first contribution is accepted (round %s commits 3 contributions)" % got.group(1))
        st = cl.status()
        m2 = [m for m in st["members"] if m["id"] == "node-2"][0]
        check(m2["columns"] != [] and m2["state"] == "active",
              "a node joining mid-run gets columns %s and becomes active" % m2["columns"])
        got = re.search(r"fetching the agreed state of round \d+ from (\d+) peer", cl.log(2))
        check(got and int(got.group(1)) == 2,
              "it fetched the agreed state from both members, not the coordinator alone (%s peers)"
              % (got.group(1) if got else None))
    finally:
        cl.cleanup()


def scenario_join_catches_up():
    """A joiner that falls rounds behind while it fetches the agreed state (stopped here until the run
    is two rounds on) catches up commit by commit, as the coordinator keeps its last 3 Commits,
    instead of joining again and fetching a newer state, which on a slow link never ends."""
    cfg = run_config(sync=20)  # rounds of about a second: the joiner is resumed two rounds on
    extra = {k: {"failure_timeout_ms": 60000, "round_deadline_ms": 3000, "round_deadline_min_ms": 1000}
             for k in range(3)}
    cl = Cluster(BUILD, 3, cfg, tokens(), min_nodes=2, extra=extra)
    try:
        cl.start(0)
        cl.start(1)
        cl.wait_round(3)
        cl.start(2)
        fetch = cl.wait("node-2 fetches the state",
                        lambda: re.search(r"fetching the agreed state of round (\d+)", cl.log(2)), 60)
        cl.procs[2].send_signal(signal.SIGSTOP)
        try:
            fetched = int(fetch.group(1))
            cl.wait("the run two rounds on", lambda: cl.status()["round"] >= fetched + 2, 60)
        finally:
            cl.procs[2].send_signal(signal.SIGCONT)
        got = cl.wait("node-2 contributes",
                      lambda: re.search(r"round (\d+) committed: 3 contribution", cl.log(0)), 90)
        log2 = cl.log(2)
        rounds = sorted(cl.applied(2))
        check(re.search(r"fetching the agreed state of round \d+ from 2 peer", log2) is not None,
              "it fetched the state from both members (the Accept names who holds it)")
        check(got is not None and log2.count("fetching the agreed state") == 1 and "joining again" not in log2,
              "the joiner fetched the state of round %d once, never joined again, and contributes (round %s)"
              % (fetched, got.group(1) if got else None))
        run = [r for r in rounds if r < int(got.group(1))] if got else []
        check(len(run) >= 2 and run[0] == fetched and run == list(range(run[0], run[0] + len(run))),
              "it applied the commits it missed one by one: rounds %s" % run)
        later = cl.wait_applied([0, 1, 2], max(cl.applied(0)), timeout=60)
        logs = [cl.applied(k) for k in range(3)]
        check(later and all(logs[0][x] == logs[k][x] for x in rounds if x in logs[0] for k in (1, 2) if x in logs[k]),
              "its state digests equal the others' in every round it applied")
    finally:
        cl.cleanup()


def scenario_coordinator_restart():
    cfg = run_config()
    cl = Cluster(BUILD, 3, cfg, tokens())
    try:
        cl.start_all()
        cl.wait_round(3)
        cl.wait_applied([1], -1)  # node-1 may have joined late (a loaded machine): it holds a round
        cl.kill(0)
        before = max(cl.applied(1))
        cl.start(0)
        later = cl.wait_applied([0, 1, 2], before + 1, timeout=90)
        cl.stop_all()
        a = [cl.applied(k) for k in range(3)]
        check(later and all(a[0][x] == a[1][x] == a[2][x] for x in later),
              "coordinator killed and restarted: the run goes on from round %d and agrees (%s)" % (before, later))
        check("resumed run" in cl.log(0), "the coordinator resumed its persisted run")
    finally:
        cl.cleanup()


def scenario_bad_contributions():
    cfg = run_config()
    cl = Cluster(BUILD, 3, cfg, tokens(), extra={1: {"fault": "nan"}, 2: {"fault": "wrong-hash"}})
    try:
        def refused_of(st):
            rs = st.get("last_round", {}).get("refused", [])
            return " ".join(r if isinstance(r, str) else r.get("reason", "") for r in rs)

        cl.start_all()
        cl.wait_round(3)
        # a node that joined late (a loaded machine) contributes from a later round: wait for a round
        # where both faulty nodes took part
        st = cl.wait("a round refusing both faulty nodes",
                     lambda: (lambda s: s if s and "node-1" in refused_of(s) and "node-2" in refused_of(s) else None)(
                         cl.status()), timeout=90)
        cl.stop_all()
        refused = refused_of(st)
        log0 = cl.log(0)
        check(re.search(r"contribution of node-1 refused: .*NaN", log0) is not None,
              "a contribution with NaN is refused")
        check(re.search(r"contribution of node-2 refused", log0) is not None, "a contribution with a wrong hash is refused")
        check("node-1" in refused and "node-2" in refused, "both refusals are shown in status: " + refused[:200])
        check(st["round"] >= 3, "the run goes on (round %d)" % st["round"])
    finally:
        cl.cleanup()


def scenario_contribution_authorship():
    """A contribution must be what its announcer was told to train: one that names another node's
    id, or carries every column where its announcer owns a few, is refused; the run goes on
    without it and every node agrees."""
    cfg = run_config()
    cl = Cluster(BUILD, 3, cfg, tokens(), extra={1: {"fault": "other-node"}, 2: {"fault": "all-columns"}})
    try:
        cl.start_all()
        st = cl.wait_round(4)
        late = cl.wait_applied([0, 1, 2], 3)
        cl.stop_all()
        log0 = cl.log(0)
        check(re.search(r"contribution of node-1 refused: .*names node \d+, its announcer is node \d+", log0)
              is not None, "a contribution naming another node's id is refused")
        check(re.search(r"contribution of node-2 refused: .*carries column \d+, which its announcer does not own",
                        log0) is not None, "a contribution carrying columns its announcer does not own is refused")
        commits = [int(n) for n in re.findall(r"round \d+ committed: (\d+) contribution", log0)]
        check(commits and max(commits) == 1, "only node-0's contribution counts (%s per round)" % sorted(set(commits)))
        a = [cl.applied(k) for k in range(3)]
        check(late and all(a[0][x] == a[1][x] == a[2][x] for x in late),
              "the run goes on (round %d) and every node agrees (rounds %s)" % (st["round"], late))
    finally:
        cl.cleanup()


def scenario_diverged_node_heals():
    cfg = run_config()
    cl = Cluster(BUILD, 3, cfg, tokens(), extra={2: {"fault": "diverge"}})  # node-2 changes its S_3 once
    try:
        cl.start_all()
        late = cl.wait_applied([0, 1, 2], 5, timeout=120)
        cl.stop_all()
        a0, a2 = cl.applied(0), cl.applied(2)
        # "round 2 applied: state digest X" reports S_3
        check(2 in a2 and a2[2] != a0.get(2), "node-2's state of round 3 differs (%s vs %s)" % (a2.get(2), a0.get(2)))
        check(re.search(r"DIGEST MISMATCH: node-2 reports \w+ for round 3", cl.log(0)) is not None,
              "the coordinator sees node-2's digest mismatch")
        check(re.search(r"round 3: this node's state .* is not the run's agreed one", cl.log(2)) is not None,
              "node-2 notices it before training on it, and joins again")
        check(late and all(a0[x] == a2[x] for x in late),
              "node-2 fetched the agreed state and agrees again (rounds %s)" % late)
    finally:
        cl.cleanup()


def scenario_blob_housekeeping():
    cfg = run_config()
    cl = Cluster(BUILD, 2, cfg, tokens())
    try:
        cl.start_all()
        cl.wait_round(9)
        cl.stop_all()
        states, contribs = states_and_contribs(cl)
        check(len(states) <= 4 and max(states) >= 8,
              "old rounds' blobs are deleted: the store keeps the last rounds only (states %s)" % sorted(states))
    finally:
        cl.cleanup()
    # a quota below one round's blobs (a 3 MB state and two 1.8 MB contributions): the store removes
    # what no round needs, never what the kept rounds need, and says it is over its quota
    cfg = run_config()
    cfg["model"].update(hidden_size=128, intermediate_size=192)
    cl = Cluster(BUILD, 2, cfg, tokens(), extra={k: {"blob_quota_mb": 4} for k in range(2)})
    try:
        cl.start_all()
        cl.wait_round(7)
        late = cl.wait_applied([0, 1], 6)
        cl.stop_all()
        a = [cl.applied(k) for k in range(2)]
        check(late and all(a[0][x] == a[1][x] for x in late), "quota 4 MiB: both nodes agree (rounds %s)" % late)
        for k in range(2):
            states, contribs = states_and_contribs(cl, k)
            size = sum(os.path.getsize(p) for p in cl.blobs(k))
            check(3 <= len(states) <= 4 and max(states) >= 6,
                  "node-%d keeps the states of the last rounds over its quota (%s, %.1f MB on disk)"
                  % (k, sorted(states), size / 1e6))
            check(len([r for r in contribs if r >= max(states) - 3]) >= 2,
                  "node-%d keeps the last rounds' contributions (rounds %s)" % (k, sorted(contribs)))
        check("over its limit" in cl.log(0), "the store warns that it is over its quota")
    finally:
        cl.cleanup()


def head(path, n):
    """The first n bytes of a file."""
    with open(path, "rb") as f:
        return f.read(n)


def scenario_round_costs():
    """The counters each daemon reports (docs/counters.md), read back through
    spesctl status once a short run is complete and nothing moves but heartbeats."""
    cfg = run_config()
    R = 4
    cfg["train"]["max_steps"] = R * cfg["spes"]["sync_interval"]
    cl = Cluster(BUILD, 3, cfg, tokens(), extra={k: {"keep_blobs": True} for k in range(3)})
    try:
        t0 = time.time()
        cl.start_all()
        cl.wait("the run to complete", lambda: "the run is complete" in cl.log(0), timeout=120)
        cl.wait_applied([0, 1, 2], R - 2)

        def settled():  # every member reported after its last round (its blob bytes and rounds stay put)
            a = cl.status()
            time.sleep(0.6)
            b = cl.status()
            key = lambda st: [(m["rounds"], m["net"]["blob"], m["time"]["train_s"]) for m in st["members"]]
            return b if a and b and key(a) == key(b) and all(m["counters_reported"] for m in b["members"]) else None
        st = cl.wait("the counters to settle", settled, timeout=30)
        ms = sorted(st["members"], key=lambda m: m["node_id"])
        check(all({"sent_bytes", "received_bytes"} <= set(m["net"]) and {"train_s", "wait_s"} <= set(m["time"])
                  and isinstance(m["rounds"], int) for m in ms),
              "status --json shows net {sent_bytes, received_bytes}, time {train_s, wait_s} and rounds per member")
        # the ground truth: every contribution blob kept by the coordinator, and the committed rounds in its log
        committed = [int(r) for r in re.findall(r"round (\d+) committed", cl.log(0))]
        authored = {}
        for p in cl.blobs(0):
            c = read_contribution(p) if "." not in os.path.basename(p) else None
            if c and c["round"] in committed:
                authored.setdefault(c["node"], set()).add(c["round"])
        check("refused" not in cl.log(0) and len(committed) == R and
              [m["rounds"] for m in ms] == [len(authored.get(m["node_id"], ())) for m in ms],
              "rounds equals the committed rounds each node contributed to (%s of %d)"
              % ([m["rounds"] for m in ms], len(committed)))
        for m in ms:
            k = int(m["name"].split("-")[1])
            fetched = 0
            for p in cl.blobs(k):
                c = read_contribution(p) if "." not in os.path.basename(p) else None
                if c and c["node"] != m["node_id"]:
                    fetched += os.path.getsize(p)
            got = m["net"]["blob"]["received_bytes"]
            # a node that joined after round 0 (late on a loaded machine) also fetched the agreed state
            joins = cl.log(k).count("fetching the agreed state")
            state = max([os.path.getsize(p) for p in cl.blobs(k) if "." not in os.path.basename(p)
                         and head(p, 9) == b"SPESSTATE"] or [0])
            check(fetched > 0 and fetched <= got <= (fetched + joins * state) * 1.02 + 4096 * (1 + joins),
                  "%s received %d blob bytes: the %d bytes of the contributions it fetched%s plus framing"
                  % (m["name"], got, fetched, " and %d agreed state(s) of %d bytes" % (joins, state) if joins else ""))
            check(m["time"]["train_s"] > 0 and m["time"]["wait_s"] > 0 and
                  m["time"]["train_s"] + m["time"]["wait_s"] < time.time() - t0,
                  "%s: train %.2f s, wait %.2f s, both counted, within the run's wall time"
                  % (m["name"], m["time"]["train_s"], m["time"]["wait_s"]))
        bs = sum(m["net"]["blob"]["sent_bytes"] for m in ms)
        br = sum(m["net"]["blob"]["received_bytes"] for m in ms)
        check(bs == br, "the cluster's blob bytes sent (%d) equal its blob bytes received (%d)" % (bs, br))
        ts = sum(m["net"]["sent_bytes"] for m in ms)
        tr = sum(m["net"]["received_bytes"] for m in ms)
        check(abs(ts - tr) <= 0.01 * ts, "the cluster's bytes sent (%d) equal its bytes received (%d) within "
              "the heartbeats in flight" % (ts, tr))
        text = cl.ctl("status").stdout
        cost = text[text.find("compute utilisation"):text.find("last round")].rstrip()
        print("\n".join("   | " + l for l in cost.splitlines()))
        check(re.search(r"compute utilisation \d+\.\d %", text) and "per node per round:" in text,
              "spesctl status shows the run's compute utilisation and MB per round per node")
        cl.stop_all()
    finally:
        cl.cleanup()


def scenario_one_node_is_standalone():
    cfg = run_config(sync=4)
    cl = Cluster(BUILD, 1, cfg, tokens())
    try:
        cl.start_all()
        cl.wait_round(6)
        cl.stop_all()
        out = open(cl.path("node-0.out")).read()
        node = re.findall(r"^step (\d+) loss (\S+)$", out, re.M)
        p = subprocess.run([cl.spesd, "train", "--config", cl.path("run.json"), "--data", cl.path("data.bin"),
                            "--steps", str(len(node)), "--threads", "1", "--out", cl.path("standalone")],
                           capture_output=True, text=True, timeout=300)
        alone = re.findall(r"^step (\d+) loss (\S+)", p.stdout, re.M)
        check(len(node) >= 24 and node == alone[:len(node)],
              "one node prints the same per-step losses as spesd train, bit for bit (%d steps)" % len(node))
    finally:
        cl.cleanup()


def torch_eval(hf_dir, data, B, T, K):
    """Mean CE of an exported checkpoint in the independent PyTorch reference."""
    code = (
        "import json,sys,numpy as np,torch\n"
        "sys.path.insert(0, %r)\n"
        "import olmoe_ref as R\n"
        "d=sys.argv[1]; cfg=R.Cfg(json.load(open(d+'/config.json')))\n"
        "P=R.make_params(R.read_safetensors(d+'/model.safetensors')[0], cfg, dtype=torch.float64)\n"
        "x=np.fromfile(sys.argv[2],dtype=np.uint16).astype(np.int64); B,T,K=map(int,sys.argv[3:6]); s=0\n"
        "for k in range(K):\n"
        "  c=torch.tensor(x[k*B*T:k*B*T+B*T+1]); o=R.forward(P,cfg,c[:-1].view(B,T),c[1:].view(B,T))\n"
        "  s+=o['ce_loss'].item()\n"
        "print(s/K)\n") % os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ref")
    p = subprocess.run(["/usr/bin/python3", "-c", code, hf_dir, data, str(B), str(T), str(K)],
                       capture_output=True, text=True, timeout=300)
    if p.returncode:
        raise RuntimeError("reference failed: " + p.stderr[-500:])
    return float(p.stdout.strip())


def scenario_checkpoints_and_roles():
    cfg = run_config()
    cl = Cluster(BUILD, 3, cfg, tokens())
    try:
        cl.start_all()
        cl.wait_round(2)
        # every node applies commits before the checkpoint is asked for: one that joined late (a
        # loaded machine) fetches a newer agreed state and never holds a checkpoint of an older one
        cl.wait_applied([0, 1, 2], -1)
        p = cl.ctl("checkpoint", "save", "--wait", "--json")
        saved = json.loads(p.stdout)
        ck = [c for c in saved["checkpoints"] if c.get("complete")]
        check(p.returncode == 0 and ck, "checkpoint save --wait returns once the checkpoint is taken")
        ckid, ckround = ck[-1]["id"], ck[-1]["round"]
        def holders():
            lst = json.loads(cl.ctl("checkpoint", "list", "--json").stdout)["checkpoints"]
            h = [c for c in lst if c["id"] == ckid][0].get("holders", [])
            return h if len(h) == 3 else None
        h = cl.wait("all three nodes hold " + ckid, holders, 30)
        check(sorted(h) == [0, 1, 2], "the coordinator records which nodes hold %s: %s" % (ckid, h))
        # every daemon killed and restarted: the run continues without the operator
        r_before = cl.status()["round"]
        for k in range(3):
            cl.kill(k)
        cl.start_all()
        later = cl.wait_applied([0, 1, 2], r_before + 1, timeout=120)
        a = [cl.applied(k) for k in range(3)]
        check(later and all(a[0][x] == a[1][x] == a[2][x] for x in later),
              "full-cluster kill -9 and restart: the run continues from round %d and agrees" % r_before)
        out = cl.path("export")
        cl.ctl("checkpoint", "export", ckid, "--out", out)
        check(os.path.exists(os.path.join(out, "model.safetensors")), "checkpoint export writes Hugging Face files")
        e = subprocess.run([cl.spesd, "eval", "--checkpoint", out, "--data", cl.path("data.bin"), "--batch", "2",
                            "--seq", "32", "--batches", "3"], capture_output=True, text=True)
        c_loss = float(e.stdout.split()[1])
        t_loss = torch_eval(out, cl.path("data.bin"), 2, 32, 3)
        check(abs(c_loss - t_loss) < 1e-4 * max(1.0, abs(t_loss)),
              "the export loads in the PyTorch OLMoE reference: loss %.6f vs spesd eval %.6f" % (t_loss, c_loss))
        cl.ctl("checkpoint", "restore", ckid)
        st = cl.wait("the run restored", lambda: (cl.status() or {}).get("round") == ckround and cl.status(), 30)
        cl.wait_round(ckround + 2, timeout=90)
        check("restoring the checkpoint of round %d" % ckround in cl.log(1) or
              "resuming from the local state of round %d" % ckround in cl.log(1),
              "restore: the run continues from %s (round %d) with the nodes' saved state" % (ckid, ckround))
        # roles: a node certificate cannot evict or checkpoint; an operator certificate can
        def remote(cert, *args):
            return subprocess.run([cl.spesctl, "--url", cl.url(0), "--ca", cl.path("pki/ca.crt"),
                                   "--cert", cl.path("pki/%s.crt" % cert), "--key", cl.path("pki/%s.key" % cert)]
                                  + list(args), capture_output=True, text=True, timeout=30)
        p = remote("node-1", "members", "evict", "node-2")
        check(p.returncode != 0 and "operator" in p.stderr, "a node certificate cannot evict: " + p.stderr.strip())
        p = remote("node-1", "checkpoint", "save")
        check(p.returncode != 0 and "operator" in p.stderr, "a node certificate cannot checkpoint")
        p = remote("operator", "members", "evict", "node-2")
        check(p.returncode == 0, "an operator certificate can evict: " + (p.stdout + p.stderr).strip()[:120])
        st = cl.status()
        m2 = [m for m in st["members"] if m["id"] == "node-2"][0]
        check(m2["state"] == "evicted", "node-2 shows as evicted")
        p2 = cl.procs[2]
        try:
            code = p2.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        check(code == 0 and "evicted from the run; stopping" in cl.log(2),
              "the evicted node's daemon stops by itself (exit %s)" % code)
    finally:
        cl.cleanup()


def scenario_poisoning():
    """A member whose deltas are 1000 times an honest one's (fault "scaled", within the per-value
    bound): the norm bound refuses it, names it in status, and the run goes on with every node
    agreeing; with the bound off and spes.aggregation trimmed_mean, each shared coordinate of
    S_{r+1} is the median of the three deltas (numpy, bit for bit), between the honest ones. With
    two members, one honest for 4 rounds and then scaled, the run's history bounds it."""
    cfg = run_config()
    cl = Cluster(BUILD, 3, cfg, tokens(), extra={2: {"fault": "scaled"}})
    try:
        cl.start_all()
        st = cl.wait_round(4)
        late = cl.wait_applied([0, 1, 2], 3)
        st = cl.status()
        cl.stop_all()
        log0 = cl.log(0)
        check(re.search(r"contribution of node-2 refused: .*delta norm [0-9.e+]+ exceeds the norm bound", log0)
              is not None, "the norm bound refuses the scaled contribution")
        refused = json.dumps(st.get("last_round", {}).get("refused", []))
        check("node-2" in refused and "norm bound" in refused, "status names the refused member: " + refused[:200])
        commits = [int(n) for n in re.findall(r"round \d+ committed: (\d+) contribution", log0)]
        check(commits and max(commits) == 2, "only the two honest contributions count (%s per round)" % sorted(set(commits)))
        a = [cl.applied(k) for k in range(3)]
        check(late and all(a[0][x] == a[1][x] == a[2][x] for x in late),
              "the run goes on (round %d) and every node agrees (rounds %s)" % (st["round"], late))
    finally:
        cl.cleanup()
    cfg["spes"].update(norm_bound=0, aggregation="trimmed_mean", trim=0.34)
    cl = Cluster(BUILD, 3, cfg, tokens(), extra={2: {"fault": "scaled", "keep_blobs": True}})
    try:
        cl.start_all()
        late = cl.wait_applied([0, 1, 2], 3)
        cl.stop_all()
        a = [cl.applied(k) for k in range(3)]
        check(late and all(a[0][x] == a[1][x] == a[2][x] for x in late),
              "trimmed_mean: every node agrees (rounds %s)" % late)
        check(re.search(r"refused", cl.log(0)) is None, "with the bound off nothing is refused")
        states, contribs = states_and_contribs(cl, 2)
        shared = layout_sizes(cfg)[0]
        rounds = [r for r in sorted(contribs) if r in states and r + 1 in states and len(contribs[r]) == 3]
        exact = bounded = True
        ratio = 0.0
        for r in rounds:
            S = states[r][:shared]
            d = np.stack([(c["vals"][:shared] - S).astype(np.float32) for c in sorted(contribs[r], key=lambda c: c["node"])])
            norms = np.sqrt((d.astype(np.float64) ** 2).sum(axis=1))
            bad = int(np.argmax(norms))
            ratio = max(ratio, norms[bad] / np.median(norms))
            want = (S + np.sort(d, axis=0)[1]).astype(np.float32)  # t = floor(0.34 * 3) = 1: the median
            got = states[r + 1][:shared]
            exact &= np.array_equal(want, got)
            honest = np.delete(d, bad, axis=0)
            move = (got - S).astype(np.float32)
            bounded &= bool(np.all((move >= honest.min(axis=0)) & (move <= honest.max(axis=0))))
        check(len(rounds) >= 3 and ratio > 100, "the attacker's shared delta norm is %.0f x the median (%d rounds)"
              % (ratio, len(rounds)))
        check(len(rounds) >= 3 and exact, "each shared coordinate moved by the median of the three deltas, bit for bit")
        check(len(rounds) >= 3 and bounded, "every shared coordinate moved no further than an honest delta")
    finally:
        cl.cleanup()
    # two members: no round median to measure against, so the run's recent rounds bound the round
    cfg = run_config()
    cl = Cluster(BUILD, 2, cfg, tokens(), extra={1: {"fault": "scaled-late"}})
    try:
        cl.start_all()
        late = cl.wait_applied([0, 1], 6)
        cl.stop_all()
        log0 = cl.log(0)
        why = re.findall(r"round (\d+): contribution of node-1 refused: (.*)", log0)
        check(why and all(int(r) >= 4 and "recent rounds' medians" in w for r, w in why),
              "with two members the history bound refuses node-1 from round 4 on: %s" % (why[:2],))
        honest = re.findall(r"round ([0-3]) committed: 2 contribution", log0)
        check(len(honest) >= 2, "node-1's honest rounds before 4 counted (%s)" % honest)
        a = [cl.applied(k) for k in range(2)]
        check(late and all(a[0][x] == a[1][x] for x in late), "both nodes agree (rounds %s)" % late)
    finally:
        cl.cleanup()


SCENARIOS = [scenario_agree_and_reference, scenario_coordinator_stall,
             scenario_wall_clock_steps, scenario_node_stops_without_coordinator, scenario_kill_node, scenario_join_mid_run,
             scenario_join_catches_up,
             scenario_coordinator_restart, scenario_bad_contributions, scenario_contribution_authorship,
             scenario_one_node_is_standalone,
             scenario_checkpoints_and_roles, scenario_diverged_node_heals, scenario_blob_housekeeping,
             scenario_round_costs, scenario_outer_optimizer, scenario_poisoning, scenario_q8ef_error_feedback,
             scenario_topk_error_feedback, scenario_error_feedback_outcomes, scenario_overlap,
             scenario_outbound_only, scenario_column_owners, scenario_sharded_round,
             scenario_sharded_overlap_outbound, scenario_sharded_audit]


def main():
    for s in SCENARIOS:
        if ONLY and s.__name__.replace("scenario_", "") not in ONLY:
            continue
        print("== " + s.__name__, flush=True)
        t0 = time.time()
        failed = len(failures)
        try:
            s()
        except Exception as e:  # a scenario that cannot finish is a failure, not a crash of the suite
            check(False, "%s raised %s: %s" % (s.__name__, type(e).__name__, e))
        if len(failures) > failed and cluster_mod.LAST_WARNINGS:
            print("   what the daemons warned about:\n" + "\n".join("   | " + l for l in cluster_mod.LAST_WARNINGS))
        print("   (%.1f s)" % (time.time() - t0), flush=True)
    print("%d passed, %d failed" % (passed, len(failures)))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
