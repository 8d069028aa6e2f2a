"""tests/ops/metrics_cluster.py BUILD_DIR [SHOT.png]: the operator's view of a
running 3-node cluster on loopback, each daemon with a metrics listener.

- `promtool check metrics` accepts every daemon's /metrics;
- the values read back agree with `spesctl status --json` taken around them
  at the same round: rounds, step, members by state, expert owners, members'
  loss and tokens/s, and every node's own round;
- every daemon's router load sums to 1 per layer and the committed columns'
  delta norms are finite and positive;
- headless Chromium loads the coordinator's dashboard: the DOM holds every
  member's name, one expert-map row per expert and a loss plot with at least
  two points; a screenshot is saved (SHOT.png, default BUILD/tests/dashboard.png).
Exits 77 (skipped) when promtool or chromium is missing.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cluster"))
from cluster import Cluster, free_port  # noqa: E402
import numpy as np  # noqa: E402

BUILD = sys.argv[1] if len(sys.argv) > 1 else "build"
SHOT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(BUILD, "tests", "dashboard.png")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMTOOL = shutil.which("promtool")
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
        return r.status, r.headers.get("Content-Type"), r.read().decode()


def parse(text):
    """name{labels} -> value, from an exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, val = line.rsplit(" ", 1)
        out[key] = float(val)
    return out


def families(m, name):
    """{labels dict as a sorted tuple: value} of one family."""
    res = {}
    for k, v in m.items():
        if k == name or k.startswith(name + "{"):
            labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', k)))
            res[labels] = v
    return res


def run_config():
    return {"model": {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts": 6,
                      "num_experts_per_tok": 2},
            "train": {"seq_len": 32, "batch_size": 4, "lr": 0.01, "warmup_steps": 2, "max_steps": 4000, "seed": 7},
            "spes": {"sync_interval": 25, "merge_interval": 10, "merge_alpha": 0.0, "merge_decay_steps": 200,
                     "merge_topk": 1}}


