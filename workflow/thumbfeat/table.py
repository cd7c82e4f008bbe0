"""The per-image outcome rows and the feature table assembled from them.

Every catalog image ends with exactly one one-row Parquet file: status ``ok`` with its features, or
``failed`` with the kind and reason. The table is the concatenation of those rows in catalog order,
so it always has one row per catalog image and is rebuilt from files on disk alone. Columns that
relate images to each other (exact and near-duplicate groups) are computed at each assembly from the
rows' own digests and hashes (thumbfeat.duplicates), never carried over from an earlier table.
"""

from __future__ import annotations

import json
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
from thumbfeat.duplicates import (
    DEFAULT_MAX_DISTANCE,
    exact_duplicate_groups,
    extend_near_duplicate_groups,
    near_duplicate_groups,
)

DOMINANT_COLOR_TYPE = pa.struct([pa.field("color", pa.string()), pa.field("share", pa.float64())])

# Column by column meaning, unit and formula: docs/feature-table.md.
ROW_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_kind", pa.string()),
        pa.field("error", pa.string()),
        pa.field("retryable", pa.bool_()),
        # geometry and file
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("aspect_ratio", pa.float64()),
        pa.field("file_bytes", pa.int64()),
        pa.field("format", pa.string()),
        pa.field("source_mode", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("pixels_sha256", pa.string()),
        # the source as downloaded, and the settings its thumbnail was made with
        pa.field("source_width", pa.int32()),
        pa.field("source_height", pa.int32()),
        pa.field("source_bytes", pa.int64()),
        pa.field("source_format", pa.string()),
        pa.field("source_sha256", pa.string()),
        pa.field("thumbnail_settings", pa.string()),
        # light
        pa.field("brightness_mean", pa.float64()),
        pa.field("brightness_p05", pa.float64()),
        pa.field("brightness_p99", pa.float64()),
        # contrast and detail
        pa.field("contrast_rms", pa.float64()),
        pa.field("entropy", pa.float64()),
        pa.field("sharpness", pa.float64()),
        pa.field("edge_density", pa.float64()),
        # colour
        pa.field("saturation_mean", pa.float64()),
        pa.field("saturation_std", pa.float64()),
        pa.field("value_mean", pa.float64()),
        pa.field("hue_mean", pa.float64()),
        pa.field("hue_hist", pa.list_(pa.float64())),
        pa.field("colorfulness", pa.float64()),
        pa.field("is_grayscale_content", pa.bool_()),
        pa.field("dominant_colors", pa.list_(DOMINANT_COLOR_TYPE)),
        # hashes
        pa.field("ahash", pa.string()),
        pa.field("dhash", pa.string()),
        pa.field("phash", pa.string()),
        # flags
        pa.field("is_dark", pa.bool_()),
        pa.field("is_light", pa.bool_()),
        pa.field("is_blurry", pa.bool_()),
        pa.field("is_low_information", pa.bool_()),
        pa.field("is_odd_aspect_ratio", pa.bool_()),
        # provenance
        pa.field("pillow_version", pa.string()),
        pa.field("numpy_version", pa.string()),
        pa.field("feature_version", pa.string()),
        # across images, filled when the table is assembled
        pa.field("exact_duplicate_group", pa.string()),
        pa.field("near_duplicate_group", pa.string()),
    ]
)
GROUP_COLUMNS = ("exact_duplicate_group", "near_duplicate_group")
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
    """Write rows with the row schema as one Parquet file (zstd-compressed), atomically."""
    table = pa.Table.from_pylist(list(rows), schema=ROW_SCHEMA)
    atomic.write_with(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"),
                      durable=durable)


def write_row(path: str | Path, row: dict[str, object]) -> None:
    """Write one image's row as its own Parquet file.

    A single row gains nothing from compression, dictionaries or statistics, and setting up a
    zstd context for each of the forty-odd columns cost more than measuring the image's
    brightness: written plain, a row takes about a third of the time.
    """
    table = pa.Table.from_pylist([row], schema=ROW_SCHEMA)
    atomic.write_with(path, lambda tmp: pq.write_table(
        table, tmp, compression="NONE", use_dictionary=False, write_statistics=False))


def read_row(path: str | Path) -> pa.Table:
    return pq.read_table(path, schema=ROW_SCHEMA)


# Below this many files, threads over pyarrow start faster than a DuckDB scan; above it, DuckDB's
# Parquet reader costs about 60% of pyarrow's CPU per small file (see thumbfeat.rowscan).
MANY_FILES = 500


