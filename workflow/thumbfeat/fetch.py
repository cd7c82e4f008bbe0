"""Fetching image bytes over HTTP(S) or from allowed local folders, with deadlines and retries.

Each attempt is bounded three ways: a connect timeout, a read timeout between bytes, and a total
wall-clock deadline enforced by a watchdog that shuts the socket down (a read timeout alone does not
stop a server that drips one byte at a time, in its headers or its body). The watchdog follows the
attempt from connection to connection, redirects included. The body is capped in bytes while it
streams. Failures are classified once, here, into a small vocabulary of kinds, each either
permanent (never asked again unless the user says so) or transient (retried with backoff now, and
again on the next run if it outlasts the retries).

Secrets (header values taken from environment variables) and URL credentials or query strings never
reach a failure message: messages do not quote the URL, and pass :func:`redact`. Which URLs can
be fetched at all is decided in thumbfeat.urls, which the catalog's warnings share.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from thumbfeat.ratelimit import HostLimit, HostLimiter, host_key
from thumbfeat.urls import local_file_problem, url_problem

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Servers answer "not here" with these; asking again will not change the answer.
PERMANENT_STATUS_HINT = {404: "not found", 410: "gone", 403: "forbidden", 401: "unauthorized"}


@dataclass(frozen=True)
class FetchSettings:
    """Limits and manners of downloading; built from the ``download`` part of the config."""

    concurrency: int = 64
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
    headers: dict[str, str] = field(default_factory=dict)
    # Header name -> name of the environment variable holding its (secret) value, read in the job.
    header_env: dict[str, str] = field(default_factory=dict)
    host_rate_limit: float = 0.0
    host_max_connections: int = 0
    host_limits: dict[str, dict[str, float]] = field(default_factory=dict)
    local_file_roots: tuple[str, ...] = ()
    # This job's share of every host limit: 1 / the number of batch jobs that can run at once.
    rate_share: float = 1.0


class MissingSecret(RuntimeError):
    """An environment variable named in ``download.header_env`` is not set."""


class FetchFailure(Exception):
    """One failed attempt: its kind, a message for people, whether retrying may help."""

    def __init__(self, kind: str, message: str, *, retryable: bool,
                 retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


# --- the wall-clock watchdog ---------------------------------------------------------------

_current = threading.local()


class _DeadlinePassed(Exception):
    """Raised when an attempt asks for a new connection after its deadline."""


class _Watch:
    """The connection an attempt is using right now, and a way to cut it at the deadline."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: Any = None
        self.expired = False
        self.finished = False

    def attach(self, conn: Any) -> None:
        with self.lock:
            if self.expired:
                raise _DeadlinePassed
            self.conn = conn

    def detach(self, conn: Any) -> None:
        with self.lock:
            if self.conn is conn:
                self.conn = None

    def cut(self) -> bool:
        """Shut the current socket down; False when there was none yet (try again shortly)."""
        with self.lock:
            self.expired = True
            if self.finished:
                return True
            sock = getattr(self.conn, "sock", None)
            if sock is None:
                return False
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            return True


class _WatchedPool:
    """Tells the running attempt's watch which connection it holds, and when it gives it back
    (so a cut never hits a connection another attempt took from the pool since)."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        watch = getattr(_current, "watch", None)
        if watch is not None:
            try:
                watch.attach(conn)
            except _DeadlinePassed:
                self._put_conn(conn)
                raise
        return conn

    def _put_conn(self, conn: Any) -> None:
        watch = getattr(_current, "watch", None)
        if watch is not None:
            watch.detach(conn)
        super()._put_conn(conn)  # type: ignore[misc]


class _WatchedHTTPPool(_WatchedPool, HTTPConnectionPool):
    pass


class _WatchedHTTPSPool(_WatchedPool, HTTPSConnectionPool):
    pass


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """An adapter whose pools tell the running attempt's watchdog which connection it uses."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_WATCHED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        # A SOCKS manager builds its own pools; HTTP proxies use the watched ones.
        if type(manager).__name__ == "ProxyManager":
            manager.pool_classes_by_scheme = dict(_WATCHED_POOLS)
        return manager


