#!/usr/bin/env python3
"""A program run by the tests under `handover run` that uses the master's fd store
(sd_notify's FDSTORE=1, FDSTOREREMOVE=1, BARRIER=1), standard library only. What it
does is read at start from the file MODE (argv[1]):

- good: it writes its LISTEN_FDNAMES and what the stored descriptor named "keys"
  holds to OUT.G (argv[2]; G is its generation, $HANDOVER_GENERATION). If it was
  given no "keys", it stores a memfd named keys holding "keys of generation G".
  Then it sends READY=1 and waits for SIGTERM (exit 0).
- bad: a new build gone wrong: it removes "keys" from the store, stores a
  descriptor of its own named "evil", waits until the master has handled both
  (BARRIER=1), and exits 1 before it is ready.
"""

import os
import select
import signal
import socket
import sys


def notify(state, fds=()):
    path = os.environ["NOTIFY_SOCKET"]
    if path.startswith("@"):
        path = "\0" + path[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.connect(path)
        socket.send_fds(s, [state.encode()], list(fds))
    finally:
        s.close()


def barrier():
    r, w = os.pipe()
    notify("BARRIER=1", [w])
    os.close(w)
    # The master closes its copy once it has handled every earlier datagram: EOF.
    ready, _, _ = select.select([r], [], [], 10)
    if not ready or os.read(r, 1) != b"":
        sys.exit("fdstore.py: no answer to BARRIER=1 within 10 s")
    os.close(r)


def main():
    gen = os.environ.get("HANDOVER_GENERATION", "0")
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    with open(sys.argv[1]) as f:
        mode = f.read().strip()
    if mode == "bad":
        notify("FDSTOREREMOVE=1\nFDNAME=keys")
        evil = os.memfd_create("evil")
        notify("FDSTORE=1\nFDNAME=evil", [evil])
        barrier()
        print("fdstore.py: the bad build gives up", file=sys.stderr)
        sys.exit(1)
    keys = ""
    if "keys" in names:
        keys = os.pread(3 + names.index("keys"), 100, 0).decode()
    else:
        fd = os.memfd_create("keys")
        os.write(fd, f"keys of generation {gen}".encode())
        notify("FDSTORE=1\nFDNAME=keys", [fd])
    out = f"{sys.argv[2]}.{gen}"
    with open(out + ".tmp", "w") as f:
        f.write(f"names={':'.join(names)}\nkeys={keys}\n")
    os.rename(out + ".tmp", out)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    notify("READY=1")
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
