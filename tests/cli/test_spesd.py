#!/usr/bin/python3
"""tests/cli/test_spesd.py: spesd's command-line contract end to end.

Real runs of the built binary on a tiny model: resume continues bit for bit
(the checkpoint files are byte-identical to an uninterrupted run's), runs are
deterministic, export + import gives the same eval loss, SIGTERM writes a
checkpoint, and bad input is refused with a one-line message naming the
culprit. usage: test_spesd.py BUILD_DIR
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

BUILD = sys.argv[1]
SPESD = os.path.join(BUILD, "daemon", "spesd")
failures = []
passed = 0


def check(ok, what):
    global passed
    if ok:
        passed += 1
        print("ok   " + what)
    else:
        failures.append(what)
        print("FAIL " + what)


def run(*args, ok=True):
    p = subprocess.run([SPESD] + list(args), capture_output=True, text=True, errors="replace", timeout=600)
    if ok and p.returncode != 0:
        print(p.stdout, p.stderr)
        raise SystemExit("spesd %s failed" % " ".join(args))
    return p


def losses(out):
    return re.findall(r"^step (\d+) loss (\S+)", out, re.M)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    tmp = tempfile.mkdtemp(prefix="spes-cli-")
    os.chdir(tmp)
    text = ("The quick brown fox jumps over the lazy dog. " * 40 + "\n").encode()
    with open("a.txt", "wb") as f:
        f.write(text * 8)
    run("tokenize", "--bytes", "--eos", "0", "--out", "data.bin", "a.txt")
    check(os.path.getsize("data.bin") == 2 * (len(text) * 8 + 1), "tokenize --bytes writes one uint16 per byte + EOS")
    cfg = {"model": {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts": 4,
                     "num_experts_per_tok": 2},
           "train": {"seq_len": 32, "batch_size": 4, "lr": 0.01, "warmup_steps": 2, "max_steps": 40, "seed": 5}}
    with open("run.json", "w") as f:
        json.dump(cfg, f)
    base = ["train", "--config", "run.json", "--data", "data.bin", "--threads", "2"]

    full = run(*base, "--steps", "8", "--out", "full")
    lf = losses(full.stdout)
    check([s for s, _ in lf] == [str(i) for i in range(8)], "train prints `step N loss X` for steps 0..7")
    check(float(lf[-1][1]) < float(lf[0][1]), "loss falls over 8 steps (%s -> %s)" % (lf[0][1], lf[-1][1]))

    again = run(*base, "--steps", "8", "--out", "again")
    check(losses(again.stdout) == lf, "two runs print identical losses")
    check(read("again/spes.ckpt") == read("full/spes.ckpt"), "two runs write byte-identical checkpoints")

    half = run(*base, "--steps", "4", "--out", "half")
    rest = run(*base, "--steps", "8", "--resume", "half", "--out", "half")
    check(losses(half.stdout) + losses(rest.stdout) == lf, "resumed run continues the exact loss curve")
    check(read("half/spes.ckpt") == read("full/spes.ckpt"), "resumed checkpoint is byte-identical to uninterrupted")

    cols = run(*base, "--steps", "3", "--columns", "0,2", "--out", "cols")
    check(len(losses(cols.stdout)) == 3, "--columns 0,2 trains")
    p = run(*base, "--steps", "3", "--resume", "cols", "--out", "x", ok=False)
    check(p.returncode != 0 and "columns" in p.stderr, "resume with other columns is refused: " + p.stderr.strip())

    run("export", "--checkpoint", "full", "--out", "hf")
    hfcfg = json.load(open("hf/config.json"))
    check(hfcfg["model_type"] == "olmoe" and hfcfg["architectures"] == ["OlmoeForCausalLM"]
          and "rms_norm_eps" in hfcfg, "export writes an OLMoE config.json")
    e1 = run("eval", "--checkpoint", "full", "--data", "data.bin", "--batch", "2", "--seq", "32", "--batches", "3")
    e2 = run("eval", "--checkpoint", "hf", "--data", "data.bin", "--batch", "2", "--seq", "32", "--batches", "3")
    check(re.match(r"^loss \d+\.\d+$", e1.stdout.strip()) is not None, "eval prints `loss X`")
    check(e1.stdout == e2.stdout, "eval of the export equals eval of the checkpoint (%s)" % e1.stdout.strip())
    run("export", "--checkpoint", "full", "--out", "hf16", "--bf16")
    e3 = run("eval", "--checkpoint", "hf16", "--data", "data.bin", "--batch", "2", "--seq", "32", "--batches", "3")
    l1, l3 = float(e1.stdout.split()[1]), float(e3.stdout.split()[1])
    check(abs(l1 - l3) < 0.02 * l1, "bf16 export evaluates close to fp32 (%g vs %g)" % (l1, l3))
    check(os.path.getsize("hf16/model.safetensors") < 0.6 * os.path.getsize("hf/model.safetensors"),
          "bf16 export is about half the size")

    g1 = run("generate", "--checkpoint", "hf", "--bytes", "--prompt", "The quick", "--max-new", "12")
    g2 = run("generate", "--checkpoint", "full", "--bytes", "--prompt", "The quick", "--max-new", "12")
    check(g1.stdout.startswith("The quick") and "12 generated" in g1.stderr,
          "generate continues a prompt by 12 byte tokens: %r" % g1.stdout.strip())
    check(g1.stdout == g2.stdout, "greedy generation is the same from the checkpoint and from its export")
    s1 = run("generate", "--checkpoint", "full", "--bytes", "--prompt", "The", "--max-new", "20",
             "--temperature", "1.0", "--top-p", "0.9", "--seed", "7")
    s2 = run("generate", "--checkpoint", "full", "--bytes", "--prompt", "The", "--max-new", "20",
             "--temperature", "1.0", "--top-p", "0.9", "--seed", "7")
    check(s1.stdout == s2.stdout, "sampling with a seed is reproducible")

    # SIGTERM: the current step finishes, the checkpoint is written, exit 0
    proc = subprocess.Popen([SPESD] + base + ["--steps", "40", "--out", "term"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out = ""
    while len(losses(out)) < 3:
        line = proc.stdout.readline()
        if not line:
            break
        out += line
    proc.send_signal(signal.SIGTERM)
    # read the rest through proc.stdout itself: communicate() reads the pipe's fd and
    # would skip lines readline() had already buffered (seen on a loaded machine)
    out += proc.stdout.read()
    proc.stderr.read()
    proc.wait(timeout=120)
    done = len(losses(out))
    check(proc.returncode == 0 and os.path.exists("term/spes.ckpt"), "SIGTERM writes the checkpoint and exits 0")
    res = run(*base, "--steps", str(done + 2), "--resume", "term", "--out", "term")
    check([s for s, _ in losses(res.stdout)] == [str(done), str(done + 1)], "after SIGTERM the run resumes at step %d" % done)
    ref = run(*base, "--steps", str(done + 2), "--out", "termref")
    check(losses(out) + losses(res.stdout) == losses(ref.stdout),
          "interrupted-and-resumed losses equal the uninterrupted run")
    check(read("term/spes.ckpt") == read("termref/spes.ckpt"), "and so do the checkpoint bytes")

    # data by URL: served on loopback (dropping the connection once), verified, cached, trained on
    import hashlib
    os.makedirs("www", exist_ok=True)
    blob = read("data.bin")
    with open("www/data.bin", "wb") as f:
        f.write(blob)
    srv = subprocess.Popen(["/usr/bin/python3", os.path.join(os.environ.get("SPES_SOURCE_DIR", os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))))), "tests/fetch/server.py"),
        "--root", "www", "--log", "www.log", "--max-seconds", "120"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline().split()[-1])
        url_cfg = dict(cfg)
        url_cfg["data"] = {"files": [{"url": "http://127.0.0.1:%d/drop/data.bin" % port,
                                      "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}]}
        with open("url.json", "w") as f:
            json.dump(url_cfg, f)
        os.environ["SPES_CACHE"] = os.path.abspath("cache")
        u = run("train", "--config", "url.json", "--steps", "3", "--threads", "2", "--out", "urlrun")
        check(losses(u.stdout) == lf[:3], "data given by URL (connection dropped once) trains exactly as the local file")
        reqs = open("www.log").read()
        check("bytes=" in reqs, "the broken download was resumed with a Range request")
        url_cfg["data"]["files"][0]["sha256"] = "0" * 64
        url_cfg["data"]["files"][0]["url"] = "http://127.0.0.1:%d/data.bin" % port
        with open("badurl.json", "w") as f:
            json.dump(url_cfg, f)
        p = run("train", "--config", "badurl.json", "--steps", "1", "--out", "z", ok=False)
        check(p.returncode != 0 and "sha256" in p.stderr and "127.0.0.1" in p.stderr,
              "a download that fails verification is refused naming the URL")
    finally:
        srv.kill()
        os.environ.pop("SPES_CACHE", None)

    # refusals: one line on stderr, non-zero exit, naming the culprit
    def refused(args, needle, what):
        p = run(*args, ok=False)
        err = p.stderr.strip().splitlines()
        check(p.returncode != 0 and err and needle in err[-1], what + ": " + (err[-1] if err else "(nothing)"))

    blob = read("full/spes.ckpt")
    os.makedirs("trunc", exist_ok=True)
    with open("trunc/spes.ckpt", "wb") as f:
        f.write(blob[:len(blob) // 2])
    refused(["eval", "--checkpoint", "trunc", "--data", "data.bin", "--batch", "2", "--seq", "8"], "trunc",
            "truncated checkpoint refused")
    os.makedirs("flip", exist_ok=True)
    with open("flip/spes.ckpt", "wb") as f:
        f.write(blob[:-100] + bytes([blob[-100] ^ 1]) + blob[-99:])
    refused(["export", "--checkpoint", "flip", "--out", "y"], "flip", "corrupted checkpoint refused")
    with open("bad.json", "w") as f:
        f.write('{"model": {"hidden_sise": 3}}')
    refused(["train", "--config", "bad.json", "--data", "data.bin", "--out", "z"], "model.hidden_sise",
            "unknown config field refused by name")
    with open("big.bin", "wb") as f:
        f.write(bytes([0, 1]) * 100)  # id 256 = 0x0100 little-endian
    refused(base[:3] + ["--data", "big.bin", "--out", "z"], "big.bin", "token id >= vocab_size refused naming the file")
    with open("odd.bin", "wb") as f:
        f.write(b"\x01\x00\x02")
    refused(base[:3] + ["--data", "odd.bin", "--out", "z"], "odd.bin", "truncated token file refused")
    refused(base + ["--columns", "0,9", "--out", "z"], "9", "out-of-range column refused")
    refused(base + ["--bogus", "--out", "z"], "--bogus", "unknown option refused")
    refused(["eval", "--checkpoint", "nowhere", "--data", "data.bin", "--batch", "2", "--seq", "8"], "nowhere",
            "missing checkpoint refused")
    refused(["frobnicate"], "frobnicate", "unknown command refused")
    p = run(*(base + ["--steps", "3", "--out", "data.bin/out"]), ok=False)
    err = p.stderr.strip().splitlines()
    check(p.returncode != 0 and err and "data.bin/out" in err[-1] and not losses(p.stdout),
          "an --out where nothing can be written is refused before training: " + (err[-1] if err else "(nothing)"))
    refused(["generate", "--checkpoint", "full", "--prompt", "x"], "--bytes", "generate without a tokenizer refused")
    refused(["generate", "--checkpoint", "full", "--bytes", "--prompt", "x", "--top-p", "2"], "--top-p",
            "generate with top-p 2 refused")

    print("%d passed, %d failed" % (passed, len(failures)))
    subprocess.run(["rm", "-rf", tmp])
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
