"""Tests for thumbfeat.batch: download and feature batches against the loopback server."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from thumbfeat import layout, lineage
from thumbfeat.batch import measure_one, process_batch
from thumbfeat.failures import read_failure, record_failure
from thumbfeat.features import FEATURE_VERSION
from thumbfeat.fetch import FetchSettings
from thumbfeat.rows import read_row
from thumbfeat.thumbnail import ThumbnailSettings

from tests.support import ImageServer, make_jpeg, start_owner

SETTINGS = FetchSettings(concurrency=3, max_attempts=3, backoff_base=0.01, connect_timeout=2.0,
                         read_timeout=5.0, total_timeout=10.0)
MAX_PIXELS = 10_000_000
THUMBNAILS = ThumbnailSettings(max_side=512, format="jpeg", quality=85, only_if_larger=True)
TAG = THUMBNAILS.tag
OK_IDS = ["a", "b", "c", "d", "f"]
FAILED_IDS = {"m": "http_status", "h": "not_image"}


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def make_logger(name: str) -> tuple[logging.Logger, Lines]:
    logger = logging.getLogger(f"tests.batch.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for old in list(logger.handlers):
        logger.removeHandler(old)
    handler = Lines()
    logger.addHandler(handler)
    return logger, handler


def items_for(server: ImageServer) -> list[tuple[str, str]]:
    return [
        ("a", f"{server.base}/img/a.jpg"),
        ("m", f"{server.base}/missing/m.jpg"),
        ("b", f"{server.base}/img/b.jpg"),
        ("h", f"{server.base}/html/h.jpg"),
        ("c", f"{server.base}/img/c.jpg"),
        ("d", f"{server.base}/img/d.jpg"),
        ("f", f"{server.base}/flaky/1/f.jpg"),
    ]


def download(server: ImageServer, results: Path) -> tuple[list[object], dict, list[str]]:
    logger, lines = make_logger("download")
    manifest_path = results / layout.BATCHES / "00001-key.json"
    progress = process_batch(items_for(server), [], str(results), SETTINGS,
                             thumbnails=THUMBNAILS, threads=1,
                             max_pixels=MAX_PIXELS, manifest_path=str(manifest_path),
                             partial_path=str(results / layout.BATCHES / "00001-key.parquet"),
                             batch_key="00001-key", logger=logger, progress_interval=0.0)
    return progress.fetch.outcomes, json.loads(manifest_path.read_text()), lines.lines


def test_download_batch(server: ImageServer, tmp_path: Path) -> None:
    results = tmp_path / "results"
    outcomes, manifest, lines = download(server, results)

    by_id = {o.image_id: o for o in outcomes}  # type: ignore[attr-defined]
    assert sorted(by_id) == sorted([*OK_IDS, *FAILED_IDS])
    for image_id in OK_IDS:
        thumb = Path(layout.thumb_path(results, image_id, TAG))
        assert thumb.read_bytes() == server.image(image_id), image_id
        assert not Path(layout.failure_path(results, image_id)).exists()
        assert by_id[image_id].ok
    assert by_id["f"].attempts == 2
    for image_id, kind in FAILED_IDS.items():
        assert Path(layout.thumb_path(results, image_id, TAG)).read_bytes() == b""
        record = read_failure(layout.failure_path(results, image_id))
        assert record is not None
        assert (record.image_id, record.kind, record.retryable) == (image_id, kind, False)
        assert by_id[image_id].kind == kind
        assert not by_id[image_id].ok
    assert server.counts["/missing/m.jpg"] == 1

    assert manifest["batch"] == "00001-key"
    fetched = manifest["download"]
    assert fetched["images"] == 7
    assert fetched["ok"] == 5
    assert fetched["failed_by_kind"] == {"http_status": 1, "not_image": 1}
    assert sorted(f["image_id"] for f in fetched["failed"]) == ["h", "m"]
    assert fetched["bytes"] >= sum(len(server.image(i)) for i in OK_IDS)
    assert manifest["features"]["images"] == 0
    assert lines and any("fetch 7/7" in line for line in lines)

    # Nothing but finished files and records: no temporary files anywhere.
    assert not [p for p in results.rglob(".*") if p.is_file()]


def rows_of(results: Path, ids: list[str]) -> dict[str, dict[str, object]]:
    return {i: read_row(layout.feature_path(results, i, TAG)).to_pylist()[0] for i in ids}


def test_feature_batch_after_download(server: ImageServer, tmp_path: Path) -> None:
    one = tmp_path / "one"
    download(server, one)
    two = tmp_path / "two"
    shutil.copytree(one, two)
    ids = [i for i, _ in items_for(server)]

    results_by_threads = {}
    for threads, results in ((1, one), (2, two)):
        logger, lines = make_logger(f"features{threads}")
        manifest_path = results / layout.BATCHES / "00002-key.json"
        partial_path = results / layout.BATCHES / "00002-key.parquet"
        progress = process_batch([], ids, str(results), SETTINGS,
                             thumbnails=THUMBNAILS, threads=threads,
                                 max_pixels=MAX_PIXELS, manifest_path=str(manifest_path),
                                 partial_path=str(partial_path), batch_key="00002-key",
                                 logger=logger, progress_interval=0.0)
        outcomes = progress.measure.outcomes
        assert sorted(o.image_id for o in outcomes) == sorted(ids)
        measured = json.loads(manifest_path.read_text())["features"]
        assert (measured["images"], measured["ok"]) == (7, 5)
        assert measured["failed_by_kind"] == {"http_status": 1, "not_image": 1}
        assert lines
        partial = {r["image_id"]: r for r in pq.read_table(partial_path).to_pylist()}
        assert partial == rows_of(results, ids)
        results_by_threads[threads] = rows_of(results, ids)

    rows = results_by_threads[1]
    assert rows == results_by_threads[2]
    for image_id in OK_IDS:
        row = rows[image_id]
        assert row["status"] == "ok"
        assert (row["width"], row["height"]) == (320, 240)
        assert row["format"] == "JPEG"
        assert row["file_bytes"] == len(server.image(image_id))
        assert row["feature_version"] == FEATURE_VERSION
        assert row["error_kind"] is None
    for image_id, kind in FAILED_IDS.items():
        record = read_failure(layout.failure_path(one, image_id))
        assert record is not None
        row = rows[image_id]
        assert row["status"] == "failed"
        assert row["error_kind"] == kind
        assert row["error"] == record.error
        assert row["retryable"] is False
        assert row["width"] is None
    assert "404" in str(rows["m"]["error"])


def test_successful_retry_removes_the_failure_record(server: ImageServer,
                                                     tmp_path: Path) -> None:
    results = tmp_path / "results"
    record_failure(str(results), "a", "timeout", "slow", True, TAG)
    logger, _ = make_logger("retry")
    process_batch([("a", f"{server.base}/img/a.jpg")], [], str(results), SETTINGS,
                             thumbnails=THUMBNAILS, threads=1,
                  max_pixels=MAX_PIXELS, manifest_path=str(tmp_path / "m.json"),
                  partial_path=str(tmp_path / "m.parquet"), batch_key="k", logger=logger)
    assert Path(layout.thumb_path(results, "a", TAG)).read_bytes() == server.image("a")
    assert not Path(layout.failure_path(results, "a")).exists()


def test_fetch_and_measure_in_one_batch(server: ImageServer, tmp_path: Path) -> None:
    results = tmp_path / "results"
    ids = [i for i, _ in items_for(server)]
    logger, _ = make_logger("both")
    progress = process_batch(items_for(server), ids, str(results), SETTINGS,
                             thumbnails=THUMBNAILS, threads=2,
                             max_pixels=MAX_PIXELS, manifest_path=str(tmp_path / "m.json"),
                             partial_path=str(tmp_path / "m.parquet"), batch_key="k",
                             logger=logger)
    assert progress.fetch.done == progress.measure.done == 7
    rows = rows_of(results, ids)
    assert {i for i, r in rows.items() if r["status"] == "ok"} == set(OK_IDS)
    assert pq.read_table(tmp_path / "m.parquet").num_rows == 7
    for image_id in OK_IDS:
        # These thumbnails are kept as served: the row reuses the download's digest, which must
        # be that of the stored bytes.
        stored = Path(layout.thumb_path(str(results), image_id, TAG)).read_bytes()
        digest = hashlib.sha256(stored).hexdigest()
        assert rows[image_id]["sha256"] == rows[image_id]["source_sha256"] == digest


def thumbnail_on_disk(tmp_path: Path, image_id: str, data: bytes) -> str:
    """A results folder holding just one thumbnail with ``data``."""
    results = str(tmp_path / "results")
    Path(layout.thumb_path(results, image_id, TAG)).parent.mkdir(parents=True, exist_ok=True)
    Path(layout.thumb_path(results, image_id, TAG)).write_bytes(data)
    return results


def test_measure_one_without_a_record(tmp_path: Path) -> None:
    results = thumbnail_on_disk(tmp_path, "x", b"")
    outcome, _ = measure_one("x", results, TAG, MAX_PIXELS)
    assert not outcome.ok
    assert outcome.kind == "unknown"
    assert outcome.retryable
    record = read_failure(layout.failure_path(results, "x"))
    assert record is not None and record.retryable
    row = read_row(layout.feature_path(results, "x", TAG)).to_pylist()[0]
    assert (row["status"], row["error_kind"], row["retryable"]) == ("failed", "unknown", True)


def test_measure_one_quarantines_a_thumbnail_damaged_on_disk(tmp_path: Path) -> None:
    # A stored thumbnail decoded when fetched: failing now, it was damaged on disk. It is moved
    # aside and recorded as a retryable failure, so the next run fetches it again.
    for attempt in range(3):
        results = thumbnail_on_disk(tmp_path, "x", b"\x89PNG not really")
        outcome, _ = measure_one("x", results, TAG, MAX_PIXELS)
        assert not outcome.ok and outcome.retryable
        row = read_row(layout.feature_path(results, "x", TAG)).to_pylist()[0]
        assert (row["status"], row["error_kind"], row["retryable"]) == (
            "failed", "damaged_file", True)
        record = read_failure(layout.failure_path(results, "x"))
        assert record is not None and record.retryable and record.kind == "damaged_file"
        moved = Path(results, "quarantine", "thumbs", TAG, layout.shard_of("x"),
                     "x.img" + ("" if attempt == 0 else f".{attempt + 1}"))
        assert moved.read_bytes() == b"\x89PNG not really"
        assert "does not decode" in Path(f"{moved}.why").read_text()


def test_measure_one_hashes_a_thumbnail_kept_as_served_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Kept as served, the thumbnail is its own source: one digest serves both sha256 columns.
    data = make_jpeg("kept", (64, 48))
    results = thumbnail_on_disk(tmp_path, "x", data)
    real_sha256 = hashlib.sha256
    hashed = []

    def counting_sha256(*args: bytes) -> object:
        hashed.extend(arg for arg in args if arg == data)
        return real_sha256(*args)

    monkeypatch.setattr(hashlib, "sha256", counting_sha256)
    outcome, row = measure_one("x", results, TAG, MAX_PIXELS)
    assert outcome.ok
    assert len(hashed) == 1
    assert row["sha256"] == row["source_sha256"] == real_sha256(data).hexdigest()


def test_measure_one_needs_the_thumbnail(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        measure_one("x", str(tmp_path), TAG, MAX_PIXELS)


# A batch job as the workflow runs it, with its Snakemake process stood in for by the owner.
ORPHAN_JOB = """
import json, logging, os, sys
from pathlib import Path
from thumbfeat.batch import process_batch
from thumbfeat.fetch import FetchSettings
from thumbfeat.thumbnail import ThumbnailSettings

