"""Benchmark: loading the feature table into the DuckDB warehouse (thumbfeat.warehouse).

Builds a synthetic feature table of N rows (the real row schema, random pHashes and pixel digests
so the duplicate groups recomputed at each load do real work), then in a fresh process per repeat
measures: the first load (a new database file), a reload of the unchanged table, a reload after a
catalog change (10% of rows changed, 1% removed, 1% added) accumulating (the default) and pruning,
a reload after a new column (the table is rebuilt), and side by side a plain full replacement of
the table (DROP and CREATE TABLE AS from the Parquet file) for the changed table. Reports medians
with min-max spread and the peak memory of the measuring process, and writes its section into
BENCHMARKS.md.

    .venv/bin/python bench/bench_warehouse.py --rows 200000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "workflow"))

from thumbfeat.duplicates import DEFAULT_MAX_DISTANCE  # noqa: E402
from thumbfeat.grouping import with_duplicate_groups  # noqa: E402
from thumbfeat.rows import ROW_SCHEMA  # noqa: E402

from bench.common import machine, publish, summary  # noqa: E402

PHASES = ["first load", "unchanged reload", "10% changed reload", "10% changed reload, pruning",
          "full replace (same change)", "new column (rebuild)"]


def synthetic(rows: int, seed: int, ids: list[str]) -> pa.Table:
    rng = np.random.default_rng(seed)
    columns: dict[str, pa.Array] = {
        "image_id": pa.array(ids),
        "status": pa.array(["ok"] * rows),
        "error_kind": pa.nulls(rows, pa.string()),
        "error": pa.nulls(rows, pa.string()),
        "retryable": pa.nulls(rows, pa.bool_()),
        "width": pa.array(rng.integers(100, 400, rows), pa.int32()),
        "height": pa.array(rng.integers(100, 400, rows), pa.int32()),
        "file_bytes": pa.array(rng.integers(5_000, 60_000, rows), pa.int64()),
        "format": pa.array(["JPEG"] * rows),
    }
    for name in ("brightness_mean", "contrast_rms", "entropy", "sharpness"):
        columns[name] = pa.array(rng.random(rows))
    hashes = rng.integers(0, 2**63, rows, dtype=np.int64)
    columns["phash"] = pa.array([f"{h:016x}" for h in hashes.tolist()])
    columns["pixels_sha256"] = pa.array([f"{h:064x}" for h in hashes.tolist()])
    columns["feature_version"] = pa.array(["1"] * rows)
    # Columns not filled above are null, as in failed rows.
    return pa.table([columns[f.name].cast(f.type) if f.name in columns else pa.nulls(rows, f.type)
                     for f in ROW_SCHEMA], schema=ROW_SCHEMA)


def make_tables(rows: int, folder: Path) -> dict[str, Path]:
    ids = [f"img{i:08d}" for i in range(rows)]
    # Grouped as the workflow's table is (its metadata records the distance).
    base = with_duplicate_groups(synthetic(rows, 1, ids), DEFAULT_MAX_DISTANCE)
    pq.write_table(base, folder / "base.parquet")
    # 10% of rows re-measured, 1% dropped, 1% appended.
    index = np.arange(rows)
    brightness = base.column("brightness_mean").to_numpy()
    brightness = np.where(index % 10 == 3, brightness / 2, brightness)
    changed = base.set_column(base.schema.get_field_index("brightness_mean"), "brightness_mean",
                              pa.array(brightness)).filter(pa.array(index % 100 != 7))
    extra = synthetic(rows // 100, 2, [f"new{i:08d}" for i in range(rows // 100)])
    changed_table = with_duplicate_groups(pa.concat_tables([changed, extra]),
                                          DEFAULT_MAX_DISTANCE)
    pq.write_table(changed_table, folder / "changed.parquet")
    # A column a later feature version might add (a name not in the current schema).
    wider = changed_table.append_column("future_score",
                                        pa.array(np.ones(changed_table.num_rows)))
    pq.write_table(wider, folder / "wider.parquet")
    return {name: folder / f"{name}.parquet" for name in ("base", "changed", "wider")}


def one_repeat(folder: Path) -> dict[str, float]:
    """Run in a fresh process: every phase once, timed; plus this process's peak memory."""
    import duckdb
    from thumbfeat.warehouse import load_warehouse

    times = {}
    db = folder / "w.duckdb"
    for phase, source in (("first load", "base"), ("unchanged reload", "base"),
                          ("10% changed reload", "changed")):
        started = time.perf_counter()
        load_warehouse(folder / f"{source}.parquet", db)
        times[phase] = time.perf_counter() - started
    pruned = folder / "pruned.duckdb"
    load_warehouse(folder / "base.parquet", pruned, prune=True)
    started = time.perf_counter()
    load_warehouse(folder / "changed.parquet", pruned, prune=True)
    times["10% changed reload, pruning"] = time.perf_counter() - started
    replaced = folder / "replace.duckdb"
    load_warehouse(folder / "base.parquet", replaced)
    started = time.perf_counter()
    with duckdb.connect(str(replaced)) as con:
        con.execute("BEGIN TRANSACTION")
        con.execute("DROP TABLE feature_image_visual")
        con.execute("CREATE TABLE feature_image_visual AS SELECT * FROM read_parquet(?)",
                    [str(folder / "changed.parquet")])
        con.execute("COMMIT")
    times["full replace (same change)"] = time.perf_counter() - started
    started = time.perf_counter()
    load_warehouse(folder / "wider.parquet", db)
    times["new column (rebuild)"] = time.perf_counter() - started
    times["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times["db_mb"] = db.stat().st_size / 2**20
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--repeat-in", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeat_in:
        print(json.dumps(one_repeat(args.repeat_in)))
        return
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tables = Path(tmp) / "tables"
        tables.mkdir()
        make_tables(args.rows, tables)
        for number in range(args.repeats):
            folder = Path(tmp) / f"r{number}"
            folder.mkdir()
            for path in tables.iterdir():
                (folder / path.name).symlink_to(path)
            out = subprocess.run([sys.executable, __file__, "--repeat-in", str(folder)],
                                 check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
    lines = [
        f"## Warehouse load: {args.rows:,} rows into DuckDB",
        "",
        f"`bench/bench_warehouse.py --rows {args.rows} --repeats {args.repeats}`, "
        f"{time.strftime('%Y-%m-%d')}, {machine()}.",
        "Seconds, median (min-max) of the repeats, each in a fresh process with a fresh database.",
        "",
        "| phase | seconds |",
        "| --- | --- |",
    ]
    lines += [f"| {phase} | {summary([r[phase] for r in results])} |" for phase in PHASES]
    ratio = [r["10% changed reload"] / r["full replace (same change)"] for r in results]
    lines += [
        "",
        f"- Upsert vs plain full replacement for the same change, measured side by side: "
        f"{summary(ratio)} times the time (the upsert compares every row to write only the "
        "changed ones, recomputes the duplicate groups over every row, and keeps the key, the "
        "load history and the user's other tables).",
        f"- Peak memory of the measuring process: {summary([r['peak_rss_mb'] for r in results])}"
        f" MB; database file {summary([r['db_mb'] for r in results])} MB.",
        "",
    ]
    publish(args.report, lines)


if __name__ == "__main__":
    main()
