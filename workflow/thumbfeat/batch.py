"""The bodies of the per-batch jobs: fetch a batch's images, then measure them.

Each image is finished on its own: its file is written atomically as soon as it is done, so a job
killed at any moment keeps every image it finished and loses only those in flight. A batch ends by
writing a small JSON manifest (counts, timing, failures by kind), which is the batch's signal to the
workflow that it is done and the record later reports read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass
from pathlib import Path

from thumbfeat import atomic, layout, table
from thumbfeat.features import FEATURE_VERSION, compute_features
from thumbfeat.fetch import FetchSettings, fetch_with_retries, make_session
from thumbfeat.imaging import ImageRejected, decode_image
from thumbfeat.plan import read_failure


@dataclass(frozen=True)
class Outcome:
    """How one image ended in one stage."""

    image_id: str
    ok: bool
    kind: str | None = None
    error: str | None = None
    retryable: bool = False
    attempts: int = 0
    size: int = 0


class Progress:
    """Counts finished images and logs a line at a steady interval, never one line per image."""

    def __init__(self, logger: logging.Logger, stage: str, total: int, interval: float) -> None:
        self.logger, self.stage, self.total, self.interval = logger, stage, total, interval
        self.done = 0
        self.failed: Counter[str] = Counter()
        self.started = time.monotonic()
        self.last_report = self.started

    def add(self, outcome: Outcome) -> None:
        self.done += 1
        if not outcome.ok:
            self.failed[outcome.kind or "unknown"] += 1
        now = time.monotonic()
        if now - self.last_report >= self.interval:
            self.last_report = now
            self.report()

    def report(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        failures = ", ".join(f"{k} {n}" for k, n in sorted(self.failed.items())) or "none"
        self.logger.info("%s: %d/%d images, %.1f images/s, failed: %s", self.stage, self.done,
                         self.total, self.done / elapsed, failures)

    def manifest(self, batch_key: str, outcomes: Sequence[Outcome]) -> dict[str, object]:
        return {
            "stage": self.stage,
            "batch": batch_key,
            "images": len(outcomes),
            "ok": sum(o.ok for o in outcomes),
            "failed_by_kind": dict(sorted(self.failed.items())),
            "failed": [{"image_id": o.image_id, "kind": o.kind, "error": o.error,
                        "retryable": o.retryable} for o in outcomes if not o.ok],
            "bytes": sum(o.size for o in outcomes),
            "seconds": round(time.monotonic() - self.started, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so a cancelled job stops handing out work and cleans up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def record_failure(results: str, image_id: str, kind: str, error: str, retryable: bool) -> None:
    """Record why an image failed, then mark its download as done with an empty file.

    The record is written first: an empty thumbnail always has its reason beside it.
    """
    record = {"image_id": image_id, "kind": kind, "error": error, "retryable": retryable,
              "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic.write_bytes(layout.failure_path(results, image_id), json.dumps(record).encode())
    atomic.write_bytes(layout.thumb_path(results, image_id), b"")


def download_one(session: object, image_id: str, url: str, results: str,
                 settings: FetchSettings, max_pixels: int) -> Outcome:
    """Fetch, validate by decoding, and store one image (or its failure)."""
    fetched = fetch_with_retries(session, url, settings)  # type: ignore[arg-type]
    if fetched.failure is not None:
        failure = fetched.failure
        record_failure(results, image_id, failure.kind, failure.message, failure.retryable)
        return Outcome(image_id, False, failure.kind, failure.message, failure.retryable,
                       fetched.attempts)
    data = fetched.data or b""
    try:
        decode_image(data, max_pixels=max_pixels)
    except ImageRejected as rejected:
        record_failure(results, image_id, rejected.kind, rejected.message, False)
        return Outcome(image_id, False, rejected.kind, rejected.message, False, fetched.attempts,
                       len(data))
    atomic.write_bytes(layout.thumb_path(results, image_id), data)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(layout.failure_path(results, image_id))
    return Outcome(image_id, True, attempts=fetched.attempts, size=len(data))


def run_download_batch(items: Sequence[tuple[str, str]], results: str, settings: FetchSettings,
                       *, max_pixels: int, manifest_path: str, batch_key: str,
                       logger: logging.Logger, progress_interval: float = 10.0) -> list[Outcome]:
    """Download a batch with up to ``settings.concurrency`` images in flight."""
    progress = Progress(logger, "download", len(items), progress_interval)
    outcomes: list[Outcome] = []
    session = make_session(settings)
    pool = ThreadPoolExecutor(max_workers=max(1, settings.concurrency))
    pending: set[Future[Outcome]] = set()
    queue = iter(items)
    try:
        with sigterm_as_interrupt():
            for image_id, url in queue:
                pending.add(pool.submit(download_one, session, image_id, url, results, settings,
                                        max_pixels))
                if len(pending) >= settings.concurrency * 2:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        outcomes.append(future.result())
                        progress.add(outcomes[-1])
            for future in _as_finished(pending):
                outcomes.append(future.result())
                progress.add(outcomes[-1])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        session.close()
    progress.report()
    atomic.write_bytes(manifest_path, json.dumps(progress.manifest(batch_key, outcomes)).encode())
    return outcomes


def _as_finished(pending: set[Future[Outcome]]) -> Iterator[Future[Outcome]]:
    while pending:
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        yield from finished


def measure_one(image_id: str, results: str, max_pixels: int) -> Outcome:
    """Compute and store the row of one image from its thumbnail (or its failure record)."""
    thumb = Path(layout.thumb_path(results, image_id))
    data = thumb.read_bytes()
    if not data:
        record = read_failure(layout.failure_path(results, image_id))
        if record is None:
            kind, error, retryable = "unknown", "download failed; its record is lost", True
            record_failure(results, image_id, kind, error, retryable)
        else:
            kind, error, retryable = record.kind, record.error, record.retryable
        table.write_row(layout.feature_path(results, image_id),
                        table.failed_row(image_id, kind, error, retryable=retryable,
                                         feature_version=FEATURE_VERSION))
        return Outcome(image_id, False, kind, error, retryable)
    try:
        decoded = decode_image(data, max_pixels=max_pixels)
        features = compute_features(decoded, len(data))
    except ImageRejected as rejected:
        table.write_row(layout.feature_path(results, image_id),
                        table.failed_row(image_id, rejected.kind, rejected.message,
                                         retryable=False, feature_version=FEATURE_VERSION))
        return Outcome(image_id, False, rejected.kind, rejected.message)
    table.write_row(layout.feature_path(results, image_id),
                    table.ok_row(image_id, features, FEATURE_VERSION))
    return Outcome(image_id, True, size=len(data))


def _measure_many(image_ids: Sequence[str], results: str, max_pixels: int) -> list[Outcome]:
    return [measure_one(i, results, max_pixels) for i in image_ids]


def run_feature_batch(image_ids: Sequence[str], results: str, *, threads: int, max_pixels: int,
                      manifest_path: str, batch_key: str, logger: logging.Logger,
                      progress_interval: float = 10.0) -> list[Outcome]:
    """Measure a batch on ``threads`` processes (the cores the job was given)."""
    progress = Progress(logger, "features", len(image_ids), progress_interval)
    outcomes: list[Outcome] = []
    with sigterm_as_interrupt():
        if threads <= 1 or len(image_ids) < 2 * threads:
            for image_id in image_ids:
                outcomes.append(measure_one(image_id, results, max_pixels))
                progress.add(outcomes[-1])
        else:
            step = max(1, min(64, len(image_ids) // (threads * 4)))
            chunks = [image_ids[i : i + step] for i in range(0, len(image_ids), step)]
            with ProcessPoolExecutor(max_workers=threads) as pool:
                futures = {pool.submit(_measure_many, chunk, results, max_pixels)
                           for chunk in chunks}
                try:
                    for future in _as_finished(futures):
                        for outcome in future.result():
                            outcomes.append(outcome)
                            progress.add(outcome)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    progress.report()
    atomic.write_bytes(manifest_path, json.dumps(progress.manifest(batch_key, outcomes)).encode())
    return outcomes
