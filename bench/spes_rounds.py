#!/usr/bin/python3
"""bench/spes_rounds.py: bytes on the wire per node per round and time per round of a
SPES run on loopback, against the SPES reference scheme on the same model.

The reference code of the paper syncs through a central parameter server: every node
uploads its full fp32 trainable state (shared weights + its own experts) and
downloads the full model each round. spes nodes exchange only contributions, peer to
peer, as content-addressed blobs (fp32 values, bf16 deltas or q8ef int8 deltas). This runs N real
daemons (mutual TLS on 127.0.0.1) on the bench model for a few rounds with each
codec and reads what every node fetched and served from its log.
usage: bench/spes_rounds.py BUILD_DIR [NODES] [ROUNDS]
"""
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "cluster"))
from cluster import Cluster  # noqa: E402
import numpy as np  # noqa: E402

BUILD = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 4
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def layout(m):
    V, H, I, L, E = m["vocab_size"], m["hidden_size"], m["intermediate_size"], m["num_hidden_layers"], m["num_experts"]
    NH, NKV = m["num_attention_heads"], m["num_key_value_heads"]
    D = H // NH
    shared = V * H + L * (2 * H + NH * D * H * 2 + 2 * NKV * D * H + NH * D + NKV * D + E * H) + H + V * H
    return shared, L * 3 * I * H, shared + E * L * 3 * I * H


def run(codec):
    cfg = json.load(open(os.path.join(ROOT, "deploy/configs/bench.json")))
    cfg["spes"] = {"sync_interval": 2, "merge_interval": 1000, "merge_alpha": 0.0, "codec": codec}
    cfg.pop("data", None)
    text = open("/usr/share/games/fortunes/fortunes", "rb").read() if os.path.exists(
        "/usr/share/games/fortunes/fortunes") else bytes(range(256)) * 4000
    toks = np.frombuffer(text, dtype=np.uint8)
    cl = Cluster(BUILD, N, cfg, toks, prefix="spes-bench-",
                 extra={k: {"round_deadline_ms": 600000, "failure_timeout_ms": 60000}
                        for k in range(N)})
    try:
        cl.start_all()
        cl.wait_round(ROUNDS + 1, timeout=1800)
        cl.stop_all()
        recv, served, train, sync = [], [], [], []
        for k in range(N):
            rows = re.findall(r"round (\d+) applied: .*received (\d+), served (\d+) in all; train ([\d.]+) s, "
                              r"sync ([\d.]+) s", cl.log(k))
            rows = [tuple(map(float, r)) for r in rows]
            # per-round rates from the last rounds (round 0 includes start-up)
            first, last = rows[1], rows[-1]
            nr = last[0] - first[0]
            recv.append((last[1] - first[1]) / nr)
            served.append((last[2] - first[2]) / nr)
            train += [r[3] for r in rows[1:] if r[3] > 0]
            sync += [r[4] for r in rows[1:] if r[3] > 0]
        return np.mean(recv), np.mean(served), np.median(train), np.median(sync)
    finally:
        cl.cleanup()


def main():
    cfg = json.load(open(os.path.join(ROOT, "deploy/configs/bench.json")))["model"]
    shared, column, total = layout(cfg)
    E = cfg["num_experts"]
    own = E / N if N <= E else 1
    ref_up = (shared + own * column) * 4
    ref_down = total * 4
    print("bench model: %d parameters (shared %d, %d per expert column); %d nodes, %.1f columns each"
          % (total, shared, column, N, own))
    print("| scheme | bytes up / node / round | bytes down / node / round | total | vs reference | "
          "train s / round | sync s / round |")
    print("|---|---|---|---|---|---|---|")
    print("| SPES reference (parameter server, fp32) | %.1f MB | %.1f MB | %.1f MB | 1.00 | - | - |"
          % (ref_up / 1e6, ref_down / 1e6, (ref_up + ref_down) / 1e6))
    for codec in ("fp32", "bf16", "q8ef", "topk"):
        r, s, t, y = run(codec)
        print("| spes p2p, %s | %.1f MB | %.1f MB | %.1f MB | %.2f | %.2f | %.2f |"
              % (codec, s / 1e6, r / 1e6, (r + s) / 1e6, (r + s) / (ref_up + ref_down), t, y))
    print("(the reference's server itself moves %d x (up + down) = %.0f MB per round; spes has no such node)"
          % (N, N * (ref_up + ref_down) / 1e6))


if __name__ == "__main__":
    main()
