"""tests/hostile/test_insider.py: what an insider can do through the control socket and the coordinator.

A run of real daemons on loopback (node-0 coordinates, node-1 joins; node-2's
config pins the wrong coordinator name). Checks, against the running daemons:
  control  node messages sent through node-0's control socket (a Join as a
           made-up node, a Leave for node-1, a Heartbeat, a BlobWant) are refused
           by name and change nothing: no new member, node-1 stays active and
           the rounds go on;
  export   a remote operator (TLS, operator certificate) exports a checkpoint
           only to STATE_DIR/exports/NAME: an absolute path, "..", "a/b" are
           refused and nothing is written there; a name is written under
           node-0's state directory;
  release  a Join of protocol version 1 over TLS and a version-1 request on the
           control socket are answered with an Error in version 1 that names
           both versions; the coordinator logs it; no member is added;
  push     pushing blobs to the coordinator over TLS (docs/design.md,
           "Reachability"): a blob larger than a contribution is refused at its
           manifest, one whose bytes differ from its manifest at its last piece
           (and is not held), an operator certificate may not push; an honest
           push is held under its hash and counted; the rounds go on;
  pin      node-2, whose coordinator_name is node-1, refuses node-0's
           certificate: it logs the mismatch and never becomes a member.
usage: test_insider.py BUILD_DIR   (prints one line per check; exit 1 on a failure)
"""
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cluster"))
from cluster import Cluster  # noqa: E402
from test_cluster import run_config, tokens  # noqa: E402
from test_hostile import PROTOCOL, Attacker, envelope  # noqa: E402

BUILD = sys.argv[1]
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def field(num, value):
    """One protobuf field: a string/bytes (length-delimited) or an unsigned int (varint)."""
    def varint(v):
        out = b""
        while True:
            b = v & 0x7F
            v >>= 7
            out += bytes([b | (0x80 if v else 0)])
            if not v:
                return out
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    value = value.encode() if isinstance(value, str) else value
    return varint(num << 3 | 2) + varint(len(value)) + value


