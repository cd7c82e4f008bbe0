"""Tests for thumbfeat.rowscan: many per-image files read by DuckDB, here or in worker processes."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from thumbfeat import layout, rowscan, table
from thumbfeat.rows import ROW_SCHEMA, failed_row, ok_row, read_row, write_row

from tests.support import TAG


def write_files(results: Path, count: int) -> list[str]:
    """Rows in an order that is neither name nor shard order, ok and failed mixed."""
    ids = [f"w{(n * 7919) % count:05d}" for n in range(count)]
    for number, image_id in enumerate(ids):
        if number % 4:
            row = ok_row(image_id, {"width": number, "hue_hist": [0.5, 0.5]}, "2")
        else:
            row = failed_row(image_id, "timeout", "slow", retryable=True,
                                   feature_version="2")
        write_row(layout.feature_path(results, image_id, TAG), row)
    return [layout.feature_path(results, i, TAG) for i in ids]


@pytest.mark.parametrize("with_jemalloc", [True, False])
def test_workers_return_every_row_in_the_order_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_jemalloc: bool) -> None:
    if not with_jemalloc:
        monkeypatch.setattr(rowscan, "jemalloc_library", lambda: None)
    paths = write_files(tmp_path / "results", 700)
    scanned = rowscan.scan_in_workers(paths, 3, tmp_path / "results", min_files=0)
    expected = pa.concat_tables([read_row(p) for p in paths])
    assert scanned.schema == ROW_SCHEMA
    assert scanned.equals(expected)
    assert scanned.column("image_id").num_chunks == 1
    # The hand-over folder is gone.
    assert not list((tmp_path / "results").glob(".rowscan-*"))


def test_few_files_are_scanned_in_this_process(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_files(tmp_path / "results", 50)

    def no_workers(*args: object, **kwargs: object) -> None:
        raise AssertionError("a worker was started for a few files")

    monkeypatch.setattr(rowscan.subprocess, "Popen", no_workers)
    scanned = rowscan.scan_in_workers(paths, 2, tmp_path / "results")
    assert scanned.column("image_id").to_pylist() == [Path(p).stem for p in paths]


def test_a_failing_worker_stops_the_scan_with_its_error(tmp_path: Path) -> None:
    paths = write_files(tmp_path / "results", 40)
    paths[-1] = str(tmp_path / "results" / "features" / "00" / "not-there.parquet")
    with pytest.raises(RuntimeError, match="worker failed") as caught:
        rowscan.scan_in_workers(paths, 2, tmp_path / "results", min_files=0)
    assert "not-there.parquet" in str(caught.value)
    assert not list((tmp_path / "results").glob(".rowscan-*"))


def test_worker_environment_preloads_the_allocator_and_finds_the_package() -> None:
    env = rowscan.worker_environment({"PYTHONPATH": "/elsewhere", "LD_PRELOAD": "libx.so"},
                                     "/pkg", "libjemalloc.so.2")
    assert env["PYTHONPATH"].split(":") == ["/pkg", "/elsewhere"]
    assert env["LD_PRELOAD"] == "libjemalloc.so.2 libx.so"
    plain = rowscan.worker_environment({}, "/pkg", None)
    assert plain["PYTHONPATH"] == "/pkg"
    assert "LD_PRELOAD" not in plain


def test_the_table_from_files_alone_is_the_same_with_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "results"
    paths = write_files(results, 600)
    ids = [Path(p).stem for p in paths]
    one = table.assemble_table(ids, str(results), tmp_path / "one.parquet", tag=TAG).table
    for partial in (results / layout.BATCHES).glob("*.parquet"):
        partial.unlink()
    monkeypatch.setattr(rowscan, "WORKER_MIN_FILES", 0)
    started: list[list[str]] = []
    real_popen = rowscan.subprocess.Popen

    def counting_popen(command: list[str], **kwargs: object) -> object:
        started.append(command)
        return real_popen(command, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(rowscan.subprocess, "Popen", counting_popen)
    assembled = table.assemble_table(ids, str(results), tmp_path / "two.parquet", tag=TAG,
                                     workers=2)
    assert len(started) == 2
    assert assembled.rows_from_files == len(ids)
    assert assembled.table.equals(one)
