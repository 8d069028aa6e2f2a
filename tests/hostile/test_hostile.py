"""tests/hostile/test_hostile.py: issue 14's transport attacks against real daemons.

A 2-node run on loopback (node-0 coordinates); an attacker holding a valid node
certificate ('mallory', not a member) connects from another loopback address
(127.0.0.2) and, one attack at a time:
  slow   asks for 20 chunks on one connection with a 4 KiB receive window and
         reads no reply until the send deadline has passed;
  big    opens 4 connections that each announce a 256 MiB request and send 16 MiB of it;
  idle   opens 300 TCP connections that send nothing and 20 that stop halfway
         through the TLS handshake.
Each time the run must go on: `spesctl status` answered within 2 s, rounds
committed, node-1 not marked failed; and the attack must end: its connections
closed (within the handshake deadline, 5 s, for the idle ones), the
coordinator's RSS not grown by what was announced.
usage: test_hostile.py BUILD_DIR [attack...]   (prints one line per check; exit 1 on a failure)
"""
import os
import socket
import ssl
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cluster"))
from cluster import Cluster  # noqa: E402
from test_cluster import run_config, tokens  # noqa: E402

BUILD = sys.argv[1]
ONLY = sys.argv[2:]
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


PROTOCOL = 3  # SPES_PROTO_VERSION (proto/proto.h)


def envelope(kind, payload=b"", version=PROTOCOL):
    return b"SPES" + struct.pack(">HHI", version, kind, len(payload)) + payload


def chunk_request(h, index):
    # ChunkRequest{blob_hash = h, first_chunk = index, chunk_count = 1}
    return envelope(17, b"\x0a\x20" + h + b"\x10" + bytes([index]) + b"\x18\x01")


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Attacker:
    def __init__(self, cl, port, who="mallory"):
        self.port = port
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.load_verify_locations(cl.path("pki/ca.crt"))
        self.ctx.load_cert_chain(cl.path("pki/%s.crt" % who), cl.path("pki/%s.key" % who))

    def tcp(self, rcvbuf=0):
        s = socket.socket()
        if rcvbuf:  # before connect: a small window the kernel does not grow
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", self.port))
        return s

    def sp(self, rcvbuf=0):
        """A TLS connection with SP negotiated as a req0 peer."""
        t = self.ctx.wrap_socket(self.tcp(rcvbuf))
        t.sendall(b"\x00SP\x00\x00\x30\x00\x00")
        got = b""
        while len(got) < 8:
            got += t.recv(8 - len(got))
        return t

    @staticmethod
    def frame(rid, body):
        return struct.pack(">QI", 4 + len(body), 0x80000000 | rid) + body

    @staticmethod
    def send(t, rid, body):
        t.sendall(Attacker.frame(rid, body))

    @staticmethod
    def reply(t):
        """One SP reply: its body after the request id (the envelope)."""
        def exactly(n):
            got = b""
            while len(got) < n:
                b = t.recv(n - len(got))
                if not b:
                    raise EOFError("the connection ended")
                got += b
            return got
        (n,) = struct.unpack(">Q", exactly(8))
        return exactly(n)[4:]


def closed(sock, wait):
    """Whether the server ended the connection within wait seconds."""
    sock.settimeout(wait)
    t0 = time.time()
    try:
        while time.time() - t0 < wait:
            if not sock.recv(1 << 20):
                return True
    except (socket.timeout, ssl.SSLError, OSError) as e:
        return not isinstance(e, socket.timeout)
    return False


def keeps_running(cl, seconds, what):
    """Polls status for `seconds`: every answer within 2 s, rounds advance, node-1 stays a member."""
    t_end = time.time() + seconds
    r0 = (cl.status() or {}).get("round", -1)
    worst, bad, failed = 0.0, 0, False
    while time.time() < t_end:
        t0 = time.time()
        st = cl.status()
        worst = max(worst, time.time() - t0)
        bad += st is None
        if st:
            failed |= any(m.get("state") in ("failed", "FAILED", 4) and m.get("name") == "node-1"
                          for m in st.get("members", []))
        time.sleep(0.3)
    r1 = (cl.status() or {}).get("round", -1)
    check(bad == 0 and worst < 2.0, "%s: spesctl status answered every time (slowest %.2f s)" % (what, worst))
    check(r1 > r0, "%s: the run went on (round %d -> %d)" % (what, r0, r1))
    check(not failed, "%s: node-1 was never marked failed" % what)


