"""Tests for thumbfeat.table: per-image rows and the feature table assembled from them."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from thumbfeat import layout, table
from thumbfeat.catalog import read_snapshot_ids

FEATURES = {
    "width": 320,
    "height": 240,
    "file_bytes": 12345,
    "format": "JPEG",
    "brightness_mean": 101.5,
    "contrast_rms": 40.25,
    "entropy": 7.125,
    "sharpness": 512.0,
}


def test_ok_row_round_trip(tmp_path: Path) -> None:
    row = table.ok_row("img1", FEATURES, "1")
    assert set(row) == set(table.ROW_SCHEMA.names)
    path = tmp_path / "f" / "ab" / "img1.parquet"
    table.write_row(path, row)
    read = table.read_row(path)
    assert read.schema.equals(table.ROW_SCHEMA)
    assert read.num_rows == 1
    assert read.to_pylist()[0] == {
        **FEATURES,
        "image_id": "img1",
        "status": "ok",
        "error_kind": None,
        "error": None,
        "retryable": None,
        "feature_version": "1",
    }
    assert sorted(p.name for p in path.parent.iterdir()) == ["img1.parquet"]


def test_failed_row_round_trip(tmp_path: Path) -> None:
    row = table.failed_row("img2", "http_status", "HTTP 404 Not Found", retryable=False,
                           feature_version="1")
    path = tmp_path / "img2.parquet"
    table.write_row(path, row)
    got = table.read_row(path).to_pylist()[0]
    assert got["image_id"] == "img2"
    assert got["status"] == "failed"
    assert got["error_kind"] == "http_status"
    assert got["error"] == "HTTP 404 Not Found"
    assert got["retryable"] is False
    assert got["feature_version"] == "1"
    assert all(got[name] is None for name in FEATURES)


def test_ok_row_cannot_override_its_identity() -> None:
    row = table.ok_row("img1", {**FEATURES, "image_id": "other", "status": "failed"}, "1")
    assert row["image_id"] == "img1"
    assert row["status"] == "ok"


def write_rows(results: Path, ids: list[str]) -> list[str]:
    paths = []
    for n, image_id in enumerate(ids):
        path = layout.feature_path(results, image_id)
        if n % 3 == 2:
            row = table.failed_row(image_id, "timeout", "slow", retryable=True,
                                   feature_version="1")
        else:
            row = table.ok_row(image_id, {**FEATURES, "width": n + 1}, "1")
        table.write_row(path, row)
        paths.append(path)
    return paths


@pytest.mark.parametrize("threads", [1, 3])
def test_assemble_table_keeps_catalog_order(tmp_path: Path, threads: int) -> None:
    ids = [f"id{n:03d}" for n in range(40)][::-1]  # not sorted, not shard order
    results = tmp_path / "results"
    write_rows(results, ids)
    out = results / "feature_table.parquet"
    assembled = table.assemble_table(ids, str(results), out, threads=threads)
    assert assembled.table.column("image_id").to_pylist() == ids
    assert assembled.rows_from_files == 40
    on_disk = pq.read_table(out)
    assert on_disk.column("image_id").to_pylist() == ids
    assert on_disk.column("width").to_pylist()[:3] == [1, 2, None]
    assert on_disk.column("status").to_pylist().count("failed") == 13
    assert on_disk.schema.equals(table.ROW_SCHEMA)


def test_assemble_table_of_nothing(tmp_path: Path) -> None:
    out = tmp_path / "feature_table.parquet"
    assembled = table.assemble_table([], str(tmp_path), out)
    assert assembled.table.num_rows == 0
    assert pq.read_table(out).schema.equals(table.ROW_SCHEMA)


def test_assemble_table_names_a_missing_file(tmp_path: Path) -> None:
    results = tmp_path / "results"
    ids = ["a", "b", "c"]
    paths = write_rows(results, ids)
    table.write_partial(results / layout.BATCHES / "p.parquet",
                        [table.read_row(p).to_pylist()[0] for p in paths])
    Path(paths[1]).unlink()
    out = tmp_path / "feature_table.parquet"
    with pytest.raises(FileNotFoundError) as caught:
        table.assemble_table(ids, str(results), out)
    assert paths[1] in str(caught.value)
    assert not out.exists()


def set_mtime(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns))


def test_rows_come_from_the_newest_source(tmp_path: Path) -> None:
    results = tmp_path / "results"
    ids = ["a", "b", "c"]
    paths = [Path(p) for p in write_rows(results, ids)]
    base = 1_700_000_000 * 10**9
    for path in paths:
        set_mtime(path, base)
    older = results / layout.BATCHES / "older.parquet"
    newer = results / layout.BATCHES / "newer.parquet"
    table.write_partial(older, [table.ok_row("a", {"width": 100}, "1"),
                                table.ok_row("b", {"width": 100}, "1")])
    table.write_partial(newer, [table.ok_row("a", {"width": 200}, "1")])
    set_mtime(older, base + 10)
    set_mtime(newer, base + 20)
    # "b" was rewritten after every partial (a job stopped before writing its partial).
    set_mtime(paths[1], base + 30)
    out = results / "feature_table.parquet"
    assembled = table.assemble_table(ids, str(results), out)
    widths = dict(zip(ids, assembled.table.column("width").to_pylist(), strict=True))
    assert widths["a"] == 200
    assert widths["b"] == table.read_row(paths[1]).column("width")[0].as_py()
    assert widths["c"] == table.read_row(paths[2]).column("width")[0].as_py()
    assert (assembled.rows_from_partials, assembled.rows_from_files) == (1, 2)
    # The new table is kept as the cache; the partials it covers are gone.
    remaining = sorted(p.name for p in (results / layout.BATCHES).glob("*.parquet"))
    assert remaining == [table.TABLE_CACHE]
    again = table.assemble_table(ids, str(results), out)
    assert again.table.equals(assembled.table)
    assert (again.rows_from_partials, again.rows_from_files) == (3, 0)


def test_assemble_from_snapshot(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    results = tmp_path / "results"
    ids = ["b", "a", "c"]
    write_rows(results, ids)
    snapshot = results / "catalog" / "d1.parquet"
    snapshot.parent.mkdir()
    pq.write_table(pa.table({"image_id": ids, "url": ["u"] * 3}), snapshot)
    out = results / "feature_table.parquet"
    logger = logging.getLogger("tests.table")
    with caplog.at_level(logging.INFO, logger="tests.table"):
        built = table.assemble_and_log(read_snapshot_ids(snapshot), str(results), out,
                                       threads=2, logger=logger)
    assert built.column("image_id").to_pylist() == ids
    assert "3 rows" in caplog.text
    assert "failed 1" in caplog.text and "ok 2" in caplog.text


def test_row_schema_has_every_feature_column() -> None:
    from thumbfeat.features import FEATURE_COLUMNS

    assert set(FEATURE_COLUMNS) <= set(table.ROW_SCHEMA.names)


def test_many_files_read_in_the_order_asked(tmp_path: Path) -> None:
    # Enough files for the DuckDB scan; the order asked is neither name nor shard order.
    ids = [f"m{(i * 7919) % 1000:04d}" for i in range(table.MANY_FILES + 100)]
    for number, image_id in enumerate(ids):
        if number % 3:
            row = table.ok_row(image_id, {"width": number, "format": "JPEG"}, "test")
        else:
            row = table.failed_row(image_id, "timeout", "slow", retryable=True,
                                   feature_version="test")
        table.write_row(layout.feature_path(tmp_path, image_id), row)
    paths = [layout.feature_path(tmp_path, i) for i in ids]
    scanned = table.read_rows(paths)
    one_by_one = pa.concat_tables([table.read_row(p) for p in paths])
    assert scanned.schema == table.ROW_SCHEMA
    assert scanned.column("image_id").to_pylist() == ids
    assert scanned.equals(one_by_one)
