#!/usr/bin/env bash
# tests/wan/dry.sh SRC SPESD SPESCTL RELAY: `deploy/local-cluster up --dry-run
# --wan PROFILE` (no root needed): node 0 listens on its lab address, the
# others bind 0.0.0.0 and advertise theirs (spesd run -n accepts them), DIR/env
# names the namespaces in SPES_NETNS, DIR/wan.conf records them, nothing is
# created; a profile with a mistake stops `up` with the relay's message.
set -euo pipefail
src=${1:?}; export SPESD=${2:?} SPESCTL=${3:?} WANRELAY=${4:?}
lc=$src/deploy/local-cluster
tmp=$(mktemp -d /tmp/spes-wandry-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
head -c 40000 /dev/urandom >"$tmp/tokens.bin"
"$lc" up --nodes 3 --dir "$tmp/c" --data "$tmp/tokens.bin" --dry-run --wan "$src/deploy/wan/home.json" --cc cubic \
  >"$tmp/out" 2>&1 || { cat "$tmp/out" >&2; fail "up --dry-run --wan failed"; }
d=$tmp/c
python3 - "$d" <<'PY' || fail "configs and env"
import json, re, subprocess, sys
d = sys.argv[1]
c = [json.load(open("%s/node-%d.json" % (d, k))) for k in range(3)]
conf = dict(l.split("=", 1) for l in open(d + "/wan.conf").read().splitlines())
a = int(conf["NET"])
assert 64 <= a <= 127, a
ns = conf["NETNS"].split()
assert len(ns) == 3 and all(re.fullmatch(r"spes-[0-9a-f]{8}-%d" % k, x) for k, x in enumerate(ns)), ns
assert c[0]["listen"] == "tls+tcp://10.%d.0.2:7600" % a and "advertise" not in c[0], c[0]
for k in (1, 2):
    assert c[k]["listen"] == "tls+tcp://0.0.0.0:7600", c[k]
    assert c[k]["advertise"] == "tls+tcp://10.%d.%d.2:7600" % (a, k), c[k]
    assert c[k]["coordinator"] == c[0]["listen"]
env = subprocess.run(["bash", "-c", ". %s/env && echo \"$SPES_NETNS|$SPES_NODES\"" % d], capture_output=True,
                     text=True).stdout.strip()
assert env == "%s|%s" % (" ".join(ns), " ".join("tls+tcp://10.%d.%d.2:7600" % (a, k) for k in range(3))), env
assert conf["CC"] == "cubic"
print("wan dry run: configs, advertise, env ok")
PY
for ns in $(sed -n 's/^NETNS=//p' "$d/wan.conf"); do [ ! -e "/run/netns/$ns" ] || fail "a dry run created $ns"; done
eff=$("$SPESD" run -n --config "$d/node-1.json") || fail "spesd run -n node-1"
echo "$eff" | grep -q '"advertise": "tls+tcp://10\.' || fail "spesd run -n does not show node-1's advertise"
echo '{"default": {"rate": 1}}' >"$tmp/bad.json"
if out=$("$lc" up --nodes 2 --dir "$tmp/b" --data "$tmp/tokens.bin" --dry-run --wan "$tmp/bad.json" 2>&1); then
  fail "up accepted a bad profile"
fi
echo "$out" | grep -q "bad.json: default: unknown field \"rate\"" || fail "up's error: $out"
echo "wan dry run: ok"