def attack_slow(cl, a):
    """20 chunk requests in one write on a connection with a 4 KiB receive window
    that is never read: the replies cannot all leave, so the daemon must close it,
    for the 17th request in flight or for a reply not taken within the send
    deadline (SPES_NET_SEND_TIMEOUT_MS, 30 s). Nothing is read before that
    deadline has passed, since reading would let the replies leave."""
    held = [p for p in cl.blobs(0) if len(os.path.basename(p)) == 64]
    held.sort(key=os.path.getsize)
    h = bytes.fromhex(os.path.basename(held[-1]))
    t0 = time.time()
    t = a.sp(rcvbuf=4096)
    t.sendall(b"".join(a.frame(i + 1, chunk_request(h, 0)) for i in range(20)))
    keeps_running(cl, 12, "slow reader")
    time.sleep(max(0.0, t0 + 35 - time.time()))  # past the send deadline, still unread
    check(closed(t, 20), "slow reader: the daemon closed its connection")
    t.close()


def attack_big(cl, a):
    pid = cl.procs[0].pid
    rss0 = rss_kb(pid)
    conns, sent = [], 0
    junk = b"\x00" * (1 << 20)
    for _ in range(4):
        t = a.sp()
        t.sendall(struct.pack(">Q", 256 << 20))
        try:
            for _ in range(16):
                t.sendall(junk)
                sent += 1
        except (ssl.SSLError, OSError):
            pass
        conns.append(t)
    time.sleep(1.0)
    grown = (rss_kb(pid) - rss0) / 1024.0
    check(grown < 32, "big requests: the coordinator's RSS grew by %.1f MiB (%d MiB sent of 4 x 256 MiB announced)"
          % (grown, sent))
    check(all(closed(t, 3) for t in conns), "big requests: every such connection was closed")
    for t in conns:
        t.close()
    keeps_running(cl, 10, "big requests")


def attack_idle(cl, a):
    socks = [a.tcp() for _ in range(300)]
    half = []
    for _ in range(20):
        s = a.tcp()
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 16)  # half a ClientHello
        half.append(s)
    t0 = time.time()
    keeps_running(cl, 3, "idle connections")
    ends = []
    lock = threading.Lock()

    def watch(s):
        c = closed(s, 20)
        with lock:
            ends.append(time.time() - t0 if c else None)
    th = [threading.Thread(target=watch, args=(s,)) for s in socks + half]
    for x in th:
        x.start()
    for x in th:
        x.join()
    done = [e for e in ends if e is not None]
    check(len(done) == len(ends) and max(done) < 9.0,
          "idle connections: %d of %d closed, the last after %.1f s (handshake deadline 5 s)"
          % (len(done), len(ends), max(done) if done else -1))
    for s in socks + half:
        s.close()


def main():
    cfg = run_config(sync=5)
    cfg["train"]["max_steps"] = 20000  # the run must outlast the attacks on a slow machine ("the run went on")
    cl = Cluster(BUILD, 2, cfg, tokens(), prefix="spes-hostile-")
    try:
        import subprocess
        subprocess.run([cl.spesctl, "cert", "issue", "mallory", "--role", "node", "--ca", cl.path("pki"),
                        "--out", cl.path("pki")], check=True, capture_output=True)
        cl.start_all()
        cl.wait_round(2)
        a = Attacker(cl, cl.ports[0])
        for name, fn in (("slow", attack_slow), ("big", attack_big), ("idle", attack_idle)):
            if not ONLY or name in ONLY:
                fn(cl, a)
    finally:
        cl.cleanup()
    print("%d failure(s)" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
