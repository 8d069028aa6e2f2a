#!/usr/bin/env bash
# tests/ops/example_config.sh SRC SPESD SPESCTL: deploy/spesd.example.json names
# every field of the daemon config table (the set that `spesd run -n` prints)
# except the test-only fault injection and the ignored codec (now the run's),
# and, with its paths pointed at a real PKI and files in a temp dir, passes
# `spesd run -n` with every value it sets kept as written.
set -euo pipefail
src=${1:?}; spesd=${2:?}; spesctl=${3:?}
ex=$src/deploy/spesd.example.json
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$spesctl" ca init --dir "$tmp/pki" --name example >/dev/null
"$spesctl" cert issue node-0 --role node --ca "$tmp/pki" --out "$tmp/pki" >/dev/null
cp "$src/deploy/configs/demo.json" "$tmp/run.json"
"$PY" - "$ex" "$tmp" >"$tmp/spesd.json" <<'PYEOF'
import json, sys
ex, t = sys.argv[1], sys.argv[2]
def no_dup(pairs):  # jansson (spesd) refuses a duplicate key, which Python would silently take
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), "spesd.example.json repeats %s" % sorted({k for k in keys if keys.count(k) > 1})
    return dict(pairs)
c = json.load(open(ex), object_pairs_hook=no_dup)
c.update(ca=t + "/pki/ca.crt", cert=t + "/pki/node-0.crt", key=t + "/pki/node-0.key",
         run_config=t + "/run.json", data=t + "/tokens.bin", state_dir=t + "/state",
         control_socket=t + "/state/control.sock")
print(json.dumps(c))
PYEOF
"$spesd" run -n --config "$tmp/spesd.json" >"$tmp/effective.json"
"$PY" - "$ex" "$tmp/spesd.json" "$tmp/effective.json" <<'PYEOF'
import json, sys
ex, mine, eff = (json.load(open(p)) for p in sys.argv[1:])
TEST_ONLY = {"fault"}  # fault injection for integration tests: never in an operator's config
IGNORED = {"codec"}  # read so that older files load; the run config's spes.codec chooses the codec
missing = sorted(set(eff) - set(ex) - TEST_ONLY - IGNORED)
extra = sorted(set(ex) - set(eff))
assert not missing, "spesd.example.json lacks fields: %s" % missing
assert not extra, "spesd.example.json has fields spesd does not know: %s" % extra
for k, v in mine.items():
    assert eff[k] == v, "%s: spesd run -n says %r, the file says %r" % (k, eff[k], v)
print("spesd.example.json: all %d fields (test-only %s left out), accepted by spesd run -n"
      % (len(ex), sorted(TEST_ONLY & set(eff))))
PYEOF
