#!/usr/bin/env bash
# tests/wan/cluster_wan.sh SRC SPESD SPESCTL RELAY: SPES runs in the WAN lab.
# A 4-node cluster on deploy/wan/home.json (q8ef contributions) completes rounds with equal digests
# on every node, spesctl reaches it from the host, and `down` removes the
# namespaces and the relay. On lossy.json the same, and a kill -9 of a node
# behind its lossy link is survived: the round commits without it and the
# others go on agreeing. A kill -9 of `up` halfway leaves nothing that `down`
# does not remove. On home.json with node-3 behind NAT (no listener at all), its
# pushed contributions are committed, and it comes back after kill -9. Without root, /dev/net/tun or ip netns: skipped (exit 77).
set -euo pipefail
src=${1:?}; export SPESD=${2:?} SPESCTL=${3:?} WANRELAY=${4:?}
lc=$src/deploy/local-cluster
[ "$(id -u)" = 0 ] || { echo "SKIP: the WAN lab needs root"; exit 77; }
[ -c /dev/net/tun ] || { echo "SKIP: no /dev/net/tun"; exit 77; }
probe=spes-wanprobe-$$
ip netns add "$probe" 2>/dev/null || { echo "SKIP: ip netns add does not work here"; exit 77; }
ip netns del "$probe"
tmp=$(mktemp -d /tmp/spes-wanc-XXXXXX)
dirs=()
cleanup() {
  local d
  for d in "${dirs[@]}"; do "$lc" down --dir "$d" --timeout 20 >/dev/null 2>&1 || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for l in "${d:-$tmp}"/node-*.log "${d:-$tmp}"/wanrelay.log; do [ -f "$l" ] && { echo "---- $l" >&2; tail -n 12 "$l" >&2; }; done
  exit 1
}
ok() { echo "ok   $*"; }

"$src/scripts/corpus" "$tmp/full.bin" >/dev/null 2>&1
head -c 400000 "$tmp/full.bin" >"$tmp/tokens.bin"
cat >"$tmp/run.json" <<'JSON'
{"model": {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2},
 "train": {"seq_len": 32, "batch_size": 4, "lr": 0.01, "warmup_steps": 2, "max_steps": 4000, "seed": 5},
 "spes": {"sync_interval": 5, "merge_interval": 10, "merge_alpha": 0.0, "merge_decay_steps": 200, "merge_topk": 1}}
JSON

# agree DIR NODES...: the rounds every named node applied, all with one digest each; prints how many
agree() {
  local d=$1; shift
  python3 - "$d" "$@" <<'PY'
import re, sys
d, nodes = sys.argv[1], sys.argv[2:]
logs = [dict(re.findall(r"round (\d+) applied: state digest (\w+)", open("%s/node-%s.log" % (d, k)).read()))
        for k in nodes]
common = set(logs[0]).intersection(*logs[1:])
bad = [r for r in common if len({l[r] for l in logs}) != 1]
print(len(common) if not bad else "mismatch in rounds %s" % sorted(bad))
PY
}
# wait_agree DIR MIN NODES...: until the named nodes have applied MIN common rounds with equal
# digests (120 s); a round applied with two digests fails at once. Prints how many.
wait_agree() {
  local d=$1 min=$2 i n; shift 2
  for ((i = 0; i < 600; i++)); do
    n=$(agree "$d" "$@")
    [[ "$n" =~ ^[0-9]+$ ]] || fail "$(basename "$d"): digests: $n"
    [ "$n" -ge "$min" ] && { echo "$n"; return 0; }
    sleep 0.2
  done
  fail "$(basename "$d"): nodes $* applied only $n common rounds in 120 s"
}
lab_gone() { # DIR NETNS: no namespace, no relay left
  local ns
  for ns in $2; do [ ! -e "/run/netns/$ns" ] || fail "namespace $ns left after down"; done
  if [ -s "$1/wanrelay.pid" ] && [ -d "/proc/$(cat "$1/wanrelay.pid")" ]; then fail "relay still runs"; fi
  pgrep -f "spes-wanrelay.*$1/wan-stats.json" >/dev/null && fail "a relay of $1 still runs"
  return 0
}

# ---- home: 4 nodes agree; spesctl from the host; down removes the lab ----
d=$tmp/home; dirs+=("$d")
"$lc" up --nodes 4 --dir "$d" --config "$tmp/run.json" --data "$tmp/tokens.bin" --threads 1 --timeout 180 --codec q8ef \
  --wan "$src/deploy/wan/home.json" >"$tmp/home.up" 2>&1 || { cat "$tmp/home.up"; fail "up --wan home.json"; }