class _Watchdog:
    """One thread that cuts every attempt reaching its deadline (a timer thread per attempt
    would cost more than the request itself on a fast server)."""

    RECHECK = 0.05
    """Seconds before looking again at an attempt still connecting (no socket to cut yet)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, watch: _Watch) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._order), watch))
            if self._thread is None or not self._thread.is_alive():
                # Started lazily (and again in a forked child, where it does not exist).
                self._thread = threading.Thread(target=self._run, name="fetch-watchdog",
                                                daemon=True)
                self._thread.start()
            elif self._heap[0][2] is watch:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    deadline, _, watch = self._heap[0]
                    if watch.finished:
                        heapq.heappop(self._heap)
                        continue
                    now = time.monotonic()
                    if now < deadline:
                        self._cond.wait(deadline - now)
                        continue
                    heapq.heappop(self._heap)
                    break
            if not watch.cut():
                with self._cond:
                    heapq.heappush(self._heap, (time.monotonic() + self.RECHECK,
                                                next(self._order), watch))


_WATCHDOG = _Watchdog()


@contextlib.contextmanager
def _watchdog(seconds: float) -> Iterator[_Watch]:
    """Cut the attempt's connection when ``seconds`` have passed, whatever phase it is in."""
    watch = _Watch()
    _current.watch = watch
    _WATCHDOG.add(time.monotonic() + seconds, watch)
    try:
        yield watch
    finally:
        _current.watch = None
        with watch.lock:
            watch.finished = True


# --- sessions, headers and secrets ---------------------------------------------------------


class _Session(requests.Session):
    """A session that drops secret headers when a redirect leaves the host.

    requests already does this for ``Authorization``; secrets may travel in any header.
    """

    secret_headers: tuple[str, ...] = ()

    def rebuild_auth(self, prepared_request: Any, response: Any) -> None:
        super().rebuild_auth(prepared_request, response)
        if self.should_strip_auth(response.request.url, prepared_request.url):
            for name in self.secret_headers:
                prepared_request.headers.pop(name, None)


