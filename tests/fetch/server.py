#!/usr/bin/python3
"""server.py: a loopback HTTP/1.1 server for tests/test_fetch.c.

Serves files from --root on 127.0.0.1 at a free port, which it prints as one
line on stdout. Every request is appended to --log as
"METHOD<TAB>PATH<TAB>RANGE-or-dash<TAB>INFLIGHT". The first path segment picks
a behaviour:
  /NAME                   the file, with single-range Range support (206)
  /drop/NAME              first request: half the bytes, then the connection is cut
  /slow/NAME              first request: half the bytes, then silence for 30 s
  /corrupt/NAME           the file with one byte changed, always
  /norange/NAME           ignores Range (always 200 and the whole file)
  /500-then-ok/NAME       first request: HTTP 500; then the file
  /503/NAME               always HTTP 503
  /wait/NAME              waits 0.3 s before answering (to see parallel requests)
  /redir/NAME             302 to /NAME;  /redirloop: 302 to itself
  /redirfile              302 to file:///etc/passwd
  PUT /upload/NAME        stores the body as ROOT/uploads/NAME, 201
  PUT /upload-500-then-ok/NAME  like /upload but the first request gets 500
  PUT /upload-403/NAME    403 with an XML error body
Anything else (and a missing file) is 404. With --cert it speaks HTTPS. The server exits when its parent
process goes away or after --max-seconds, so a failed test leaves nothing behind.
"""
import argparse
import http.server
import os
import socket
import ssl
import sys
import threading
import time

ARGS = None
LOCK = threading.Lock()
COUNTS = {}
INFLIGHT = [0]


def first_time(key):
    with LOCK:
        COUNTS[key] = COUNTS.get(key, 0) + 1
        return COUNTS[key] == 1


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def log_request_line(self):
        with LOCK:
            INFLIGHT[0] += 1
            n = INFLIGHT[0]
            with open(ARGS.log, "a") as f:
                f.write("%s\t%s\t%s\t%d\n" % (self.command, self.path,
                                              self.headers.get("Range", "-"), n))

    def done(self):
        with LOCK:
            INFLIGHT[0] -= 1

    def simple(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.log_request_line()
        try:
            self.get()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.done()

    def get(self):
        parts = self.path.split("/", 2)
        mode = parts[1] if len(parts) == 3 else ""
        name = parts[2] if len(parts) == 3 else parts[1]
        if self.path == "/redirloop":
            return self.simple(302, headers=[("Location", "/redirloop")])
        if self.path == "/redirfile":
            return self.simple(302, headers=[("Location", "file:///etc/passwd")])
        if mode == "redir":
            return self.simple(302, headers=[("Location", "/" + name)])
        known = ("", "drop", "slow", "corrupt", "norange", "500-then-ok", "503", "wait")
        path = os.path.join(ARGS.root, name)
        if mode not in known or "/" in name or not os.path.isfile(path):
            return self.simple(404, b"not found\n")
        if mode == "503":
            return self.simple(503, b"busy\n")
        if mode == "500-then-ok" and first_time(self.path):
            return self.simple(500, b"oops\n")
        if mode == "wait":
            time.sleep(0.3)
        with open(path, "rb") as f:
            data = f.read()
        if mode == "corrupt" and data:
            b = bytearray(data)
            b[len(b) // 3] ^= 0x5A
            data = bytes(b)
        self.serve(mode, data)

    def serve(self, mode, data):
        start, end, code = 0, len(data), 200
        rng = self.headers.get("Range")
        if rng and mode != "norange" and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start = int(a)
            end = int(b) + 1 if b else len(data)
            if start >= len(data):
                return self.simple(416, headers=[("Content-Range", "bytes */%d" % len(data))])
            code = 206
        self.send_response(code)
        if code == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end - 1, len(data)))
        self.send_header("Accept-Ranges", "none" if mode == "norange" else "bytes")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        body = data[start:end]
        if mode in ("drop", "slow") and first_time(self.path):
            self.wfile.write(body[: len(data) // 2 - start])
            self.wfile.flush()
            if mode == "slow":
                t = time.time()
                while time.time() - t < 30:
                    time.sleep(0.05)
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def do_PUT(self):
        self.log_request_line()
        try:
            self.put()
        finally:
            self.done()

    def put(self):
        parts = self.path.split("/", 2)
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        if len(parts) != 3 or "/" in parts[2] or parts[1] not in (
                "upload", "upload-500-then-ok", "upload-403"):
            return self.simple(404, b"not found\n")
        if parts[1] == "upload-403":
            return self.simple(403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>")
        if parts[1] == "upload-500-then-ok" and first_time(self.path):
            return self.simple(500, b"oops\n")
        os.makedirs(os.path.join(ARGS.root, "uploads"), exist_ok=True)
        with open(os.path.join(ARGS.root, "uploads", parts[2]), "wb") as f:
            f.write(body)
        self.simple(201)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients that hang up (a cancelled or timed-out transfer) are part of the tests.
        if not isinstance(sys.exc_info()[1], (ConnectionError, BrokenPipeError)):
            super().handle_error(request, client_address)


def watchdog(parent, limit):
    t0 = time.time()
    while os.getppid() == parent and time.time() - t0 < limit:
        time.sleep(0.2)
    os._exit(0)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("--cert", help="serve HTTPS with this certificate (PEM, key included)")
    ARGS = ap.parse_args()
    srv = Server(("127.0.0.1", 0), Handler)
    if ARGS.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ARGS.cert)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=watchdog, args=(os.getppid(), ARGS.max_seconds), daemon=True).start()
    sys.stdout.write("%d\n" % srv.server_address[1])
    sys.stdout.flush()
    srv.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
