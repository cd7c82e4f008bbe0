"""Benchmark: what the download safeguards cost per request, side by side with bare requests.

Serves N thumbnails of 320x240 (JPEG) from nginx on loopback and fetches all of them with 16
threads over one pooled session, three ways, alternating in each repeat:

- bare: ``session.get(url, timeout=...).content``, no deadline watchdog, no limiter;
- safeguarded: thumbfeat's ``fetch_with_retries`` (wall-clock watchdog on every attempt, byte cap,
  per-host limiter) with no host limits configured;
- limited: the same with a non-binding per-host limit (16 connections, 1,000,000 requests/s), so
  every request goes through the connection semaphore and the pacing lock.

Reports images/s as median (min-max) and the ratio to bare, and writes its section into
BENCHMARKS.md. Needs nginx on PATH (Debian: apt-get install nginx-light).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "workflow"))

from thumbfeat.fetch import (  # noqa: E402
    FetchSettings,
    fetch_with_retries,
    host_limiter,
    make_session,
)

from bench.common import (  # noqa: E402
    generate_images,
    machine,
    nginx_version,
    publish,
    start_nginx,
    summary,
)

THREADS = 16


def bare_get(session: requests.Session, url: str) -> int:
    response = session.get(url, timeout=(5, 10))
    return len(response.content) if response.status_code == 200 else 0


def run(urls: list[str], fetch: Callable[[str], int]) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        sizes = list(pool.map(fetch, urls))
    elapsed = time.perf_counter() - started
    assert all(size > 0 for size in sizes)
    return len(urls) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()

    plain = FetchSettings(concurrency=THREADS)
    limited = FetchSettings(concurrency=THREADS, host_rate_limit=1_000_000,
                            host_max_connections=THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers run as an unprivileged user
        images = work / "images"
        names = [f"s{i:05d}" for i in range(args.images)]
        generate_images(images, names, cores=2)
        server, base = start_nginx(images, work)
        try:
            urls = [f"{base}/{name}.jpg" for name in names]
            rates: dict[str, list[float]] = {"bare": [], "safeguarded": [], "limited": []}
            for _ in range(args.repeats):
                with make_session(plain) as session:
                    rates["bare"].append(run(urls, lambda u, s=session: bare_get(s, u)))
                with make_session(plain) as session:
                    limiter = host_limiter(plain)
                    rates["safeguarded"].append(run(urls, lambda u, s=session, lim=limiter: len(
                        fetch_with_retries(s, u, plain, limiter=lim).data or b"")))
                with make_session(limited) as session:
                    limiter = host_limiter(limited)
                    rates["limited"].append(run(urls, lambda u, s=session, lim=limiter: len(
                        fetch_with_retries(s, u, limited, limiter=lim).data or b"")))
        finally:
            server.terminate()
            server.wait()

    bare = statistics.median(rates["bare"])
    lines = [
        "## Download safeguards: cost per request",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; nginx {nginx_version()} on "
        f"loopback, {args.images} JPEGs of 320x240, {THREADS} threads over one session, "
        f"{args.repeats} repeats with the three ways alternating. Images/s, median (min-max).",
        "",
        "| way | images/s | ratio to bare |",
        "| --- | --- | --- |",
    ]
    for way, values in rates.items():
        lines.append(f"| {way} | {summary(values)} | "
                     f"{statistics.median(values) / bare:.2f} |")
    lines += [
        "",
        "bare: `session.get(...).content`; safeguarded: `fetch_with_retries` (deadline watchdog, "
        "byte cap, limiter without limits); limited: the same under a non-binding per-host "
        "limit. Reproduce: `.venv/bin/python bench/bench_safeguards.py` (needs nginx).",
        "",
    ]
    publish(args.report, lines)


if __name__ == "__main__":
    main()
