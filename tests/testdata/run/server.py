#!/usr/bin/env python3
"""A small HTTP server written without handover (Python standard library only), run
by the tests under `handover run`:

- it serves on the socket the master passes: socket.socket(fileno=3), after checking
  LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES as sd_listen_fds(3) does;
- it sends READY=1 as a datagram to $NOTIFY_SOCKET once it serves;
- on SIGTERM it drains: stops accepting, answers the requests it has with
  "Connection: close", closes idle keep-alive connections after a grace, and exits 0.

GET / answers "pid=P lang=python" with header X-Pid; GET /slow?ms=N after N ms.
With --orphan FILE it first starts a process that it orphans at once (the process
exits 300 ms later, reparented to the master, which must reap it) and writes that
process's PID to FILE. With --escape FILE it first starts a helper that leaves its
process group and session (fork, setsid, fork: reparented to the master) and serves
on the socket too, ignoring SIGTERM, until it is killed; FILE.G (G is its
generation, $HANDOVER_GENERATION) gets the helper's PID.
"""

import http.server
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse

GRACE = 1.0  # seconds idle keep-alive connections may still send a request
DRAIN = 10.0  # seconds before exiting anyway

draining = threading.Event()
conns = set()
conns_lock = threading.Lock()


def notify(state):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.sendto(state.encode(), path)
    finally:
        s.close()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections

    def setup(self):
        super().setup()
        with conns_lock:
            conns.add(self.connection)

    def finish(self):
        with conns_lock:
            conns.discard(self.connection)
        super().finish()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/slow":
            ms = int(urllib.parse.parse_qs(url.query).get("ms", ["100"])[0])
            time.sleep(ms / 1000)
        body = f"pid={os.getpid()} lang=python\n".encode()
        self.send_response(200)
        self.send_header("X-Pid", str(os.getpid()))
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if draining.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, sock):
        socketserver.BaseServer.__init__(self, sock.getsockname(), Handler)
        self.socket = sock


def orphan(path):
    mid = os.fork()
    if mid == 0:
        grandchild = os.fork()
        if grandchild == 0:
            os.close(3)
            time.sleep(0.3)
            os._exit(0)
        with open(path, "w") as f:
            f.write(f"{grandchild}\n")
        os._exit(0)  # the grandchild is orphaned now
    os.waitpid(mid, 0)


def escape(path):
    mid = os.fork()
    if mid == 0:
        os.setsid()
        helper = os.fork()
        if helper == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            sock = socket.socket(fileno=3)
            sock.setblocking(False)
            Server(sock).serve_forever(poll_interval=0.05)
            os._exit(0)
        path += "." + os.environ.get("HANDOVER_GENERATION", "0")
        with open(path + ".tmp", "w") as f:
            f.write(f"{helper}\n")
        os.rename(path + ".tmp", path)
        os._exit(0)  # the helper is orphaned now
    os.waitpid(mid, 0)


def main():
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit(f"server.py: LISTEN_PID={os.environ.get('LISTEN_PID')!r} is not this process ({os.getpid()})")
    if os.environ.get("LISTEN_FDS") != "1" or os.environ.get("LISTEN_FDNAMES") != "http":
        sys.exit("server.py: want one socket named http (LISTEN_FDS=1, LISTEN_FDNAMES=http)")
    if len(sys.argv) == 3 and sys.argv[1] == "--orphan":
        orphan(sys.argv[2])
    if len(sys.argv) == 3 and sys.argv[1] == "--escape":
        escape(sys.argv[2])
    sock = socket.socket(fileno=3)
    # The socket is shared with the other children: another one may accept a
    # connection this one was told about.
    sock.setblocking(False)
    server = Server(sock)

    def drain():
        draining.set()
        notify("STOPPING=1")
        server.shutdown()  # stops accepting once serve_forever returns

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=drain, daemon=True).start())
    notify(f"READY=1\nSTATUS=serving (python, pid {os.getpid()})")
    server.serve_forever(poll_interval=0.05)
    sock.close()
    deadline = time.monotonic() + DRAIN
    grace = time.monotonic() + GRACE
    while time.monotonic() < grace:  # no connection left: no grace to give
        with conns_lock:
            if not conns:
                break
        time.sleep(0.02)
    with conns_lock:
        for c in list(conns):  # idle keep-alive connections: no request came in the grace
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    while time.monotonic() < deadline:
        with conns_lock:
            if not conns:
                break
        time.sleep(0.02)
    sys.exit(0)


if __name__ == "__main__":
    main()
