"""Per-host politeness inside one job: a request rate, a connection cap, and backing off on 429.

A run may have several batch jobs downloading at once, with no shared state between them (they can
be processes on different machines). Each job therefore gets a fixed share of every host's limit
(``share`` = 1 / the number of jobs that can run at once), so the sum over all jobs stays under the
configured limit whatever they do. The price is idle share when fewer jobs run than there are slots.

The rate is enforced by pacing: two requests to one host from one job are never closer than
1/rate seconds, so a one-second window holds at most rate + 1 of them (no bursts after idle time).
When a host answers 429 anyway (its limit is lower than configured, or unknown), the job halves that
host's rate on its own, once per wave of requests, pauses the host for its Retry-After, and raises
the rate again gradually while requests succeed, never above the configured share.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MIN_RATE = 0.2
"""Requests per second a host is never slowed below (one every 5 s), so a batch still ends."""

RECOVERY_FACTOR = 1.25
"""How much the rate grows after about one second's worth of successful requests."""

OBSERVED_WINDOW = 2.0
"""Seconds of recent requests used to estimate the rate of a host that had no limit."""

FIRST_LIMIT_MIN = 2.0
"""The least rate a host without a limit is assumed to have allowed when it first answers 429:
a few requests in the window say little about what the host accepts."""


class LimiterClosed(RuntimeError):
    """The job is stopping: a request still waiting for its turn is not sent."""


@dataclass(frozen=True)
class HostLimit:
    """Limits of one host for the whole run; 0 means no limit."""

    rate: float = 0.0
    connections: int = 0


@dataclass
class _HostState:
    ceiling: float | None
    rate: float | None
    semaphore: threading.BoundedSemaphore | None
    next_time: float = 0.0
    paused_until: float = 0.0
    last_cut: float = -math.inf
    successes: int = 0
    recent: deque[float] = field(default_factory=deque)


def host_key(url: str) -> str | None:
    """The host a URL's limits apply to (lower-case name, port ignored); None for non-HTTP."""
    try:
        parts = urlsplit(url)
        if parts.scheme.lower() not in {"http", "https"}:
            return None
        return parts.hostname or None
    except ValueError:
        return None


def job_limit(limit: HostLimit, share: float) -> tuple[float | None, int | None]:
    """This job's part of a run-wide limit: (requests per second, connections), None = unlimited.

    Connections cannot be split below one, so with more jobs than allowed connections each job
    still keeps one.
    """
    rate = limit.rate * share if limit.rate > 0 else None
    connections = max(1, math.floor(limit.connections * share)) if limit.connections > 0 else None
    return rate, connections


class HostLimiter:
    """Thread-safe per-host pacing and connection caps for the download threads of one job."""

    def __init__(self, default: HostLimit = HostLimit(),
                 overrides: Mapping[str, HostLimit] | None = None, *, share: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] | None = None) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.default = default
        self.overrides = {host.lower(): limit for host, limit in (overrides or {}).items()}
        self.share = share
        self._closed = threading.Event()
        self.clock = clock
        # Waiting on the event lets close() wake every thread waiting for a slow host at once.
        self.sleep = sleep or self._closed.wait
        self._lock = threading.Lock()
        self._hosts: dict[str, _HostState] = {}

    def _state(self, host: str) -> _HostState:
        with self._lock:
            state = self._hosts.get(host)
            if state is None:
                rate, connections = job_limit(self.overrides.get(host, self.default), self.share)
                semaphore = threading.BoundedSemaphore(connections) if connections else None
                state = _HostState(ceiling=rate, rate=rate, semaphore=semaphore)
                self._hosts[host] = state
            return state

    def close(self) -> None:
        """Stop handing out turns: threads waiting for one raise :class:`LimiterClosed`."""
        self._closed.set()

    def current_rate(self, host: str) -> float | None:
        """Requests per second this job allows the host now (None: unlimited)."""
        return self._state(host.lower()).rate

    def _wait_turn(self, state: _HostState) -> float:
        """Sleep until the host may get the next request; return the moment it is sent."""
        while True:
            if self._closed.is_set():
                raise LimiterClosed("the job is stopping")
            with self._lock:
                now = self.clock()
                start = max(now, state.next_time, state.paused_until)
                if start <= now:
                    if state.rate is not None:
                        state.next_time = now + 1.0 / state.rate
                    state.recent.append(now)
                    while state.recent and state.recent[0] < now - OBSERVED_WINDOW:
                        state.recent.popleft()
                    return now
            # Re-check after waking: a 429 meanwhile may have paused or slowed the host.
            self.sleep(start - now)

    @contextlib.contextmanager
    def slot(self, host: str | None) -> Iterator[float]:
        """Hold one of the host's connections and its next turn; yields the sending moment."""
        if host is None:
            yield self.clock()
            return
        state = self._state(host.lower())
        if state.semaphore is not None:
            state.semaphore.acquire()
        try:
            yield self._wait_turn(state)
        finally:
            if state.semaphore is not None:
                state.semaphore.release()

    def throttled(self, host: str | None, sent_at: float, retry_after: float | None) -> None:
        """The host answered 429 to a request sent at ``sent_at``: pause it and slow down.

        Requests already in flight when the rate was last cut answer from the same overload, so
        only a 429 to a request sent after the last cut halves the rate again.
        """
        if host is None:
            return
        state = self._state(host.lower())
        with self._lock:
            now = self.clock()
            if retry_after is not None and retry_after > 0:
                state.paused_until = max(state.paused_until, now + retry_after)
            state.successes = 0
            if sent_at <= state.last_cut:
                return
            if state.rate is None:
                observed = len([t for t in state.recent if t >= now - OBSERVED_WINDOW])
                current = max(observed / OBSERVED_WINDOW, FIRST_LIMIT_MIN)
                # The host had no configured limit: from now on it has the one it showed.
                state.ceiling = current
            else:
                current = state.rate
            state.rate = max(MIN_RATE, current / 2)
            state.last_cut = now
            state.next_time = max(state.next_time, now + 1.0 / state.rate)

    def succeeded(self, host: str | None, sent_at: float) -> None:
        """A request sent at ``sent_at`` got an answer other than 429: recover the rate slowly."""
        if host is None:
            return
        state = self._state(host.lower())
        with self._lock:
            if state.rate is None or state.ceiling is None or sent_at <= state.last_cut:
                return
            state.successes += 1
            if state.successes >= max(4.0, state.rate):
                state.successes = 0
                state.rate = min(state.ceiling, state.rate * RECOVERY_FACTOR)


def rate_share(slots: int, batches: int) -> float:
    """Each batch job's share of the per-host limits: one over the jobs that can run at once."""
    return 1.0 / max(1, min(slots, batches))