def tokens(n=60000):
    text = ("SPES trains one mixture of experts together. Every node trains its own experts; "
            "the shared weights are averaged. ").encode()
    return np.frombuffer((text * (n // len(text) + 1))[:n], dtype=np.uint8)


def same(metric, *status_values):
    """a metric equals one of the status values (0 there, unknown: NaN here)"""
    return any(abs(metric - v) <= 1e-9 * abs(v) or (v == 0 and metric != metric)
               for v in status_values if v is not None)  # spesctl prints 10 significant digits


def quiet(s):
    """what must not change between the two statuses around a metrics read"""
    return (s["round"], s["step"], [(m["id"], m["state"], m["columns"], m["round"]) for m in s["members"]])


def consistent_view(cl, mports):
    """status, metrics of every node, status again, until the two statuses
    agree on the round, the step and every member's state, columns and round,
    and every member's loss and tokens/s in the metrics is one of the two
    statuses' (they change with every heartbeat)."""
    for _ in range(200):
        s0 = cl.status()
        time.sleep(0.12)  # metrics are refreshed on every tick (100 ms here)
        ms = [parse(get(p, "/metrics")[2]) for p in mports]
        s1 = cl.status()
        if not s0 or not s1 or quiet(s0) != quiet(s1):
            continue
        ok = True
        for a, b in zip(s0["members"], s1["members"]):
            lbl = '{node="%s"}' % a["id"]
            ok &= same(ms[0].get("spes_member_tokens_per_second" + lbl), a["tokens_per_s"], b["tokens_per_s"])
            ok &= same(ms[0].get("spes_member_loss" + lbl), a["loss"], b["loss"])
            ok &= same(ms[0].get("spes_member_train_seconds_total" + lbl), a["time"]["train_s"], b["time"]["train_s"])
            ok &= same(ms[0].get("spes_member_payload_sent_bytes_total" + lbl), a["net"]["sent_bytes"],
                       b["net"]["sent_bytes"])
        if ok:
            return s1, s0, ms
    print("last try:", json.dumps(s0), json.dumps(s1), {k: v for k, v in ms[0].items() if "member" in k})
    raise TimeoutError("no quiet moment between two statuses")


def main():
    if not PROMTOOL or not CHROMIUM:
        print("SKIP: needs promtool (Debian package prometheus) and chromium; missing: %s" %
              ", ".join(n for n, p in (("promtool", PROMTOOL), ("chromium", CHROMIUM)) if not p))
        return 77
    cfg = run_config()
    E, L = cfg["model"]["num_experts"], cfg["model"]["num_hidden_layers"]
    mports = [free_port() for _ in range(3)]
    extra = {k: {"metrics": "127.0.0.1:%d" % mports[k]} for k in range(3)}
    cl = Cluster(BUILD, 3, cfg, tokens(), prefix="spes-metrics-", extra=extra)
    try:
        cl.start_all()
        cl.wait_round(4, timeout=240)
        # a daemon that starts late on a loaded machine joins a round or two on: wait until every
        # member has contributed twice, so each has trained in a round the history times
        cl.wait("every member to contribute twice",
                lambda: len((cl.status() or {}).get("members", [])) == 3 and
                all(m["rounds"] >= 2 for m in cl.status()["members"]), timeout=240)
        # ---- promtool on every daemon's /metrics
        for k, p in enumerate(mports):
            code, ctype, text = get(p, "/metrics")
            check(code == 200 and ctype.startswith("text/plain; version=0.0.4"), "node-%d /metrics content type" % k)
            pt = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
            check(pt.returncode == 0, "promtool check metrics accepts node-%d: %s" % (k, (pt.stdout + pt.stderr).strip()))
        # ---- values against spesctl status --json at the same round
        st, st0, ms = consistent_view(cl, mports)
        m0 = ms[0]
        check(m0["spes_coordinator"] == 1 and ms[1]["spes_coordinator"] == 0, "only node-0 says it coordinates")
        check(m0["spes_rounds_committed_total"] == st["round"], "rounds committed %s = status round %s" %
              (m0["spes_rounds_committed_total"], st["round"]))
        check(m0["spes_step"] == st["step"], "step %s = status step %s" % (m0["spes_step"], st["step"]))
        by_state = {}
        for mem in st["members"]:
            by_state[mem["state"]] = by_state.get(mem["state"], 0) + 1
        got = {dict(l)["state"]: v for l, v in families(m0, "spes_members").items()}
        check(all(got.get(s, 0) == n for s, n in by_state.items()) and sum(got.values()) == len(st["members"]),
              "members by state %s = status %s" % (got, by_state))
        owners = {int(dict(l)["expert"]): v for l, v in families(m0, "spes_expert_owners").items()}
        want = {e: sum(e in mem["columns"] for mem in st["members"]) for e in range(E)}
        check(owners == want, "expert owners %s = status columns %s" % (owners, want))
        pairs = {(int(dict(l)["expert"]), dict(l)["node"]) for l in families(m0, "spes_expert_owner_info")}
        want_pairs = {(c, mem["id"]) for mem in st["members"] for c in mem["columns"]}
        check(pairs == want_pairs, "expert owner pairs = status columns")
        lr, lr0 = st.get("last_round") or {}, st0.get("last_round") or {}
        check(same(m0["spes_round_deadline_seconds"], st["round_deadline_ms"] / 1000, st0["round_deadline_ms"] / 1000),
              "round deadline %s s = status %s ms" % (m0["spes_round_deadline_seconds"], st["round_deadline_ms"]))
        check(same(m0["spes_round_median_announce_seconds"], lr.get("median_announce_ms", 0) / 1000,
                   lr0.get("median_announce_ms", 0) / 1000),
              "median announcement %s s = status %s ms" % (m0["spes_round_median_announce_seconds"],
                                                          lr.get("median_announce_ms")))

        def behind(r, name):
            return next((g["behind_ms"] for g in r.get("stragglers", []) if g["id"] == name), 0) / 1000
        for mem, mem0 in zip(st["members"], st0["members"]):
            k = int(mem["id"].split("-")[1])
            lbl = '{node="%s"}' % mem["id"]
            check(same(m0["spes_member_tokens_per_second" + lbl], mem["tokens_per_s"], mem0["tokens_per_s"]),
                  "%s tokens/s %s = status %s" % (mem["id"], m0["spes_member_tokens_per_second" + lbl],
                                                  mem["tokens_per_s"]))
            check(same(m0["spes_member_loss" + lbl], mem["loss"], mem0["loss"]), "%s loss = status" % mem["id"])
            check(same(m0["spes_member_behind_seconds" + lbl], behind(lr, mem["id"]), behind(lr0, mem["id"])),
                  "%s behind the median %s s = status (stragglers %s)" % (mem["id"], m0["spes_member_behind_seconds" + lbl],
                                                                        lr.get("stragglers", [])))
            for met, val in (("spes_member_train_seconds_total", lambda x: x["time"]["train_s"]),
                             ("spes_member_wait_seconds_total", lambda x: x["time"]["wait_s"]),
                             ("spes_member_payload_sent_bytes_total", lambda x: x["net"]["sent_bytes"]),
                             ("spes_member_payload_received_bytes_total", lambda x: x["net"]["received_bytes"]),
                             ("spes_member_rounds_contributed_total", lambda x: x["rounds"])):
                check(same(m0[met + lbl], val(mem), val(mem0)), "%s %s %s = status %s" % (mem["id"], met, m0[met + lbl], val(mem)))
            check(ms[k]["spes_rounds_committed_total"] >= mem["round"] and
                  ms[k]["spes_rounds_committed_total"] <= st["round"],
                  "%s holds round %s, status says it reported %s (run at %s)" %
                  (mem["id"], ms[k]["spes_rounds_committed_total"], mem["round"], st["round"]))
        # ---- per-expert numbers on every node
        for k, m in enumerate(ms):
            load = families(m, "spes_expert_router_load_ratio")
            sums = [sum(v for l, v in load.items() if dict(l)["layer"] == str(layer)) for layer in range(L)]
            check(len(load) == L * E and all(abs(s - 1) < 1e-9 for s in sums),
                  "node-%d router load: %d values, per-layer sums %s" % (k, len(load), sums))
            norms = list(families(m, "spes_expert_delta_norm").values())
            check(len(norms) == E and all(np.isfinite(n) and n > 0 for n in norms),
                  "node-%d delta norms finite and positive: %s" % (k, norms))
            check(m["spes_round_train_seconds_count"] >= 1 and m["spes_round_wait_seconds_count"] ==
                  m["spes_round_train_seconds_count"], "node-%d round time histograms observed" % k)
            check(m['spes_payload_received_bytes_total{class="blob"}'] > 0, "node-%d received blob bytes" % k)
            check(m['spes_payload_sent_bytes_total{class="control"}'] > 0 and
                  m['spes_payload_received_messages_total{class="control"}'] > 0, "node-%d control traffic counted" % k)
            check(m["spes_train_seconds_total"] > 0 and m["spes_rounds_contributed_total"] >= 1,
                  "node-%d trained %.2f s in %d rounds" % (k, m["spes_train_seconds_total"],
                                                          m["spes_rounds_contributed_total"]))
            check(m["spes_blob_store_bytes"] > 0, "node-%d blob store bytes" % k)
            ended = families(m, "spes_listener_connections_ended_total")
            check(sorted(dict(l)["why"] for l in ended) == ["handshake_deadline", "idle", "over_cap"] and
                  m.get("spes_listener_restarts_total", -1) >= 0,
                  "node-%d listener counters %s, restarts %s" % (k, dict(ended), m.get("spes_listener_restarts_total")))
        # ---- every metric the sample Grafana dashboard queries exists
        dash = json.load(open(os.path.join(HERE, "..", "..", "deploy", "grafana-dashboard.json")))
        exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
        fams = {re.sub(r"\{.*", "", k) for m in ms for k in m}
        used = {re.sub(r"_(bucket|sum|count)$", "", n) for e in exprs for n in re.findall(r"spes_[a-z_]+", e)}
        missing = sorted(n for n in used if n not in fams and n + "_count" not in fams)
        check(not missing and len(used) >= 15, "Grafana dashboard queries %d metrics, all exposed (missing: %s)" %
              (len(used), missing))
        # ---- spesctl top, one frame
        top = cl.ctl("top", "--once").stdout
        ok = all(re.search(r"\n\d+ +node-%d +active " % k, top) for k in range(3)) and \
            "EXPERTS" in top and all("%d:node-" % e in top for e in range(E))
        check(ok, "spesctl top --once lists every member and every expert's owner" + ("" if ok else ":\n" + top))
        # ---- JSON
        code, ctype, js = get(mports[0], "/api/status")
        doc = json.loads(js)
        check(ctype == "application/json" and sorted(x["name"] for x in doc["members"]) ==
              ["node-0", "node-1", "node-2"], "/api/status lists the members")
        check(len(doc["history"]) >= 2, "/api/status has %d rounds of history" % len(doc["history"]))
        timed = [r for r in doc["history"] if len(r["nodes"]) == 3]
        # a round's bars are the differences of heartbeat counters between commits: a heartbeat
        # late under load moves seconds into the next round, but every node trained in some round
        trained = {n["name"] for r in timed for n in r["nodes"] if n["train_s"] > 0}
        check(len(timed) >= 1 and all(n["train_s"] + n["wait_s"] > 0 for n in timed[-1]["nodes"]) and
              trained == {"node-0", "node-1", "node-2"},
              "timeline: %d rounds time all 3 nodes, who all trained (%s)" % (len(timed), sorted(trained)))
        try:
            get(mports[0], "/nope")
            check(False, "unknown path is 404")
        except urllib.error.HTTPError as e:
            check(e.code == 404, "unknown path is 404")
        # ---- the dashboard in headless Chromium
        url = "http://127.0.0.1:%d/" % mports[0]
        prof = cl.path("chromium-profile")
        base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--user-data-dir=" + prof, "--virtual-time-budget=6000", "--window-size=1400,2000"]
        dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        for k in range(3):
            check(re.search(r'<td class="member-name">node-%d</td>' % k, dom) is not None,
                  "dashboard DOM names node-%d" % k)
        rows = len(re.findall(r'<tr class="expert-row">', dom))
        check(rows == E, "dashboard expert map has %d rows (E = %d)" % (rows, E))
        loss_plot = re.search(r'id="plot-loss".*?</svg>', dom, re.S)
        npts = len(re.findall(r'<circle class="pt"', loss_plot.group(0))) if loss_plot else 0
        check(npts >= 2, "dashboard loss plot has %d points" % npts)
        check(all(dom.count("node-%d</text>" % k) for k in range(3)) and dom.count('class="bar-train"') >= 3,
              "dashboard timeline has training bars of every node")
        check("heat" in dom and dom.count("<td title=\"layer ") == L * E, "dashboard heat map has L x E cells")
        os.makedirs(os.path.dirname(os.path.abspath(SHOT)), exist_ok=True)
        if os.path.exists(SHOT):
            os.unlink(SHOT)
        subprocess.run(base + ["--screenshot=" + os.path.abspath(SHOT), url], capture_output=True, timeout=120)
        check(os.path.exists(SHOT) and os.path.getsize(SHOT) > 10000, "screenshot saved to %s" % SHOT)
        # ---- a straggler: node-2 paused for 1.6 s (less than the failure timeout) until a round names it
        import signal
        logged = []
        for _ in range(10):
            cl.procs[2].send_signal(signal.SIGSTOP)
            time.sleep(1.6)
            cl.procs[2].send_signal(signal.SIGCONT)
            r = cl.status()["round"]
            cl.wait_round(r + 2)
            logged = re.findall(r"round (\d+): stragglers \(median announcement [\d.]+ s\): [^\n]*node-2", cl.log(0))
            if logged:
                break
        time.sleep(0.3)  # a tick refreshes the metrics
        m0 = parse(get(mports[0], "/metrics")[2])
        got = m0.get('spes_member_straggler_rounds_total{node="node-2"}', 0)
        check(logged and 1 <= got <= len(logged),
              "node-2 was a straggler in %d round(s) the coordinator logged; the metric counts %s" % (len(logged), got))
    finally:
        cl.cleanup(keep=bool(failures))
    print("%d failure(s)" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
