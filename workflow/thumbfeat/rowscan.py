"""Reading many one-row Parquet files at once: threads for a few, DuckDB scans for many, shared
out to worker processes for thousands.

This is the from-scratch path of the feature table (no partial table holds the rows), and its cost
is per file: opening it, reading its footer, one small column chunk per column. DuckDB does that
for about 60% of pyarrow's CPU per file, but one DuckDB process barely gets faster with more
threads on such a scan (measured: 1 and 2 threads take the same time), while separate processes
do: each worker scans its share of the files with one thread and hands its rows back as an Arrow
IPC file. Run as ``python -m thumbfeat.rowscan LIST OUT`` by scan_in_workers.

A third of a worker's time goes to glibc's malloc (DuckDB allocates and frees buffers for every
file), more when two workers run at once. Where the system has jemalloc (Debian: libjemalloc2),
the workers are started with it preloaded: measured here, 103,000 files in two workers took 12 s
instead of 18 s.
"""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pyarrow as pa

from thumbfeat import atomic, layout, storage
from thumbfeat.rows import ROW_SCHEMA, read_row

# Row objects in a bucket read at once.
REMOTE_THREADS = 16
# Below this many files one process is quicker: a worker costs an interpreter start and imports.
WORKER_MIN_FILES = 5000

_QUERY = ("SELECT * EXCLUDE (filename) FROM read_parquet($paths, filename = true{union}) "
          "ORDER BY filename")


def scan_files(paths: Sequence[str], *, threads: int | None = None) -> pa.Table:
    """One DuckDB scan over the files, as ROW_SCHEMA rows in the order of ``paths``.

    The scan is sorted inside DuckDB: an unsorted parallel scan hands back one Arrow chunk per
    file, and a hundred thousand one-row chunks of forty-odd columns take gigabytes; sorted, the
    result is one compact chunk. Files written under an older row schema (fewer columns) are read
    by column name, the missing columns as nulls.
    """
    import duckdb

    with duckdb.connect() as connection:
        if threads is not None:
            connection.execute(f"SET threads = {int(threads)}")
        try:
            scanned = connection.sql(_QUERY.format(union=""),
                                     params={"paths": list(paths)}).to_arrow_table()
        except duckdb.Error:
            scanned = connection.sql(_QUERY.format(union=", union_by_name = true"),
                                     params={"paths": list(paths)}).to_arrow_table()
    columns = []
    for field in ROW_SCHEMA:
        if field.name in scanned.column_names:
            columns.append(scanned.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(scanned.num_rows, type=field.type))
    rows = pa.Table.from_arrays(columns, schema=ROW_SCHEMA)
    return in_order_of(rows, paths)


def in_order_of(rows: pa.Table, paths: Sequence[str]) -> pa.Table:
    """The rows put in the order of the files they were read from (one row per file)."""
    position = {image_id: row for row, image_id in enumerate(rows.column("image_id").to_pylist())}
    order = [position[Path(p).name[: -len(layout.FEATURE_SUFFIX)]] for p in paths]
    return rows.take(pa.array(order, type=pa.int64()))


@cache
def jemalloc_library() -> str | None:
    """The system's jemalloc shared library, if there is one."""
    return ctypes.util.find_library("jemalloc")


def worker_environment(base: Mapping[str, str], package_root: str,
                       allocator: str | None) -> dict[str, str]:
    """A worker's environment: this package importable, ``allocator`` preloaded if given."""
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    if allocator:
        env["LD_PRELOAD"] = " ".join(p for p in (allocator, env.get("LD_PRELOAD")) if p)
    return env


def scan_in_workers(paths: Sequence[str], workers: int, scratch: str | Path, *,
                    min_files: int | None = None) -> pa.Table:
    """Scan the files in ``workers`` processes, each over a share of ``paths`` (in path order).

    ``scratch`` is a folder for the hand-over files (a temporary folder inside it, removed after).
    A worker that fails stops the scan with its error output. Fewer than ``min_files`` files
    (default WORKER_MIN_FILES) are scanned in this process.
    """
    if workers < 2 or len(paths) < (WORKER_MIN_FILES if min_files is None else min_files):
        return scan_files(paths)
    # In path order, each worker opens files folder by folder (about a fifth faster than in
    # catalog order, which jumps between shard folders at every file).
    in_path_order = sorted(paths)
    share = -(-len(paths) // workers)
    shares = [in_path_order[start : start + share] for start in range(0, len(paths), share)]
    env = worker_environment(os.environ, str(Path(__file__).resolve().parent.parent),
                             jemalloc_library())
    Path(scratch).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".rowscan-", dir=scratch) as folder:
        running = []
        for number, part in enumerate(shares):
            listing = Path(folder, f"{number}.txt")
            listing.write_text("\n".join(part) + "\n", encoding="utf-8")
            out = Path(folder, f"{number}.arrow")
            command = [sys.executable, "-m", "thumbfeat.rowscan", str(listing), str(out)]
            running.append((out, subprocess.Popen(command, env=env, stderr=subprocess.PIPE)))
        tables = []
        for out, process in running:
            _, errors = process.communicate()
            if process.returncode != 0:
                for _, other in running:
                    other.kill()
                detail = errors.decode(errors="replace")
                raise RuntimeError(f"reading per-image files in a worker failed "
                                   f"(exit {process.returncode}): {detail}")
            with pa.memory_map(str(out)) as source:
                tables.append(pa.ipc.open_file(source).read_all())
        return in_order_of(pa.concat_tables(tables).combine_chunks(), paths)


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
    if storage.is_remote(paths[0]):
        # Objects in a bucket: each is one GET, waiting on the store, so many threads.
        threads = max(threads, REMOTE_THREADS)
    elif len(paths) >= MANY_FILES:
        if scratch is None:
            return scan_files(paths)
        return scan_in_workers(paths, workers, scratch)
    chunk = max(1, len(paths) // (threads * 4) or 1)
    groups = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]

    def read_group(group: Sequence[str]) -> pa.Table:
        return pa.concat_tables([read_row(p) for p in group])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        tables = list(pool.map(read_group, groups))
    return pa.concat_tables(tables)


def _write_arrow(path: str, rows: pa.Table) -> None:
    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, rows.schema) as writer:
            writer.write_table(rows)

    atomic.write_with(path, write)


def main(argv: Sequence[str]) -> int:
    """Worker: scan the files listed in ``argv[0]`` (a path a line); rows go to ``argv[1]``."""
    listing, out = argv
    paths = [line for line in Path(listing).read_text(encoding="utf-8").splitlines() if line]
    _write_arrow(out, scan_files(paths, threads=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
