"""The feature table assembled from rows kept in a bucket (``results=s3://...``).

It follows thumbfeat.table: each image's row comes from the newest partial table holding it,
unless the image's own row object is newer (written by a job stopped before its partial), in
which case that object is read. A bucket has no folder times, so the row objects' times come
from one LIST per shard prefix instead, and S3 keeps whole seconds: a row object from the same
second as its partial is read rather than trusted to be older. The assembled table is also kept
as ``batches/table-cache.parquet``, the starting point of the next assembly, and the partials it
now holds are removed, as thumbfeat.table does on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from thumbfeat import atomic, layout, storage
from thumbfeat.duplicates import DEFAULT_MAX_DISTANCE
from thumbfeat.grouping import with_duplicate_groups
from thumbfeat.rows import ROW_SCHEMA
from thumbfeat.table import TABLE_CACHE, Assembled


def _read_object(path: str) -> tuple[pa.Table, dict[bytes, bytes] | None]:
    data = storage.get(path)
    table = pq.read_table(pa.BufferReader(data), schema=ROW_SCHEMA)
    return table, pq.read_schema(pa.BufferReader(data)).metadata


def row_times(results: str, image_ids: Sequence[str], threads: int) -> dict[str, float]:
    """When each image's row object was written: one LIST per shard the images live in."""
    shards = sorted({layout.shard_of(image_id) for image_id in image_ids})
    folders = [f"{results}/{layout.FEATURES}/{shard}" for shard in shards]
    cut = len(layout.FEATURE_SUFFIX)
    times: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for listing in pool.map(storage.listing, folders):
            times.update({name[:-cut]: when for name, when in listing.items()
                          if name.endswith(layout.FEATURE_SUFFIX)})
    return times


def assemble_table(image_ids: Sequence[str], results: str, out_path: str | Path, *,
                   threads: int = 8, workers: int = 1,
                   near_duplicate_distance: int = DEFAULT_MAX_DISTANCE) -> Assembled:
    """Build the feature table from the bucket under ``results``; write it to ``out_path``.

    ``out_path`` is a local file (Snakemake's storage plugin uploads it). ``workers`` is
    accepted for the same call as thumbfeat.table.assemble_table: here the work is requests,
    done by ``threads`` threads.
    """
    threads = max(4, threads)
    folder = f"{results}/{layout.BATCHES}"
    times = {name: when for name, when in storage.listing(folder).items()
             if name.endswith(".parquet")}
    names = sorted(times, key=lambda name: (times[name], name))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        read = list(pool.map(_read_object, [f"{folder}/{name}" for name in names]))
    partials = [table for table, _ in read]
    newest: dict[str, tuple[float, int, int]] = {}
    for number, (name, partial) in enumerate(zip(names, partials, strict=True)):
        for row, image_id in enumerate(partial.column("image_id").to_pylist()):
            newest[image_id] = (times[name], number, row)
    offsets = [0]
    for partial in partials:
        offsets.append(offsets[-1] + partial.num_rows)
    written = row_times(results, image_ids, threads)
    take: list[int] = []
    to_read: list[str] = []
    missing: list[str] = []
    for image_id in image_ids:
        when = written.get(image_id)
        hit = newest.get(image_id)
        if when is None:
            missing.append(layout.feature_path(results, image_id))
        elif hit is not None and when < hit[0]:
            take.append(offsets[hit[1]] + hit[2])
        else:
            take.append(offsets[-1] + len(to_read))
            to_read.append(layout.feature_path(results, image_id))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} per-image feature objects are missing, e.g. {missing[0]}; "
            "run the workflow again to rebuild them"
        )
    with ThreadPoolExecutor(max_workers=threads) as pool:
        rows = [table for table, _ in pool.map(_read_object, to_read)]
    pieces = [*partials, pa.concat_tables(rows) if rows else ROW_SCHEMA.empty_table()]
    built = pa.concat_tables(pieces).take(pa.array(take, type=pa.int64()))
    if built.column("image_id").to_pylist() != list(image_ids):
        raise ValueError("per-image rows do not match the catalog ids they were read for")
    previous = next((partial.replace_schema_metadata(metadata)
                     for name, (partial, metadata) in zip(names, read, strict=True)
                     if name == TABLE_CACHE), None)
    built = with_duplicate_groups(built, near_duplicate_distance, previous)
    atomic.write_with(out_path, lambda tmp: pq.write_table(built, tmp, compression="zstd"),
                      durable=True)
    # The new table holds every row of the partials read: keep it as the next starting point.
    storage.put(f"{folder}/{TABLE_CACHE}", Path(out_path).read_bytes())
    for name in names:
        if name != TABLE_CACHE:
            storage.delete(f"{folder}/{name}")
    return Assembled(built, len(take) - len(to_read), len(to_read), len(partials))
