"""tests/soak/soak.py: the chaos soak. A run of real daemons on loopback meets faults at random
for a while, and its invariants are checked the whole time.

Faults, one at a time, each followed by a pause (the run must go on between them):
  kill-node    kill -9 a node that is not the coordinator, restart it 1-3 s later;
  kill-coord   kill -9 the coordinator's daemon, restart it 1-3 s later;
  stall-disk   the next fsync of a daemon's durable files takes 1.5-3 s (tests/cluster/faults.c);
  clock-step   a daemon's wall clock steps an hour back or forward (stays until the next step);
  slow-reader  a member certificate ('mallory') asks a daemon for 20 chunks and never reads;
  idle-conns   40 TCP connections that send nothing and 5 half TLS handshakes, held 8 s;
  big-request  2 connections that each announce a 256 MiB request and send 4 MiB of it;
  poison       a member ('node-N', one more than the run's nodes, daemon fault "scaled") joins and
               sends contributions whose deltas are 1000 times an honest one's for 10-20 s, then
               leaves: the norm bound must refuse every one of them.
With --wan PROFILE (root: network namespaces and TUN devices) every daemon runs in the WAN lab
(docs/wan-lab.md) on PROFILE's links, and the faults that need the loopback address (slow-reader,
idle-conns, big-request: an attacker on the host cannot reach the lab) give way to the links':
  link-cut     a node's link loses every packet for 3-15 s (the coordinator's too), then mends;
  link-loss    a node's link loses 5-20 % of its packets each way for 10-20 s.

Invariants, checked continuously and at the end:
  agreement    every round applied by several daemons has one state digest (read from every log,
               across restarts);
  no loss      the coordinator's round never goes back, across its restarts;
  progress     the run commits a round within every 90 s window after a fault;
  bounded      the RSS and the open descriptors of every daemon stay bounded (RSS under 3x its
               first sample plus 64 MiB, descriptors under 256);
  checkpoints  a checkpoint taken during the soak exports and loads (`spesd eval`);
  no poison    no contribution of the poisoning member is committed: the coordinator refuses each
               one it hears of, and every honest node's training loss stays below 8 (a byte model's
               loss starts near 5.5; one poisoned round sends it into the hundreds).

usage: soak.py BUILD_DIR [--seconds S] [--seed N] [--nodes N] [--report FILE] [--wan PROFILE]
The short versions run in CI (ctest chaos_soak and, where namespaces work, chaos_soak_wan: 120 s
each); the long one by hand, e.g.
  python3 tests/soak/soak.py build --seconds 1800 --report soak-report.json
Prints one line per fault and per check, then a report; exit 1 if an invariant broke.
"""
import argparse
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cluster"))
sys.path.insert(0, os.path.join(HERE, "..", "hostile"))

ap = argparse.ArgumentParser()
ap.add_argument("build")
ap.add_argument("--seconds", type=float, default=150)
ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
ap.add_argument("--nodes", type=int, default=3)
ap.add_argument("--report", default="")
ap.add_argument("--wan", default="", help="run in the WAN lab on this profile (root)")
args = ap.parse_args()
sys.argv = [sys.argv[0], args.build]  # test_cluster and test_hostile read BUILD from argv

from cluster import Cluster  # noqa: E402
from test_cluster import faults_env, run_config, tokens  # noqa: E402
from test_hostile import Attacker, chunk_request, rss_kb  # noqa: E402

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)
    return ok


def fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return 0