owner, results, items = int(sys.argv[1]), sys.argv[2], json.loads(Path(sys.argv[3]).read_text())
Path(sys.argv[3] + ".pid").write_text(str(os.getpid()))
logging.basicConfig(filename=sys.argv[3] + ".log", level=logging.INFO)
process_batch([tuple(i) for i in items], [i for i, _ in items], results,
              FetchSettings(concurrency=4),
              thumbnails=ThumbnailSettings(max_side=512, format="jpeg", quality=85,
                                           only_if_larger=True),
              threads=2, max_pixels=10_000_000,
              manifest_path=f"{results}/batches/k.json",
              partial_path=f"{results}/batches/k.parquet",
              batch_key="k", logger=logging.getLogger("job"), progress_interval=0.2,
              progress_path=f"{results}/logs/progress/k.json", owner_pid=owner)
"""


def test_orphaned_batch_stops_keeping_only_whole_files(tmp_path: Path) -> None:
    """Its owner killed, a job finishes the downloads in flight, starts no other, writes no
    manifest or partial, and leaves no running state behind; three times over the same images."""
    results = tmp_path / "results"
    script = tmp_path / "job.py"
    script.write_text(ORPHAN_JOB)
    server = ImageServer(delay=0.3).start()
    names = [f"o{i:02d}" for i in range(80)]
    thumbs_dir = layout.stage_dir(layout.THUMBS, TAG)
    try:
        for round_ in range(3):
            present = layout.present_ids(results, thumbs_dir, layout.THUMB_SUFFIX)
            items = [(n, f"{server.base}/img/{n}.jpg") for n in names if n not in present]
            listed = tmp_path / f"items{round_}.json"
            listed.write_text(json.dumps(items))
            owner = start_owner([sys.executable, str(script), "{owner}", str(results),
                                 str(listed)])
            deadline = time.monotonic() + 60
            while len(layout.present_ids(results, thumbs_dir, layout.THUMB_SUFFIX)
                       ) < len(present) + 8:
                assert time.monotonic() < deadline and owner.poll() is None
                time.sleep(0.05)
            job = int(Path(f"{listed}.pid").read_text())
            os.kill(owner.pid, signal.SIGKILL)
            owner.wait(timeout=60)
            while lineage.read_process(job) is not None:
                assert time.monotonic() < deadline, "the orphaned job kept running"
                time.sleep(0.05)

            thumbs = layout.present_ids(results, thumbs_dir, layout.THUMB_SUFFIX)
            assert len(thumbs) < len(names)
            # Every request made became a whole thumbnail: in-flight downloads finished.
            assert server.total() == len(thumbs)
            assert max(server.counts.values()) == 1
            for name in thumbs:
                with Image.open(layout.thumb_path(results, name, TAG)) as image:
                    image.load()
            for name in layout.present_ids(results, layout.stage_dir(layout.FEATURES, TAG),
                                          layout.FEATURE_SUFFIX):
                assert read_row(layout.feature_path(results, name, TAG)).num_rows == 1
            assert not (results / layout.BATCHES).exists()
            assert not list((results / layout.PROGRESS).glob("*"))
            assert not [p for p in results.rglob(".*") if p.is_file()]
            assert "gone" in Path(f"{listed}.log").read_text()
    finally:
        server.stop()


# Measures an image with the feature code alone, then runs one job's work: which of them tuned
# the process (malloc and BLAS settings, see thumbfeat.runtime)?
TUNING_PROBE = """
import logging, sys
from thumbfeat import batch, runtime
from thumbfeat.features import warm_kernels
from thumbfeat.fetch import FetchSettings
from thumbfeat.thumbnail import ThumbnailSettings
results, job = sys.argv[1], sys.argv[2]
warm_kernels()
tuned = [runtime.tune_for_measuring.cache_info().currsize]
settings = FetchSettings(max_attempts=1, connect_timeout=2.0)
thumbnails = ThumbnailSettings(max_side=512, format="jpeg", quality=85, only_if_larger=True)
source = ("x", "http://127.0.0.1:9/x.jpg")
if job == "one image":
    batch.finish_one(*source, results, settings, thumbnails, max_pixels=10**7, measure=True)
else:
    batch.process_batch([source], ["x"], results, settings, thumbnails=thumbnails, threads=1,
                        max_pixels=10**7, manifest_path=f"{results}/m.json",
                        partial_path=f"{results}/p.parquet", batch_key="k",
                        logger=logging.getLogger("probe"), progress_interval=0.0)
tuned.append(runtime.tune_for_measuring.cache_info().currsize)
print(tuned)
"""


@pytest.mark.parametrize("job", ["one image", "batch"])
def test_the_measuring_process_is_tuned_when_it_starts_not_per_image(tmp_path: Path,
                                                                     job: str) -> None:
    # In a fresh interpreter: the tuning holds for the whole process it happens in.
    result = subprocess.run([sys.executable, "-c", TUNING_PROBE, str(tmp_path / "results"), job],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0, 1]"
