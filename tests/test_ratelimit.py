"""Tests for thumbfeat.ratelimit: pacing, connection caps, shares and slowing down on 429."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from thumbfeat.ratelimit import (
    FIRST_LIMIT_MIN,
    MIN_RATE,
    HostLimit,
    HostLimiter,
    LimiterClosed,
    host_key,
    job_limit,
    rate_share,
)

from tests.faults import max_in_window


class FakeClock:
    """A clock that only moves when someone sleeps: pacing becomes exact and instant."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


def limiter(rate: float = 0.0, connections: int = 0, share: float = 1.0,
            overrides: dict[str, HostLimit] | None = None) -> tuple[HostLimiter, FakeClock]:
    clock = FakeClock()
    return HostLimiter(HostLimit(rate, connections), overrides, share=share, clock=clock,
                       sleep=clock.sleep), clock


def send(lim: HostLimiter, host: str | None, n: int) -> list[float]:
    moments = []
    for _ in range(n):
        with lim.slot(host) as sent_at:
            moments.append(sent_at)
    return moments


def test_host_key() -> None:
    assert host_key("https://Images.Example.org:8443/a.jpg?x=1") == "images.example.org"
    assert host_key("http://127.0.0.1:8000/a") == "127.0.0.1"
    assert host_key("file:///tmp/a.jpg") is None
    assert host_key("http://[::1") is None
    assert host_key("not a url") is None


@pytest.mark.parametrize(
    ("limit", "share", "expected"),
    [
        (HostLimit(20, 8), 1.0, (20, 8)),
        (HostLimit(20, 8), 0.25, (5, 2)),
        (HostLimit(20, 3), 0.25, (5, 1)),  # a job keeps one connection
        (HostLimit(0, 0), 0.5, (None, None)),
        (HostLimit(10, 0), 1 / 3, (10 / 3, None)),
    ],
)
def test_job_limit_is_a_share_of_the_run_limit(limit: HostLimit, share: float,
                                               expected: tuple[float | None, int | None]) -> None:
    rate, connections = job_limit(limit, share)
    assert connections == expected[1]
    assert rate == pytest.approx(expected[0]) if expected[0] else rate is None


def test_pacing_spaces_requests_by_the_job_share() -> None:
    lim, _ = limiter(rate=20, share=0.25)  # 5 requests a second for this job
    moments = send(lim, "a.example", 26)
    gaps = [b - a for a, b in itertools.pairwise(moments)]
    assert min(gaps) == pytest.approx(0.2)
    # No burst: a one-second window never holds more than rate + 1 requests.
    assert max_in_window(moments) <= 5 + 1


def test_hosts_are_paced_independently_and_overrides_apply() -> None:
    lim, clock = limiter(rate=2, overrides={"slow.example": HostLimit(rate=0.5)})
    start = clock.now
    for _ in range(3):
        send(lim, "a.example", 1)
        send(lim, "b.example", 1)
    # Two hosts at 2/s, asked in turn: three requests each take one second, not two.
    assert clock.now - start == pytest.approx(1.0)
    slow = send(lim, "slow.example", 2)
    assert slow[1] - slow[0] == pytest.approx(2.0)


def test_no_limit_and_no_host_never_wait() -> None:
    lim, clock = limiter()
    start = clock.now
    send(lim, "a.example", 50)
    send(lim, None, 50)
    assert clock.now == start


def test_connection_cap_holds_across_threads() -> None:
    lim = HostLimiter(HostLimit(connections=8), share=0.25)  # two connections for this job
    active = 0
    peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal active, peak
        with lim.slot("a.example"):
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.02)
            with lock:
                active -= 1

    threads = [threading.Thread(target=work) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak == 2


def test_429_halves_once_per_wave_and_honours_retry_after() -> None:
    lim, clock = limiter(rate=10)
    first, second = send(lim, "a.example", 2)
    lim.throttled("a.example", first, retry_after=2.0)
    assert lim.current_rate("a.example") == pytest.approx(5)
    # The second request was in flight before the cut: its 429 is the same overload.
    lim.throttled("a.example", second, retry_after=None)
    assert lim.current_rate("a.example") == pytest.approx(5)
    cut_at = clock.now
    (after,) = send(lim, "a.example", 1)
    assert after >= cut_at + 2.0  # the host was paused for its Retry-After
    lim.throttled("a.example", after, retry_after=None)
    assert lim.current_rate("a.example") == pytest.approx(2.5)
    for _ in range(20):
        (moment,) = send(lim, "a.example", 1)
        lim.throttled("a.example", moment, retry_after=None)
    assert lim.current_rate("a.example") == pytest.approx(MIN_RATE)


def test_recovery_after_successes_never_exceeds_the_share() -> None:
    lim, _ = limiter(rate=8, share=0.5)  # 4 per second for this job
    (moment,) = send(lim, "a.example", 1)
    lim.throttled("a.example", moment, retry_after=None)
    assert lim.current_rate("a.example") == pytest.approx(2)
    rates = []
    for _ in range(60):
        (moment,) = send(lim, "a.example", 1)
        lim.succeeded("a.example", moment)
        rates.append(lim.current_rate("a.example"))
    assert rates == sorted(rates)  # only ever up while requests succeed
    assert rates[-1] == pytest.approx(4)


def test_a_host_without_a_limit_gets_the_one_it_showed() -> None:
    lim, clock = limiter()
    moments = []
    for _ in range(40):  # 40 requests within one second
        moments.extend(send(lim, "a.example", 1))
        clock.sleep(0.025)
    assert lim.current_rate("a.example") is None
    lim.throttled("a.example", moments[-1], retry_after=None)
    # 40 requests in the 2-second window: 20/s shown, so 10/s from now on.
    assert lim.current_rate("a.example") == pytest.approx(10)
    for _ in range(200):
        (moment,) = send(lim, "a.example", 1)
        lim.succeeded("a.example", moment)
    assert lim.current_rate("a.example") == pytest.approx(20)  # never above what it showed

    lone, _ = limiter()
    (moment,) = send(lone, "b.example", 1)
    lone.throttled("b.example", moment, retry_after=None)
    assert lone.current_rate("b.example") == pytest.approx(FIRST_LIMIT_MIN / 2)


def test_share_must_be_a_fraction() -> None:
    for share in (0.0, 1.5, -1.0):
        with pytest.raises(ValueError):
            HostLimiter(share=share)


def test_close_wakes_threads_waiting_for_a_slow_host() -> None:
    lim = HostLimiter(HostLimit(rate=0.2))  # one request every five seconds
    with lim.slot("a.example"):
        pass
    outcome: list[str] = []

    def waiter() -> None:
        try:
            with lim.slot("a.example"):
                outcome.append("sent")
        except LimiterClosed:
            outcome.append("closed")

    thread = threading.Thread(target=waiter)
    thread.start()
    lim.close()
    thread.join(timeout=2)
    assert not thread.is_alive()
    assert outcome == ["closed"]


@pytest.mark.parametrize(("slots", "batches", "share"),
                         [(8, 20, 1 / 8), (8, 3, 1 / 3), (1, 5, 1.0), (4, 0, 1.0)])
def test_rate_share(slots: int, batches: int, share: float) -> None:
    assert rate_share(slots, batches) == pytest.approx(share)
