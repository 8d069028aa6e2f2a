#!/usr/bin/env bash
# tests/ops/local_cluster_dry.sh SRC SPESD SPESCTL: `deploy/local-cluster up
# --dry-run` makes the PKI, the node configs (each checked by `spesd run -n`)
# and DIR/env without starting daemons; checks their contents, that a second
# `up` keeps identities and ports, and the refusals (wrong node count, node
# out of range, socket path too long). Starts no daemon.
set -euo pipefail
src=${1:?}; export SPESD=${2:?} SPESCTL=${3:?}
PY=${PYTHON:-python3}
lc=$src/deploy/local-cluster
tmp=$(mktemp -d /tmp/spes-lc-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

head -c 40000 /dev/urandom >"$tmp/tokens.bin"
"$lc" up --nodes 3 --dir "$tmp/c" --data "$tmp/tokens.bin" --dry-run >"$tmp/out" 2>&1 ||
  { cat "$tmp/out" >&2; fail "up --dry-run failed"; }
grep -q "checked with spesd run -n" "$tmp/out" || fail "configs not checked: $(cat "$tmp/out")"
d=$tmp/c
for f in ca.crt ca.key operator.crt operator.key node-0.crt node-0.key node-1.crt node-2.key; do
  [ -s "$d/pki/$f" ] || fail "pki/$f missing"
done
"$SPESCTL" cert show "$d/pki/operator.crt" | grep -qx "role operator" || fail "operator.crt is not an operator certificate"
"$SPESCTL" cert show "$d/pki/node-2.crt" | grep -qx "name node-2" || fail "node-2.crt names someone else"
"$SPESCTL" cert show "$d/pki/node-2.crt" | grep -qx "role node" || fail "node-2.crt is not a node certificate"
ls "$d"/*.pid >/dev/null 2>&1 && fail "a dry run wrote pid files"

"$PY" - "$d" "$tmp/tokens.bin" <<'PYEOF'
import json, sys
d, tokens = sys.argv[1], sys.argv[2]
c = [json.load(open("%s/node-%d.json" % (d, k))) for k in range(3)]
ports = [int(x["listen"].rsplit(":", 1)[1]) for x in c]
assert len(set(ports)) == 3, "ports not distinct: %s" % ports
assert [int(p) for p in open(d + "/ports").read().split()] == ports
for k, x in enumerate(c):
    assert x["name"] == "node-%d" % k
    assert x["listen"] == "tls+tcp://127.0.0.1:%d" % ports[k]
    assert x["cert"] == "%s/pki/node-%d.crt" % (d, k) and x["ca"] == d + "/pki/ca.crt"
    assert x["state_dir"] == "%s/node-%d" % (d, k)
    assert x["control_socket"] == "%s/node-%d/control.sock" % (d, k)
    assert x["data"] == tokens, "every node gets the same token file"
    assert x["data_parts"] == 3
    assert x["coordinator"] == ("" if k == 0 else c[0]["listen"]), x["coordinator"]
    assert x["coordinator_name"] == "node-0", "every node pins the coordinator's certificate name"
assert c[0]["run_config"] == d + "/run.json" and c[0]["min_nodes"] == 3
print("configs ok: ports", ports)
PYEOF
cmp -s "$src/deploy/configs/demo.json" "$d/run.json" || fail "run.json is not the default deploy/configs/demo.json"

(
  set +u
  source "$d/env"
  [ "$SPES_SOCKET" = "$d/node-0/control.sock" ] || fail "SPES_SOCKET=$SPES_SOCKET"
  [ "$SPES_CA" = "$d/pki/ca.crt" ] && [ "$SPES_CERT" = "$d/pki/operator.crt" ] && [ "$SPES_KEY" = "$d/pki/operator.key" ] ||
    fail "operator TLS material in env"
  set -- $SPES_NODES
  [ $# -eq 3 ] || fail "SPES_NODES has $# URLs"
  [ "$1" = "$SPES_URL" ] || fail "SPES_NODES does not start with node-0's URL"
  [ "$3" = "$(sed -n 's/.*"listen": "\(.*\)".*/\1/p' "$d/node-2.json")" ] || fail "SPES_NODES is not in node order"
) || exit 1

