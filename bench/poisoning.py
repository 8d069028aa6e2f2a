#!/usr/bin/python3
"""bench/poisoning.py: what a poisoning member does to a SPES run, and what the defences keep.

Runs local clusters of 3 real daemons (tests/cluster/cluster.py, mutual TLS on loopback) on the
default corpus (scripts/corpus) with the demo run config (deploy/configs/demo.json) for a number
of rounds, and prints per case node-0's mean training loss over the last two rounds (node-0 is
honest and trains from the agreed state each round, so a ruined state shows in its loss), the
rounds committed, the contributions refused, and, from the coordinator's log, the spread of the
honest delta norms (per round: the largest over the median, for the shared block and the columns).
Cases: honest (no attacker); then node-2 with fault "scaled" (every delta x 1000, within the
per-value bound) under: no defence (spes.norm_bound 0, mean), the norm bound (default 10),
trimmed_mean (trim 0.34, bound off) and clipped_mean (clip 2, bound off).
usage: bench/poisoning.py [--build DIR] [--rounds N] [--out DIR] [--only NAME,...]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))
from cluster import Cluster  # noqa: E402

CASES = [
    ("honest", None, {}),
    ("attack, no defence", "scaled", {"norm_bound": 0}),
    ("attack, norm bound 10", "scaled", {}),
    ("attack, trimmed_mean", "scaled", {"norm_bound": 0, "aggregation": "trimmed_mean", "trim": 0.34}),
    ("attack, clipped_mean", "scaled", {"norm_bound": 0, "aggregation": "clipped_mean", "clip": 2.0}),
]


def corpus(out, build):
    path = os.path.join(out, "corpus.bin")
    if not os.path.exists(path):
        os.makedirs(out, exist_ok=True)
        subprocess.run([os.path.join(ROOT, "scripts", "corpus"), path], check=True, capture_output=True,
                       env=dict(os.environ, SPESD=os.path.join(build, "daemon", "spesd")))
    return np.fromfile(path, dtype="<u2")


def run(name, fault, spes, tokens, args):
    cfg = json.load(open(os.path.join(ROOT, "deploy", "configs", "demo.json")))
    cfg["spes"].update(spes)
    slow = {"round_deadline_ms": 120000, "failure_timeout_ms": 30000}
    extra = {k: dict(slow) for k in range(3)}
    if fault:
        extra[2]["fault"] = fault
    cl = Cluster(args.build, 3, cfg, tokens, extra=extra, prefix="spes-poison-")
    try:
        cl.start_all()
        cl.wait_round(args.rounds, timeout=60 * args.rounds)
        cl.stop_all()
        log0 = cl.log(0)
        with open(cl.path("node-0.out"), errors="replace") as f:
            losses = [float(x) for x in re.findall(r"^step \d+ loss (\S+)$", f.read(), re.M)]
        last = losses[-2 * cfg["spes"]["sync_interval"]:]
        spread = [(float(a), float(b)) for a, b in re.findall(
            r"delta norms of 3 contributions: shared median \S+ max \S+ \(x(\S+)\), columns median \S+ max \S+ "
            r"\(x(\S+)\)", log0)]
        return dict(name=name, loss=statistics.mean(last) if last else float("nan"),
                    rounds=len(re.findall(r"round \d+ committed", log0)),
                    refused=len(re.findall(r"contribution of node-\d+ refused", log0)), spread=spread)
    finally:
        cl.cleanup()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--out", default=os.path.join(ROOT, "run", "poisoning"))
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    tokens = corpus(args.out, args.build)
    only = [x for x in args.only.split(",") if x]
    print("%-24s %10s %7s %8s" % ("case", "loss", "rounds", "refused"), flush=True)
    for name, fault, spes in CASES:
        if only and not any(o in name for o in only):
            continue
        r = run(name, fault, spes, tokens, args)
        print("%-24s %10.4g %7d %8d" % (r["name"], r["loss"], r["rounds"], r["refused"]), flush=True)
        if name == "honest" and r["spread"]:
            sh = [a for a, _ in r["spread"]]
            co = [b for _, b in r["spread"]]
            print("  honest delta norm spread over %d rounds (largest / median of the round): shared median "
                  "x%.3g max x%.3g; columns median x%.3g max x%.3g" % (len(sh), statistics.median(sh), max(sh),
                                                                     statistics.median(co), max(co)), flush=True)


if __name__ == "__main__":
    main()
