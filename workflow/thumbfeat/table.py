"""The per-image outcome rows and the feature table assembled from them.

Every catalog image ends with exactly one one-row Parquet file: status ``ok`` with its features, or
``failed`` with the kind and reason. The table is the concatenation of those rows in catalog order,
so it always has one row per catalog image and is rebuilt from files on disk alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from thumbfeat import atomic, layout

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
# The last table, kept beside the partials as the starting point of the next assembly.
TABLE_CACHE = "table-cache.parquet"


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


def write_rows(path: str | Path, rows: Sequence[dict[str, object]], *,
               durable: bool = False) -> None:
    """Write rows with the row schema as one Parquet file, atomically."""
    table = pa.Table.from_pylist(list(rows), schema=ROW_SCHEMA)
    atomic.write_with(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"),
                      durable=durable)


def write_row(path: str | Path, row: dict[str, object]) -> None:
    """Write one image's row as its own Parquet file."""
    write_rows(path, [row])


def read_row(path: str | Path) -> pa.Table:
    return pq.read_table(path, schema=ROW_SCHEMA)


# Below this many files, threads over pyarrow start faster than a DuckDB scan; above it, DuckDB's
# Parquet reader costs about 60% of pyarrow's CPU per small file and uses every core.
MANY_FILES = 500


def read_rows(paths: Sequence[str], *, threads: int = 8) -> pa.Table:
    """Read many one-row files, in the order given.

    This is the from-scratch path of the table (no partial holds these rows), so its cost is per
    file: opening, the footer, one small column chunk per column.
    """
    if not paths:
        return ROW_SCHEMA.empty_table()
    if len(paths) >= MANY_FILES:
        return _read_rows_duckdb(paths)
    chunk = max(1, len(paths) // (threads * 4) or 1)
    groups = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]

    def read_group(group: Sequence[str]) -> pa.Table:
        return pa.concat_tables([read_row(p) for p in group])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        tables = list(pool.map(read_group, groups))
    return pa.concat_tables(tables)


def _read_rows_duckdb(paths: Sequence[str]) -> pa.Table:
    """One multi-threaded DuckDB scan over the files, put back in the order of ``paths``."""
    import duckdb

    with duckdb.connect() as connection:
        scanned = connection.read_parquet(list(paths), union_by_name=True).to_arrow_table()
    columns = []
    for field in ROW_SCHEMA:
        if field.name in scanned.column_names:
            columns.append(scanned.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(scanned.num_rows, type=field.type))
    table = pa.Table.from_arrays(columns, schema=ROW_SCHEMA)
    position = {image_id: row for row, image_id in enumerate(table.column("image_id").to_pylist())}
    order = [position[Path(p).name[: -len(layout.FEATURE_SUFFIX)]] for p in paths]
    return table.take(pa.array(order, type=pa.int64()))


def write_partial(path: str | Path, rows: Sequence[dict[str, object]]) -> None:
    """Write a batch's rows as one file, so the table reads one file per batch, not per image."""
    write_rows(path, rows)


@dataclass(frozen=True)
class Assembled:
    table: pa.Table
    rows_from_partials: int
    rows_from_files: int
    partials_read: int


def _read_partials(results: str) -> list[tuple[int, pa.Table]]:
    """Partial tables (and the cache of the last table), oldest first, with their mtimes."""
    folder = Path(results) / layout.BATCHES
    found = []
    for path in folder.glob("*.parquet"):
        try:
            found.append((path.stat().st_mtime_ns, path))
        except FileNotFoundError:
            continue
    found.sort()
    return [(mtime, pq.read_table(path, schema=ROW_SCHEMA)) for mtime, path in found]


def assemble_table(image_ids: Sequence[str], results: str, out_path: str | Path, *,
                   threads: int = 8) -> Assembled:
    """Build the feature table: one row per catalog image, in catalog order, written atomically.

    Each image's row comes from the newest partial table holding it, unless its own file is newer
    than that partial (written by a job that was stopped before its partial), in which case the
    file is read. The per-image files stay the truth; partials only save opening them one by one.
    A missing per-image file means the work list and the disk disagree: an error, not a shorter
    table.
    """
    partials = _read_partials(results)
    newest: dict[str, tuple[int, int, int]] = {}
    for number, (mtime, partial) in enumerate(partials):
        for row, image_id in enumerate(partial.column("image_id").to_pylist()):
            newest[image_id] = (mtime, number, row)
    offsets = [0]
    for _, partial in partials:
        offsets.append(offsets[-1] + partial.num_rows)
    take: list[int] = []
    to_read: list[str] = []
    missing: list[str] = []
    for image_id in image_ids:
        path = layout.feature_path(results, image_id)
        try:
            file_mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            missing.append(path)
            continue
        hit = newest.get(image_id)
        if hit is None or file_mtime > hit[0]:
            take.append(offsets[-1] + len(to_read))
            to_read.append(path)
        else:
            take.append(offsets[hit[1]] + hit[2])
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} per-image feature files are missing, e.g. {missing[0]}; "
            "run the workflow again to rebuild them"
        )
    pieces = [partial for _, partial in partials] + [read_rows(to_read, threads=threads)]
    built = pa.concat_tables(pieces).take(pa.array(take, type=pa.int64()))
    if built.column("image_id").to_pylist() != list(image_ids):
        raise ValueError("per-image rows do not match the catalog ids they were read for")
    atomic.write_with(out_path, lambda tmp: pq.write_table(built, tmp, compression="zstd"),
                      durable=True)
    _keep_as_cache(out_path, results)
    return Assembled(built, len(take) - len(to_read), len(to_read), len(partials))


def _keep_as_cache(table_path: str | Path, results: str) -> None:
    """Keep the new table as the partial all later assemblies start from; drop older partials.

    A hard link costs nothing and survives Snakemake deleting the table before rebuilding it.
    """
    folder = Path(results) / layout.BATCHES
    cache = folder / TABLE_CACHE
    with atomic.atomic_path(cache) as tmp:
        try:
            os.link(table_path, tmp)
        except OSError:
            shutil.copy2(table_path, tmp)
    cache_mtime = cache.stat().st_mtime_ns
    for path in folder.glob("*.parquet"):
        if path.name != TABLE_CACHE and path.stat().st_mtime_ns <= cache_mtime:
            path.unlink(missing_ok=True)


def assemble_and_log(image_ids: Sequence[str], results: str, out_path: str | Path, *,
                     threads: int, logger: logging.Logger) -> pa.Table:
    """Build the table for ``image_ids`` and log its outcome counts and where rows came from."""
    started = time.monotonic()
    assembled = assemble_table(image_ids, results, out_path, threads=threads)
    statuses = Counter(assembled.table.column("status").to_pylist())
    logger.info("feature table: %d rows (%s) in %.2f s; %d rows from %d partial tables, "
                "%d read from their own files", assembled.table.num_rows,
                ", ".join(f"{k} {n}" for k, n in sorted(statuses.items())),
                time.monotonic() - started, assembled.rows_from_partials,
                assembled.partials_read, assembled.rows_from_files)
    return assembled.table
