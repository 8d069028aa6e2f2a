"""tests/wan/test_wanrelay.py RELAY: the WAN lab's link emulator, measured.

Three namespaces of its own behind spes-wanrelay. With a delay profile: a TCP
connect takes one round trip (+-10 %, the fastest of 7), a pair's own delay
overrides the sum of the nodes' delays, a bulk TCP transfer reaches 85-100 %
of the sender's uplink rate, and the relay's counters add up (among
themselves, and against the TUN devices' own packet counts). With a loss
profile: UDP loss is within 3 sigma of the configured rate (Bernoulli, and
Gilbert-Elliott whose losses come in bursts of the configured mean length),
equal to the relay's own loss count. SIGHUP reloads the profile: loss 1 cuts a
link, the old profile mends it, a profile with a mistake is refused and leaves
the links as they were. Without root, /dev/net/tun or ip netns it
prints why and exits 77 (skipped)."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

RELAY = sys.argv[1]
NET = 200  # 10.200.K.2: no lab of local-cluster uses it (they take 64..127)
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def skip(why):
    print("SKIP: " + why, flush=True)
    sys.exit(77)


def sh(*a, **kw):
    return subprocess.run(list(a), check=True, capture_output=True, text=True, **kw)


def addr(k):
    return "10.%d.%d.2" % (NET, k)


# Programs run inside a namespace (python3 -c): each prints one JSON line.
SERVER = r'''
import json, socket, sys, time
kind, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if kind == "tcp-accept":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((host, port)); s.listen(64)
    print("listening", flush=True)
    for _ in range(count):
        c, _ = s.accept(); c.close()
elif kind == "tcp-sink":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((host, port)); s.listen(1)
    print("listening", flush=True)
    c, _ = s.accept(); n = 0; t0 = t1 = None
    while True:
        b = c.recv(1 << 20)
        if not b: break
        t1 = time.monotonic(); t0 = t0 or t1; n += len(b)
    print(json.dumps({"bytes": n, "seconds": t1 - t0}), flush=True)
else:  # udp-sink: sequence numbers received until 1.5 s of silence
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # 33: SO_RCVBUFFORCE, past rmem_max
    s.bind((host, port)); print("listening", flush=True)
    got = []; s.settimeout(5)
    try:
        while True:
            got.append(int.from_bytes(s.recv(2048)[:4], "big")); s.settimeout(1.5)
    except socket.timeout:
        pass
    print(json.dumps({"seqs": got}), flush=True)
'''
CLIENT = r'''
import json, socket, sys, time
kind, host, port, arg = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
if kind == "tcp-connect":
    ms = []
    for _ in range(int(arg)):
        t0 = time.perf_counter(); c = socket.create_connection((host, port)); ms.append((time.perf_counter() - t0) * 1e3)
        c.close(); time.sleep(0.05)
    print(json.dumps({"ms": ms}))
elif kind == "tcp-send":
    c = socket.create_connection((host, port)); buf = b"x" * 65536; end = time.monotonic() + arg
    while time.monotonic() < end: c.sendall(buf)
    c.close(); print("{}")
else:  # udp-send: arg packets of 200 bytes, 250 at a time every 25 ms (below every rate: no queue drops)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(int(arg)):
        s.sendto(i.to_bytes(4, "big") + b"u" * 196, (host, port))
        if i % 250 == 249: time.sleep(0.025)
    print("{}")
'''


class Lab:
    def __init__(self, n):
        self.ns = ["spes-wantest-%d-%d" % (os.getpid(), k) for k in range(n)]
        self.dir = tempfile.mkdtemp(prefix="spes-wantest-")
        self.relay = None
        for ns in self.ns:
            sh("ip", "netns", "add", ns)

    def write(self, profile):
        path = os.path.join(self.dir, "profile.json")
        with open(path + ".tmp", "w") as f:
            json.dump(profile, f)
        os.rename(path + ".tmp", path)
        return path

    def reload(self, profile):
        """Rewrites the profile and sends SIGHUP; returns the relay's answer (one line)."""
        self.write(profile)
        self.relay.send_signal(signal.SIGHUP)
        return self.relay.stdout.readline().strip()

    def start(self, profile):
        path = self.write(profile)
        self.stats = os.path.join(self.dir, "stats.json")
        self.relay = subprocess.Popen([RELAY, "--profile", path, "--netns", ",".join(self.ns), "--net", str(NET),
                                       "--stats", self.stats, "--seed", "7", "--rt", "10"],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.relay.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError("spes-wanrelay: " + line + self.relay.stdout.read())

    def counters(self):
        """The relay's counters (SIGUSR1 writes the stats file)."""
        if os.path.exists(self.stats):
            os.unlink(self.stats)
        self.relay.send_signal(signal.SIGUSR1)
        for _ in range(100):
            if os.path.exists(self.stats):
                return json.load(open(self.stats))
            time.sleep(0.02)
        raise RuntimeError("no stats after SIGUSR1")

    def tun(self, k):
        """wan0's own packet counts in namespace k."""
        out = json.loads(sh("ip", "-n", self.ns[k], "-s", "-j", "link", "show", "wan0").stdout)[0]["stats64"]
        return out["tx"]["packets"], out["rx"]["packets"]

    def stop(self):
        if self.relay:
            self.relay.send_signal(signal.SIGTERM)
            out = self.relay.communicate(timeout=10)[0]
            code = self.relay.returncode
            self.relay = None
            check(code == 0 and "stats {" in out, "the relay prints its counters and exits 0 on SIGTERM (exit %s%s)"
                  % (code, "" if code == 0 else ": " + out[-2000:]))

    def cleanup(self):
        try:
            self.stop()
        finally:
            for ns in self.ns:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            subprocess.run(["rm", "-rf", self.dir])

    def pair(self, server_k, client_k, kind_s, kind_c, port, count, arg):
        srv = subprocess.Popen(["ip", "netns", "exec", self.ns[server_k], sys.executable, "-c", SERVER, kind_s,
                                addr(server_k), str(port), str(count)], stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "listening"
        cli = sh("ip", "netns", "exec", self.ns[client_k], sys.executable, "-c", CLIENT, kind_c, addr(server_k),
                 str(port), str(arg), timeout=120)
        out = srv.communicate(timeout=60)[0].strip()
        return json.loads(cli.stdout), (json.loads(out) if out else {})


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def test_delay_rate_counters(lab):
    # one-way delay i -> j = delay_i + delay_j (0-1: 25 ms, 1-2: 20 ms) unless pairs names it (0-2: 40 ms)
    lab.start({"default": {"up_mbit": 40, "down_mbit": 100, "delay_ms": 10, "loss": 0, "buffer_ms": 100},
               "nodes": {"1": {"delay_ms": 15}, "2": {"delay_ms": 5}}, "pairs": {"0-2": 40}})
    for (a, b, want) in ((0, 1, 50.0), (1, 2, 40.0), (0, 2, 80.0)):
        got, _ = lab.pair(b, a, "tcp-accept", "tcp-connect", 5100 + b, 7, 7)
        # the fastest of 7: the relay never delivers early, and on a busy machine a late wake-up of the
        # relay or of python only adds (the median is printed too)
        m = min(got["ms"])
        check(abs(m - want) <= 0.1 * want, "connect %d -> %d takes one round trip: %.1f ms (median %.1f of %s), want "
              "%.0f +-10 %%%s" % (a, b, m, median(got["ms"]), ["%.1f" % x for x in got["ms"]], want,
                                  " (pair delay)" if b - a == 2 else ""))
    _, sink = lab.pair(1, 0, "tcp-sink", "tcp-send", 5200, 1, 4)
    mbit = sink["bytes"] * 8 / sink["seconds"] / 1e6
    check(0.85 * 40 <= mbit <= 40, "bulk TCP 0 -> 1 over a 40 Mbit/s uplink: %.1f Mbit/s of payload (%.0f %%)"
          % (mbit, mbit / 40 * 100))
    time.sleep(0.5)  # every packet in flight has arrived
    tun = [lab.tun(k) for k in range(3)]
    c = lab.counters()
    nodes = c["nodes"]
    check(all(nodes[k]["read"] == tun[k][0] for k in range(3)),
          "the relay read every packet each namespace sent into its TUN (%s vs %s)"
          % ([x["read"] for x in nodes], [t[0] for t in tun]))
    check(all(nodes[k]["down"]["delivered"] == tun[k][1] for k in range(3)),
          "each namespace's TUN received exactly what the relay delivered (%s)" % [t[1] for t in tun])
    passed_up = sum(x["up"]["packets"] - x["up"]["drop_queue"] - x["up"]["drop_loss"] for x in nodes)
    arrived = sum(x["down"]["packets"] for x in nodes)
    out_down = sum(x["down"]["packets"] - x["down"]["drop_queue"] - x["down"]["drop_loss"] for x in nodes)
    delivered = sum(x["down"]["delivered"] for x in nodes)
    rows = [sum(r) for r in c["pair_sent"]]
    cols = [sum(c["pair_delivered"][i][j] for i in range(3)) for j in range(3)]
    check(c["in_flight"] == 0 and passed_up == arrived and out_down == delivered + c["drop_tx"] and
          rows == [x["up"]["packets"] for x in nodes] and cols == [x["down"]["delivered"] for x in nodes] and
          all(x["read"] == x["up"]["packets"] + x["other"] for x in nodes),
          "the counters add up: %d packets left uplinks, %d reached downlinks, %d delivered, per-pair sums agree"
          % (passed_up, arrived, delivered))
    check(sum(x["up"]["bytes"] for x in nodes) > 4 * 40e6 / 8 * 0.85, "the bytes of the bulk transfer are counted")
    lab.stop()


def loss_runs(seqs, n):
    got = set(seqs)
    runs, cur = [], 0
    for i in range(n):
        if i not in got:
            cur += 1
        elif cur:
            runs.append(cur)
            cur = 0
    if cur:
        runs.append(cur)
    return n - len(got), runs


def test_loss(lab):
    # node 1's link loses 3 % each way (Bernoulli); node 2's 3 % in Gilbert-Elliott bursts of 4 packets
    n, p = 20000, 0.03
    lab.start({"default": {"up_mbit": 100, "down_mbit": 100, "delay_ms": 1, "loss": 0, "buffer_ms": 200},
               "nodes": {"1": {"loss": p}, "2": {"loss": p, "burst_len": 4, "burst_loss": 1}}})
    for k, kind, factor in ((1, "Bernoulli", 1.0), (2, "Gilbert-Elliott", None)):
        _, sink = lab.pair(k, 0, "udp-sink", "udp-send", 5300 + k, 1, n)
        lost, runs = loss_runs(sink["seqs"], n)
        if factor is None:  # variance of the time a two-state chain spends bad: n pi (1-pi) (1+l)/(1-l), l = 1-p-r
            r = 0.25
            q = p * r / (1 - p)
            lam = 1 - q - r
            factor = (1 + lam) / (1 - lam)
        sigma = (n * p * (1 - p) * factor) ** 0.5
        check(abs(lost - n * p) <= 3 * sigma, "%s loss 0 -> %d: %d of %d lost (%.2f %%), want %.0f +- %.0f (3 sigma)"
              % (kind, k, lost, n, 100.0 * lost / n, n * p, 3 * sigma))
        mean_run = sum(runs) / len(runs) if runs else 0
        if kind == "Bernoulli":
            check(mean_run < 1.2, "Bernoulli losses are isolated (mean run %.2f packets)" % mean_run)
        else:
            check(3.0 <= mean_run <= 5.2, "Gilbert-Elliott losses come in bursts: mean run %.2f packets (want 4)"
                  % mean_run)
        time.sleep(0.3)
        c = lab.counters()
        d = c["nodes"][k]["down"]
        check(d["drop_loss"] == lost and d["drop_queue"] == 0 and c["nodes"][0]["up"]["drop_queue"] == 0,
              "the relay counted exactly the %d losses the receiver saw (it counted %d), and no queue drops"
              % (lost, d["drop_loss"]))
    lab.stop()


def test_reload(lab):
    # SIGHUP reads the profile again: loss 1 cuts node 1's link, and the old profile brings it back;
    # a profile with a mistake is refused and leaves the links as they were
    base = {"default": {"up_mbit": 100, "down_mbit": 100, "delay_ms": 1, "loss": 0, "buffer_ms": 200}}
    lab.start(base)
    n = 500
    _, sink = lab.pair(1, 0, "udp-sink", "udp-send", 5400, 1, n)
    check(len(sink["seqs"]) == n, "before the cut: %d of %d packets arrive" % (len(sink["seqs"]), n))
    line = lab.reload(dict(base, nodes={"1": {"loss": 1}}))
    check(line.startswith("reloaded"), "SIGHUP reloads the profile (%s)" % line)
    _, sink = lab.pair(1, 0, "udp-sink", "udp-send", 5401, 1, n)
    check(len(sink["seqs"]) == 0, "loss 1 cuts node 1's link: %d of %d packets arrive" % (len(sink["seqs"]), n))
    line = lab.reload(base)
    _, sink = lab.pair(1, 0, "udp-sink", "udp-send", 5402, 1, n)
    check(line.startswith("reloaded") and len(sink["seqs"]) == n,
          "reloading the old profile mends the link: %d of %d packets arrive" % (len(sink["seqs"]), n))
    line = lab.reload({"default": {"loss": 2}})
    _, sink = lab.pair(1, 0, "udp-sink", "udp-send", 5403, 1, n)
    check("reload refused" in line and "default.loss = 2 is outside" in line and len(sink["seqs"]) == n,
          "a profile with a mistake is refused by name and the links stay (%s; %d of %d arrive)"
          % (line, len(sink["seqs"]), n))
    lab.stop()


def main():
    if os.geteuid() != 0:
        skip("the WAN lab needs root (network namespaces, TUN devices)")
    if not os.path.exists("/dev/net/tun"):
        skip("no /dev/net/tun")
    probe = "spes-wantest-probe-%d" % os.getpid()
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        skip("ip netns add does not work here")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    lab = Lab(3)
    try:
        test_delay_rate_counters(lab)
        test_loss(lab)
        test_reload(lab)
    finally:
        lab.cleanup()
    left = [ns for ns in lab.ns if os.path.exists("/run/netns/" + ns)]
    check(not left, "the test's namespaces are gone")
    if failures:
        print("%d check(s) failed" % len(failures))
        sys.exit(1)
    print("all WAN relay checks passed")


main()