# a second up keeps the CA, the identities and the ports
sum=$(cat "$d/pki/ca.crt" "$d/pki/node-1.crt" "$d/ports" | sha256sum)
"$lc" up --nodes 3 --dir "$d" --data "$tmp/tokens.bin" --dry-run >/dev/null 2>&1 || fail "second up failed"
[ "$sum" = "$(cat "$d/pki/ca.crt" "$d/pki/node-1.crt" "$d/ports" | sha256sum)" ] || fail "second up changed identities or ports"

# refusals, each with a clear one-line reason and a non-zero exit
expect_fail() {
  local want=$1; shift
  if "$@" >"$tmp/out" 2>&1; then fail "should have failed: $*"; fi
  grep -q -- "$want" "$tmp/out" || fail "expected '$want' from: $*; got: $(cat "$tmp/out")"
}
expect_fail "holds a 3-node cluster" "$lc" up --nodes 2 --dir "$d" --data "$tmp/tokens.bin" --dry-run
expect_fail "not in this 3-node cluster" "$lc" restart-node 3 --dir "$d"
expect_fail "is not a local cluster" "$lc" down --dir "$tmp"
expect_fail "--nodes N" "$lc" up --dir "$d" --dry-run
expect_fail "cannot be read" "$lc" up --nodes 1 --dir "$tmp/x" --data "$tmp/none.bin" --dry-run
long=$tmp/$(printf 'd%.0s' {1..90})
expect_fail "too long for a unix socket" "$lc" up --nodes 1 --dir "$long" --data "$tmp/tokens.bin" --dry-run
expect_fail "must be fp32, bf16, q8ef or topk" "$lc" up --nodes 1 --dir "$tmp/y" --codec int4 --dry-run
# --codec sets the run config's spes.codec (a run-wide choice); the rest of the config is the one given
"$lc" up --nodes 1 --dir "$tmp/z" --data "$tmp/tokens.bin" --codec topk --dry-run >/dev/null 2>&1 || fail "up --codec topk"
python3 - "$src/deploy/configs/demo.json" "$tmp/z/run.json" <<'PY' || fail "--codec topk did not set spes.codec alone"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
assert b["spes"].pop("codec") == "topk"
a["spes"].pop("codec", None)
assert a == b
PY
expect_fail "different run config" "$lc" up --nodes 1 --dir "$tmp/z" --data "$tmp/tokens.bin" --codec q8ef --dry-run
"$lc" down --dir "$d" >/dev/null || fail "down of a cluster with nothing running failed"

# --base-port, and the built-in corpus when --data is not given
# (a free port can be taken by another test's connection before local-cluster checks
# the range: that one refusal is retried with another base port, a few times)
for try in 1 2 3 4 5 6 7 8; do
  bp=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  [ "$bp" -lt 65000 ] || bp=41000
  rm -rf "$tmp/b"
  "$lc" up --nodes 2 --dir "$tmp/b" --base-port "$bp" --dry-run >"$tmp/out" 2>&1 && break
  grep -q "a port in the range is in use" "$tmp/out" && [ "$try" -lt 8 ] && continue
  cat "$tmp/out" >&2
  fail "up --base-port"
done
[ "$(tr '\n' ' ' <"$tmp/b/ports")" = "$bp $((bp + 1)) " ] || fail "--base-port $bp gave $(cat "$tmp/b/ports")"
[ -s "$tmp/b/corpus.bin" ] || fail "the built-in corpus was not made"
grep -q "\"data\": \"$tmp/b/corpus.bin\"" "$tmp/b/node-1.json" || fail "nodes do not read the built-in corpus"
echo "local-cluster dry run: ok"