def control(cl, kind, payload, version=PROTOCOL):
    """Sends one envelope through node-0's control socket; returns (reply type, reply payload,
    reply version)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(cl.path("node-0/control.sock"))
    s.sendall(envelope(kind, payload, version))
    got = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += b
    s.close()
    if len(got) < 12:
        return 0, b"", 0
    ver, kind, n = struct.unpack(">HHI", got[4:12])
    return kind, got[12:12 + n], ver


JOIN, HEARTBEAT, LEAVE, STATUS_REQUEST, BLOB_WANT, ERROR, ACK, BLOB_PUSH, BLOB_PIECE = 1, 4, 5, 9, 16, 18, 19, 20, 21


def error_message(body):
    """The message (field 2) of an Error payload."""
    i = 0
    while i < len(body):
        key, i = body[i], i + 1
        n = shift = 0
        while True:
            b, i = body[i], i + 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if key & 7 == 2:
            if key >> 3 == 2:
                return body[i:i + n].decode(errors="replace")
            i += n
    return ""


def refused(cl, kind, payload, text, what):
    t, body, _ = control(cl, kind, payload)
    msg = error_message(body) if t == ERROR else "reply type %d" % t
    check(t == ERROR and text in msg, "%s: refused (%s)" % (what, msg))


def members(cl):
    st = cl.status() or {}
    return {m["name"]: m["state"] for m in st.get("members", [])}


def scenario_control(cl):
    r0 = cl.status()["round"]
    refused(cl, JOIN, field(1, "made-up") + field(2, "tls+tcp://127.0.0.1:1") + field(3, "x") + field(4, 1),
            "Join needs a node certificate over TLS", "control socket: Join as a made-up node")
    refused(cl, LEAVE, field(1, 1) + field(2, "bye"), "Leave needs a node certificate over TLS",
            "control socket: Leave for node-1")
    refused(cl, HEARTBEAT, field(1, 1) + field(2, r0), "Heartbeat needs a node certificate over TLS",
            "control socket: Heartbeat for node-1")
    refused(cl, BLOB_WANT, field(1, b"\x00" * 32), "BlobWant needs a node certificate over TLS",
            "control socket: BlobWant")
    m = members(cl)
    check(sorted(m) == ["node-0", "node-1"], "no member was added: %s" % sorted(m))
    check(m.get("node-1") == "active", "node-1 is still active (%s)" % m.get("node-1"))
    cl.wait_round(r0 + 2)
    m = members(cl)
    check(m.get("node-1") == "active", "the run went on with node-1 active (round %d -> %d)"
          % (r0, cl.status()["round"]))
    check("node-1 leaves the run" not in cl.log(0) and "made-up" not in cl.log(0),
          "the coordinator's log has no Leave of node-1 and no made-up node")


def scenario_export(cl):
    p = cl.ctl("checkpoint", "save", "--wait", "--json")
    ck = [c for c in json.loads(p.stdout)["checkpoints"] if c.get("complete")]
    ckid = ck[-1]["id"]

    def remote(*args):
        return subprocess.run([cl.spesctl, "--url", cl.url(0), "--ca", cl.path("pki/ca.crt"),
                               "--cert", cl.path("pki/operator.crt"), "--key", cl.path("pki/operator.key")]
                              + list(args), capture_output=True, text=True, timeout=60)
    outside = cl.path("outside")
    for out in (outside, "../escaped", "a/b", ".."):
        p = remote("checkpoint", "export", ckid, "--out", out)
        check(p.returncode != 0 and "a remote export takes one name" in p.stderr,
              "remote export --out %s refused: %s" % (out, p.stderr.strip()[:160]))
    check(not os.path.exists(outside) and not os.path.exists(cl.path("node-0/escaped"))
          and not os.path.exists(cl.path("escaped")), "nothing was written outside exports/")
    p = remote("checkpoint", "export", ckid, "--out", "hf-1")
    dest = cl.path("node-0/exports/hf-1")
    check(p.returncode == 0 and os.path.exists(os.path.join(dest, "model.safetensors"))
          and dest in p.stdout, "remote export --out hf-1 writes STATE_DIR/exports/hf-1: " + p.stdout.strip()[:160])
    local = cl.path("local-export")
    p = cl.ctl("checkpoint", "export", ckid, "--out", local, check=False)
    check(p.returncode == 0 and os.path.exists(os.path.join(local, "model.safetensors")),
          "the local control socket still exports to an absolute path")


def scenario_old_release(cl):
    """A daemon and a spesctl of protocol version 1 are told, in their own version, why they are refused."""
    a = Attacker(cl, cl.ports[0], who="node-2")
    t = a.sp()
    join = field(1, "node-2") + field(2, "tls+tcp://127.0.0.1:1") + field(3, "spes 0.1") + field(4, 1)
    Attacker.send(t, 1, envelope(JOIN, join, version=1))
    t.settimeout(10)
    env = Attacker.reply(t)
    t.close()
    ver, kind = struct.unpack(">HH", env[4:8])
    msg = error_message(env[12:]) if kind == ERROR else ""
    want = "protocol version 1 refused: this daemon speaks protocol 3"
    check(env[:4] == b"SPES" and ver == 1 and kind == ERROR and want in msg,
          "a version-1 Join over TLS: an Error in version 1 (got version %d type %d: %s)" % (ver, kind, msg))
    logged = "request from node-2 refused: it speaks protocol 1 and this daemon 3"
    check(logged in cl.log(0), "the coordinator logged: " + logged)
    check("node-2" not in members(cl), "node-2 did not become a member")
    kind, body, ver = control(cl, STATUS_REQUEST, b"", version=1)
    msg = error_message(body) if kind == ERROR else ""
    check(ver == 1 and kind == ERROR and want in msg,
          "a version-1 status request on the control socket: an Error in version 1 (%s)" % msg)
    t, _, _ = control(cl, STATUS_REQUEST, b"")
    check(t == 10, "a version-2 status request is answered (reply type %d)" % t)


def manifest(blob, chunk=4096, total=None, hashes=None):
    """A blob's manifest (proto/bulk.h: "SPMF", version 1, blob hash, size, chunk size, chunk hashes)."""
    total = len(blob) if total is None else total
    n = (total + chunk - 1) // chunk
    if hashes is None:
        hashes = b"".join(hashlib.sha256(blob[i:i + chunk]).digest() for i in range(0, total, chunk))
    return (b"SPMF" + struct.pack(">HH", 1, 0) + hashlib.sha256(blob).digest()
            + struct.pack(">QII", total, chunk, n) + hashes)


