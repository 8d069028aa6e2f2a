#!/usr/bin/env bash
# tests/ops/local_cluster_up.sh SRC SPESD SPESCTL: deploy/local-cluster with
# real daemons: `up --nodes 2` returns once both are active, DIR/env reaches
# the cluster through node-0's socket and over TLS as the operator,
# `restart-node 1` brings node-1 back with its identity, `down` stops every
# daemon and removes the pid files. Small data (the first 400 KB of the
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

old=$(cat "$d/node-1.pid")
"$lc" restart-node 1 --dir "$d" --timeout 120 || fail "restart-node 1 failed"
new=$(cat "$d/node-1.pid")
[ "$old" != "$new" ] || fail "node-1 was not restarted"
[ ! -d "/proc/$old" ] || ! tr '\0' ' ' <"/proc/$old/cmdline" | grep -qF "$d/node-1.json" || fail "old node-1 still runs"
grep -q "signal 15" "$d/node-1.log" || fail "node-1 was not stopped with SIGTERM"
[ "$(SPES_SOCKET=$d/node-0/control.sock active)" = "node-0 node-1" ] || fail "after restart-node"

pids="$(cat "$d"/node-*.pid)"
"$lc" down --dir "$d" --timeout 30 || fail "down failed"
ls "$d"/node-*.pid >/dev/null 2>&1 && fail "pid files left after down"
for p in $pids; do
  [ -d "/proc/$p" ] && tr '\0' ' ' <"/proc/$p/cmdline" | grep -qF "$d/" && fail "pid $p still running after down"
done
echo "local-cluster with real daemons: ok"
