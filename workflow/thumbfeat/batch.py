"""The body of a batch job: fetch the batch's missing thumbnails and measure its images.

Downloads run on a pool of threads (``download.concurrency`` in flight, over one pooled session);
each finished thumbnail goes straight to a pool of processes that measure it, so fetching and
measuring overlap inside the job. Each image is finished on its own: its files are written
atomically as soon as they are done, so a job killed at any moment keeps every image it finished and
loses only those in flight. The batch ends by writing its rows again as one partial table (which
makes assembling the feature table cheap) and a JSON manifest: counts, timing, failures by kind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from typing import Any

import requests

from thumbfeat import atomic, layout, lineage, storage
from thumbfeat.failures import read_failure, record_failure
from thumbfeat.features import FEATURE_VERSION, compute_features
from thumbfeat.fetch import (
    FetchSettings,
    fetch_with_retries,
    host_limiter,
    make_session,
    secret_values,
)
from thumbfeat.imaging import ImageRejected, decode_image
from thumbfeat.progress import Outcome, Progress
from thumbfeat.ratelimit import HostLimiter
from thumbfeat.rows import failed_row, ok_row, write_partial, write_row

Row = dict[str, object]


class LocalWriteError(OSError):
    """The results folder cannot be written (disk full, no permission): the run must stop."""


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


def download_one(session: requests.Session, image_id: str, url: str, results: str,
                 settings: FetchSettings, max_pixels: int,
                 limiter: HostLimiter | None = None, secrets: Sequence[str] = ()) -> Outcome:
    """Fetch, validate by decoding, and store one image (or its failure).

    A local write error is not the image's fault and is never recorded as its failure: it
    propagates and stops the batch.
    """
    fetched = fetch_with_retries(session, url, settings, limiter=limiter, secrets=secrets)
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
    storage.put(layout.thumb_path(results, image_id), data)
    storage.delete(layout.failure_path(results, image_id))
    return Outcome(image_id, True, attempts=fetched.attempts, size=len(data))


def measure_one(image_id: str, results: str, max_pixels: int) -> tuple[Outcome, Row]:
    """Compute and store the row of one image from its thumbnail (or its failure record)."""
    data = storage.get(layout.thumb_path(results, image_id))
    if not data:
        record = read_failure(layout.failure_path(results, image_id))
        if record is None:
            kind, error, retryable = "unknown", "download failed; its record is lost", True
            record_failure(results, image_id, kind, error, retryable)
        else:
            kind, error, retryable = record.kind, record.error, record.retryable
        row = failed_row(image_id, kind, error, retryable=retryable,
                               feature_version=FEATURE_VERSION)
        outcome = Outcome(image_id, False, kind, error, retryable)
    else:
        # A download that succeeded after a failure removes the record; a kill in between can
        # leave it behind, and a thumbnail with content outranks it.
        storage.delete(layout.failure_path(results, image_id))
        try:
            features = compute_features(decode_image(data, max_pixels=max_pixels), data)
        except ImageRejected as rejected:
            row = failed_row(image_id, rejected.kind, rejected.message, retryable=False,
                                   feature_version=FEATURE_VERSION)
            outcome = Outcome(image_id, False, rejected.kind, rejected.message)
        else:
            row = ok_row(image_id, features, FEATURE_VERSION)
            outcome = Outcome(image_id, True, size=len(data))
    write_row(layout.feature_path(results, image_id), row)
    return outcome, row


class InlineExecutor(Executor):
    """Runs work in the calling thread: one core needs no second process."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        future: Future[object] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def measure_many(image_ids: Sequence[str], results: str,
                 max_pixels: int) -> list[tuple[Outcome, Row]]:
    """Measure several images in one task, so handing work to a process costs little per image."""
    return [measure_one(image_id, results, max_pixels) for image_id in image_ids]


