#!/usr/bin/python3
"""tests/cluster/test_cluster.py: SPES runs of real spesd daemons on loopback.

Each scenario starts daemons over mutual TLS with fresh ports and proves an
outcome of DESIGN.md's "SPES semantics" from what the daemons wrote: digests
in their logs, status from spesctl, and the state and contribution blobs in
their stores, recomputed here independently with numpy.
usage: test_cluster.py BUILD_DIR [SCENARIO...]
"""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster, read_contribution, read_state_blob  # noqa: E402

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


def reference_round(cfg, S, contribs, step_end):
    """S_{r+1} from S_r and the round's contributions, written from DESIGN.md."""
    shared, column, per = layout_sizes(cfg)
    E, L = cfg["model"]["num_experts"], cfg["model"]["num_hidden_layers"]
    new = S.copy()
    contribs = sorted(contribs, key=lambda c: c["node"])

    def values(c, lo, hi, base):
        v = c["vals"][lo:hi]
        return v if c["codec"] == 1 else (base + v).astype(np.float32)

    def agg(dst, base, parts):
        if len(parts) == 1:
            dst[:] = parts[0]
            return
        acc = np.zeros_like(base)
        for p in parts:
            acc += (p - base).astype(np.float32)
        dst[:] = base + acc / np.float32(len(parts))

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
            agg(new[lo:lo + column], S[lo:lo + column], parts)
    sp = cfg["spes"]
    alpha = 0.0
    if step_end > 0 and step_end % sp["merge_interval"] == 0:
        alpha = max(0.0, sp["merge_alpha"] * (1 - step_end / sp["merge_decay_steps"]))
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


def states_and_contribs(cl, k=0):
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
            contribs.setdefault(c["round"], []).append(c)
    return states, contribs


def scenario_agree_and_reference():
    cfg = run_config(merge_alpha=0.2, merge_interval=10)
    cl = Cluster(BUILD, 3, cfg, tokens())
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


def scenario_kill_node():
    cfg = run_config()
    cl = Cluster(BUILD, 3, cfg, tokens())
    try:
        cl.start_all()
        st = cl.wait_round(3)
        cols2 = [m["columns"] for m in st["members"] if m["id"] == "node-2"][0]
        cl.kill(2)
        killed_at = cl.status()["round"]
        st = cl.wait("a round committed without node-2",
                     lambda: re.search(r"round (\d+) committed: 2 contribution", cl.log(0)), 60)
        r = int(st.group(1))
        check(r >= killed_at - 1, "after kill -9 the round commits at its deadline without the node (round %d)" % r)
        cl.wait_round(r + 2)
        states, _ = states_and_contribs(cl)
        shared, column, _ = layout_sizes(cfg)
        same = all(np.array_equal(states[r][shared + e * column: shared + (e + 1) * column],
                                  states[r + 1][shared + e * column: shared + (e + 1) * column]) for e in cols2)
        check(r in states and r + 1 in states and same,
              "the killed node's columns %s keep their values in that round" % cols2)
        cl.start(2)
        target = cl.status()["round"] + 3
        cl.wait_round(target)
        cl.stop_all()
        a0, a2 = cl.applied(0), cl.applied(2)
        late = [x for x in a2 if x >= target - 2 and x in a0]
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
        check("fetching the agreed state" in cl.log(2), "it fetched the agreed state from its peers")
    finally:
        cl.cleanup()


def scenario_coordinator_restart():
    cfg = run_config()
    cl = Cluster(BUILD, 3, cfg, tokens())
    try:
        cl.start_all()
        cl.wait_round(3)
        cl.kill(0)
        before = max(cl.applied(1))
        cl.start(0)
        cl.wait_round(before + 4, timeout=90)
        cl.stop_all()
        a = [cl.applied(k) for k in range(3)]
        later = [x for x in a[1] if x > before + 1 and x in a[0] and x in a[2]]
        check(later and all(a[0][x] == a[1][x] == a[2][x] for x in later),
              "coordinator killed and restarted: the run goes on from round %d and agrees (%s)" % (before, later))
        check("resumed run" in cl.log(0), "the coordinator resumed its persisted run")
    finally:
        cl.cleanup()


def scenario_bad_contributions():
    cfg = run_config()
    cl = Cluster(BUILD, 3, cfg, tokens(), extra={1: {"fault": "nan"}, 2: {"fault": "wrong-hash"}})
    try:
        cl.start_all()
        cl.wait_round(3)
        st = cl.status()
        cl.stop_all()
        refused = " ".join(st.get("last_round", {}).get("refused", []) if isinstance(
            st.get("last_round", {}).get("refused"), list) and st["last_round"]["refused"] and isinstance(
            st["last_round"]["refused"][0], str) else [r.get("reason", "") for r in st.get("last_round", {}).get(
                "refused", [])])
        log0 = cl.log(0)
        check(re.search(r"contribution of node-1 refused: .*NaN", log0) is not None,
              "a contribution with NaN is refused")
        check(re.search(r"contribution of node-2 refused", log0) is not None, "a contribution with a wrong hash is refused")
        check("node-1" in refused and "node-2" in refused, "both refusals are shown in status: " + refused[:200])
        check(st["round"] >= 3, "the run goes on (round %d)" % st["round"])
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


SCENARIOS = [scenario_agree_and_reference, scenario_kill_node, scenario_join_mid_run,
             scenario_coordinator_restart, scenario_bad_contributions, scenario_one_node_is_standalone]


def main():
    for s in SCENARIOS:
        if ONLY and s.__name__.replace("scenario_", "") not in ONLY:
            continue
        print("== " + s.__name__, flush=True)
        t0 = time.time()
        try:
            s()
        except Exception as e:  # a scenario that cannot finish is a failure, not a crash of the suite
            check(False, "%s raised %s: %s" % (s.__name__, type(e).__name__, e))
        print("   (%.1f s)" % (time.time() - t0), flush=True)
    print("%d passed, %d failed" % (passed, len(failures)))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
