"""The body of a batch job: fetch the batch's missing thumbnails and measure its images.

Downloads run on a pool of threads (``download.concurrency`` in flight, over one pooled session);
the bytes of each finished download go straight to a pool of processes, which decode them once,
store the thumbnail and measure it from the same pixels, so fetching and measuring overlap inside
the job and no image is read back and decoded again. Each image is finished on its own: its files
are written atomically as soon as they are done, so a job killed at any moment keeps every image it
finished and loses only those in flight. The batch ends by writing its rows again as one partial
table (which makes assembling the feature table cheap) and a JSON manifest: counts, timing,
failures by kind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    CancelledError,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass
from typing import Any

import requests

from thumbfeat import atomic, layout, lineage, storage
from thumbfeat.failures import read_failure, record_failure
from thumbfeat.features import FEATURE_VERSION, compute_features, warm_kernels
from thumbfeat.fetch import (
    FetchSettings,
    fetch_with_retries,
    host_limiter,
    make_session,
    secret_values,
)
from thumbfeat.imaging import DecodedImage, ImageRejected, decode_image
from thumbfeat.integrity import DAMAGED_KIND, Damage, quarantine
from thumbfeat.progress import Outcome, Progress
from thumbfeat.ratelimit import HostLimiter
from thumbfeat.rows import failed_row, ok_row, write_partial, write_row
from thumbfeat.runtime import tune_for_measuring
from thumbfeat.thumbnail import (
    SourceFacts,
    ThumbnailSettings,
    make_thumbnail,
    stored_source_facts,
)

Row = dict[str, object]

READY_BYTES = 128 * 2**20
"""At most this many fetched bytes wait for a measuring process before downloads pause (50 camera
photos): memory stays bounded when the network outpaces the processes."""
QUEUED_PER_PROCESS = 16
"""Fetched images waiting for a measuring process, per process: enough to keep it busy, few enough
that a killed job loses little (fetched bytes live in memory until their thumbnail is written)."""
TASKS_PER_PROCESS = 2
TASK_IMAGES = 8
"""Tasks handed to each process at once, of at most this many images: one task runs while the
next waits, and handing over a task costs little per image."""


def images_held(concurrency: int, processes: int) -> int:
    """The most fetched images a batch job holds unstored: what it loses, at most, when killed.

    Downloads in flight, images queued for the processes, and those in the processes' tasks.
    """
    return (max(1, concurrency) + QUEUED_PER_PROCESS * processes
            + TASKS_PER_PROCESS * TASK_IMAGES * processes)


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
                 settings: FetchSettings, tag: str, limiter: HostLimiter | None = None,
                 secrets: Sequence[str] = ()) -> tuple[Outcome, bytes | None]:
    """Fetch one image's bytes, or record why it failed (its bytes are then None).

    The bytes are not decoded here: the process that makes the thumbnail decodes them, once.
    """
    fetched = fetch_with_retries(session, url, settings, limiter=limiter, secrets=secrets)
    if fetched.failure is not None:
        failure = fetched.failure
        record_failure(results, image_id, failure.kind, failure.message, failure.retryable, tag,
                       url)
        return Outcome(image_id, False, failure.kind, failure.message, failure.retryable,
                       fetched.attempts), None
    data = fetched.data or b""
    return Outcome(image_id, True, attempts=fetched.attempts, size=len(data)), data


def _row_of(image_id: str, decoded: DecodedImage, data: bytes, source: SourceFacts,
            tag: str, source_url: str | None, data_sha256: str | None = None) -> Row:
    """The row of a thumbnail (its pixels and bytes), with the facts of its source;
    ``data_sha256`` is the digest of ``data`` when it was computed already."""
    features = compute_features(decoded, data, data_sha256=data_sha256)
    return ok_row(image_id, {**features, **source.columns(), "thumbnail_settings": tag},
                  FEATURE_VERSION, source_url)


def _failed_row(image_id: str, kind: str, error: str, retryable: bool, tag: str,
                source_url: str | None) -> Row:
    row = failed_row(image_id, kind, error, retryable=retryable,
                     feature_version=FEATURE_VERSION, source_url=source_url)
    row["thumbnail_settings"] = tag
    return row


def store_one(image_id: str, data: bytes, fetched: Outcome, results: str,
              thumbnails: ThumbnailSettings, max_pixels: int, measure: bool,
              source_url: str | None = None,
              clear_failure: bool = True) -> tuple[Outcome, Outcome | None, Row | None]:
    """Decode downloaded bytes once, store the thumbnail and, if asked, the row measured from it.

    Returns how the download ended (bytes that are not a whole image fail it), and the row's
    outcome and row when measured. The thumbnail is written before the row; ``source_url``,
    the URL the bytes came from, is recorded in the row and in a failure record. A stored
    thumbnail removes the image's failure record unless ``clear_failure`` says it has none (in
    a bucket a removal is a request of its own).
    """
    tag = thumbnails.tag
    try:
        thumb = make_thumbnail(data, thumbnails, max_pixels)
    except ImageRejected as rejected:
        record_failure(results, image_id, rejected.kind, rejected.message, False, tag,
                       source_url)
        failed = Outcome(image_id, False, rejected.kind, rejected.message, False,
                         fetched.attempts, len(data))
        if not measure:
            return failed, None, None
        row = _failed_row(image_id, rejected.kind, rejected.message, False, tag, source_url)
        write_row(layout.feature_path(results, image_id, tag), row)
        return failed, Outcome(image_id, False, rejected.kind, rejected.message), row
    storage.put(layout.thumb_path(results, image_id, tag), thumb.data)
    if clear_failure:
        storage.delete(layout.failure_path(results, image_id))
    stored = Outcome(image_id, True, attempts=fetched.attempts, size=len(data))
    if not measure:
        return stored, None, None
    # A thumbnail kept as served is the download, whose digest the source facts hold.
    kept_digest = None if thumb.made else thumb.source.sha256
    row = _row_of(image_id, thumb.decoded, thumb.data, thumb.source, tag, source_url,
                  kept_digest)
    write_row(layout.feature_path(results, image_id, tag), row)
    return stored, Outcome(image_id, True, size=len(thumb.data)), row


def measure_one(image_id: str, results: str, tag: str, max_pixels: int,
                source_url: str | None = None,
                clear_failure: bool = True) -> tuple[Outcome, Row]:
    """Compute and store the row of one image from its stored thumbnail (or its failure record).

    The stored thumbnail is exactly what a fresh download measured, so the row is the same.
    ``source_url`` is recorded in the row, so a later change of the catalog URL is noticed.
    ``clear_failure`` as for store_one.
    """
    data = storage.get(layout.thumb_path(results, image_id, tag))
    if not data:
        record = read_failure(layout.failure_path(results, image_id))
        if record is None:
            kind, error, retryable = "unknown", "download failed; its record is lost", True
            record_failure(results, image_id, kind, error, retryable, tag, source_url)
        else:
            kind, error, retryable = record.kind, record.error, record.retryable
        row = _failed_row(image_id, kind, error, retryable, tag, source_url)
        outcome = Outcome(image_id, False, kind, error, retryable)
    else:
        # A download that succeeded after a failure removes the record; a kill in between can
        # leave it behind, and a thumbnail with content outranks it.
        if clear_failure:
            storage.delete(layout.failure_path(results, image_id))
        try:
            decoded = decode_image(data, max_pixels=max_pixels)
        except ImageRejected as rejected:
            kind, error, retryable = damaged_thumbnail(results, image_id, tag, rejected,
                                                       source_url)
            row = _failed_row(image_id, kind, error, retryable, tag, source_url)
            outcome = Outcome(image_id, False, kind, error, retryable)
        else:
            # Hashed once: a thumbnail kept as served is its own source.
            digest = hashlib.sha256(data).hexdigest()
            row = _row_of(image_id, decoded, data, stored_source_facts(data, decoded, digest),
                          tag, source_url, digest)
            outcome = Outcome(image_id, True, size=len(data))
    write_row(layout.feature_path(results, image_id, tag), row)
    return outcome, row


def damaged_thumbnail(results: str, image_id: str, tag: str, rejected: ImageRejected,
                      source_url: str | None = None) -> tuple[str, str, bool]:
    """The failure of a stored thumbnail that does not decode: kind, message, retryable.

    Every stored thumbnail decoded when it was made, so one that fails now (other than by the
    pixel limit, a setting) was damaged on disk: it is moved to quarantine and recorded as a
    retryable failure, which the next run fetches again.
    """
    if rejected.kind == "decompression_bomb":
        return rejected.kind, rejected.message, False
    path = layout.thumb_path(results, image_id, tag)
    quarantine(results, Damage(path, f"does not decode ({rejected.kind}: {rejected.message})"),
               logging.getLogger("thumbfeat.batch"))
    kind, error = DAMAGED_KIND, "its stored thumbnail no longer decoded and was moved to quarantine"
    record_failure(results, image_id, kind, error, True, tag, source_url)
    return kind, error, True


@dataclass(frozen=True)
class Work:
    """One image handed to a measuring process: fresh bytes to store, or a stored thumbnail.

    ``source_url`` is the URL its row records as its source.
    """

    image_id: str
    data: bytes | None = None
    fetched: Outcome | None = None
    measure: bool = True
    source_url: str | None = None
    # Whether the image may have a failure record to remove once it has a thumbnail.
    clear_failure: bool = True


Done = tuple[Outcome | None, Outcome | None, Row | None]
"""How one image's work ended: its download (None if it had none), its row's outcome and row."""


class InlineExecutor(Executor):
    """Runs work in the calling thread: one core needs no second process."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        future: Future[object] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def finish_many(work: Sequence[Work], results: str, thumbnails: ThumbnailSettings,
                max_pixels: int) -> list[Done]:
    """Finish several images in one task, so handing work to a process costs little per image.

    In a bucket the images' objects are sent while the next image is measured (see
    thumbfeat.storage.writes_in_background); the task ends once all of them are stored, so an
    image counts as done only when its objects exist.
    """
    with storage.writes_in_background():
        return _finish_each(work, results, thumbnails, max_pixels)


