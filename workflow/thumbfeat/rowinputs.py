"""What each image's row was built from: its feature version and the URL it was fetched from.

A Make-style rebuild needs, for every image, the inputs its row was made from, to compare them
with today's. Opening every per-image file at each parse would cost a file read per image, so they
are read from the last feature table (its cache under batches/, which survives Snakemake deleting
the table), once, as three columns. Only files written after that table (found through shard
folders changed since it, then one stat per file in those folders) are opened one by one.
Without a table the inputs are unknown: nothing is measured again or fetched again on their
account, and the next table records them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from thumbfeat import layout

COLUMNS = ("image_id", "status", "feature_version", "source_url")


@dataclass
class RowInputs:
    """Per image: the status, feature version and source URL of its row, where known."""

    status: dict[str, str] = field(default_factory=dict)
    version: dict[str, str | None] = field(default_factory=dict)
    source_url: dict[str, str | None] = field(default_factory=dict)
    # Whether a table was found: without one nothing is known.
    from_table: bool = False
    files_opened: int = 0

    def add(self, table: pa.Table) -> None:
        names = table.column_names
        ids = table.column("image_id").to_pylist()
        statuses = table.column("status").to_pylist()
        versions = (table.column("feature_version").to_pylist() if "feature_version" in names
                    else [None] * len(ids))
        urls = (table.column("source_url").to_pylist() if "source_url" in names
                else [None] * len(ids))
        self.status.update(zip(ids, statuses, strict=True))
        self.version.update(zip(ids, versions, strict=True))
        self.source_url.update(zip(ids, urls, strict=True))

    def stale(self, ids: Iterable[str], current: str) -> dict[str, str]:
        """Ids of ``ok`` rows of another feature version, with that version.

        A failed row has no features to measure again: its version does not matter.
        """
        status, version = self.status, self.version
        return {i: str(version.get(i)) for i in ids
                if status.get(i) == "ok" and version.get(i) != current}

    def changed_urls(self, urls: dict[str, str]) -> set[str]:
        """Ids whose recorded source URL differs from ``urls`` (rows without one: unknown)."""
        known = self.source_url
        return {i for i, url in urls.items() if (was := known.get(i)) is not None and was != url}


def _read_columns(path: str | Path) -> pa.Table:
    schema = pq.read_schema(path)
    return pq.read_table(path, columns=[c for c in COLUMNS if c in schema.names])


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


def read_row_inputs(results: str | Path, shard_dirs: Iterable[str]) -> RowInputs:
    """The inputs of each image's row: the last table's, updated by files written since."""
    inputs = RowInputs()
    table = _last_table(results)
    if table is None:
        return inputs
    try:
        since = table.stat().st_mtime_ns
        inputs.add(_read_columns(table))
    except (OSError, pa.ArrowException):
        # A damaged cache is rebuilt with the table; until then nothing is known.
        return RowInputs()
    inputs.from_table = True
    # Batches that finished after the table (a run stopped before its table) wrote their rows
    # as partial tables too: one read each instead of a read per file.
    covered: dict[str, int] = {}
    for partial in sorted(Path(results, layout.BATCHES).glob("*.parquet"),
                          key=lambda p: p.stat().st_mtime_ns):
        try:
            written = partial.stat().st_mtime_ns
            if partial.name == layout.TABLE_CACHE or written < since:
                continue
            rows = _read_columns(partial)
        except (OSError, pa.ArrowException):
            continue
        inputs.add(rows)
        covered.update(dict.fromkeys(rows.column("image_id").to_pylist(), written))
    newer = newer_row_files(shard_dirs, since, covered)

    def read_one(path: str) -> pa.Table | None:
        try:
            return _read_columns(path)
        except (OSError, pa.ArrowException):
            return None  # a damaged file: integrity checks deal with it

    with ThreadPoolExecutor(max_workers=8) as pool:
        for rows in pool.map(read_one, newer):
            if rows is not None:
                inputs.add(rows)
    inputs.files_opened = len(newer)
    return inputs