python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))["spes"]["codec"] != "q8ef")' "$d/run.json" ||
  fail "up --codec q8ef did not set the run's spes.codec"
netns=$(. "$d/env" && echo "$SPES_NETNS")
[ "$(echo $netns | wc -w)" = 4 ] || fail "SPES_NETNS names 4 namespaces: '$netns'"
for ns in $netns; do [ -e "/run/netns/$ns" ] || fail "namespace $ns does not exist"; done
case "$(. "$d/env" && echo "$SPES_NODES")" in tls+tcp://10.*.0.2:7600\ tls+tcp://10.*.1.2:7600*) ;;
  *) fail "SPES_NODES are not the namespace addresses" ;; esac
ip netns exec "$(echo $netns | cut -d' ' -f2)" ss -ltn | grep -q '0.0.0.0:7600' || fail "node-1 does not listen in its namespace"
ok "home: 4 nodes up, each in its namespace ($netns)"
n=$(wait_agree "$d" 3 0 1 2 3) || exit 1
ok "home: all 4 nodes applied $n common rounds with equal digests"
(. "$d/env" && "$SPESCTL" status) | grep -q "node-3 .*active" || fail "spesctl status through the control socket"
ok "home: spesctl status from the host through the control socket"
"$lc" down --dir "$d" --timeout 30 >/dev/null || fail "down (home)"
lab_gone "$d" "$netns"
python3 - "$d/wan-stats.json" <<'PY' || fail "relay counters after down"
import json, sys
s = json.load(open(sys.argv[1]))
n = s["nodes"]
assert len(n) == 4 and all(x["up"]["bytes"] > 100000 for x in n), [x["up"] for x in n]
assert sum(sum(r) for r in s["pair_delivered"]) == sum(x["down"]["delivered"] for x in n)
print("ok   home: the relay's final counters: %s MB up per node" % ["%.1f" % (x["up"]["bytes"] / 1e6) for x in n])
PY
ok "home: down removed the namespaces and the relay"

# ---- home, node-3 behind NAT: no listener; it pushes its contributions, and comes back after kill -9 ----
d=$tmp/nat; dirs+=("$d")
"$lc" up --nodes 4 --dir "$d" --config "$tmp/run.json" --data "$tmp/tokens.bin" --threads 1 --timeout 180 --codec q8ef \
  --wan "$src/deploy/wan/home.json" --outbound 3 >"$tmp/nat.up" 2>&1 || { cat "$tmp/nat.up"; fail "up --outbound 3"; }
