"""Tests for thumbfeat.fetch against the loopback image server (no other network)."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from thumbfeat.fetch import (
    Fetched,
    FetchFailure,
    FetchSettings,
    MissingSecret,
    backoff_delay,
    fetch_once,
    fetch_with_retries,
    make_session,
    redact,
    secret_values,
)
from thumbfeat.ratelimit import HostLimiter
from thumbfeat.urls import url_problem

from tests.faults import FaultServer
from tests.support import ImageServer

SETTINGS = FetchSettings(max_attempts=3, backoff_base=0.01, connect_timeout=2.0,
                         read_timeout=5.0, total_timeout=10.0)


class Sleeps:
    """A stand-in for time.sleep that records what it was asked to wait."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with make_session(SETTINGS) as s:
        yield s


def fetch(session: requests.Session, url: str, settings: FetchSettings = SETTINGS,
          sleeps: Sleeps | None = None) -> Fetched:
    return fetch_with_retries(session, url, settings, sleep=sleeps or Sleeps(),
                              rng=random.Random(0))


def test_image_in_one_attempt(server: ImageServer, session: requests.Session) -> None:
    sleeps = Sleeps()
    result = fetch(session, f"{server.base}/img/a.jpg", sleeps=sleeps)
    assert result.failure is None
    assert result.data == server.image("a")
    assert result.attempts == 1
    assert server.counts["/img/a.jpg"] == 1
    assert sleeps.calls == []


@pytest.mark.parametrize(("prefix", "status"), [("missing", 404), ("gone", 410)])
def test_permanent_status_is_asked_once(server: ImageServer, session: requests.Session,
                                        prefix: str, status: int) -> None:
    sleeps = Sleeps()
    result = fetch(session, f"{server.base}/{prefix}/a.jpg", sleeps=sleeps)
    assert result.data is None
    assert result.failure is not None
    assert result.failure.kind == "http_status"
    assert not result.failure.retryable
    assert str(status) in result.failure.message
    assert result.attempts == 1
    assert server.counts[f"/{prefix}/a.jpg"] == 1
    assert sleeps.calls == []


def test_server_error_is_retried_max_attempts_times(server: ImageServer,
                                                    session: requests.Session) -> None:
    sleeps = Sleeps()
    result = fetch(session, f"{server.base}/error/a.jpg", sleeps=sleeps)
    assert result.failure is not None
    assert result.failure.kind == "http_status"
    assert result.failure.retryable
    assert "500" in result.failure.message
    assert result.attempts == 3
    assert server.counts["/error/a.jpg"] == 3
    # Waits only between attempts, within the exponential ceilings 0.01 then 0.02 s.
    assert len(sleeps.calls) == 2
    assert 0 <= sleeps.calls[0] <= 0.01
    assert 0 <= sleeps.calls[1] <= 0.02


def test_server_error_with_real_sleep(server: ImageServer, session: requests.Session) -> None:
    result = fetch_with_retries(session, f"{server.base}/error/b.jpg", SETTINGS)
    assert result.attempts == 3
    assert server.counts["/error/b.jpg"] == 3


def test_flaky_server_ends_ok(server: ImageServer, session: requests.Session) -> None:
    result = fetch(session, f"{server.base}/flaky/2/a.jpg")
    assert result.failure is None
    assert result.data == server.image("a")
    assert result.attempts == 3
    assert server.counts["/flaky/2/a.jpg"] == 3


def test_flaky_beyond_the_attempts_fails_retryable(server: ImageServer,
                                                   session: requests.Session) -> None:
    result = fetch(session, f"{server.base}/flaky/5/a.jpg")
    assert result.failure is not None
    assert result.failure.retryable
    assert result.attempts == 3
    assert server.counts["/flaky/5/a.jpg"] == 3


def test_rate_limit_honours_retry_after(server: ImageServer, session: requests.Session) -> None:
    sleeps = Sleeps()
    result = fetch(session, f"{server.base}/ratelimit/a.jpg", sleeps=sleeps)
    assert result.failure is None
    assert result.data == server.image("a")
    assert result.attempts == 2
    assert sleeps.calls == [1.0]
    assert server.counts["/ratelimit/a.jpg"] == 2


def test_body_larger_than_the_cap(server: ImageServer, session: requests.Session) -> None:
    size = len(server.image("a"))
    settings = FetchSettings(max_attempts=3, backoff_base=0.01, max_bytes=size - 1)
    result = fetch(session, f"{server.base}/img/a.jpg", settings)
    assert result.failure is not None
    assert result.failure.kind == "too_large"
    assert not result.failure.retryable
    assert server.counts["/img/a.jpg"] == 1
    exact = FetchSettings(max_attempts=3, backoff_base=0.01, max_bytes=size)
    assert fetch(session, f"{server.base}/img/a.jpg", exact).data == server.image("a")


