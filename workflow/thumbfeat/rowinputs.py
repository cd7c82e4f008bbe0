"""What each image's row was built from: its feature version and the URL it was fetched from.

A Make-style rebuild needs, for every image, the inputs its row was made from, to compare them
with today's. Opening every per-image file at each parse would cost a file read per image, so they
are read from the last feature table (its cache under batches/, which survives Snakemake deleting
the table), once, as three columns. Only files written after that table (found through shard
folders changed since it, then one stat per file in those folders) are opened one by one.
Without a table the inputs are unknown: nothing is measured again or fetched again on their
account, and the next table records them.

With results in a bucket there are no folder times: the objects' times come from the LIST of
each feature shard prefix that the plan makes anyway (thumbfeat.storage.listed_once), and S3
keeps whole seconds, so a row object from the same second as the table is opened rather than
trusted to be older.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thumbfeat import layout, storage
from thumbfeat.urls import recorded_from

COLUMNS = ("image_id", "status", "feature_version", "source_url")
SCHEMA = pa.schema([(name, pa.string()) for name in COLUMNS])
# The column naming the thumbnail settings a row was measured under.
SETTINGS_COLUMN = "thumbnail_settings"


def _normalised(table: pa.Table) -> pa.Table:
    """The four columns, as strings; a column an older table lacks is all nulls."""
    return pa.table([table.column(name).cast(pa.string()) if name in table.column_names
                     else pa.nulls(table.num_rows, pa.string()) for name in COLUMNS],
                    schema=SCHEMA)


def last_of_each(table: pa.Table) -> pa.Table:
    """The last row of each image_id (rows in the order they were written)."""
    last = {image_id: row for row, image_id in enumerate(table.column("image_id").to_pylist())}
    return table.take(pa.array(sorted(last.values()), pa.int64()))


@dataclass
class RowInputs:
    """Per image: the status, feature version and source URL of its row, where known.

    Kept as Arrow columns and compared with vectorised kernels: at a million rows, Python
    dictionaries of them would cost seconds at every parse.
    """

    rows: pa.Table = field(default_factory=SCHEMA.empty_table)
    # The rows written after the last table (partials and per-image files), also in ``rows``.
    later: pa.Table = field(default_factory=SCHEMA.empty_table)
    # Whether a table was found: without one nothing is known.
    from_table: bool = False
    files_opened: int = 0

    def add(self, table: pa.Table, *, unique: bool = False) -> None:
        """Rows written later than those held: they replace the rows of the same images.

        ``unique`` says the rows name each image once (a feature table), sparing the check.
        """
        table = _normalised(table) if unique else last_of_each(_normalised(table))
        if self.rows.num_rows and table.num_rows:
            replaced = pc.is_in(self.rows.column("image_id"), value_set=table.column("image_id"))
            self.rows = self.rows.filter(pc.invert(replaced))
        self.rows = pa.concat_tables([self.rows, table])

    def stale(self, ids: Collection[str], current: str) -> dict[str, str]:
        """Ids among ``ids`` of ``ok`` rows of another feature version, with that version.

        A failed row has no features to measure again: its version does not matter.
        """
        rows = self.rows
        other = pc.fill_null(pc.not_equal(rows.column("feature_version"), current), True)
        hit = rows.filter(pc.and_(pc.equal(rows.column("status"), "ok"), other))
        return {i: v or "unknown"
                for i, v in zip(hit.column("image_id").to_pylist(),
                                hit.column("feature_version").to_pylist(), strict=True)
                if i in ids}

    def changed_urls(self, urls: Mapping[str, str], *, later_only: bool = False) -> set[str]:
        """Ids of ``urls`` whose recorded source URL differs from it; rows without a recorded
        URL are unknown, never changed. ``later_only`` compares only the rows written after the
        last table: when that table was built for the same catalog, its rows were compared
        with these very URLs by the plan of the run that built it.
        """
        known = self.later if later_only else self.rows
        known = known.filter(pc.is_valid(known.column("source_url")))
        return {i for i, was in zip(known.column("image_id").to_pylist(),
                                    known.column("source_url").to_pylist(), strict=True)
                if i in urls and not recorded_from(was, urls[i])}


def _read_columns(path: str | Path, tag: str) -> pa.Table:
    """The columns of ``path``'s rows measured from thumbnails made with the settings ``tag``.

    Rows of other settings (or written before rows recorded their settings) were not built from
    this run's thumbnails: they tell nothing about the files the plan compares.
    """
    source: Any = pa.BufferReader(storage.get(path)) if storage.is_remote(path) else path
    schema = pq.read_schema(source)
    if SETTINGS_COLUMN not in schema.names:
        return SCHEMA.empty_table()
    table = pq.read_table(source, columns=[c for c in COLUMNS if c in schema.names]
                          + [SETTINGS_COLUMN])
    table = table.filter(pc.fill_null(pc.equal(table.column(SETTINGS_COLUMN), tag), False))
    return table.drop_columns([SETTINGS_COLUMN])


def _last_table(results: str | Path) -> Path | None:
    # The cache first: Snakemake deletes the table before rebuilding it.
    for path in (Path(results, layout.BATCHES, layout.TABLE_CACHE),
                 Path(layout.feature_table_path(results))):
        if path.exists():
            return path
    return None


def newer_row_files(shard_dirs: Iterable[str], since_ns: int,
                    covered: dict[str, int] | None = None) -> list[str]:
    """Row files changed after ``since_ns``: one stat per file, in folders changed since then only.

    A file is renamed into place, which updates its folder's time, so an older folder holds no
    newer file. ``covered`` maps ids to the time of a partial table holding their row: a file
    older than that partial is not listed (the partial has its row).
    """
    covered = covered or {}
    cut = len(layout.FEATURE_SUFFIX)
    found = []
    for folder in shard_dirs:
        try:
            if os.stat(folder).st_mtime_ns < since_ns:
                continue
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            name = entry.name
            if not name.endswith(layout.FEATURE_SUFFIX) or layout.is_temporary_name(name):
                continue
            try:
                mtime = entry.stat().st_mtime_ns
                if mtime >= since_ns and mtime >= covered.get(name[:-cut], 0):
                    found.append(entry.path)
            except FileNotFoundError:
                continue
    return found


def read_row_inputs(results: str | Path, shard_dirs: Iterable[str], tag: str) -> RowInputs:
    """The inputs of each image's row: the last table's, updated by files written since.

    ``shard_dirs`` are the feature shard folders of the settings ``tag``; only rows of those
    settings are read.
    """
    if storage.is_remote(results):
        return _remote_row_inputs(str(results), tag)
    inputs = RowInputs()
    table = _last_table(results)
    if table is None:
        return inputs
    try:
        since = table.stat().st_mtime_ns
        inputs.add(_read_columns(table, tag), unique=True)
    except (OSError, pa.ArrowException):
        # A damaged cache is rebuilt with the table; until then nothing is known.
        return RowInputs()
    inputs.from_table = True
    # Batches that finished after the table (a run stopped before its table) wrote their rows
    # as partial tables too: one read each instead of a read per file.
    covered: dict[str, int] = {}
    later: list[pa.Table] = []
    for partial in sorted(Path(results, layout.BATCHES).glob("*.parquet"),
                          key=lambda p: p.stat().st_mtime_ns):
        try:
            written = partial.stat().st_mtime_ns
            if partial.name == layout.TABLE_CACHE or written < since:
                continue
            rows = _normalised(_read_columns(partial, tag))
        except (OSError, pa.ArrowException):
            continue
        later.append(rows)
        covered.update(dict.fromkeys(rows.column("image_id").to_pylist(), written))
    newer = newer_row_files(shard_dirs, since, covered)
    with ThreadPoolExecutor(max_workers=8) as pool:
        later += [rows for rows in pool.map(lambda path: _read_or_none(path, tag), newer)
                  if rows is not None]
    if later:
        inputs.later = last_of_each(pa.concat_tables(later))
        inputs.add(inputs.later, unique=True)
    inputs.files_opened = len(newer)
    return inputs


def _read_or_none(path: str, tag: str) -> pa.Table | None:
    try:
        return _normalised(_read_columns(path, tag))
    except (OSError, pa.ArrowException):
        return None  # a damaged file: integrity checks deal with it


def _remote_row_inputs(results: str, tag: str) -> RowInputs:
    """``read_row_inputs`` in a bucket: times from LISTs, never a request per image."""
    batches = f"{results}/{layout.BATCHES}"
    times = {name: when for name, when in storage.listing(batches).items()
             if name.endswith(".parquet") and not layout.is_temporary_name(name)}
    table = (f"{batches}/{layout.TABLE_CACHE}" if layout.TABLE_CACHE in times
             else layout.feature_table_path(results))
    since = times.get(layout.TABLE_CACHE)
    if since is None:
        since = storage.modified(table)
    if since is None:
        return RowInputs()
    inputs = RowInputs()
    try:
        inputs.add(_read_columns(table, tag), unique=True)
    except (OSError, pa.ArrowException):
        return RowInputs()
    inputs.from_table = True
    covered: dict[str, float] = {}
    later: list[pa.Table] = []
    for name in sorted((n for n in times if n != layout.TABLE_CACHE and times[n] >= since),
                       key=lambda n: (times[n], n)):
        rows = _read_or_none(f"{batches}/{name}", tag)
        if rows is not None:
            later.append(rows)
            covered.update(dict.fromkeys(rows.column("image_id").to_pylist(), times[name]))
    root = f"{results}/{layout.stage_dir(layout.FEATURES, tag)}"
    shards = [f"{root}/{shard}" for shard in storage.subfolders(root)
              if shard in layout.SHARD_SET]
    cut = len(layout.FEATURE_SUFFIX)
    newer: list[str] = []
    with ThreadPoolExecutor(max_workers=layout.LIST_THREADS) as pool:
        for shard, listed in zip(shards, pool.map(storage.listing, shards), strict=True):
            newer += [f"{shard}/{name}" for name, when in listed.items()
                      if name.endswith(layout.FEATURE_SUFFIX)
                      and not layout.is_temporary_name(name)
                      and when >= int(since) and when >= covered.get(name[:-cut], 0)]
    with ThreadPoolExecutor(max_workers=layout.LIST_THREADS) as pool:
        later += [rows for rows in pool.map(lambda p: _read_or_none(p, tag), newer)
                  if rows is not None]
    if later:
        inputs.later = last_of_each(pa.concat_tables(later))
        inputs.add(inputs.later, unique=True)
    inputs.files_opened = len(newer)
    return inputs