def scenario_push(cl):
    """What a member can push to the coordinator, over TLS with a node certificate."""
    def caller(who):
        t = Attacker(cl, cl.ports[0], who=who).sp()
        t.settimeout(20)
        rid = [0]

        def call(kind, payload):
            rid[0] += 1
            Attacker.send(t, rid[0], envelope(kind, payload))
            env = Attacker.reply(t)
            k = struct.unpack(">H", env[6:8])[0]
            return k, (error_message(env[12:]) if k == ERROR else env[12:])
        return t, call
    r0 = cl.status()["round"]
    t, call = caller("node-2")
    big = manifest(b"x", chunk=16 << 20, total=1 << 30, hashes=b"\0" * 32 * 64)
    k, msg = call(BLOB_PUSH, field(1, big))
    check(k == ERROR and "this daemon takes 1 to" in str(msg), "a 1 GiB push is refused at its manifest (%s)" % msg)
    blob = os.urandom(50000)
    h = hashlib.sha256(blob).hexdigest()
    lie = bytearray(blob)
    lie[40000] ^= 1
    k, msg = call(BLOB_PUSH, field(1, manifest(blob)))
    check(k == ACK, "a 50 KB push is taken (reply type %d)" % k)
    piece = 32 << 10

    def pieces(data):
        return [call(BLOB_PIECE, field(1, bytes.fromhex(h)) + field(2, off) + field(3, bytes(data[off:off + piece])))
                for off in range(0, len(data), piece)]
    got = pieces(lie)
    check(got[0][0] == ACK and got[-1][0] == ERROR and "does not match its manifest" in str(got[-1][1])
          and not any(os.path.basename(p) == h for p in cl.blobs(0)),
          "bytes that differ from the manifest: refused at the last piece, nothing held (%s)" % (got[-1][1],))
    k, _ = call(BLOB_PUSH, field(1, manifest(blob)))
    got = pieces(blob)
    t.close()
    check(k == ACK and got[-1][0] == ACK and b"complete" in got[-1][1]
          and any(os.path.basename(p) == h for p in cl.blobs(0)),
          "the honest push of the same blob is held in node-0's store under its hash")
    t, call = caller("operator")
    k, msg = call(BLOB_PUSH, field(1, manifest(blob)))
    t.close()
    check(k == ERROR and "operator" in str(msg), "an operator certificate may not push (%s)" % msg)
    check("blob push: node-2's blob" in cl.log(0) and "blob push from 'node-2' refused" in cl.log(0),
          "the coordinator logged the blob it took and the pushes it refused")
    cl.wait_round(r0 + 2)
    check(members(cl).get("node-1") == "active", "the rounds went on (round %d -> %d)" % (r0, cl.status()["round"]))


def scenario_pin(cl):
    cl.start(2)
    t0 = time.time()
    want = "expected peer 'node-1', got 'node-0'"
    while time.time() - t0 < 20 and want not in cl.log(2):
        time.sleep(0.3)
    check(want in cl.log(2), "node-2 (coordinator_name node-1) refuses node-0's certificate: " + want)
    time.sleep(2)
    check("node-2" not in members(cl), "node-2 never became a member")
    check("coordinator pinned: node-1 at " in cl.log(2), "node-2 logged the coordinator name it expects")
    cl.kill(2)


def main():
    cfg = run_config(sync=5)
    cfg["train"]["max_steps"] = 20000  # outlasts the checks on a slow machine
    cl = Cluster(BUILD, 3, cfg, tokens(), min_nodes=2, prefix="spes-insider-",
                 extra={2: {"coordinator_name": "node-1"}})
    try:
        cl.start(0)
        cl.start(1)
        cl.wait_round(2)
        scenario_control(cl)
        scenario_old_release(cl)
        scenario_export(cl)
        scenario_push(cl)
        scenario_pin(cl)
    finally:
        cl.cleanup()
    print("%d failure(s)" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