def test_refused_connection_is_retryable(session: requests.Session) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps = Sleeps()
    result = fetch(session, f"http://127.0.0.1:{port}/img/a.jpg", sleeps=sleeps)
    assert result.failure is not None
    assert result.failure.kind == "connection"
    assert result.failure.retryable
    assert result.attempts == 3
    assert len(sleeps.calls) == 2


# --- local files ---------------------------------------------------------------------------


def test_file_urls_need_a_root(tmp_path: Path, session: requests.Session) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"local bytes")
    with pytest.raises(FetchFailure) as caught:
        fetch_once(session, image.as_uri(), SETTINGS)
    assert caught.value.kind == "bad_url"
    assert not caught.value.retryable


def test_file_urls_inside_and_outside_the_roots(tmp_path: Path,
                                                session: requests.Session) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    inside = root / "sub" / "a.jpg"
    inside.write_bytes(b"local bytes")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"not for you")
    settings = FetchSettings(max_attempts=3, local_file_roots=(str(root),))

    assert fetch_once(session, inside.as_uri(), settings) == b"local bytes"
    result = fetch(session, inside.as_uri(), settings)
    assert (result.data, result.attempts) == (b"local bytes", 1)

    for url in (outside.as_uri(), f"{root.as_uri()}/../secret.jpg"):
        with pytest.raises(FetchFailure) as caught:
            fetch_once(session, url, settings)
        assert caught.value.kind == "bad_url", url
        assert not caught.value.retryable

    missing = fetch(session, (root / "sub" / "nope.jpg").as_uri(), settings)
    assert missing.failure is not None
    assert missing.failure.kind == "not_found"
    assert not missing.failure.retryable
    assert missing.attempts == 1


def test_file_url_with_a_remote_host(tmp_path: Path, session: requests.Session) -> None:
    settings = FetchSettings(local_file_roots=(str(tmp_path),))
    with pytest.raises(FetchFailure) as caught:
        fetch_once(session, f"file://otherhost{tmp_path}/a.jpg", settings)
    assert caught.value.kind == "bad_url"


def test_local_file_over_the_cap(tmp_path: Path, session: requests.Session) -> None:
    (tmp_path / "big.jpg").write_bytes(b"x" * 100)
    settings = FetchSettings(local_file_roots=(str(tmp_path),), max_bytes=99)
    with pytest.raises(FetchFailure) as caught:
        fetch_once(session, (tmp_path / "big.jpg").as_uri(), settings)
    assert caught.value.kind == "too_large"


@pytest.mark.parametrize("url", ["ftp://x", "ftp://example.org/a.jpg", "data:,hello", "a.jpg"])
def test_unsupported_urls(session: requests.Session, url: str) -> None:
    result = fetch(session, url)
    assert result.failure is not None
    assert result.failure.kind == "bad_url"
    assert not result.failure.retryable
    assert result.attempts == 1


# --- backoff -------------------------------------------------------------------------------


