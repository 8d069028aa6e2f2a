"""data_numpy.py: NumPy and spes agree on token files, both ways.
Usage: data_numpy.py TEST_DATA_EXE. The C side writes .npy/llm.c files (test_data --write DIR),
numpy.load must read exactly the ids the C side wrote; numpy writes files (np.save, format
versions 1.0/2.0/3.0, uint16/uint32/int32) and the C reader (test_data --read) must read the same
ids, and refuse what is not a 1-D token array with a message naming the file."""
import os
import subprocess
import sys
import tempfile

import numpy as np

exe = sys.argv[1]
fails = 0


def check(cond, what):
    global fails
    if not cond:
        fails += 1
        print("FAIL:", what)


def c_read(path, dtype="none"):
    r = subprocess.run([exe, "--read", path, dtype], capture_output=True, text=True)
    return r.returncode, r.stdout


with tempfile.TemporaryDirectory(prefix="spes-data-numpy-") as d:
    subprocess.run([exe, "--write", d], check=True)
    i = np.arange(100003, dtype=np.uint64)
    ids = (i * 7919 + 3)
    for name, dt, mod in [("u16.npy", np.uint16, 65536), ("u32.npy", np.uint32, 4000000000)]:
        a = np.load(os.path.join(d, name))
        check(a.dtype == dt and a.shape == (100003,), f"{name}: dtype/shape {a.dtype} {a.shape}")
        check(np.array_equal(a, (ids % mod).astype(dt)), f"{name}: ids differ")
        m = np.load(os.path.join(d, name), mmap_mode="r")
        check(np.array_equal(m, a), f"{name}: mmap load differs")
        raw = open(os.path.join(d, name), "rb").read()
        buf = __import__("io").BytesIO()
        np.save(buf, a)
        check(buf.getvalue() == raw, f"{name}: bytes differ from np.save")
    e = np.load(os.path.join(d, "empty.npy"))
    check(e.shape == (0,) and e.dtype == np.uint16, "empty.npy: shape/dtype")
    raw = np.fromfile(os.path.join(d, "u16.llmc"), dtype=np.uint8)
    hdr = raw[:1024].view(np.int32)
    check(list(hdr[:3]) == [20240520, 1, 100003] and not hdr[3:].any(), "llm.c header")
    check(np.array_equal(raw[1024:].view(np.uint16), (ids % 65536).astype(np.uint16)), "llm.c tokens")

    rng = np.random.default_rng(7)
    for version in [(1, 0), (2, 0), (3, 0)]:
        for dt in [np.uint16, np.uint32, np.int32, np.int16]:
            a = rng.integers(0, 30000, size=4099).astype(dt)
            p = os.path.join(d, f"np_{version[0]}_{np.dtype(dt).str[1:]}.npy")
            with open(p, "wb") as f:
                np.lib.format.write_array(f, a, version=version)
            rc, out = c_read(p)
            lines = out.split("\n")
            check(rc == 0, f"{p}: C reader refused: {out.strip()}")
            if rc == 0:
                check(lines[0] == f"npy {'uint16' if a.itemsize == 2 else 'uint32'} 4099", f"{p}: {lines[0]}")
                check([int(x) for x in lines[1:4100]] == a.tolist(), f"{p}: ids differ")
    for name, arr in [("f32.npy", np.zeros(4, np.float32)), ("twod.npy", np.zeros((2, 3), np.uint16)),
                      ("fort.npy", np.asfortranarray(np.zeros((2, 3), np.uint16))),
                      ("big.npy", np.zeros(4, ">u2")), ("scalar.npy", np.uint16(3))]:
        p = os.path.join(d, name)
        np.save(p, arr)
        rc, out = c_read(p)
        check(rc == 1 and out.startswith("refused " + p + ": "), f"{name}: not refused: {out.strip()}")
        print(name, "->", out.strip())
    nano = os.path.join(d, "train.bin")  # nanoGPT layout: raw uint16 via tofile
    a = rng.integers(0, 50257, size=1000).astype(np.uint16)
    a.tofile(nano)
    rc, out = c_read(nano, "uint16")
    check(rc == 0 and [int(x) for x in out.split("\n")[1:1001]] == a.tolist(), "nanoGPT raw .bin")

print("data_numpy:", "FAILED" if fails else "ok", f"({fails} failures)")
sys.exit(1 if fails else 0)
