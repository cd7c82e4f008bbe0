"""A fault-injecting HTTP server on loopback: one hostile behaviour per path, every request counted.

Paths are ``/<behaviour>/<args...>/<name>``; the behaviours are the methods ``fault_<behaviour>``
below, each documented. Every request is recorded with its path, arrival time and headers, so
tests assert what the server saw (how often a permanent error was asked, the request rate over a
run, which headers arrived) rather than what the client says it did.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

import numpy as np
from PIL import Image

from tests.support import LoopbackServer, make_jpeg, quiet_handler

HTML = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>login</body></html>"


def png_chunk(tag: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)


def one_bit_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG: huge in pixels, tiny in bytes (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels)
            + png_chunk(b"IEND", b""))


def noisy_jpeg(width: int = 400, height: int = 300) -> bytes:
    """Incompressible pixels, so a cut file really lacks pixel data."""
    pixels = np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def png_bytes(name: str) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(make_jpeg(name))).save(out, format="PNG")
    return out.getvalue()


class QuietServer(LoopbackServer):
    """Clients hanging up mid-answer (and sockets closed at shutdown) are what these tests
    provoke: not worth a traceback."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], OSError | ValueError):
            super().handle_error(request, client_address)


@dataclass(frozen=True)
class Request:
    path: str
    at: float
    headers: dict[str, str]


