"""Tests for thumbfeat.rows: the per-image row, its schema and its files."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from thumbfeat.features import FEATURE_COLUMNS, FEATURE_FIELDS, compute_features
from thumbfeat.imaging import decode_image
from thumbfeat.rows import (
    GROUP_COLUMNS,
    ROW_SCHEMA,
    failed_row,
    ok_row,
    read_row,
    write_partial,
    write_row,
)
from thumbfeat.thumbnail import THUMBNAIL_FIELDS
from thumbfeat.urls import recorded_url


def _real_features() -> dict[str, object]:
    """Every feature column of a real (small, colourful) image, lists and structs included."""
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    data = buffer.getvalue()
    return compute_features(decode_image(data), data)


FEATURES = _real_features()


def test_the_schema_is_outcome_features_version_and_groups_in_that_order() -> None:
    outcome = ["image_id", "status", "error_kind", "error", "retryable"]
    thumbnail = [f.name for f in THUMBNAIL_FIELDS]
    assert ROW_SCHEMA.names == [*outcome, *FEATURE_COLUMNS, *thumbnail, "feature_version",
                                "source_url",
                                *GROUP_COLUMNS]
    for field in FEATURE_FIELDS:
        assert ROW_SCHEMA.field(field.name).type == field.type
    assert list(FEATURES) == list(FEATURE_COLUMNS)


def test_ok_row_round_trip(tmp_path: Path) -> None:
    row = ok_row("img1", FEATURES, "1", "http://h/img1.jpg")
    assert set(row) == set(ROW_SCHEMA.names)
    path = tmp_path / "f" / "ab" / "img1.parquet"
    write_row(path, row)
    read = read_row(path)
    assert read.schema.equals(ROW_SCHEMA)
    assert read.num_rows == 1
    assert read.to_pylist()[0] == {
        **FEATURES,
        "image_id": "img1",
        "status": "ok",
        "error_kind": None,
        "error": None,
        "retryable": None,
        **{field.name: None for field in THUMBNAIL_FIELDS},
        "feature_version": "1",
        "source_url": recorded_url("http://h/img1.jpg"),
        "exact_duplicate_group": None,
        "near_duplicate_group": None,
    }
    assert sorted(p.name for p in path.parent.iterdir()) == ["img1.parquet"]


def test_failed_row_round_trip(tmp_path: Path) -> None:
    row = failed_row("img2", "http_status", "HTTP 404 Not Found", retryable=False,
                           feature_version="1")
    path = tmp_path / "img2.parquet"
    write_row(path, row)
    got = read_row(path).to_pylist()[0]
    assert got["image_id"] == "img2"
    assert got["status"] == "failed"
    assert got["error_kind"] == "http_status"
    assert got["error"] == "HTTP 404 Not Found"
    assert got["retryable"] is False
    assert got["feature_version"] == "1"
    assert got["source_url"] is None
    assert all(got[name] is None for name in FEATURES)


def test_ok_row_cannot_override_its_identity() -> None:
    row = ok_row("img1", {**FEATURES, "image_id": "other", "status": "failed"}, "1")
    assert row["image_id"] == "img1"
    assert row["status"] == "ok"


def test_a_partial_holds_a_batch_of_rows_compressed(tmp_path: Path) -> None:
    rows = [ok_row(f"img{n}", {**FEATURES, "width": n}, "1") for n in range(5)]
    rows.append(failed_row("bad", "timeout", "slow", retryable=True, feature_version="1"))
    path = tmp_path / "batches" / "p.parquet"
    write_partial(path, rows)
    read = pq.read_table(path)
    assert read.schema.equals(ROW_SCHEMA)
    assert read.column("image_id").to_pylist() == ["img0", "img1", "img2", "img3", "img4", "bad"]
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.parquet"]
