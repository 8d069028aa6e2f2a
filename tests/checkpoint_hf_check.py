#!/usr/bin/python3
"""checkpoint_hf_check.py: read spes's Hugging Face export with an independent parser.

Usage: checkpoint_hf_check.py DIR, where DIR was written by `test_checkpoint --export-sample DIR`:
DIR/f32 and DIR/bf16 (config.json + model.safetensors), DIR/params.f32 (the raw parameter
array) and DIR/layout.json (name, shape, offset of every tensor). This parser is written from
the safetensors specification only (no safetensors package, no spes code); it checks the
format rules and that every tensor equals the raw array (BF16: rounded to nearest even here,
with numpy bit operations) and exits non-zero with a message on the first difference.
"""
import json
import struct
import sys

import numpy as np


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def parse(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    if n % 8 != 0:
        fail("%s: header size %d is not a multiple of 8" % (path, n))
    text = blob[8 : 8 + n].decode("utf-8")
    if text.rstrip(" ") != text.rstrip(" \t\n\r") or not text.rstrip(" ").endswith("}"):
        fail("%s: header is not JSON padded with spaces" % path)
    header = json.loads(text)
    meta = header.pop("__metadata__", None)
    if meta != {"format": "pt"}:
        fail("%s: __metadata__ is %r" % (path, meta))
    data = blob[8 + n :]
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"])
    pos = 0
    sizes = {"F32": 4, "BF16": 2}
    out = {}
    for name, e in entries:
        b, end = e["data_offsets"]
        numel = int(np.prod(e["shape"], dtype=np.int64))
        if b != pos or end - b != numel * sizes[e["dtype"]]:
            fail("%s: tensor %s has offsets %r after %d" % (path, name, e["data_offsets"], pos))
        raw = data[b:end]
        if e["dtype"] == "F32":
            arr = np.frombuffer(raw, dtype="<f4")
        else:
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        out[name] = (e["dtype"], e["shape"], arr)
        pos = end
    if pos != len(data):
        fail("%s: tensors cover %d of %d data bytes" % (path, pos, len(data)))
    return out


def bf16_round(x):
    u = x.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


def torch_bf16(x):
    """torch's own float32 -> bfloat16 rounding, when torch is installed (an independent reference)."""
    try:
        import torch
    except ImportError:
        return None
    t = torch.from_numpy(x.copy()).to(torch.bfloat16).to(torch.float32)
    return t.numpy()


def main():
    d = sys.argv[1]
    params = np.fromfile(d + "/params.f32", dtype="<f4")
    layout = json.load(open(d + "/layout.json"))
    for kind in ("f32", "bf16"):
        cfg = json.load(open("%s/%s/config.json" % (d, kind)))
        if cfg.get("model_type") != "olmoe" or cfg.get("architectures") != ["OlmoeForCausalLM"]:
            fail("%s/config.json: model_type/architectures wrong" % kind)
        if "rms_norm_eps" not in cfg:
            fail("%s/config.json: rms_norm_eps missing" % kind)
        tensors = parse("%s/%s/model.safetensors" % (d, kind))
        if set(tensors) != {t["name"] for t in layout}:
            fail("%s: tensor names differ from the layout" % kind)
        if cfg.get("tie_word_embeddings") and "lm_head.weight" in tensors:
            fail("%s: tied embeddings but lm_head.weight present" % kind)
        worst = 0.0
        for t in layout:
            dtype, shape, arr = tensors[t["name"]]
            if shape != t["shape"] or dtype != kind.upper():
                fail("%s: %s is %s %r, want %r" % (kind, t["name"], dtype, shape, t["shape"]))
            want = params[t["offset"] : t["offset"] + arr.size]
            if kind == "bf16":
                ref = torch_bf16(want)
                want = bf16_round(want)
                if ref is not None and not np.array_equal(ref.view(np.uint32), want.view(np.uint32)):
                    fail("%s: numpy rounding disagrees with torch" % t["name"])
            if not np.array_equal(arr.view(np.uint32), want.view(np.uint32)):
                fail("%s: %s differs from the parameter array" % (kind, t["name"]))
            worst = max(worst, float(np.max(np.abs(arr - params[t["offset"] : t["offset"] + arr.size]))))
        print("%s: %d tensors, %d values identical to the expected bits (max |export - fp32| = %.3g)"
              % (kind, len(layout), params.size, worst))
    print("OK")


main()