def make_session(settings: FetchSettings,
                 environ: Mapping[str, str] | None = None) -> requests.Session:
    """A pooled session sized for the downloads in flight, with the configured headers.

    Secret header values are read here, in the job, from the environment variables named in
    ``header_env``; they are never part of the config, the parameters or the logs.
    """
    environ = os.environ if environ is None else environ
    session = _Session()
    session.secret_headers = tuple(settings.header_env)
    adapter = _WatchedAdapter(
        pool_connections=max(4, settings.concurrency),
        pool_maxsize=max(4, settings.concurrency),
        max_retries=0,
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = settings.max_redirects
    session.headers["User-Agent"] = settings.user_agent
    session.headers.update(settings.headers)
    for header, variable in settings.header_env.items():
        value = environ.get(variable)
        if not value:
            raise MissingSecret(f"download.header_env: the environment variable {variable!r} "
                                f"(value of the {header!r} header) is not set")
        session.headers[header] = value
    return session


def secret_values(session: requests.Session, settings: FetchSettings) -> tuple[str, ...]:
    """The header values that came from the environment: to be kept out of every message."""
    return tuple(str(session.headers[name]) for name in settings.header_env
                 if session.headers.get(name))


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


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
        return FetchFailure("http_status", message, retryable=True, status=status,
                            retry_after=_retry_after_seconds(response.headers.get("Retry-After")))
    return FetchFailure("http_status", message, retryable=False, status=status)


def _timeout(settings: FetchSettings) -> FetchFailure:
    return FetchFailure("timeout", f"download took longer than the deadline of "
                        f"{settings.total_timeout:g} s", retryable=True)


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
            raise _timeout(settings)
        chunks.append(chunk)
    return b"".join(chunks)


def _fetch_http(session: requests.Session, url: str, settings: FetchSettings) -> bytes:
    deadline = time.monotonic() + settings.total_timeout
    try:
        with _watchdog(settings.total_timeout) as watch, \
                session.get(url, stream=True,
                            timeout=(settings.connect_timeout, settings.read_timeout)) as response:
            if response.status_code != 200:
                raise _status_failure(response)
            data = _read_body(response, settings, deadline)
            if watch.expired:
                raise _timeout(settings)
            return data
    except FetchFailure:
        raise
    except _DeadlinePassed as exc:
        raise _timeout(settings) from exc
    except requests.exceptions.RequestException as exc:
        if time.monotonic() >= deadline:
            raise _timeout(settings) from exc
        raise _classify(exc, settings) from exc


def _classify(exc: requests.exceptions.RequestException,
              settings: FetchSettings) -> FetchFailure:
    """Name the kind of a failed request; redirects and bad URLs are permanent, the rest not.

    The URL was checked before the request, so a scheme refused now came from a redirect.
    Messages carry the exception's type, never its text, which may quote URLs.
    """
    errors = requests.exceptions
    if isinstance(exc, errors.TooManyRedirects):
        return FetchFailure("redirect", f"more than {settings.max_redirects} redirects",
                            retryable=False)
    if isinstance(exc, errors.InvalidSchema):
        return FetchFailure("redirect", "redirected to a URL that is not http or https",
                            retryable=False)
    if isinstance(exc, errors.InvalidURL | errors.MissingSchema | errors.InvalidHeader):
        return FetchFailure("bad_url", f"cannot fetch this URL ({type(exc).__name__})",
                            retryable=False)
    if isinstance(exc, errors.Timeout):
        return FetchFailure("timeout", f"timed out: {type(exc).__name__}", retryable=True)
    if isinstance(exc, errors.ChunkedEncodingError):
        return FetchFailure("connection", "the body ended before its announced length "
                            "(connection cut)", retryable=True)
    return FetchFailure("connection", f"connection failed: {type(exc).__name__}", retryable=True)


def _fetch_file(url: str, settings: FetchSettings) -> bytes:
    """Read a ``file://`` source, only from inside a configured local root."""
    problem = local_file_problem(url, settings.local_file_roots)
    if problem is not None:
        raise FetchFailure("bad_url", problem, retryable=False)
    path = Path(unquote(urlsplit(url).path)).resolve()
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
    problem = url_problem(url)
    if problem is not None:
        raise FetchFailure("bad_url", problem, retryable=False)
    if urlsplit(url).scheme.lower() == "file":
        return _fetch_file(url, settings)
    try:
        return _fetch_http(session, url, settings)
    except (ValueError, UnicodeError) as exc:
        # requests and urllib3 raise these for hosts and URLs they cannot encode.
        raise FetchFailure("bad_url", f"cannot fetch this URL ({type(exc).__name__})",
                           retryable=False) from exc


def host_limiter(settings: FetchSettings) -> HostLimiter:
    """This job's limiter: its share of the run-wide per-host rate and connection limits."""
    default = HostLimit(settings.host_rate_limit, settings.host_max_connections)
    overrides = {
        host: HostLimit(float(limits.get("rate", default.rate)),
                        int(limits.get("connections", default.connections)))
        for host, limits in settings.host_limits.items()
    }
    return HostLimiter(default, overrides, share=settings.rate_share)


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
                       rng: random.Random | None = None,
                       limiter: HostLimiter | None = None,
                       secrets: Iterable[str] = ()) -> Fetched:
    """Fetch ``url``, retrying transient failures up to ``max_attempts`` in all.

    Every attempt waits for its turn at the host (``limiter``); a 429 tells the limiter to slow
    the host down for every thread of the job, not only this one.
    """
    rng = rng or random.Random()
    limiter = limiter or HostLimiter()
    host = host_key(url)
    attempt = 0
    while True:
        attempt += 1
        with limiter.slot(host) as sent_at:
            try:
                data = fetch_once(session, url, settings)
            except FetchFailure as caught:
                failure = caught
            else:
                limiter.succeeded(host, sent_at)
                return Fetched(data, attempt)
            if failure.status == 429:
                pause = failure.retry_after
                limiter.throttled(host, sent_at, None if pause is None
                                  else min(pause, settings.retry_after_max))
            elif failure.status is not None:
                limiter.succeeded(host, sent_at)
        if not failure.retryable or attempt >= settings.max_attempts:
            failure.message = redact(failure.message, secrets)
            return Fetched(None, attempt, failure)
        sleep(backoff_delay(attempt, settings, failure, rng))
