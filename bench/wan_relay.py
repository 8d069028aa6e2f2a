#!/usr/bin/env python3
"""bench/wan_relay.py [RELAY] [MBIT] [SECONDS]: spes-wanrelay's own throughput.

Four namespaces behind one relay, every link MBIT each way (default 100) and
10 ms to the internet; four bulk TCP flows at once, node i to node i+1 mod 4,
so every uplink and every downlink carries one flow at the configured rate.
Prints each flow's payload rate as a ratio to the configured rate (TCP/IP
headers cap it at 1448/1500 = 0.965), the relay's CPU use, and the relay's
drops by cause. Needs root."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

relay = sys.argv[1] if len(sys.argv) > 1 else "build/tests/wan/spes-wanrelay"
mbit = float(sys.argv[2]) if len(sys.argv) > 2 else 100.0
secs = float(sys.argv[3]) if len(sys.argv) > 3 else 8.0
N, NET = int(os.environ.get("WAN_FLOWS", "4")), 201
ns = ["spes-wanbench-%d-%d" % (os.getpid(), k) for k in range(N)]
tmp = tempfile.mkdtemp(prefix="spes-wanbench-")
SINK = r'''
import json, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 5001)); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); n = 0; t0 = t1 = None
while True:
    b = c.recv(1 << 20)
    if not b: break
    t1 = time.monotonic(); t0 = t0 or t1; n += len(b)
print(json.dumps({"bytes": n, "seconds": t1 - t0}), flush=True)
'''
SEND = r'''
import socket, sys, time
c = socket.create_connection((sys.argv[1], 5001)); buf = b"x" * 65536; end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end: c.sendall(buf)
c.close()
'''


def cpu_s(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


rp = None
try:
    for x in ns:
        subprocess.run(["ip", "netns", "add", x], check=True)
    prof = os.path.join(tmp, "p.json")
    json.dump({"default": {"up_mbit": mbit, "down_mbit": mbit, "delay_ms": 10, "loss": 0, "buffer_ms": 100}},
              open(prof, "w"))
    rt = os.environ.get("WAN_RT", "10")  # WAN_RT=0: the relay at normal priority
    rp = subprocess.Popen([relay, "--profile", prof, "--netns", ",".join(ns), "--net", str(NET), "--stats",
                           os.path.join(tmp, "stats.json"), "--rt", rt], stdout=subprocess.PIPE, text=True)
    assert rp.stdout.readline().startswith("ready")
    sinks = []
    for k in range(N):
        p = subprocess.Popen(["ip", "netns", "exec", ns[k], sys.executable, "-c", SINK, "10.%d.%d.2" % (NET, k)],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "listening"
        sinks.append(p)
    c0, t0 = cpu_s(rp.pid), time.monotonic()
    senders = [subprocess.Popen(["ip", "netns", "exec", ns[k], sys.executable, "-c", SEND,
                                 "10.%d.%d.2" % (NET, (k + 1) % N), str(secs)]) for k in range(N)]
    for s in senders:
        s.wait()
    c1, t1 = cpu_s(rp.pid), time.monotonic()
    rates = []
    for k, p in enumerate(sinks):
        r = json.loads(p.communicate(timeout=30)[0])
        rates.append(r["bytes"] * 8 / r["seconds"] / 1e6)
    rp.send_signal(signal.SIGTERM)
    out = rp.communicate(timeout=10)[0]
    stats = json.loads(out.split("stats ", 1)[1])
    drops = {c: sum(x[d][c] for x in stats["nodes"] for d in ("up", "down")) for c in ("drop_queue", "drop_loss")}
    print("spes-wanrelay (--rt %s), %d namespaces, %d flows at once, %.0f Mbit/s links, %.0f s, CPUs: %d, "
          "load average %.1f" % (rt, N, N, mbit, secs, os.cpu_count(), os.getloadavg()[0]))
    for k, r in enumerate(rates):
        print("  flow %d -> %d: %6.1f Mbit/s of payload = %.3f of the link rate" % (k, (k + 1) % N, r, r / mbit))
    print("  total %.1f Mbit/s; min flow ratio %.3f; relay CPU %.0f %% of one core; drops %s"
          % (sum(rates), min(rates) / mbit, 100 * (c1 - c0) / (t1 - t0), drops))
finally:
    if rp and rp.poll() is None:
        rp.kill()
    for x in ns:
        subprocess.run(["ip", "netns", "del", x], capture_output=True)
    subprocess.run(["rm", "-rf", tmp])
