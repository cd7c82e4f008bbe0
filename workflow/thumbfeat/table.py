"""The feature table, assembled from the per-image rows (thumbfeat.rows).

The table is the concatenation of the per-image rows in catalog order, so it always has one row
per catalog image and is rebuilt from files on disk alone; the batches' partial tables and the
last table only save opening the files one by one. The columns that relate images to each other
are filled at each assembly (thumbfeat.grouping).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from thumbfeat import atomic, integrity, layout
from thumbfeat.duplicates import DEFAULT_MAX_DISTANCE
from thumbfeat.grouping import with_duplicate_groups
from thumbfeat.rows import GROUP_COLUMNS, ROW_SCHEMA, failed_row
from thumbfeat.rowscan import in_order_of, read_rows
from thumbfeat.wording import counts_text

TABLE_CACHE = layout.TABLE_CACHE


@dataclass(frozen=True)
class Assembled:
    table: pa.Table
    rows_from_partials: int
    rows_from_files: int
    partials_read: int


def _read_partials(results: str,
                   logger: logging.Logger | None = None) -> list[tuple[int, Path, pa.Table]]:
    """Partial tables (and the cache of the last table), oldest first, with their mtimes.

    A partial that does not read is quarantined: it only saves reading per-image files, which
    are then read instead.
    """
    folder = Path(results) / layout.BATCHES
    found = []
    for path in folder.glob("*.parquet"):
        try:
            found.append((path.stat().st_mtime_ns, path))
        except FileNotFoundError:
            continue
    found.sort()
    read = []
    for mtime, path in found:
        try:
            read.append((mtime, path, pq.read_table(path, schema=ROW_SCHEMA)))
        except (pa.ArrowException, OSError) as error:
            integrity.quarantine(results, integrity.Damage(str(path), f"does not read: {error}"),
                                 logger)
    return read


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


def row_file_mtime_ns(path: str) -> int:
    """When a per-image row file was last written: the only per-file look the assembly takes."""
    return os.stat(path).st_mtime_ns


def assemble_table(image_ids: Sequence[str], results: str, out_path: str | Path, *,
                   tag: str, threads: int = 8, workers: int = 1,
                   near_duplicate_distance: int = DEFAULT_MAX_DISTANCE,
                   logger: logging.Logger | None = None) -> Assembled:
    """Build the feature table: one row per catalog image, in catalog order, written atomically.

    Each image's row comes from the newest partial table holding it, unless its own file is newer
    than that partial (written by a job that was stopped before its partial), in which case the
    file is read; files are only looked at in shard folders changed since their partial. The
    per-image files stay the truth; partials only save opening them one by one. A missing
    per-image file means the work list and the disk disagree: an error, not a shorter table.
    Only rows measured from thumbnails made with the settings ``tag`` are taken, so rows of two
    settings never mix.
    """
    partials = _read_partials(results, logger)
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
            file_mtime = row_file_mtime_ns(path)
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
        read_rows_surviving_damage(to_read, results, tag=tag, threads=threads,
                                   workers=workers, logger=logger)]
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


def read_rows_surviving_damage(paths: Sequence[str], results: str, *, tag: str, threads: int,
                               workers: int, logger: logging.Logger | None) -> pa.Table:
    """Read row files; a file that does not read is quarantined, never fatal.

    Its image gets a retryable failed row in this table (so the table still has a row per
    image), and the next run's plan, finding the file missing, measures the image again from its
    thumbnail. Files are checked one by one only after a read of all of them failed. The
    stand-in rows name the settings ``tag`` of the rows they stand in for.
    """
    import duckdb

    try:
        return read_rows(paths, threads=threads, workers=workers, scratch=results)
    except (pa.ArrowException, OSError, RuntimeError, ValueError, duckdb.Error) as error:
        first_error = error
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        problems = list(pool.map(integrity.full_row_problem, paths))
    damaged = [integrity.Damage(path, reason)
               for path, reason in zip(paths, problems, strict=True) if reason is not None]
    if not damaged:
        raise first_error
    integrity.quarantine_all(results, damaged, logger)
    bad = {d.path for d in damaged}
    whole = [p for p in paths if p not in bad]
    rows = read_rows(whole, threads=threads, workers=workers, scratch=results)
    placeholders = pa.Table.from_pylist([
        {**failed_row(Path(p).name[: -len(layout.FEATURE_SUFFIX)], integrity.DAMAGED_KIND,
                      "its feature file did not read and was moved to quarantine; the next run "
                      "measures it again", retryable=True, feature_version=None),
         "thumbnail_settings": tag}
        for p in paths if p in bad], schema=ROW_SCHEMA)
    merged = pa.concat_tables([rows, placeholders])
    return in_order_of(merged, paths)


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
                     near_duplicate_distance: int = DEFAULT_MAX_DISTANCE,
                     assemble: Callable[..., Assembled] | None = None) -> pa.Table:
    """Build the table for ``image_ids`` and log its outcome counts and where rows came from.

    ``assemble`` builds it: ``assemble_table`` here, thumbfeat.remote_table's for a bucket.
    """
    started = time.monotonic()
    assembled = (assemble or assemble_table)(image_ids, results, out_path, tag=tag, threads=threads,
                               workers=workers, near_duplicate_distance=near_duplicate_distance,
                               logger=logger)
    statuses = Counter(assembled.table.column("status").to_pylist())
    logger.info("feature table: %d rows (%s) in %.2f s; %d rows from %d partial tables, "
                "%d read from their own files", assembled.table.num_rows,
                counts_text(statuses),
                time.monotonic() - started, assembled.rows_from_partials,
                assembled.partials_read, assembled.rows_from_files)
    groups = {name: len({g for g in assembled.table.column(name).to_pylist() if g is not None})
              for name in GROUP_COLUMNS}
    logger.info("duplicates: %d exact groups, %d near groups (pHash distance <= %d)",
                groups["exact_duplicate_group"], groups["near_duplicate_group"],
                near_duplicate_distance)
    return assembled.table
