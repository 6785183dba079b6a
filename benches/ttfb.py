#!/usr/bin/env python3
"""Time to first byte of random ranges from two servers, interleaved request by request.

Usage: ttfb.py COUNT RANGE_BYTES FILE_BYTES URL_A URL_B

For each of COUNT random ranges of RANGE_BYTES within the first FILE_BYTES, asks both URLs
(alternating which goes first) and times from sending the request to receiving the first
byte of the response, twice: on a fresh connection, and on one kept-alive connection per
server. Reads each response whole and checks its status is 206. Prints p50/p99 in ms.
"""
import random
import socket
import sys
import time
from urllib.parse import urlsplit


def connect(url):
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def ask(sock, url, first, last, keep_alive):
    parts = urlsplit(url)
    request = (
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Range: bytes={first}-{last}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    ).encode()
    started = time.perf_counter()
    sock.sendall(request)
    data = sock.recv(65536)
    ttfb = time.perf_counter() - started
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    length = next(int(l.split(b":", 1)[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError(f"{url}: connection closed early")
        body += chunk
    if status != 206:
        raise RuntimeError(f"{url}: status {status}")
    return ttfb


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))] * 1000


def main():
    count, size, file_bytes, urls = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:6]
    rng = random.Random(20261123)
    fresh = {u: [] for u in urls}
    kept = {u: [] for u in urls}
    kept_socks = {u: connect(u) for u in urls}
    for i in range(count):
        first = rng.randrange(0, file_bytes - size)
        order = urls if i % 2 == 0 else urls[::-1]
        for url in order:
            sock = connect(url)
            fresh[url].append(ask(sock, url, first, first + size - 1, False))
            sock.close()
        for url in order:
            kept[url].append(ask(kept_socks[url], url, first, first + size - 1, True))
    for name, results in (("fresh connection", fresh), ("keep-alive", kept)):
        a, b = (results[u] for u in urls)
        print(
            f"   {name:16}  A p50 {pct(a, 50):.3f} p99 {pct(a, 99):.3f}   "
            f"B p50 {pct(b, 50):.3f} p99 {pct(b, 99):.3f}   "
            f"ratio B/A p50 {pct(b, 50) / pct(a, 50):.2f} p99 {pct(b, 99) / pct(a, 99):.2f}"
        )


if __name__ == "__main__":
    main()
