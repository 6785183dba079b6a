#!/usr/bin/env python3
"""Many viewers that stop reading: opens COUNT connections to URL, each asking for the file
from a random offset to its end (a player that seeked, then paused), reads the response head
and a little of the body, then reads nothing more for HOLD seconds. Prints "stalled COUNT"
once every connection is open and has its head (the caller then samples the server's memory),
then at the end how many connections the server had closed by then.

Usage: benches/stalled.py URL LENGTH COUNT HOLD_SECONDS
"""

import random
import resource
import socket
import sys
import time
import urllib.parse


def main() -> None:
    url, length, count, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 64)), hard))
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname, parsed.port or 80
    path = parsed.path
    rng = random.Random(7)
    sockets = []
    for _ in range(count):
        first = rng.randrange(0, length // 2)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A modest client receive buffer, as a phone's would be: the stall shows at once.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.connect((host, port))
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nRange: bytes={first}-\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(16 * 1024)
            if not chunk:
                raise SystemExit(f"connection closed before its head: {head[:200]!r}")
            head += chunk
        if not head.startswith(b"HTTP/1.1 206"):
            raise SystemExit(f"unexpected answer: {head[:200]!r}")
        sockets.append(s)
    print(f"stalled {count}", flush=True)
    time.sleep(hold)
    closed = 0
    for s in sockets:
        # A closed connection's last bytes and its end may still be on their way.
        s.settimeout(2)
        try:
            # Draining what the kernel holds: a closed connection ends in EOF or a reset; one
            # still open keeps sending, so stop after more than socket buffers could hold.
            drained = 0
            while drained < 64 << 20:
                data = s.recv(1 << 20)
                if not data:
                    closed += 1
                    break
                drained += len(data)
        except TimeoutError:
            pass
        except ConnectionResetError:
            closed += 1
        s.close()
    print(f"closed by the server {closed}", flush=True)


if __name__ == "__main__":
    main()
