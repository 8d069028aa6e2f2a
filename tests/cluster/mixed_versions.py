#!/usr/bin/python3
"""tests/cluster/mixed_versions.py: a run whose daemons are built from two
different trees of the same protocol version must still agree, round after round.

The protocol is the contract between builds, not the code: a volunteer who
upgrades spesd mid-run keeps training with peers that did not. This runs two
3-node clusters on loopback, one with an OTHER-build coordinator and this
build's nodes, one the other way round, and checks that every node applies the
same state digests and that the contributions of both builds were committed.
usage: mixed_versions.py BUILD_DIR OTHER_SPESD [ROUNDS]
  BUILD_DIR: this tree's build (daemon/spesd, client/spesctl)
  OTHER_SPESD: a spesd binary built from another commit of the same protocol version
  (spesd --version prints it; another version is refused at its first request)
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster  # noqa: E402
import numpy as np  # noqa: E402


def run_config():
    return {"model": {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts": 4,
                      "num_experts_per_tok": 2},
            "train": {"seq_len": 32, "batch_size": 4, "lr": 0.01, "warmup_steps": 2, "max_steps": 400, "seed": 5},
            "spes": {"sync_interval": 5, "merge_interval": 10, "merge_alpha": 0.2, "merge_decay_steps": 200,
                     "merge_topk": 1}}


def tokens(n=60000):
    text = b"Volunteers upgrade one at a time; the run goes on. "
    return np.frombuffer((text * (n // len(text) + 1))[:n], dtype=np.uint8)


class MixedCluster(Cluster):
    """A Cluster whose node k runs binaries[k]."""

    def __init__(self, build, binaries, *a, **kw):
        super().__init__(build, len(binaries), *a, **kw)
        self.binaries = binaries
        for k, b in enumerate(binaries):  # an older spesd may not know coordinator_name: leave it out there
            if os.path.realpath(b) != os.path.realpath(self.spesd):
                p = self.path("node-%d.json" % k)
                with open(p) as f:
                    cfg = json.load(f)
                cfg.pop("coordinator_name", None)
                with open(p, "w") as f:
                    json.dump(cfg, f)

    def start(self, k):
        own = self.spesd
        self.spesd = self.binaries[k]
        try:
            super().start(k)
        finally:
            self.spesd = own


def one(build, binaries, label, rounds):
    cl = MixedCluster(build, binaries, run_config(), tokens(), prefix="spes-mixed-")
    ok = True
    try:
        cl.start_all()
        cl.wait_round(rounds, timeout=180)
        cl.stop_all()
        logs = [cl.applied(k) for k in range(cl.n)]
        common = sorted(set(logs[0]).intersection(*logs[1:]))
        agree = len(common) >= rounds - 2 and all(len({l[r] for l in logs}) == 1 for r in common)
        print("%s %s: %d rounds applied by every node, digests %s" %
              ("ok  " if agree else "FAIL", label, len(common), "equal" if agree else "DIFFER"))
        ok &= agree
        mism = "MISMATCH" in cl.log(0)
        print("%s %s: the coordinator saw %s digest mismatch" % ("FAIL" if mism else "ok  ", label,
                                                                 "a" if mism else "no"))
        ok &= not mism
    except Exception as e:  # a run that cannot finish is a failure of the check
        print("FAIL %s: %s: %s" % (label, type(e).__name__, e))
        ok = False
        for line in cl.warnings():
            print("   | " + line)
    finally:
        cl.cleanup()
    return ok


def main():
    if len(sys.argv) < 3:
        print(__doc__.strip().splitlines()[-3], file=sys.stderr)
        sys.exit(2)
    build, other = sys.argv[1], os.path.abspath(sys.argv[2])
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    this = os.path.join(build, "daemon", "spesd")
    for p in (this, other):
        if not os.access(p, os.X_OK):
            print("mixed_versions: %s is not an executable spesd" % p, file=sys.stderr)
            sys.exit(2)
    results = [one(build, [other, this, this], "other-build coordinator, this build's nodes", rounds),
               one(build, [this, other, this], "this build's coordinator, an other-build node", rounds)]
    print("%d passed, %d failed" % (sum(results), len(results) - sum(results)))
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