def read_rows(paths: Sequence[str], *, threads: int = 8, workers: int = 1,
              scratch: str | Path | None = None) -> pa.Table:
    """Read many one-row files, in the order given.

    This is the from-scratch path of the table (no partial holds these rows), so its cost is per
    file: opening, the footer, one small column chunk per column. Many files are scanned by DuckDB,
    in ``workers`` processes when there are thousands (hand-over files go under ``scratch``).
    """
    if not paths:
        return ROW_SCHEMA.empty_table()
    if len(paths) >= MANY_FILES:
        from thumbfeat import rowscan  # imported here: rowscan builds on this module's schema

        if scratch is None:
            return rowscan.scan_files(paths)
        return rowscan.scan_in_workers(paths, workers, scratch)
    chunk = max(1, len(paths) // (threads * 4) or 1)
    groups = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]

    def read_group(group: Sequence[str]) -> pa.Table:
        return pa.concat_tables([read_row(p) for p in group])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        tables = list(pool.map(read_group, groups))
    return pa.concat_tables(tables)


def write_partial(path: str | Path, rows: Sequence[dict[str, object]]) -> None:
    """Write a batch's rows as one file, so the table reads one file per batch, not per image."""
    write_rows(path, rows)


@dataclass(frozen=True)
class Assembled:
    table: pa.Table
    rows_from_partials: int
    rows_from_files: int
    partials_read: int


def _read_partials(results: str) -> list[tuple[int, Path, pa.Table]]:
    """Partial tables (and the cache of the last table), oldest first, with their mtimes."""
    folder = Path(results) / layout.BATCHES
    found = []
    for path in folder.glob("*.parquet"):
        try:
            found.append((path.stat().st_mtime_ns, path))
        except FileNotFoundError:
            continue
    found.sort()
    return [(mtime, path, pq.read_table(path, schema=ROW_SCHEMA)) for mtime, path in found]


DISTANCE_KEY = b"thumbfeat.near_duplicate_distance"


def _grown_from(built: pa.Table, previous: pa.Table | None,
                near_duplicate_distance: int) -> tuple[list[str | None], list[bool]] | None:
    """The previous table's near-duplicate groups placed on ``built``'s rows, and which rows are
    new, when ``built`` only added images to it; None when they must be regrouped from scratch.

    Growth means: the previous table was grouped with the same distance, and every image in it
    is still in ``built`` with the same pHash (a removed image can split a group, a re-measured
    one can move between groups).
    """
    if previous is None or previous.num_rows == 0:
        return None
    metadata = previous.schema.metadata or {}
    if metadata.get(DISTANCE_KEY) != str(near_duplicate_distance).encode():
        return None
    row_of = {image_id: row for row, image_id in enumerate(built.column("image_id").to_pylist())}
    phashes = built.column("phash").to_pylist()
    earlier: list[str | None] = [None] * built.num_rows
    is_new = [True] * built.num_rows
    for image_id, phash, group in zip(previous.column("image_id").to_pylist(),
                                      previous.column("phash").to_pylist(),
                                      previous.column("near_duplicate_group").to_pylist(),
                                      strict=True):
        row = row_of.get(image_id)
        if row is None or phashes[row] != phash:
            return None
        earlier[row] = group
        is_new[row] = False
    return earlier, is_new


def with_duplicate_groups(built: pa.Table, near_duplicate_distance: int,
                          previous: pa.Table | None = None) -> pa.Table:
    """Fill the group columns from the rows' pixel digests and pHashes (see thumbfeat.duplicates).

    The groups always describe exactly the images of this table. When ``previous`` (the last
    assembled table) holds a subset of them with unchanged hashes, its near-duplicate groups are
    extended with the new images' edges instead of regrouping every image; the result is the same.
    """
    image_ids = built.column("image_id").to_pylist()
    exact = exact_duplicate_groups(image_ids, built.column("pixels_sha256").to_pylist())
    phashes = built.column("phash").to_pylist()
    grown = _grown_from(built, previous, near_duplicate_distance)
    if grown is None:
        near = near_duplicate_groups(image_ids, phashes, near_duplicate_distance)
    else:
        near = extend_near_duplicate_groups(image_ids, phashes, near_duplicate_distance, *grown)
    for name, values in zip(GROUP_COLUMNS, (exact, near), strict=True):
        built = built.set_column(built.schema.get_field_index(name), ROW_SCHEMA.field(name),
                                 pa.array(values, type=pa.string()))
    return built.replace_schema_metadata({DISTANCE_KEY: str(near_duplicate_distance).encode()})


def _shard_folder_times(results: str, tag: str) -> dict[str, int]:
    """Modification time (ns) of each feature shard folder.

    Per-image files are only ever renamed into place, which updates their folder's time after the
    file's own, so a folder older than a partial holds no file newer than that partial.
    """
    times = {}
    for shard in layout.SHARDS:
        try:
            times[shard] = os.stat(
                f"{results}/{layout.stage_dir(layout.FEATURES, tag)}/{shard}").st_mtime_ns
        except FileNotFoundError:
            continue
    return times