class FaultServer:
    """A threaded loopback server whose paths misbehave on purpose (see the ``fault_`` methods).

    ``files`` maps extra paths to (bytes, content type) for tests that serve their own images.
    """

    def __init__(self, files: dict[str, tuple[bytes, str]] | None = None) -> None:
        self.files = dict(files or {})
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.cache: dict[str, bytes] = {}
        self.accepted: deque[float] = deque()
        self.api_key = ""
        self.httpd = QuietServer(("127.0.0.1", 0), quiet_handler(self.answer))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # --- lifecycle and what the server saw -----------------------------------------------

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(r.path for r in self.requests)

    def times(self, prefix: str = "/") -> list[float]:
        with self.lock:
            return sorted(r.at for r in self.requests if r.path.startswith(prefix))

    def seen_headers(self, prefix: str = "/") -> list[dict[str, str]]:
        with self.lock:
            return [r.headers for r in self.requests if r.path.startswith(prefix)]

    # --- plumbing -------------------------------------------------------------------------

    def image(self, name: str) -> bytes:
        with self.lock:
            if name not in self.cache:
                self.cache[name] = make_jpeg(name)
            return self.cache[name]

    @staticmethod
    def send(handler: BaseHTTPRequestHandler, status: int, body: bytes,
             ctype: str = "image/jpeg", headers: dict[str, str] | None = None,
             length: int | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        """Handle one request; a client that hung up mid-answer only closes the connection."""
        try:
            self.handle(handler)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        with self.lock:
            self.requests.append(Request(path, time.monotonic(), dict(handler.headers.items())))
            seen = sum(1 for r in self.requests if r.path == path)
        if path in self.files:
            body, ctype = self.files[path]
            self.send(handler, 200, body, ctype)
            return
        parts = path.strip("/").split("/")
        behaviour = getattr(self, f"fault_{parts[0]}", None)
        if behaviour is None:
            self.send(handler, 404, b"unknown path", "text/plain")
            return
        behaviour(handler, parts[1:], seen)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops; False when it does."""
        return not self.stopping.wait(seconds)

    # --- behaviours -----------------------------------------------------------------------

    def fault_ok(self, handler: BaseHTTPRequestHandler, args: list[str], seen: int) -> None:
        """A real JPEG."""
        self.send(handler, 200, self.image(args[-1]))

    def fault_status(self, handler: BaseHTTPRequestHandler, args: list[str], seen: int) -> None:
        """``/status/<code>/name``: that status, every time."""
        self.send(handler, int(args[0]), b"no", "text/plain")

    def fault_flaky(self, handler: BaseHTTPRequestHandler, args: list[str], seen: int) -> None:
        """``/flaky/<n>/name``: 503 for the first n requests, then the image."""
        if seen <= int(args[0]):
            self.send(handler, 503, b"busy", "text/plain")
        else:
            self.send(handler, 200, self.image(args[-1]))

    def fault_slowdown(self, handler: BaseHTTPRequestHandler, args: list[str],
                       seen: int) -> None:
        """``/slowdown/<seconds>/name``: 429 with that Retry-After once, then the image."""
        if seen == 1:
            self.send(handler, 429, b"slow down", "text/plain", {"Retry-After": args[0]})
        else:
            self.send(handler, 200, self.image(args[-1]))

    def fault_html(self, handler: BaseHTTPRequestHandler, args: list[str], seen: int) -> None:
        """An HTML page labelled image/jpeg."""
        self.send(handler, 200, HTML, "image/jpeg")

    def fault_empty(self, handler: BaseHTTPRequestHandler, args: list[str], seen: int) -> None:
        """200 with an empty body."""
        self.send(handler, 200, b"")

    def fault_short(self, handler: BaseHTTPRequestHandler, args: list[str], seen: int) -> None:
        """Half the body its Content-Length announces, then the connection closes."""
        body = self.image(args[-1])
        self.send(handler, 200, body[: len(body) // 2], length=len(body))
        handler.close_connection = True

    def fault_cut(self, handler: BaseHTTPRequestHandler, args: list[str], seen: int) -> None:
        """A complete, honestly sized body that is the first half of a JPEG."""
        body = noisy_jpeg()
        self.send(handler, 200, body[: len(body) // 2])

    def fault_drip(self, handler: BaseHTTPRequestHandler, args: list[str], seen: int) -> None:
        """Prompt headers, then one byte of the body every half second."""
        body = self.image(args[-1])
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.flush()
        for byte in body:
            if not self._sleep(0.5):
                break
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
        handler.close_connection = True

    def fault_headerdrip(self, handler: BaseHTTPRequestHandler, args: list[str],
                         seen: int) -> None:
        """The status line and headers one byte every half second, never ending."""
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Padding: "
        for byte in head:
            if not self._sleep(0.5):
                break
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
        while self._sleep(0.5):
            handler.wfile.write(b"x")
            handler.wfile.flush()
        handler.close_connection = True

    def fault_hang(self, handler: BaseHTTPRequestHandler, args: list[str], seen: int) -> None:
        """The connection is accepted and the request read, and nothing is ever answered."""
        self.stopping.wait(120)
        handler.close_connection = True

    def _stream_zeros(self, handler: BaseHTTPRequestHandler, total: int) -> None:
        chunk = b"\x00" * 65536
        sent = 0
        while sent < total and not self.stopping.is_set():
            handler.wfile.write(chunk)
            sent += len(chunk)
        handler.close_connection = True

    def fault_huge(self, handler: BaseHTTPRequestHandler, args: list[str], seen: int) -> None:
        """A 200 MB body with its Content-Length, streamed lazily (never held in memory)."""
        total = 200 * 1024 * 1024
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        self._stream_zeros(handler, total)

    def fault_endless(self, handler: BaseHTTPRequestHandler, args: list[str],
                      seen: int) -> None:
        """A 200 MB body without a Content-Length (ends when the connection closes)."""
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Connection", "close")
        handler.end_headers()
        self._stream_zeros(handler, 200 * 1024 * 1024)

    def fault_bomb(self, handler: BaseHTTPRequestHandler, args: list[str], seen: int) -> None:
        """A small PNG announcing 20000 x 20000 pixels."""
        with self.lock:
            if "bomb" not in self.cache:
                self.cache["bomb"] = one_bit_png(20000, 20000)
            body = self.cache["bomb"]
        self.send(handler, 200, body, "image/png")

    def fault_loop(self, handler: BaseHTTPRequestHandler, args: list[str], seen: int) -> None:
        """``/loop/a/name`` and ``/loop/b/name`` redirect to each other forever."""
        other = "b" if args[0] == "a" else "a"
        self.send(handler, 302, b"", "text/plain", {"Location": f"/loop/{other}/{args[-1]}"})

    def fault_redirect(self, handler: BaseHTTPRequestHandler, args: list[str],
                       seen: int) -> None:
        """One redirect to the real image."""
        self.send(handler, 301, b"", "text/plain", {"Location": f"/ok/{args[-1]}"})

    def fault_away(self, handler: BaseHTTPRequestHandler, args: list[str], seen: int) -> None:
        """``/away/<host>/<path...>``: a redirect to <path> on this server under <host>."""
        port = self.httpd.server_address[1]
        target = f"http://{args[0]}:{port}/{'/'.join(args[1:])}"
        self.send(handler, 302, b"", "text/plain", {"Location": target})

    def fault_tofile(self, handler: BaseHTTPRequestHandler, args: list[str], seen: int) -> None:
        """A redirect to a local file of the client's machine."""
        self.send(handler, 302, b"", "text/plain", {"Location": "file:///etc/hostname"})

    def fault_wrongtype(self, handler: BaseHTTPRequestHandler, args: list[str],
                        seen: int) -> None:
        """A real PNG labelled text/html."""
        self.send(handler, 200, png_bytes(args[-1]), "text/html; charset=utf-8")

    def fault_limited(self, handler: BaseHTTPRequestHandler, args: list[str],
                      seen: int) -> None:
        """``/limited/<rate>/name``: 429 (Retry-After 1) above rate accepted requests a second."""
        rate = float(args[0])
        now = time.monotonic()
        with self.lock:
            while self.accepted and self.accepted[0] <= now - 1.0:
                self.accepted.popleft()
            allowed = len(self.accepted) < rate
            if allowed:
                self.accepted.append(now)
        if allowed:
            self.send(handler, 200, self.image(args[-1]))
        else:
            self.send(handler, 429, b"too many requests", "text/plain", {"Retry-After": "1"})

    def fault_secret(self, handler: BaseHTTPRequestHandler, args: list[str], seen: int) -> None:
        """The image only with the header ``X-Api-Key: <api_key>``, else 401."""
        if self.api_key and handler.headers.get("X-Api-Key") == self.api_key:
            self.send(handler, 200, self.image(args[-1]))
        else:
            self.send(handler, 401, b"who are you", "text/plain")


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The largest number of requests that arrived within any ``window`` seconds."""
    best = 0
    start = 0
    for end, moment in enumerate(times):
        while moment - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def refused_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
