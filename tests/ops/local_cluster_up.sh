#!/usr/bin/env bash
# tests/ops/local_cluster_up.sh SRC SPESD SPESCTL: deploy/local-cluster with
# real daemons: `up --nodes 2` returns once both are active, DIR/env reaches
# the cluster through node-0's socket and over TLS as the operator,
# `restart-node 1` brings node-1 back with its identity, `down` stops every
# daemon and removes the pid files. Local clients that hang up before their
# reply (SIGPIPE) or never send a request (idle timeout) cost node-0 nothing;
# with the coordinator killed, node-1 still stops on SIGTERM without SIGKILL.
# Small data (the first 400 KB of the
# built-in corpus) keeps it quick.
set -euo pipefail
src=${1:?}; export SPESD=${2:?} SPESCTL=${3:?}
PY=${PYTHON:-python3}
lc=$src/deploy/local-cluster
tmp=$(mktemp -d /tmp/spes-lcu-XXXXXX)
d=$tmp/c
cleanup() {
  [ -s "$d/cluster.conf" ] && "$lc" down --dir "$d" --timeout 20 >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for l in "$d"/node-*.log; do [ -f "$l" ] && { echo "---- $l" >&2; tail -n 15 "$l" >&2; }; done
  exit 1
}

"$src/scripts/corpus" "$tmp/full.bin" 2>/dev/null
head -c 400000 "$tmp/full.bin" >"$tmp/tokens.bin"
"$lc" up --nodes 2 --dir "$d" --data "$tmp/tokens.bin" --threads 1 --timeout 120 || fail "up failed"
for k in 0 1; do
  pid=$(cat "$d/node-$k.pid")
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "run --config $d/node-$k.json" || fail "node-$k.pid is not its spesd"
done

active() { # active SPESCTL-ARGS...: prints the ids of active members
  "$SPESCTL" "$@" status --json | "$PY" -c '
import json, sys
s = json.load(sys.stdin)
assert "round" in s and "step" in s
print(" ".join(sorted(m["id"] for m in s["members"] if m["state"] == "active")))'
}
(
  source "$d/env"
  [ "$(active)" = "node-0 node-1" ] || fail "via SPES_SOCKET: active members '$(active)'"
  [ "$(active --url "$SPES_URL")" = "node-0 node-1" ] || fail "over TLS as the operator"
  set -- $SPES_NODES
  [ "$(active --url "$2")" = "node-0 node-1" ] || fail "through node-1's URL"
) || exit 1

# clients that hang up before the reply: the daemon's write gets EPIPE, not SIGPIPE;
# a client that sends nothing is closed after the control socket's idle limit
"$PY" - "$d/node-0/control.sock" <<'EOF' || fail "control socket clients"
import socket, struct, sys, time
for i in range(20):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(b"\0" * 8 + struct.pack(">I", 1 << 30) + b"\0" * 20)  # too large: an Error reply
    s.close()
idle = socket.socket(socket.AF_UNIX)
idle.connect(sys.argv[1])
idle.settimeout(30)
t = time.time()
assert idle.recv(16) == b"", "the idle client got bytes"
assert 5 < time.time() - t < 25, "idle client closed after %.1f s" % (time.time() - t)
EOF
kill -0 "$(cat "$d/node-0.pid")" 2>/dev/null || fail "node-0 died after clients hung up"
grep -q "sent no whole request" "$d/node-0.log" || fail "the idle client was not logged"
[ "$(SPES_SOCKET=$d/node-0/control.sock active)" = "node-0 node-1" ] || fail "node-0 does not answer after the hung-up clients"

old=$(cat "$d/node-1.pid")
"$lc" restart-node 1 --dir "$d" --timeout 120 || fail "restart-node 1 failed"
new=$(cat "$d/node-1.pid")
[ "$old" != "$new" ] || fail "node-1 was not restarted"
[ ! -d "/proc/$old" ] || ! tr '\0' ' ' <"/proc/$old/cmdline" | grep -qF "$d/node-1.json" || fail "old node-1 still runs"
grep -q "signal 15" "$d/node-1.log" || fail "node-1 was not stopped with SIGTERM"
[ "$(SPES_SOCKET=$d/node-0/control.sock active)" = "node-0 node-1" ] || fail "after restart-node"

# the coordinator dies; node-1 still leaves on SIGTERM in bounded time (no SIGKILL), even
# with a status request of a local operator still being forwarded to the dead coordinator
pids="$(cat "$d"/node-*.pid)"
kill -9 "$(cat "$d/node-0.pid")"
sleep 1
SPES_SOCKET=$d/node-1/control.sock "$SPESCTL" status >/dev/null 2>&1 &
pending=$!
sleep 0.5
out=$("$lc" down --dir "$d" --timeout 30 2>&1) || fail "down failed: $out"
wait "$pending" || true
echo "$out" | grep -q SIGKILL && fail "node-1 needed SIGKILL with its coordinator gone: $out"
grep -q "node-1 info: stopped" "$d/node-1.log" || fail "node-1 did not log its stop"
ls "$d"/node-*.pid >/dev/null 2>&1 && fail "pid files left after down"
for p in $pids; do
  [ -d "/proc/$p" ] && tr '\0' ' ' <"/proc/$p/cmdline" | grep -qF "$d/" && fail "pid $p still running after down"
done
echo "local-cluster with real daemons: ok"