class Soak:
    def __init__(self, n, rng):
        self.rng = rng
        self.honest = n  # nodes 0 .. n-1; node n is the poisoning member, up only during a poison fault
        cfg = run_config(sync=5)
        cfg["train"]["max_steps"] = 10 ** 6  # the run outlasts any soak
        extra = {k: {"failure_timeout_ms": 6000, "round_deadline_ms": 15000} for k in range(n + 1)}
        extra[n]["fault"] = "scaled"
        wan = None
        if args.wan:
            with open(args.wan) as f:
                self.profile = json.load(f)
            wan = (args.wan, os.path.join(args.build, "tests", "wan", "spes-wanrelay"))
        self.cl = Cluster(args.build, n + 1, cfg, tokens(), min_nodes=n, prefix="spes-soak-", extra=extra, wan=wan)
        cl = self.cl
        self.poison_rounds = set()  # rounds whose contribution of the poisoner the coordinator refused
        self.poisoned = set()  # honest members seen training at a poisoned loss
        subprocess.run([cl.spesctl, "cert", "issue", "mallory", "--role", "node", "--ca", cl.path("pki"),
                        "--out", cl.path("pki")], check=True, capture_output=True)
        self.trigger = {k: cl.path("stall-%d" % k) for k in range(n)}
        self.clock = {k: cl.path("clock-%d" % k) for k in range(n)}
        for k in range(n):
            cl.env[k] = faults_env(SPES_TEST_STALL_FILE=self.trigger[k], SPES_TEST_STALL_MATCH="node-%d/" % k,
                                   SPES_TEST_CLOCK_FILE=self.clock[k])
        self.injected = {}
        self.first_rss = {}
        self.worst = {"rss_kb": 0, "fds": 0}
        self.max_round = -1
        self.last_progress = time.time()
        self.longest_gap = 0.0  # seconds without a new round, over the soak
        self.checkpoint = None

    # ---- invariants ----
    def digests(self):
        """round -> {digest prefixes} over every daemon's whole log."""
        seen = {}
        for k in range(self.cl.n):
            if not os.path.exists(self.cl.path("node-%d.log" % k)):
                continue  # the poisoning member never came: it has no log
            for r, d in re.findall(r"round (\d+) applied: state digest (\w+)", self.cl.log(k)):
                seen.setdefault(int(r), set()).add(d)
        return seen

    def observe(self):
        try:
            st = self.cl.status()
        except subprocess.TimeoutExpired:
            st = None  # the coordinator is down or stalled: status waits for it
        if st:
            r = st.get("round", -1)
            if r < self.max_round:
                check(False, "no loss: the coordinator's round went back from %d to %d" % (self.max_round, r))
            for m in st.get("members", []):
                loss = m.get("loss") or 0
                if m.get("name") != "node-%d" % self.honest and loss > 8 and m["name"] not in self.poisoned:
                    self.poisoned.add(m["name"])
                    check(False, "no poison: %s trains at loss %.1f (round %d)" % (m["name"], loss, r))
            if r > self.max_round:
                self.max_round = r
                self.longest_gap = max(self.longest_gap, time.time() - self.last_progress)
                self.last_progress = time.time()
        for k, p in self.cl.procs.items():
            if p.poll() is not None:
                continue
            rss, nfd = rss_kb(p.pid), fds(p.pid)
            key = (k, p.pid)
            if key not in self.first_rss and rss:
                self.first_rss[key] = rss
            self.worst["rss_kb"] = max(self.worst["rss_kb"], rss)
            self.worst["fds"] = max(self.worst["fds"], nfd)
            base = self.first_rss.get(key, rss)
            if rss > 3 * base + 64 * 1024 or nfd > 256:
                check(False, "bounded: node-%d holds %d KiB RSS (first %d KiB) and %d descriptors" %
                      (k, rss, base, nfd))
        if time.time() - self.last_progress > 90:
            check(False, "progress: no round committed for 90 s (round %d)" % self.max_round)
            self.last_progress = time.time()

    def pause(self, seconds):
        t_end = time.time() + seconds
        while time.time() < t_end:
            self.observe()
            time.sleep(0.5)

    # ---- faults ----
    def restart_later(self, k):
        self.pause(self.rng.uniform(1, 3))
        self.cl.start(k)

    def kill_node(self):
        k = self.rng.randrange(1, self.honest)
        self.cl.kill(k)
        self.restart_later(k)
        return "node-%d" % k

    def kill_coord(self):
        self.cl.kill(0)
        self.restart_later(0)
        return "node-0"

    def stall_disk(self):
        k = self.rng.randrange(self.honest)
        ms = self.rng.randint(1500, 3000)
        with open(self.trigger[k], "w") as f:
            f.write(str(ms))
        return "node-%d, %d ms" % (k, ms)

    def clock_step(self):
        k = self.rng.randrange(self.honest)
        step = self.rng.choice([-3600, 3600, 0])
        with open(self.clock[k] + ".tmp", "w") as f:
            f.write(str(step))
        os.rename(self.clock[k] + ".tmp", self.clock[k])
        return "node-%d, %+d s" % (k, step)

    def attacker(self):
        k = self.rng.randrange(self.honest)
        return k, Attacker(self.cl, self.cl.ports[k])

    def slow_reader(self):
        k, a = self.attacker()
        held = [p for p in self.cl.blobs(k) if len(os.path.basename(p)) == 64]
        if not held:
            return "node-%d held no blob yet: skipped" % k
        h = bytes.fromhex(os.path.basename(held[-1]))
        try:
            t = a.sp()
            for i in range(20):
                a.send(t, i + 1, chunk_request(h, 0))
        except (OSError, ssl.SSLError) as e:
            return "node-%d refused it at once (%s)" % (k, type(e).__name__)
        self.pause(6)
        t.close()
        return "node-%d" % k

    def idle_conns(self):
        k, a = self.attacker()
        socks = []
        try:
            for _ in range(40):
                socks.append(a.tcp())
            for _ in range(5):
                s = a.tcp()
                s.sendall(b"\x16\x03\x01\x00\x05\x01\x00")  # the start of a ClientHello, never finished
                socks.append(s)
        except OSError:
            pass
        self.pause(8)
        for s in socks:
            s.close()
        return "node-%d, %d connections" % (k, len(socks))

    def big_request(self):
        k, a = self.attacker()
        conns = []
        try:
            for i in range(2):
                t = a.sp()
                t.sendall((256 << 20).to_bytes(8, "big") + (0x80000001 + i).to_bytes(4, "big"))
                t.sendall(b"\0" * (4 << 20))
                conns.append(t)
        except (OSError, ssl.SSLError):
            pass  # the daemon closed it at the length header
        self.pause(3)
        for t in conns:
            t.close()
        return "node-%d" % k

    def refused_poison(self):
        """The rounds in which the coordinator refused the poisoner's contribution, across its restarts."""
        me = "node-%d" % self.honest
        return {int(r) for r in re.findall(r"round (\d+): contribution of %s refused: " % me, self.cl.log(0))}

    def poison(self):
        k = self.honest
        before = self.refused_poison()
        self.cl.start(k)
        self.pause(self.rng.uniform(10, 20))
        self.cl.kill(k, signal.SIGTERM)  # it leaves; its columns are dealt again
        got = self.refused_poison() - before
        self.poison_rounds |= got
        return "node-%d, %d contribution(s) refused" % (k, len(got))

    def links(self, k, link, seconds):
        """Gives node k's link the fields of link for seconds (the rest of the profile unchanged)."""
        bad = json.loads(json.dumps(self.profile))
        bad.setdefault("nodes", {}).setdefault(str(k), {}).update(link)
        answer = self.cl.set_links(bad)
        if not answer.startswith("reloaded"):
            check(False, "the relay takes the changed profile: " + answer)
        self.pause(seconds)
        answer = self.cl.set_links(self.profile)
        if not answer.startswith("reloaded"):
            check(False, "the relay takes the profile back: " + answer)

    def link_cut(self):
        k = self.rng.randrange(self.honest)
        t = self.rng.uniform(3, 15)
        self.links(k, {"loss": 1}, t)
        return "node-%d, %.1f s" % (k, t)

    def link_loss(self):
        k = self.rng.randrange(self.honest)
        loss, t = self.rng.uniform(0.05, 0.2), self.rng.uniform(10, 20)
        self.links(k, {"loss": round(loss, 3), "burst_len": 0}, t)
        return "node-%d, %.0f %% for %.1f s" % (k, 100 * loss, t)

    FAULTS = ("kill_node", "kill_coord", "stall_disk", "clock_step", "slow_reader", "idle_conns", "big_request",
              "poison")
    WAN_FAULTS = ("kill_node", "kill_coord", "stall_disk", "clock_step", "poison", "link_cut", "link_loss")

    def take_checkpoint(self):
        # a checkpoint completes once its round is committed and persisted: under faults on a
        # loaded machine a round can take 40 s or more
        t0 = time.time()
        try:
            p = self.cl.ctl("checkpoint", "save", "--wait", "--json", check=False, timeout=150)
            done = [c for c in json.loads(p.stdout)["checkpoints"] if c.get("complete")]
        except (ValueError, KeyError, subprocess.TimeoutExpired) as e:
            print("checkpoint not taken after %.0f s: %s" % (time.time() - t0, str(e)[:120]), flush=True)
            return
        if p.returncode == 0 and done:
            self.checkpoint = done[-1]["id"]
            print("checkpoint %s taken in %.0f s" % (self.checkpoint, time.time() - t0), flush=True)
        else:
            print("checkpoint not taken after %.0f s: %s" % (time.time() - t0, p.stderr.strip()[:120]), flush=True)

    def run(self, seconds):
        cl = self.cl
        for k in range(self.honest):
            cl.start(k)
        cl.wait_round(2, timeout=120)
        self.last_progress = time.time()
        self.observe()
        t0 = time.time()
        n = 0
        while time.time() - t0 < seconds:
            kind = self.rng.choice(self.WAN_FAULTS if args.wan else self.FAULTS)
            what = getattr(self, kind)()
            self.injected[kind] = self.injected.get(kind, 0) + 1
            n += 1
            print("fault %3d  %-12s %s (t=%.0f s, round %d)" % (n, kind.replace("_", "-"), what, time.time() - t0,
                                                               self.max_round), flush=True)
            self.pause(self.rng.uniform(2, 6))
            if n % 8 == 4 or (n > 4 and not self.checkpoint):
                self.take_checkpoint()  # and again after each fault until one is taken
        # the end: every honest daemon up, the run goes on, then the checks
        for k in range(self.honest):
            if k not in cl.procs or cl.procs[k].poll() is not None:
                cl.start(k)
        for k in range(self.honest):
            try:
                os.unlink(self.clock[k])
            except FileNotFoundError:
                pass
        r_end = self.max_round
        try:
            late = cl.wait_applied(list(range(self.honest)), r_end + 1, timeout=120)
        except TimeoutError:
            late = None
        self.observe()
        return n, late


