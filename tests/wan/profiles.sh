#!/usr/bin/env bash
# tests/wan/profiles.sh SRC RELAY: every profile in deploy/wan/ loads for 2, 4
# and 8 nodes (spes-wanrelay --check) with the values its description promises;
# mistakes in a profile are refused with the file and the field named.
set -euo pipefail
src=${1:?}; relay=${2:?}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
for p in lan home continents lossy; do
  for n in 2 4 8; do
    "$relay" --profile "$src/deploy/wan/$p.json" --nodes "$n" --check >"$tmp/$p-$n.json" || fail "$p.json at n=$n"
  done
done
python3 - "$tmp" <<'EOF2' || fail "resolved profiles"
import json, sys
t = sys.argv[1]
home = json.load(open(t + "/home-4.json"))
n0 = home["nodes"][0]
assert (n0["up_mbit"], n0["down_mbit"], n0["delay_ms"], n0["loss"]) == (20, 100, 25, 0.001), n0
assert home["delay_ms"][0][3] == 50, home["delay_ms"]
c = json.load(open(t + "/continents-8.json"))
d = c["delay_ms"]
region = lambda k: k % 3
for i in range(8):
    for j in range(8):
        if i != j:
            want = 10 if region(i) == region(j) else {frozenset((0, 1)): 40, frozenset((1, 2)): 60,
                                                       frozenset((0, 2)): 90}[frozenset((region(i), region(j)))]
            assert d[i][j] == want, (i, j, d[i][j], want)
assert all(x["up_mbit"] == 200 for x in c["nodes"])
l = json.load(open(t + "/lossy-4.json"))["nodes"][2]
assert l["loss"] == 0.02 and l["burst_len"] > 1, l
print("profiles: lan, home, continents, lossy resolve as described")
EOF2
refuse() { # refuse JSON WANT: the error must contain WANT
  printf '%s\n' "$1" >"$tmp/bad.json"
  if out=$("$relay" --profile "$tmp/bad.json" --nodes 4 --check 2>&1); then fail "accepted: $1"; fi
  case "$out" in *"$tmp/bad.json"*"$2"*) ;; *) fail "for $1: '$out' does not name the file and '$2'" ;; esac
}
refuse '{"default": {"up_mbit": 20, "up_mbps": 3}}' 'default: unknown field "up_mbps"'
refuse '{"nodes": {"2": {"delay": 60}}}' 'nodes.2: unknown field "delay"'
refuse '{"default": {}, "pair": {"0-3": 90}}' 'unknown field "pair"'
refuse '{"pairs": {"0-x": 90}}' '"0-x" is not a pair'
refuse '{"pairs": {"1-1": 90}}' '"1-1" is not a pair'
refuse '{"nodes": {"two": {}}}' '"two" is not a node index'
refuse '{"default": {"loss": 1.5}}' 'default.loss = 1.5 is outside'
refuse '{"default": {"up_mbit": "fast"}}' 'default.up_mbit must be a number'
refuse '{"default": {"loss": 0.1, "burst_len": 0.5}}' 'burst_len must be 0'
refuse '{"default": {"buffer_ms": 10}, "default": {}}' 'duplicate'
refuse '[1, 2]' 'top level must be a JSON object'
echo "wan profiles: ok"