def assemble_table(image_ids: Sequence[str], results: str, out_path: str | Path, *,
                   tag: str, threads: int = 8, workers: int = 1,
                   near_duplicate_distance: int = DEFAULT_MAX_DISTANCE) -> Assembled:
    """Build the feature table: one row per catalog image, in catalog order, written atomically.

    Each image's row comes from the newest partial table holding it, unless its own file is newer
    than that partial (written by a job that was stopped before its partial), in which case the
    file is read; files are only looked at in shard folders changed since their partial. The
    per-image files stay the truth; partials only save opening them one by one. A missing
    per-image file means the work list and the disk disagree: an error, not a shorter table.
    Only rows measured from thumbnails made with the settings ``tag`` are taken, so rows of two
    settings never mix.
    """
    partials = _read_partials(results)
    newest: dict[str, tuple[int, int, int]] = {}
    for number, (mtime, _, partial) in enumerate(partials):
        made_with = partial.column("thumbnail_settings").to_pylist()
        for row, image_id in enumerate(partial.column("image_id").to_pylist()):
            if made_with[row] == tag:
                newest[image_id] = (mtime, number, row)
    offsets = [0]
    for _, _, partial in partials:
        offsets.append(offsets[-1] + partial.num_rows)
    take: list[int] = []
    to_read: list[str] = []
    missing: list[str] = []
    folder_times = _shard_folder_times(results, tag)
    for image_id in image_ids:
        hit = newest.get(image_id)
        if hit is not None and folder_times.get(layout.shard_of(image_id), hit[0]) < hit[0]:
            # Nothing was renamed into (or removed from) the image's shard folder since before
            # that partial was written, so its file is older: no need to look. (Strictly before:
            # file times tick coarsely, and a change in the partial's own tick may follow it.)
            take.append(offsets[hit[1]] + hit[2])
            continue
        path = layout.feature_path(results, image_id, tag)
        try:
            file_mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            missing.append(path)
            continue
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
    pieces = [partial for _, _, partial in partials] + [
        read_rows(to_read, threads=threads, workers=workers, scratch=results)]
    built = pa.concat_tables(pieces).take(pa.array(take, type=pa.int64()))
    if built.column("image_id").to_pylist() != list(image_ids):
        raise ValueError("per-image rows do not match the catalog ids they were read for")
    previous = next((partial.replace_schema_metadata(pq.read_schema(path).metadata)
                     for _, path, partial in partials if path.name == TABLE_CACHE), None)
    built = with_duplicate_groups(built, near_duplicate_distance, previous)
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


def settings_marker(results: str, near_duplicate_distance: int, tag: str) -> str:
    """The file recording the settings the table was grouped and its rows measured with.

    Its name carries the settings, so changing one makes the workflow ask for a file that does
    not exist, which rebuilds the table (Snakemake's own parameter tracking is off: metadata is
    dropped for speed).
    """
    return (f"{results}/table-settings/near-duplicate-distance-{near_duplicate_distance}"
            f"-thumbnails-{tag}.json")


def write_settings_marker(path: str | Path, near_duplicate_distance: int) -> None:
    """Record the grouping settings and drop markers of earlier settings."""
    out = Path(path)
    atomic.write_bytes(out, json.dumps(
        {"near_duplicate_distance": near_duplicate_distance}).encode())
    for old in out.parent.glob("*.json"):
        if old.name != out.name:
            old.unlink(missing_ok=True)


def assemble_and_log(image_ids: Sequence[str], results: str, out_path: str | Path, *,
                     tag: str, threads: int, logger: logging.Logger, workers: int = 1,
                     near_duplicate_distance: int = DEFAULT_MAX_DISTANCE) -> pa.Table:
    """Build the table for ``image_ids`` and log its outcome counts and where rows came from."""
    started = time.monotonic()
    assembled = assemble_table(image_ids, results, out_path, tag=tag, threads=threads,
                               workers=workers,
                               near_duplicate_distance=near_duplicate_distance)
    statuses = Counter(assembled.table.column("status").to_pylist())
    logger.info("feature table: %d rows (%s) in %.2f s; %d rows from %d partial tables, "
                "%d read from their own files", assembled.table.num_rows,
                ", ".join(f"{k} {n}" for k, n in sorted(statuses.items())),
                time.monotonic() - started, assembled.rows_from_partials,
                assembled.partials_read, assembled.rows_from_files)
    groups = {name: len({g for g in assembled.table.column(name).to_pylist() if g is not None})
              for name in GROUP_COLUMNS}
    logger.info("duplicates: %d exact groups, %d near groups (pHash distance <= %d)",
                groups["exact_duplicate_group"], groups["near_duplicate_group"],
                near_duplicate_distance)
    return assembled.table