netns=$(. "$d/env" && echo "$SPES_NETNS")
ns3=$(echo $netns | cut -d' ' -f4)
# only its metrics listener on the namespace's own loopback
[ -z "$(ip netns exec "$ns3" ss -Hltn | grep -v ' 127\.0\.0\.1:')" ] || fail "node-3 listens in its namespace: $(ip netns exec "$ns3" ss -Hltn)"
n=$(wait_agree "$d" 3 0 1 2 3) || exit 1
grep -qE "round [0-9]+ committed: 4 contribution.*node-3" "$d/node-0.log" || fail "no round committed node-3's contribution"
ok "nat: node-3 has no listener in its namespace; all 4 nodes applied $n common rounds, with node-3's contributions"
m0=$(. "$d/env" && echo "$SPES_METRICS" | cut -d' ' -f1)
held=$(ip netns exec "$(echo $netns | cut -d' ' -f1)" python3 -c '
import re, sys, urllib.request
t = urllib.request.urlopen(sys.argv[1] + "/metrics", timeout=10).read().decode()
print(re.search(r"spes_blob_pushes_total\{outcome=\"held\"\} (\d+)", t).group(1))' "$m0") || fail "the coordinator's metrics"
[ "$held" -ge 1 ] || fail "the coordinator's metrics count $held pushed blobs held"
ok "nat: the coordinator's metrics count $held pushed blobs held"
kill -9 "$(cat "$d/node-3.pid")"
pushed=$(grep -c "contribution pushed to the coordinator" "$d/node-3.log")
"$lc" restart-node 3 --dir "$d" --timeout 60 >/dev/null || fail "restart-node 3"
for ((i = 0; i < 600; i++)); do
  [ "$(grep -c "contribution pushed to the coordinator" "$d/node-3.log")" -gt "$pushed" ] && break
  sleep 0.2
done
[ "$(grep -c "contribution pushed to the coordinator" "$d/node-3.log")" -gt "$pushed" ] || fail "node-3 pushed nothing after its restart"
n=$(wait_agree "$d" $((n + 2)) 0 1 2 3) || exit 1
ok "nat: after kill -9 node-3 rejoined, pushed again, and the 4 nodes agree in $n rounds"
"$lc" down --dir "$d" --timeout 30 >/dev/null || fail "down (nat)"
lab_gone "$d" "$netns"

# ---- lossy: 4 nodes agree; node-2 is killed and the others go on ----
d=$tmp/lossy; dirs+=("$d")
"$lc" up --nodes 4 --dir "$d" --config "$tmp/run.json" --data "$tmp/tokens.bin" --threads 1 --timeout 180 --codec q8ef \
  --wan "$src/deploy/wan/lossy.json" >"$tmp/lossy.up" 2>&1 || { cat "$tmp/lossy.up"; fail "up --wan lossy.json"; }
netns=$(. "$d/env" && echo "$SPES_NETNS")
n=$(wait_agree "$d" 2 0 1 2 3) || exit 1
ok "lossy: all 4 nodes applied $n common rounds with equal digests"
kill -9 "$(cat "$d/node-2.pid")"
since=$(wc -c <"$d/node-0.log")
for ((i = 0; i < 600; i++)); do
  tail -c +"$since" "$d/node-0.log" | grep -qE "round [0-9]+ committed: 3 contribution" && break
  sleep 0.2
done
tail -c +"$since" "$d/node-0.log" | grep -qE "round [0-9]+ committed: 3 contribution" || fail "no round committed without node-2"
# rounds nodes 0, 1 and 3 applied with one digest that node-2 never applied, once two exist (120 s)
for ((i = 0; i < 600; i++)); do
  n=$(agree "$d" 0 1 3)
  [[ "$n" =~ ^[0-9]+$ ]] || fail "lossy after the kill: $n"
  after=$(python3 - "$d" <<'PY'
import re, sys
logs = [dict(re.findall(r"round (\d+) applied: state digest (\w+)", open("%s/node-%d.log" % (sys.argv[1], k)).read()))
        for k in (0, 1, 3)]
two = dict(re.findall(r"round (\d+) applied: state digest (\w+)", open("%s/node-2.log" % sys.argv[1]).read()))
print(len([r for r in set(logs[0]) & set(logs[1]) & set(logs[2]) if r not in two]))
PY
  )
  [ "$after" -ge 2 ] && break
  sleep 0.2
done
[ "$after" -ge 2 ] || fail "lossy: only $after rounds agreed after the kill"
ok "lossy: after kill -9 of node-2 a round commits with 3 contributions and nodes 0, 1, 3 agree in $after more rounds"
"$lc" down --dir "$d" --timeout 30 >/dev/null || fail "down (lossy)"
lab_gone "$d" "$netns"
loss=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(sum(x["up"]["drop_loss"]+x["down"]["drop_loss"] for x in s["nodes"]))' "$d/wan-stats.json")
[ "$loss" -gt 0 ] || fail "lossy: the relay lost no packet"
ok "lossy: the relay dropped $loss packets on the links; down removed the lab"

# ---- kill -9 of up halfway: down still removes everything ----
d=$tmp/killed; dirs+=("$d")
"$lc" up --nodes 2 --dir "$d" --config "$tmp/run.json" --data "$tmp/tokens.bin" --threads 1 --timeout 180 \
  --wan "$src/deploy/wan/home.json" >"$tmp/killed.up" 2>&1 &
up=$!
for ((i = 0; i < 300; i++)); do [ -s "$d/node-0.pid" ] && break; sleep 0.1; done
kill -9 "$up"
wait "$up" 2>/dev/null || true
[ -s "$d/wan.conf" ] || fail "no wan.conf after the killed up"
netns=$(sed -n 's/^NETNS=//p' "$d/wan.conf")
"$lc" down --dir "$d" --timeout 30 >/dev/null || fail "down after a killed up"
lab_gone "$d" "$netns"
pgrep -f "run --config $d/node-" >/dev/null && fail "a daemon of the killed up still runs"
ok "a kill -9 of up: down removes its daemons, namespaces and relay"
echo "WAN lab clusters: ok"