def wan_possible():
    """Why the WAN lab cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "the WAN lab needs root (network namespaces, TUN devices)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    probe = "spes-soakprobe-%d" % os.getpid()
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "ip netns add does not work here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def main():
    rng = random.Random(args.seed)
    why = wan_possible() if args.wan else None
    if why:
        print("SKIP: " + why, flush=True)
        return 77
    print("chaos soak: %d nodes, %.0f s, seed %d%s" % (args.nodes, args.seconds, args.seed,
                                                      ", WAN lab " + args.wan if args.wan else ""), flush=True)
    s = Soak(args.nodes, rng)
    t0 = time.time()
    report = {}
    try:
        n, late = s.run(args.seconds)
        seen = s.digests()
        split = {r: sorted(d) for r, d in seen.items() if len(d) > 1}
        check(not split, "agreement: every round applied by several daemons has one digest "
                         "(%d rounds; split: %s)" % (len(seen), split or "none"))
        check(bool(late), "progress: after the last fault every daemon applies a new round (%s)" % late)
        check(s.max_round > 0, "no loss: the coordinator's round only went forward (reached %d; longest wait "
                               "for a round %.1f s)" % (s.max_round, s.longest_gap))
        check(s.worst["fds"] <= 256, "bounded: at most %d descriptors, %d KiB RSS in any daemon" %
              (s.worst["fds"], s.worst["rss_kb"]))
        if s.injected.get("poison"):
            check(s.poison_rounds and not s.poisoned,
                  "no poison: the coordinator refused the poisoner's contribution in %d round(s), and no honest "
                  "node's loss went above 8" % len(s.poison_rounds))
        if s.checkpoint:
            out = s.cl.path("export")
            p = s.cl.ctl("checkpoint", "export", s.checkpoint, "--out", out, check=False)
            e = subprocess.run([s.cl.spesd, "eval", "--checkpoint", out, "--data", s.cl.path("data.bin"), "--batch",
                                "2", "--seq", "32", "--batches", "2"], capture_output=True, text=True)
            check(p.returncode == 0 and e.returncode == 0,
                  "checkpoints: %s exports and loads (%s)" % (s.checkpoint, (e.stdout or e.stderr).strip()[:80]))
        else:
            check(args.seconds < 60, "checkpoints: one was taken during the soak")
        report = {"seed": args.seed, "nodes": args.nodes, "wan": args.wan, "seconds": round(time.time() - t0, 1),
                  "faults_injected": n, "faults_by_kind": s.injected, "rounds": s.max_round,
                  "rounds_checked": len(seen), "longest_gap_s": round(s.longest_gap, 1), "max_rss_kb": s.worst["rss_kb"], "max_fds": s.worst["fds"],
                  "checkpoint": s.checkpoint, "poison_refused": len(s.poison_rounds), "failures": failures}
    finally:
        keep = bool(failures)
        s.cl.cleanup(keep=keep)
        if keep:
            print("the cluster's files are kept in " + s.cl.dir)
    print("report: " + json.dumps(report, sort_keys=True))
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
    print("%d fault(s) injected, %d survived; %d failure(s)" %
          (report.get("faults_injected", 0), report.get("faults_injected", 0) if not failures else 0, len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