def test_backoff_caps_retry_after() -> None:
    settings = FetchSettings(retry_after_max=30.0)
    rng = random.Random(0)
    slow = FetchFailure("http_status", "HTTP 429", retryable=True, retry_after=3600.0)
    assert backoff_delay(1, settings, slow, rng) == 30.0
    polite = FetchFailure("http_status", "HTTP 429", retryable=True, retry_after=2.5)
    assert backoff_delay(1, settings, polite, rng) == 2.5


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    settings = FetchSettings(backoff_base=0.5, backoff_max=8.0)
    failure = FetchFailure("connection", "refused", retryable=True)
    rng = random.Random(1)
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (12, 8.0)):
        delays = [backoff_delay(attempt, settings, failure, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # full jitter actually uses the range


# --- hostile servers (tests/faults.py) -----------------------------------------------------

TIGHT = FetchSettings(connect_timeout=1.0, read_timeout=1.0, total_timeout=2.0, max_attempts=1,
                      max_bytes=5 * 1024 * 1024)


@pytest.mark.parametrize("path", ["/drip/a", "/headerdrip/a"])
def test_total_deadline_holds_against_dripping_servers(faults: FaultServer, path: str) -> None:
    # One byte every half second never trips the 1 s read timeout; only the deadline stops it.
    started = time.monotonic()
    with make_session(TIGHT) as s:
        result = fetch_with_retries(s, faults.url(path), TIGHT)
    assert result.failure is not None
    assert result.failure.kind == "timeout"
    assert result.failure.retryable
    assert "deadline of 2 s" in result.failure.message
    # Far less than the minutes the drip would take (it would not end before the server stops).
    assert time.monotonic() - started < 60


def test_silent_server_times_out(faults: FaultServer) -> None:
    with make_session(TIGHT) as s:
        result = fetch_with_retries(s, faults.url("/hang/a"), TIGHT)
    assert result.failure is not None
    assert (result.failure.kind, result.failure.retryable) == ("timeout", True)


@pytest.mark.parametrize("path", ["/huge/a", "/endless/a"])
def test_byte_cap_with_and_without_a_length(faults: FaultServer, path: str) -> None:
    with make_session(TIGHT) as s:
        result = fetch_with_retries(s, faults.url(path), TIGHT)
    assert result.failure is not None
    assert (result.failure.kind, result.failure.retryable) == ("too_large", False)
    assert faults.counts()[path] == 1


def test_short_body_is_a_transient_connection_failure(faults: FaultServer) -> None:
    with make_session(TIGHT) as s:
        result = fetch_with_retries(s, faults.url("/short/a"), TIGHT)
    assert result.failure is not None
    assert (result.failure.kind, result.failure.retryable) == ("connection", True)
    assert "announced length" in result.failure.message


@pytest.mark.parametrize(("path", "message"), [("/loop/a/x", "more than 5 redirects"),
                                               ("/tofile/x", "not http or https")])
def test_bad_redirects_are_permanent(faults: FaultServer, path: str, message: str) -> None:
    with make_session(SETTINGS) as s:
        result = fetch(s, faults.url(path))
    assert result.failure is not None
    assert (result.failure.kind, result.failure.retryable) == ("redirect", False)
    assert message in result.failure.message
    assert result.attempts == 1


def test_one_redirect_is_followed(faults: FaultServer) -> None:
    with make_session(SETTINGS) as s:
        result = fetch(s, faults.url("/redirect/a"))
    assert result.data == faults.image("a")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "empty"),
        ("http://[::1", "malformed"),
        ("http://host:99999/a.jpg", "malformed"),
        ("javascript:alert(1)", "unsupported URL scheme 'javascript'"),
        ("www.example.org/a.jpg", "no scheme"),
        ("http:///a.jpg", "no host"),
        ("http://example.org/a\n.jpg", "control characters"),
    ],
)
def test_url_problems(url: str, reason: str) -> None:
    problem = url_problem(url)
    assert problem is not None and reason in problem
    with make_session(SETTINGS) as s:
        result = fetch(s, url)
    assert result.failure is not None
    assert (result.failure.kind, result.failure.retryable, result.attempts) == ("bad_url", False, 1)


def test_redact() -> None:
    assert redact("key s3cr3t and s3cr3t-long", ["s3cr3t", "s3cr3t-long"]) == "key *** and ***"


def test_secret_headers_come_from_the_environment(faults: FaultServer) -> None:
    settings = FetchSettings(headers={"X-Team": "vision"}, header_env={"X-Api-Key": "TF_KEY"},
                             user_agent="survey-bot/2 (ops@example.org)")
    with pytest.raises(MissingSecret, match="TF_KEY"):
        make_session(settings, environ={})
    faults.api_key = "k-123"
    with make_session(settings, environ={"TF_KEY": "k-123"}) as s:
        assert secret_values(s, settings) == ("k-123",)
        ok = fetch(s, faults.url("/secret/a"), settings)
        assert ok.data == faults.image("a")
    with make_session(settings, environ={"TF_KEY": "wrong"}) as s:
        denied = fetch(s, faults.url("/secret/a"), settings)
    assert denied.failure is not None and "401" in denied.failure.message
    headers = faults.seen_headers("/secret/")[0]
    assert headers["X-Api-Key"] == "k-123"
    assert headers["X-Team"] == "vision"
    assert headers["User-Agent"] == "survey-bot/2 (ops@example.org)"


def test_secret_headers_are_not_sent_to_another_host(faults: FaultServer) -> None:
    settings = FetchSettings(header_env={"X-Api-Key": "TF_KEY"}, max_attempts=1)
    faults.api_key = "k-123"
    with make_session(settings, environ={"TF_KEY": "k-123"}) as s:
        # The same server under another host name: the secret must not follow the redirect.
        away = fetch(s, faults.url("/away/localhost/secret/a"), settings)
        home = fetch(s, faults.url("/away/127.0.0.1/secret/a"), settings)
    assert away.failure is not None and "401" in away.failure.message
    assert home.data == faults.image("a")
    assert [h.get("X-Api-Key") for h in faults.seen_headers("/secret/")] == [None, "k-123"]


def test_429_slows_the_host_for_every_thread(faults: FaultServer) -> None:
    limiter = HostLimiter()
    with make_session(SETTINGS) as s:
        result = fetch_with_retries(s, faults.url("/slowdown/0/a"), SETTINGS, limiter=limiter)
    assert result.data == faults.image("a")
    assert limiter.current_rate("127.0.0.1") is not None


def test_one_watchdog_thread_serves_every_attempt(faults: FaultServer) -> None:
    with make_session(SETTINGS) as s:
        for i in range(30):
            assert fetch(s, faults.url(f"/ok/w{i}")).data
    names = [t.name for t in threading.enumerate()]
    assert names.count("fetch-watchdog") == 1
