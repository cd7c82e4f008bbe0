"""The feature table assembled from rows kept in a bucket (``results=s3://...``).

It follows thumbfeat.table: each image's row comes from the newest partial table holding it (of
the same thumbnail settings), unless the image's own row object is newer (written by a job
stopped before its partial), in which case that object is read. A bucket has no folder times, so
the row objects' times come from one LIST per shard prefix instead, and S3 keeps whole seconds: a
row object from the same second as its partial is read rather than trusted to be older. A row
object that does not read is quarantined and stands in as a retryable failed row, as on disk.
The assembled table is also kept as ``batches/table-cache.parquet``, the starting point of the
next assembly, and the partials it now holds are removed, as thumbfeat.table does on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from thumbfeat import atomic, integrity, layout, storage
from thumbfeat.duplicates import DEFAULT_MAX_DISTANCE
from thumbfeat.grouping import with_duplicate_groups
from thumbfeat.rows import ROW_SCHEMA, failed_row
from thumbfeat.table import TABLE_CACHE, Assembled

# Objects read at once: each GET waits mostly on the store.
READ_THREADS = 16


def _read_object(path: str) -> tuple[pa.Table, dict[bytes, bytes] | None]:
    data = storage.get(path)
    table = pq.read_table(pa.BufferReader(data), schema=ROW_SCHEMA)
    return table, pq.read_schema(pa.BufferReader(data)).metadata


def row_times(results: str, image_ids: Sequence[str], tag: str) -> dict[str, float]:
    """When each image's row object was written: one LIST per shard the images live in."""
    shards = sorted({layout.shard_of(image_id) for image_id in image_ids})
    root = f"{results}/{layout.stage_dir(layout.FEATURES, tag)}"
    cut = len(layout.FEATURE_SUFFIX)
    times: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=layout.LIST_THREADS) as pool:
        for listing in pool.map(storage.listing, [f"{root}/{shard}" for shard in shards]):
            times.update({name[:-cut]: when for name, when in listing.items()
                          if name.endswith(layout.FEATURE_SUFFIX)
                          and not layout.is_temporary_name(name)})
    return times


def _read_row_object(path: str) -> pa.Table | str:
    """The row an object holds, or why it is not a row."""
    try:
        table, _ = _read_object(path)
    except FileNotFoundError:
        return "it is gone"
    except (OSError, pa.ArrowException, ValueError) as error:
        if isinstance(error, storage.StorageError):
            raise
        return f"does not read as a row: {' '.join(str(error).split())}"
    if table.num_rows != 1:
        return f"holds {table.num_rows} rows, not one"
    return table


def read_row_objects(paths: Sequence[str], results: str, tag: str,
                     logger: logging.Logger | None) -> pa.Table:
    """Read row objects in order; one that does not read is quarantined and stands in as a
    retryable failed row (the next run measures its image again)."""
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        read = list(pool.map(_read_row_object, paths))
    rows = []
    for path, got in zip(paths, read, strict=True):
        if isinstance(got, pa.Table):
            rows.append(got)
            continue
        integrity.quarantine(results, integrity.Damage(path, got), logger)
        image_id = Path(path).name[: -len(layout.FEATURE_SUFFIX)]
        rows.append(pa.Table.from_pylist([{
            **failed_row(image_id, integrity.DAMAGED_KIND,
                         "its feature file did not read and was moved to quarantine; the next "
                         "run measures it again", retryable=True, feature_version=None),
            "thumbnail_settings": tag}], schema=ROW_SCHEMA))
    return pa.concat_tables(rows) if rows else ROW_SCHEMA.empty_table()


def assemble_table(image_ids: Sequence[str], results: str, out_path: str | Path, *,
                   tag: str, threads: int = 8, workers: int = 1,
                   near_duplicate_distance: int = DEFAULT_MAX_DISTANCE,
                   logger: logging.Logger | None = None) -> Assembled:
    """Build the feature table from the bucket under ``results``; write it to ``out_path``.

    ``out_path`` is a local file (Snakemake's storage plugin uploads it). ``threads`` and
    ``workers`` are accepted for the same call as thumbfeat.table.assemble_table: here the work
    is requests, done by READ_THREADS threads.
    """
    folder = f"{results}/{layout.BATCHES}"
    times = {name: when for name, when in storage.listing(folder).items()
             if name.endswith(".parquet") and not layout.is_temporary_name(name)}
    names = sorted(times, key=lambda name: (times[name], name))
    partials: list[pa.Table] = []
    metadata: dict[str, dict[bytes, bytes] | None] = {}
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        read = list(pool.map(lambda n: _read_partial(f"{folder}/{n}", results, logger), names))
    kept = []
    for name, got in zip(names, read, strict=True):
        if got is not None:
            kept.append(name)
            partials.append(got[0])
            metadata[name] = got[1]
    newest: dict[str, tuple[float, int, int]] = {}
    for number, (name, partial) in enumerate(zip(kept, partials, strict=True)):
        made_with = partial.column("thumbnail_settings").to_pylist()
        for row, image_id in enumerate(partial.column("image_id").to_pylist()):
            if made_with[row] == tag:
                newest[image_id] = (times[name], number, row)
    offsets = [0]
    for partial in partials:
        offsets.append(offsets[-1] + partial.num_rows)
    written = row_times(results, image_ids, tag)
    take: list[int] = []
    to_read: list[str] = []
    missing: list[str] = []
    for image_id in image_ids:
        when = written.get(image_id)
        hit = newest.get(image_id)
        if when is None:
            missing.append(layout.feature_path(results, image_id, tag))
        elif hit is not None and when < hit[0]:
            take.append(offsets[hit[1]] + hit[2])
        else:
            take.append(offsets[-1] + len(to_read))
            to_read.append(layout.feature_path(results, image_id, tag))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} per-image feature objects are missing, e.g. {missing[0]}; "
            "run the workflow again to rebuild them"
        )
    pieces = [*partials, read_row_objects(to_read, results, tag, logger)]
    built = pa.concat_tables(pieces).take(pa.array(take, type=pa.int64()))
    if built.column("image_id").to_pylist() != list(image_ids):
        raise ValueError("per-image rows do not match the catalog ids they were read for")
    previous = next((partial.replace_schema_metadata(metadata[name])
                     for name, partial in zip(kept, partials, strict=True)
                     if name == TABLE_CACHE), None)
    built = with_duplicate_groups(built, near_duplicate_distance, previous)
    atomic.write_with(out_path, lambda tmp: pq.write_table(built, tmp, compression="zstd"),
                      durable=True)
    # The new table holds every row of the partials read: keep it as the next starting point.
    storage.put(f"{folder}/{TABLE_CACHE}", Path(out_path).read_bytes())
    for name in kept:
        if name != TABLE_CACHE:
            storage.delete(f"{folder}/{name}")
    return Assembled(built, len(take) - len(to_read), len(to_read), len(partials))


def _read_partial(path: str, results: str, logger: logging.Logger | None
                  ) -> tuple[pa.Table, dict[bytes, bytes] | None] | None:
    """A partial table (or the last table's cache), or None after quarantining one that does not
    read: it only saves reading row objects, which are then read instead."""
    try:
        return _read_object(path)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, ValueError) as error:
        integrity.quarantine(results, integrity.Damage(path, f"does not read: {error}"), logger)
        return None