def process_batch(download: Sequence[tuple[str, str]], measure: Sequence[str], results: str,
                  settings: FetchSettings, *, threads: int, max_pixels: int,
                  manifest_path: str, partial_path: str, batch_key: str,
                  logger: logging.Logger, progress_interval: float = 10.0,
                  progress_path: str | None = None, owner_pid: int | None = None) -> Progress:
    """Download ``download`` (id, URL pairs) and measure ``measure`` (ids), overlapping the two.

    An image in both lists is measured once its download has finished; an image only in
    ``measure`` already has its thumbnail and is ready at once. Both kinds of work in flight are
    bounded (a few tasks per process, twice the download concurrency), so waiting on them stays
    cheap however large the batch. A job whose Snakemake process (``owner_pid``) ends stops as if
    cancelled (see thumbfeat.lineage).
    """
    progress = Progress(logger, progress_interval, len(download), len(measure), label=batch_key,
                        state_path=progress_path)
    progress.save()
    # Secrets are read (and a missing one reported) before any process or thread starts.
    session = make_session(settings)
    secrets = secret_values(session, settings)
    limiter = host_limiter(settings)
    to_measure = set(measure)
    downloading = {image_id for image_id, _ in download}
    ready: deque[str] = deque(i for i in measure if i not in downloading)
    rows: list[Row] = []
    workers = max(1, threads)
    measurer: Executor = (ProcessPoolExecutor(max_workers=workers) if threads > 1 or download
                          else InlineExecutor())
    # Fork the measuring processes now, before any download thread exists.
    measurer.submit(os.getpid).result()
    fetcher = ThreadPoolExecutor(max_workers=max(1, settings.concurrency))
    in_flight: set[Future[Any]] = set()
    measuring: set[Future[Any]] = set()
    sources = iter(download)
    fetch_slots = max(1, settings.concurrency) * 2
    fetching = 0

    try:
        with sigterm_as_interrupt(), lineage.stop_when_orphaned(owner_pid, logger):
            while True:
                while fetching < fetch_slots and (source := next(sources, None)) is not None:
                    in_flight.add(fetcher.submit(download_one, session, *source, results,
                                                 settings, max_pixels, limiter, secrets))
                    fetching += 1
                while ready and len(measuring) < 2 * workers:
                    size = max(1, min(16, len(ready) // (2 * workers)))
                    chunk = [ready.popleft() for _ in range(min(size, len(ready)))]
                    future = measurer.submit(measure_many, chunk, results, max_pixels)
                    measuring.add(future)
                    in_flight.add(future)
                if not in_flight:
                    break
                done, in_flight = wait(in_flight, timeout=max(0.01, progress.due_in()),
                                       return_when=FIRST_COMPLETED)
                for future in done:
                    if future in measuring:
                        measuring.discard(future)
                        for outcome, row in future.result():
                            progress.features.add(outcome)
                            rows.append(row)
                    else:
                        fetching -= 1
                        outcome = future.result()
                        progress.download.add(outcome)
                        if outcome.image_id in to_measure:
                            ready.append(outcome.image_id)
                progress.tick()
    except KeyboardInterrupt:
        # A stopped job no longer runs: `thumbfeat status` must not count it as running.
        progress.finish()
        raise
    except OSError as exc:
        raise _local_write_error(exc, logger) from exc
    finally:
        limiter.close()
        fetcher.shutdown(wait=True, cancel_futures=True)
        measurer.shutdown(wait=True, cancel_futures=True)
        session.close()
    progress.report()
    try:
        write_partial(partial_path, rows)
        atomic.write_bytes(manifest_path, json.dumps(progress.manifest(batch_key)).encode())
    except OSError as exc:
        raise _local_write_error(exc, logger) from exc
    progress.finish()
    return progress


def _local_write_error(exc: OSError, logger: logging.Logger) -> LocalWriteError:
    """Say plainly that the disk, not an image, failed, and that finished files are safe."""
    where = f" ({exc.filename})" if exc.filename else ""
    message = (f"cannot write the results{where}: {exc.strerror or exc} (disk full, file too "
               f"large or no permission?). The batch stops; every file written so far is whole "
               f"and kept, and the next run continues from them.")
    logger.error(message)
    return LocalWriteError(exc.errno or 0, message)
