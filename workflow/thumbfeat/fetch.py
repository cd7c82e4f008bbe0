"""Fetching image bytes over HTTP(S) or from allowed local folders, with deadlines and retries.

Each attempt is bounded three ways: a connect timeout, a read timeout between bytes, and a total
wall-clock deadline enforced by a watchdog that shuts the socket down (a read timeout alone does not
stop a server that drips one byte at a time). The body is capped in bytes while it streams.
Failures are classified once, here, into a small vocabulary of kinds, each either permanent (never
asked again unless the user says so) or transient (retried with backoff now, and again on the next
run if it outlasts the retries).
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests
from requests.adapters import HTTPAdapter

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Servers answer "not here" with these; asking again will not change the answer.
PERMANENT_STATUS_HINT = {404: "not found", 410: "gone", 403: "forbidden", 401: "unauthorized"}


@dataclass(frozen=True)
class FetchSettings:
    """Limits and manners of downloading; built from the ``download`` part of the config."""

    concurrency: int = 16
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 30.0
    max_bytes: int = 20 * 1024 * 1024
    max_attempts: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    retry_after_max: float = 30.0
    max_redirects: int = 5
    user_agent: str = "thumbfeat/0.1 (+image feature pipeline)"
    local_file_roots: tuple[str, ...] = ()


class FetchFailure(Exception):
    """One failed attempt: its kind, a message for people, whether retrying may help."""

    def __init__(self, kind: str, message: str, *, retryable: bool,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


def make_session(settings: FetchSettings) -> requests.Session:
    """A pooled session sized for the number of downloads in flight."""
    session = requests.Session()
    adapter = HTTPAdapter(
        pool_connections=max(4, settings.concurrency),
        pool_maxsize=max(4, settings.concurrency),
        max_retries=0,
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = settings.max_redirects
    session.headers["User-Agent"] = settings.user_agent
    return session


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _status_failure(response: requests.Response) -> FetchFailure:
    status = response.status_code
    reason = response.reason or PERMANENT_STATUS_HINT.get(status, "")
    message = f"HTTP {status} {reason}".strip()
    if status in TRANSIENT_STATUS or status >= 500:
        return FetchFailure("http_status", message, retryable=True,
                            retry_after=_retry_after_seconds(response.headers.get("Retry-After")))
    return FetchFailure("http_status", message, retryable=False)


def _read_body(response: requests.Response, settings: FetchSettings, deadline: float) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > settings.max_bytes:
        raise FetchFailure("too_large", f"body of {declared} bytes exceeds the cap of "
                           f"{settings.max_bytes} bytes", retryable=False)
    chunks: list[bytes] = []
    received = 0
    for chunk in response.iter_content(chunk_size=64 * 1024):
        received += len(chunk)
        if received > settings.max_bytes:
            raise FetchFailure("too_large", f"body exceeds the cap of {settings.max_bytes} bytes",
                               retryable=False)
        if time.monotonic() > deadline:
            raise FetchFailure("timeout", f"download took longer than the deadline of "
                               f"{settings.total_timeout:g} s", retryable=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _arm_watchdog(response: requests.Response, seconds: float) -> threading.Timer:
    """Shut the response's socket down after ``seconds``, waking a read blocked on a slow server."""

    def cut() -> None:
        connection = getattr(response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(max(0.0, seconds), cut)
    timer.daemon = True
    timer.start()
    return timer


def _fetch_http(session: requests.Session, url: str, settings: FetchSettings) -> bytes:
    deadline = time.monotonic() + settings.total_timeout
    try:
        with session.get(url, stream=True,
                         timeout=(settings.connect_timeout, settings.read_timeout)) as response:
            if response.status_code != 200:
                raise _status_failure(response)
            watchdog = _arm_watchdog(response, deadline - time.monotonic())
            try:
                return _read_body(response, settings, deadline)
            finally:
                watchdog.cancel()
    except FetchFailure:
        raise
    except requests.exceptions.RequestException as exc:
        if time.monotonic() >= deadline:
            raise FetchFailure("timeout", f"download took longer than the deadline of "
                               f"{settings.total_timeout:g} s", retryable=True) from exc
        raise _classify(exc, settings) from exc


def _classify(exc: requests.exceptions.RequestException,
              settings: FetchSettings) -> FetchFailure:
    """Name the kind of a failed request; redirects and bad URLs are permanent, the rest not."""
    errors = requests.exceptions
    if isinstance(exc, errors.TooManyRedirects):
        return FetchFailure("redirect", f"more than {settings.max_redirects} redirects",
                            retryable=False)
    if isinstance(exc, errors.InvalidSchema | errors.InvalidURL | errors.MissingSchema):
        return FetchFailure("bad_url", f"cannot fetch this URL: {exc}", retryable=False)
    if isinstance(exc, errors.Timeout):
        return FetchFailure("timeout", f"timed out: {type(exc).__name__}", retryable=True)
    if isinstance(exc, errors.ChunkedEncodingError):
        return FetchFailure("connection", "the body ended early (connection cut)",
                            retryable=True)
    return FetchFailure("connection", f"connection failed: {type(exc).__name__}", retryable=True)


def _fetch_file(url: str, settings: FetchSettings) -> bytes:
    """Read a ``file://`` source, only from inside a configured local root."""
    if not settings.local_file_roots:
        raise FetchFailure("bad_url", "file:// sources are not allowed by the configuration "
                           "(set local_file_roots)", retryable=False)
    parts = urlsplit(url)
    if parts.netloc not in {"", "localhost"}:
        raise FetchFailure("bad_url", f"file URL names a remote host {parts.netloc!r}",
                           retryable=False)
    path = Path(unquote(parts.path)).resolve()
    roots = [Path(root).resolve() for root in settings.local_file_roots]
    if not any(path.is_relative_to(root) for root in roots):
        raise FetchFailure("bad_url", "file is outside the allowed local_file_roots",
                           retryable=False)
    try:
        size = path.stat().st_size
        if size > settings.max_bytes:
            raise FetchFailure("too_large", f"file of {size} bytes exceeds the cap of "
                               f"{settings.max_bytes} bytes", retryable=False)
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise FetchFailure("not_found", "no such file", retryable=False) from exc
    except IsADirectoryError as exc:
        raise FetchFailure("bad_url", "the path is a folder", retryable=False) from exc
    except PermissionError as exc:
        raise FetchFailure("not_found", "the file cannot be read (permission denied)",
                           retryable=False) from exc


def fetch_once(session: requests.Session, url: str, settings: FetchSettings) -> bytes:
    """One attempt at the bytes of ``url``; raises FetchFailure."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in {"http", "https"}:
        return _fetch_http(session, url, settings)
    if scheme == "file":
        return _fetch_file(url, settings)
    raise FetchFailure("bad_url", f"unsupported URL {url[:80]!r} (expected http, https or file)",
                       retryable=False)


def backoff_delay(attempt: int, settings: FetchSettings, failure: FetchFailure,
                  rng: random.Random) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential with full jitter.

    A server's Retry-After is honoured, capped at ``retry_after_max`` so one host cannot stall a
    batch indefinitely.
    """
    if failure.retry_after is not None:
        return min(failure.retry_after, settings.retry_after_max)
    ceiling = min(settings.backoff_max, settings.backoff_base * (2 ** (attempt - 1)))
    return rng.uniform(0.0, ceiling)


@dataclass(frozen=True)
class Fetched:
    """What came of fetching one URL, after all attempts."""

    data: bytes | None
    attempts: int
    failure: FetchFailure | None = None


def fetch_with_retries(session: requests.Session, url: str, settings: FetchSettings,
                       *, sleep: Callable[[float], None] = time.sleep,
                       rng: random.Random | None = None) -> Fetched:
    """Fetch ``url``, retrying transient failures up to ``max_attempts`` in all."""
    rng = rng or random.Random()
    attempt = 0
    while True:
        attempt += 1
        try:
            return Fetched(fetch_once(session, url, settings), attempt)
        except FetchFailure as failure:
            if not failure.retryable or attempt >= settings.max_attempts:
                return Fetched(None, attempt, failure)
            sleep(backoff_delay(attempt, settings, failure, rng))
