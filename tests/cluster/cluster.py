"""tests/cluster/cluster.py: start real spesd daemons on loopback for tests.

A Cluster makes a run CA and certificates with spesctl, writes one daemon
config per node (fresh ports, its own state directory), starts and kills
daemons, and reads what they did: logs, `spesctl status --json`, and the
blobs in each node's content-addressed store.

With wan=(PROFILE, RELAY) every daemon runs in a network namespace of its
own behind spes-wanrelay (the WAN lab, docs/wan-lab.md; root only): node K
is reached at 10.A.K.2:7600, the links follow PROFILE, and set_links()
changes them while the run goes on (the relay reads its profile again on
SIGHUP). spesctl still reaches every daemon through its control socket.
"""
import glob
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

import numpy as np


LAST_WARNINGS = []  # what the last cleaned-up cluster's daemons warned about


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Cluster:
    def __init__(self, build, n, run, data_tokens, min_nodes=None, prefix="spes-cluster-", extra=None, wan=None):
        self.build = build
        self.env = {}  # node -> extra environment variables for its daemon (set before start)
        self.spesd = os.path.join(build, "daemon", "spesd")
        self.spesctl = os.path.join(build, "client", "spesctl")
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.n = n
        self.procs = {}
        self.relay = None
        self.netns = []
        if wan:
            self.wan_up(*wan)
            self.ports = {k: 7600 for k in range(n)}
        else:
            self.ports = {k: free_port() for k in range(n)}
        self.run_cfg = run
        with open(self.path("run.json"), "w") as f:
            json.dump(run, f)
        np.asarray(data_tokens, dtype=np.uint16).tofile(self.path("data.bin"))
        ctl = lambda *a: subprocess.run([self.spesctl] + list(a), check=True, capture_output=True)
        ctl("ca", "init", "--dir", self.path("pki"), "--name", "test")
        for k in range(n):
            ctl("cert", "issue", "node-%d" % k, "--role", "node", "--ca", self.path("pki"), "--out", self.path("pki"))
        ctl("cert", "issue", "operator", "--role", "operator", "--ca", self.path("pki"), "--out", self.path("pki"))
        for k in range(n):
            cfg = {"name": "node-%d" % k, "listen": self.url(k) if k == 0 or not wan else "tls+tcp://0.0.0.0:7600",
                   "coordinator": "" if k == 0 else self.url(0), "coordinator_name": "node-0",
                   "ca": self.path("pki/ca.crt"), "cert": self.path("pki/node-%d.crt" % k),
                   "key": self.path("pki/node-%d.key" % k), "run_config": self.path("run.json"),
                   "data": self.path("data.bin"), "data_parts": n, "state_dir": self.path("node-%d" % k),
                   "threads": 1, "heartbeat_ms": 200, "failure_timeout_ms": 2500, "round_deadline_ms": 8000,
                   "min_nodes": min_nodes or n}
            if wan:
                cfg["advertise"] = self.url(k)  # workers bind every address of their namespace
            cfg.update((extra or {}).get(k, {}))
            with open(self.path("node-%d.json" % k), "w") as f:
                json.dump(cfg, f)

    def path(self, p):
        return os.path.join(self.dir, p)

    def url(self, k):
        if self.netns:
            return "tls+tcp://10.%d.%d.2:7600" % (self.net, k)
        return "tls+tcp://127.0.0.1:%d" % self.ports[k]

    # ---- the WAN lab ----
    def wan_up(self, profile, relay):
        self.net = 128 + os.getpid() % 64  # local-cluster's labs take 64..127, test_wanrelay 200
        self.netns = ["spes-c%d-%d" % (os.getpid(), k) for k in range(self.n)]
        self.profile = self.path("wan.json")
        shutil.copy(profile, self.profile)
        for ns in self.netns:
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        log = open(self.path("wanrelay.log"), "w")
        self.relay = subprocess.Popen([relay, "--profile", self.profile, "--netns", ",".join(self.netns), "--net",
                                       str(self.net), "--stats", self.path("wan-stats.json"), "--rt", "10"],
                                      stdout=subprocess.PIPE, stderr=log, text=True)
        line = self.relay.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError("spes-wanrelay: %s %s" % (line, open(self.path("wanrelay.log")).read()))

    def set_links(self, profile):
        """Gives the lab's links a new profile (a dict) at once; returns the relay's answer."""
        with open(self.profile + ".tmp", "w") as f:
            json.dump(profile, f)
        os.rename(self.profile + ".tmp", self.profile)
        self.relay.send_signal(signal.SIGHUP)
        return self.relay.stdout.readline().strip()

    def wan_down(self):
        if self.relay:
            self.relay.send_signal(signal.SIGTERM)
            try:
                self.relay.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.relay.kill()
                self.relay.communicate()
            self.relay = None
        for ns in self.netns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def start(self, k):
        out = open(self.path("node-%d.out" % k), "a")
        err = open(self.path("node-%d.log" % k), "a")
        env = dict(os.environ, **self.env[k]) if k in self.env else None
        inside = ["ip", "netns", "exec", self.netns[k]] if self.netns else []  # it execs: the pid is spesd's
        self.procs[k] = subprocess.Popen(inside + [self.spesd, "run", "--config", self.path("node-%d.json" % k)],
                                         stdout=out, stderr=err, env=env)

    def start_all(self):
        for k in range(self.n):
            self.start(k)

    def kill(self, k, sig=signal.SIGKILL):
        p = self.procs.pop(k, None)
        if p and p.poll() is None:
            p.send_signal(sig)
            try:
                return p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                return p.wait()
        return None

    def stop_all(self, sig=signal.SIGTERM):
        # the coordinator (node 0) last: a node whose coordinator is gone waits 3 s for its goodbye
        codes = {k: self.kill(k, sig) for k in sorted(self.procs, reverse=True)}
        return codes

    def cleanup(self, keep=False):
        self.stop_all(signal.SIGKILL)
        self.wan_down()
        global LAST_WARNINGS
        LAST_WARNINGS = self.warnings()
        if not keep and not os.environ.get("SPES_KEEP_CLUSTER"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def warnings(self, limit=40):
        """The warn and error lines of every node's log (the story of a failed scenario)."""
        lines = []
        for k in range(self.n):
            try:
                lines += [l for l in self.log(k).splitlines() if " warn: " in l or " error: " in l]
            except OSError:
                pass
        return lines[:limit] + (["... %d more" % (len(lines) - limit)] if len(lines) > limit else [])

    def log(self, k):
        with open(self.path("node-%d.log" % k), errors="replace") as f:
            return f.read()

    def ctl(self, *args, k=0, check=True, timeout=30):
        p = subprocess.run([self.spesctl, "--socket", self.path("node-%d/control.sock" % k)] + list(args),
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError("spesctl %s: %s" % (" ".join(args), p.stderr.strip()))
        return p

    def status(self, k=0):
        p = self.ctl("status", "--json", k=k, check=False)
        return json.loads(p.stdout) if p.returncode == 0 else None

    def wait(self, what, pred, timeout=60):
        t0 = time.time()
        while time.time() - t0 < timeout:
            try:
                v = pred()
            except (RuntimeError, json.JSONDecodeError, OSError):
                v = None
            if v:
                return v
            time.sleep(0.2)
        def notable(k):  # warnings, errors and checkpoint lines say more than the last rounds
            lines = [l for l in self.log(k).splitlines() if re.search(r" (warn|error):|checkpoint", l)]
            return "\n".join(lines[-10:])
        raise TimeoutError("timed out waiting for " + what + "\n" + "\n".join(
            "--- node-%d log tail ---\n%s\n--- node-%d warnings, errors, checkpoints ---\n%s" %
            (k, "\n".join(self.log(k).splitlines()[-15:]), k, notable(k))
            for k in range(self.n) if os.path.exists(self.path("node-%d.log" % k))))

    def wait_round(self, r, timeout=90):
        return self.wait("round %d" % r, lambda: (self.status() or {}).get("round", -1) >= r and self.status(),
                         timeout)

    def applied(self, k):
        """round -> digest prefix, from node k's log lines `round R applied: state digest X`."""
        return {int(r): d for r, d in re.findall(r"round (\d+) applied: state digest (\w+)", self.log(k))}

    def wait_applied(self, nodes, above, timeout=90):
        """Waits until every node in nodes logged an applied round > above; returns those rounds."""
        def common():
            logs = [self.applied(k) for k in nodes]
            rs = sorted(x for x in logs[0] if x > above and all(x in l for l in logs[1:]))
            return rs or None
        return self.wait("nodes %s to apply a round after %d" % (nodes, above), common, timeout)

    def blobs(self, k):
        return sorted(glob.glob(self.path("node-%d/node/blobs/*" % k)))


def read_state_blob(path):
    b = open(path, "rb").read()
    if not b.startswith(b"SPESSTATE1"):
        return None
    rnd, numel = struct.unpack_from("<QQ", b, 10)
    p = np.frombuffer(b, dtype="<f4", offset=26)
    return rnd, p if p.size == numel else None


def read_state_blob2(path):
    """(round, params, momentum) of a state blob that carries the outer momentum (SPESSTATE2)."""
    b = open(path, "rb").read()
    if not b.startswith(b"SPESSTATE2"):
        return None
    rnd, numel = struct.unpack_from("<QQ", b, 10)
    v = np.frombuffer(b, dtype="<f4", offset=26)
    return (rnd, v[:numel], v[numel:]) if v.size == 2 * numel else None


def q8_group(b, off, n):
    """The deltas of one q8ef group of n values at b[off:] (blocks of 128: f32 scale, int8 values;
    delta = q * scale), and the offset after it."""
    parts = []
    for at in range(0, n, 128):
        k = min(128, n - at)
        sc = np.frombuffer(b, dtype="<f4", offset=off, count=1)[0]
        q = np.frombuffer(b, dtype=np.int8, offset=off + 4, count=k)
        parts.append((q.astype(np.float32) * sc).astype(np.float32))
        off += 4 + k
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), off


def read_group(path):
    """A group blob of a sharded round (docs/design.md, "The sharded round"): its header fields and its
    values (fp32) or deltas (q8ef), or None."""
    b = open(path, "rb").read()
    if not b.startswith(b"SPESGRP1"):
        return None
    ver, kind, codec, rnd, node, shard, shards, offset, count, contributors = struct.unpack_from("<IIIqiIIQQI", b, 8)
    off = 60
    if codec == 1:
        vals = np.frombuffer(b, dtype="<f4", offset=off, count=count)
    elif codec == 3:
        vals, _ = q8_group(b, off, count)
    else:
        return None
    return dict(kind=kind, codec=codec, round=rnd, node=node, shard=shard, shards=shards, offset=offset,
                count=count, contributors=contributors, vals=vals)


def read_contribution(path):
    """(round, node, cols, codec, values, or deltas of bf16 and q8ef) of a contribution blob."""
    b = open(path, "rb").read()
    if not b.startswith(b"SPESCTB1"):
        return None
    ver, codec, rnd, node, ncols = struct.unpack_from("<IIqiI", b, 8)
    shared, column = struct.unpack_from("<QQ", b, 48)
    cols = list(struct.unpack_from("<%di" % ncols, b, 64))
    off = 64 + 4 * ncols
    n = shared + ncols * column
    if codec == 1:
        vals = np.frombuffer(b, dtype="<f4", offset=off, count=n)
    elif codec == 3:  # q8ef: per group
        parts = []
        for g in [shared] + [column] * ncols:
            v, off = q8_group(b, off, g)
            parts.append(v)
        vals = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    elif codec == 4:  # topk: per group, chunks of 4096: 4 f32 levels, k 12-bit indices, k 2-bit codes
        parts = []
        for g in [shared] + [column] * ncols:
            for at in range(0, g, 4096):
                ln = min(4096, g - at)
                k = min(64, ln)
                lv = np.frombuffer(b, dtype="<f4", offset=off, count=4)
                ib, cb = (12 * k + 7) // 8, (2 * k + 7) // 8
                ibits = int.from_bytes(b[off + 16:off + 16 + ib], "little")
                cbits = int.from_bytes(b[off + 16 + ib:off + 16 + ib + cb], "little")
                d = np.zeros(ln, np.float32)
                for j in range(k):
                    d[(ibits >> (12 * j)) & 0xfff] = lv[(cbits >> (2 * j)) & 3]
                parts.append(d)
                off += 16 + ib + cb
        vals = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    else:
        h = np.frombuffer(b, dtype="<u2", offset=off, count=n).astype(np.uint32) << 16
        vals = h.view(np.float32)
    return dict(round=rnd, node=node, cols=cols, codec=codec, vals=vals, shared=shared, column=column)
