"""tests/ops/dashboard_escape.py SRC_DIR: the dashboard's page (daemon/web)
puts every name it gets from /api/status into the page as text. A small HTTP
server serves the page's files and a status whose member name, expert owner,
timeline node and refusal carry HTML and script; headless Chromium loads it,
and the DOM must show them as text: no element they would have made, the
page title unchanged. Exits 77 (skipped) without chromium."""
import http.server
import json
import os
import re
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading

SRC = sys.argv[1]
WEB = os.path.join(SRC, "daemon", "web")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EVIL = '<img src=x onerror="document.title=\'pwned\'">"&\''
SCRIPT = "<script>document.title='pwned'</script>"

STATUS = {
    "name": EVIL, "version": "0.1.0", "protocol": 1, "run_id": SCRIPT, "coordinator": True, "now_unix_ms": 0,
    "round": 3, "step": 30, "rounds_applied": 3, "loss": 2.0, "tokens_per_s": 100.0, "run_loss": 2.0,
    "run_tokens_per_s": 300.0, "sent_bytes": {}, "received_bytes": {}, "blob_store_bytes": 0,
    "refusals": {"non_finite": 1, "other": 0}, "digest_mismatches": 1,
    "members": [{"id": 1, "name": EVIL, "state": "active", "columns": [0], "round": 3, "loss": 2.0,
                 "tokens_per_s": 100.0, "last_seen_unix_ms": 0}],
    "last_round": {"round": 2, "contributors": 1, "refused": [EVIL + ": " + SCRIPT], "digest_mismatch": [EVIL]},
    "experts": {"count": 2, "layers": 1, "owners": [[EVIL], []], "router_load": [[0.5, 0.5]], "delta_norm": [1.0, None]},
    "history": [{"round": r, "step": 10 * r, "loss": 3.0 - r, "tokens_per_s": 100.0, "committed_unix_ms": 0,
                 "nodes": [{"name": EVIL, "train_s": 1.0, "wait_s": 0.5}]} for r in (1, 2)],
}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        files = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
                 "/style.css": ("style.css", "text/css")}
        if self.path == "/api/status":
            body, ctype = json.dumps(STATUS).encode(), "application/json"
        elif self.path in files:
            name, ctype = files[self.path]
            body = open(os.path.join(WEB, name), "rb").read()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    if not CHROMIUM:
        print("SKIP: needs chromium")
        return 77
    srv = socketserver.TCPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    prof = tempfile.mkdtemp(prefix="spes-dash-escape-")
    try:
        url = "http://127.0.0.1:%d/" % srv.server_address[1]
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              "--user-data-dir=" + prof, "--virtual-time-budget=4000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120).stdout
    finally:
        srv.shutdown()
        shutil.rmtree(prof, ignore_errors=True)
    fails = []
    if '<td class="member-name">' not in dom:
        fails.append("the page did not draw the members (no data?)")
    if re.search(r"<img\b", dom, re.I):
        fails.append("a name became an <img> element")
    if dom.count("<script") != 1:  # the page's own app.js only
        fails.append("a name became a <script> element")
    if "<title>spes run</title>" not in dom:
        fails.append("the title changed")
    esc = "&lt;img src=x onerror=\"document.title='pwned'\"&gt;\"&amp;'"
    for where, pat in (("member row", '<td class="member-name">' + esc + "</td>"),
                       ("expert owner", "<td class=\"\">" + esc + "</td>"),
                       ("refusal", "refused: " + esc + ": &lt;script&gt;"),
                       ("mismatch", "digest mismatch: " + esc),
                       ("run id", '<span id="run-id">&lt;script&gt;')):
        if pat not in dom:
            fails.append("the %s does not show the name as text" % where)
    if "round 2 &lt;img" not in dom:
        fails.append("the timeline does not show the name as text")
    for f in fails:
        print("FAIL " + f)
    if fails:
        print(dom[:4000])
        return 1
    print("ok   every name from /api/status reaches the page as text (member, owner, timeline, refusal, "
          "mismatch, run id)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