def _finish_each(work: Sequence[Work], results: str, thumbnails: ThumbnailSettings,
                 max_pixels: int) -> list[Done]:
    done: list[Done] = []
    for item in work:
        if item.data is not None and item.fetched is not None:
            done.append(store_one(item.image_id, item.data, item.fetched, results, thumbnails,
                                  max_pixels, item.measure, item.source_url,
                                  item.clear_failure))
        else:
            outcome, row = measure_one(item.image_id, results, thumbnails.tag, max_pixels,
                                       item.source_url, item.clear_failure)
            done.append((item.fetched, outcome, row))
    return done


def process_batch(download: Sequence[tuple[str, str]], measure: Sequence[str], results: str,
                  settings: FetchSettings, *, thumbnails: ThumbnailSettings, threads: int,
                  max_pixels: int, manifest_path: str, partial_path: str, batch_key: str,
                  logger: logging.Logger, progress_interval: float = 10.0,
                  progress_path: str | None = None, owner_pid: int | None = None,
                  source_urls: Mapping[str, str] | None = None,
                  failure_records: Collection[str] | None = None) -> Progress:
    """Download ``download`` (id, URL pairs) and measure ``measure`` (ids), overlapping the two.

    Download threads only fetch bytes; the measuring processes decode them once, store the
    thumbnail and measure it from the same pixels. An image only in ``measure`` already has its
    thumbnail and is measured from it at once. Work in flight is bounded (a few tasks per
    process; downloads wait while fetched bytes queue up for the processes), so memory and the
    cost of waiting stay small however large the batch. A job whose Snakemake process
    (``owner_pid``) ends stops as if cancelled (see thumbfeat.lineage). ``source_urls`` gives
    the URL each measured image's row records as its source (a download's own URL otherwise).
    ``failure_records`` names the images that had a failure record when the run was planned
    (None: not known); only their records are removed once they have a thumbnail.
    """
    progress = Progress(logger, progress_interval, len(download), len(measure), label=batch_key,
                        state_path=progress_path)
    progress.save()
    # Secrets are read (and a missing one reported) before any process or thread starts.
    session = make_session(settings)
    secrets = secret_values(session, settings)
    limiter = host_limiter(settings)
    to_measure = set(measure)
    # The URL each row records: a download's own URL, else the one handed in.
    urls = {**(source_urls or {}), **dict(download)}
    downloading = {image_id for image_id, _ in download}
    recorded = None if failure_records is None else set(failure_records)

    def clears(image_id: str) -> bool:
        return recorded is None or image_id in recorded

    ready: deque[Work] = deque(Work(i, source_url=urls.get(i), clear_failure=clears(i))
                               for i in measure if i not in downloading)
    rows: list[Row] = []
    workers = max(1, threads)
    if measure or download:
        # Process-wide on purpose (malloc and BLAS): this job process and the measuring
        # processes forked from it below, which inherit the settings, exist to measure images.
        tune_for_measuring()
        # Loaded once here, the compiled feature kernels are inherited by every forked process.
        warm_kernels()
    measurer: Executor = (ProcessPoolExecutor(max_workers=workers) if threads > 1 or download
                          else InlineExecutor())
    # Fork the measuring processes now, before any download thread exists.
    measurer.submit(os.getpid).result()
    fetcher = ThreadPoolExecutor(max_workers=max(1, settings.concurrency))
    in_flight: set[Future[Any]] = set()
    measuring: set[Future[Any]] = set()
    # The images each measuring task was given, until it is done.
    chunks: dict[Future[Any], list[Work]] = {}
    sources = iter(download)
    fetch_slots = max(1, settings.concurrency) * 2
    queued_bytes = 0
    fetching = 0
    tag = thumbnails.tag

    try:
        with sigterm_as_interrupt(), lineage.stop_when_orphaned(owner_pid, logger):
            while True:
                while (fetching < fetch_slots and len(ready) < QUEUED_PER_PROCESS * workers
                       and queued_bytes < READY_BYTES
                       and (source := next(sources, None)) is not None):
                    in_flight.add(fetcher.submit(download_one, session, *source, results,
                                                 settings, tag, limiter, secrets))
                    fetching += 1
                while ready and len(measuring) < TASKS_PER_PROCESS * workers:
                    size = max(1, min(TASK_IMAGES, len(ready) // (TASKS_PER_PROCESS * workers)))
                    chunk = [ready.popleft() for _ in range(min(size, len(ready)))]
                    queued_bytes -= sum(len(work.data or b"") for work in chunk)
                    future = measurer.submit(finish_many, chunk, results, thumbnails, max_pixels)
                    measuring.add(future)
                    chunks[future] = chunk
                    in_flight.add(future)
                if not in_flight:
                    break
                done, in_flight = wait(in_flight, timeout=max(0.01, progress.due_in()),
                                       return_when=FIRST_COMPLETED)
                for future in done:
                    if future in measuring:
                        measuring.discard(future)
                        del chunks[future]
                        for fetched, measured, row in future.result():
                            if fetched is not None:
                                progress.fetch.add(fetched)
                            if measured is not None and row is not None:
                                progress.measure.add(measured)
                                rows.append(row)
                        continue
                    fetching -= 1
                    outcome, data = future.result()
                    wanted = outcome.image_id in to_measure
                    if data is not None:
                        ready.append(Work(outcome.image_id, data, outcome, wanted,
                                          urls.get(outcome.image_id),
                                          clears(outcome.image_id)))
                        queued_bytes += len(data)
                        continue
                    progress.fetch.add(outcome)
                    if wanted:
                        # Its failure record and empty thumbnail are written: the row follows.
                        ready.append(Work(outcome.image_id,
                                          source_url=urls.get(outcome.image_id),
                                          clear_failure=clears(outcome.image_id)))
                progress.tick()
    except KeyboardInterrupt:
        keep_fetched(fetcher, in_flight - measuring, chunks, ready, results, thumbnails,
                     max_pixels, logger)
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


def keep_fetched(fetcher: Executor, fetching: set[Future[Any]],
                 chunks: dict[Future[Any], list[Work]], ready: deque[Work], results: str,
                 thumbnails: ThumbnailSettings, max_pixels: int,
                 logger: logging.Logger) -> None:
    """On a stop, store every image whose bytes were fetched, so no request made is wasted.

    Downloads already under way finish (none starts); measuring tasks under way finish, and the
    bytes of tasks that did not run, of tasks whose process died and of images still queued
    are stored here as thumbnails (without their rows: the next run measures the stored
    thumbnails, with no request).
    """
    fetcher.shutdown(wait=True, cancel_futures=True)
    left = [work for work in ready if work.data is not None and work.fetched is not None]
    for future in fetching:
        if future.done() and not future.cancelled() and future.exception() is None:
            outcome, data = future.result()
            if data is not None:
                left.append(Work(outcome.image_id, data, outcome, False))
    for future, chunk in chunks.items():
        future.cancel()
        try:
            future.result()
        except (CancelledError, Exception):  # not run, or its process died with the stop
            left += [work for work in chunk if work.data is not None and work.fetched is not None]
    for work in left:
        if work.data is not None and work.fetched is not None:
            store_one(work.image_id, work.data, work.fetched, results, thumbnails, max_pixels,
                      False, work.source_url, work.clear_failure)
    if left:
        logger.info("stopping: stored the %d fetched images not yet stored", len(left))


def _local_write_error(exc: OSError, logger: logging.Logger) -> LocalWriteError:
    """Say plainly that the disk, not an image, failed, and that finished files are safe."""
    where = f" ({exc.filename})" if exc.filename else ""
    message = (f"cannot write the results{where}: {exc.strerror or exc} (disk full, file too "
               f"large or no permission?). The batch stops; every file written so far is whole "
               f"and kept, and the next run continues from them.")
    logger.error(message)
    return LocalWriteError(exc.errno or 0, message)


def finish_one(image_id: str, url: str, results: str, settings: FetchSettings,
               thumbnails: ThumbnailSettings, *, max_pixels: int, measure: bool) -> Outcome:
    """One requested image on its own: its thumbnail (fetched unless stored) and, if asked, its row.

    A stored thumbnail is measured as it is; otherwise the download is decoded once for both.
    """
    tag = thumbnails.tag
    if measure:
        # Process-wide on purpose: this job process exists to make this one image.
        tune_for_measuring()
    if measure and storage.exists(layout.thumb_path(results, image_id, tag)):
        return measure_one(image_id, results, tag, max_pixels, url)[0]
    session = make_session(settings)
    limiter = host_limiter(settings)
    try:
        fetched, data = download_one(session, image_id, url, results, settings, tag, limiter,
                                     secret_values(session, settings))
    finally:
        limiter.close()
        session.close()
    if data is None:
        if measure:
            return measure_one(image_id, results, tag, max_pixels, url)[0]
        return fetched
    stored, measured, _ = store_one(image_id, data, fetched, results, thumbnails, max_pixels,
                                    measure, url)
    return measured or stored
