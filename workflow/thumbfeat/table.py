"""The per-image outcome rows and the feature table assembled from them.

Every catalog image ends with exactly one one-row Parquet file: status ``ok`` with its features, or
``failed`` with the kind and reason. The table is the concatenation of those rows in catalog order,
so it always has one row per catalog image and is rebuilt from files on disk alone.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from thumbfeat import atomic, layout
from thumbfeat.catalog import read_snapshot_ids

ROW_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_kind", pa.string()),
        pa.field("error", pa.string()),
        pa.field("retryable", pa.bool_()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("file_bytes", pa.int64()),
        pa.field("format", pa.string()),
        pa.field("brightness_mean", pa.float64()),
        pa.field("contrast_rms", pa.float64()),
        pa.field("entropy", pa.float64()),
        pa.field("sharpness", pa.float64()),
        pa.field("feature_version", pa.string()),
    ]
)
STATUS_OK = "ok"
STATUS_FAILED = "failed"


def ok_row(image_id: str, features: dict[str, object], feature_version: str) -> dict[str, object]:
    """The row of an image whose features were computed."""
    row: dict[str, object] = {name: None for name in ROW_SCHEMA.names}
    row.update(features)
    row.update(image_id=image_id, status=STATUS_OK, feature_version=feature_version)
    return row


def failed_row(image_id: str, kind: str, error: str, *, retryable: bool,
               feature_version: str) -> dict[str, object]:
    """The row of an image that could not be fetched or decoded."""
    row: dict[str, object] = {name: None for name in ROW_SCHEMA.names}
    row.update(image_id=image_id, status=STATUS_FAILED, error_kind=kind, error=error,
               retryable=retryable, feature_version=feature_version)
    return row


def write_row(path: str | Path, row: dict[str, object]) -> None:
    """Write one image's row as its own Parquet file, atomically."""
    table = pa.Table.from_pylist([row], schema=ROW_SCHEMA)
    atomic.write_with(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_row(path: str | Path) -> pa.Table:
    return pq.read_table(path, schema=ROW_SCHEMA)


def read_rows(paths: Sequence[str], *, threads: int = 8) -> pa.Table:
    """Read many one-row files; Parquet decoding releases the GIL, so threads overlap the I/O."""
    if not paths:
        return ROW_SCHEMA.empty_table()
    chunk = max(1, len(paths) // (threads * 4) or 1)
    groups = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]

    def read_group(group: Sequence[str]) -> pa.Table:
        return pa.concat_tables([read_row(p) for p in group])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        tables = list(pool.map(read_group, groups))
    return pa.concat_tables(tables)


def assemble_table(image_ids: Sequence[str], row_paths: Sequence[str], out_path: str | Path,
                   *, threads: int = 8) -> pa.Table:
    """Build the feature table: one row per catalog image, in catalog order, written atomically.

    A missing per-image file means the work list and the disk disagree, so it is an error rather
    than a silently shorter table.
    """
    missing = [p for p in row_paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} per-image feature files are missing, e.g. {missing[0]}; "
            "run the workflow again to rebuild them"
        )
    table = read_rows(row_paths, threads=threads)
    got = table.column("image_id").to_pylist()
    if got != list(image_ids):
        raise ValueError("per-image files do not match the catalog ids they were read for")
    atomic.write_with(out_path, lambda tmp: pq.write_table(table, tmp, compression="zstd"),
                      durable=True)
    return table


def assemble_from_snapshot(snapshot_path: str | Path, results: str, out_path: str | Path, *,
                           threads: int, logger: logging.Logger) -> pa.Table:
    """Build the table for the catalog recorded in ``snapshot_path`` and log its outcome counts."""
    started = time.monotonic()
    image_ids = read_snapshot_ids(snapshot_path)
    paths = [layout.feature_path(results, i) for i in image_ids]
    built = assemble_table(image_ids, paths, out_path, threads=threads)
    statuses = Counter(built.column("status").to_pylist())
    logger.info("feature table: %d rows (%s) in %.2f s", built.num_rows,
                ", ".join(f"{k} {n}" for k, n in sorted(statuses.items())),
                time.monotonic() - started)
    return built
