"""Benchmark: what Make-style rebuilds cost the plan, and the rate of ``thumbfeat verify``.

For each of ``--sizes`` catalog rows, per-image files are generated directly (as in
bench/scale.py: hard links to one thumbnail and one row file, a table and a catalog snapshot);
the table then records 1% of the rows at an older feature version and 0.01% at another URL. It
measures the stale-row lookup alone (reading the last table's columns, in this process), the
whole dry run (`snakemake -n`, a new process, checked to preview exactly those rows), the dry run
when the table is missing (every per-image file gets the cheap check), and `thumbfeat verify`
(fast and full) over the files of the smallest size. The section "## Stale rows in the plan" of
BENCHMARKS.md is replaced with the results. Needs no network.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "workflow"))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from thumbfeat import layout  # noqa: E402
from thumbfeat.features import FEATURE_VERSION  # noqa: E402
from thumbfeat.rowinputs import read_row_inputs  # noqa: E402

from bench.common import generate_images, machine, measure, publish, summary  # noqa: E402
from bench.common import write_catalog as write_bench_catalog  # noqa: E402
from bench.scale import default_config_tag, snakemake, steady_state  # noqa: E402

THUMBFEAT = str(Path(sys.executable).with_name("thumbfeat"))


def age_table(results: Path, stale_every: int) -> int:
    """Mark every ``stale_every``-th row as of version 2, in the table and its cache; the count."""
    path = results / "feature_table.parquet"
    table = pq.read_table(path)
    n = table.num_rows
    versions = [("2" if i % stale_every == 0 else FEATURE_VERSION) for i in range(n)]
    table = table.set_column(table.schema.get_field_index("feature_version"), "feature_version",
                             pa.array(versions, pa.string()))
    pq.write_table(table, path)
    cache = results / layout.BATCHES / layout.TABLE_CACHE
    cache.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, cache)
    return len(range(0, n, stale_every))


def move_urls(catalog: Path, every: int) -> int:
    """Give every ``every``-th catalog row a new URL; how many."""
    lines = catalog.read_text().splitlines()
    moved = 0
    for number in range(2, len(lines), every):
        lines[number] += "?moved"
        moved += 1
    catalog.write_text("\n".join(lines) + "\n")
    return moved


def plan_line(workdir: Path) -> str:
    text = (workdir / "bench-command.log").read_text()
    match = re.search(r"thumbfeat plan: .*", text)
    assert match, text[-2000:]
    return match[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "rebuilds")
    parser.add_argument("--no-table-max", type=int, default=100_000,
                        help="measure the dry run without a table up to this many rows")
    parser.add_argument("--no-verify", action="store_true", help="skip thumbfeat verify")
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    generate_images(work / "images", ["thumb"], 1)
    thumb = work / "images" / "thumb.jpg"
    rows = ["| catalog rows | stale-row lookup (in the plan), s | dry run, same catalog, s | "
            "dry run, 0.01% of URLs changed, s | MB | previewed | dry run without a table "
            "(cheap check of every file), s |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    verify_lines: list[str] = []
    for size in args.sizes:
        workdir = work / f"n{size}"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir()
        catalog = workdir / "catalog.csv"
        names = [f"s{i:08d}" for i in range(size)]
        write_bench_catalog(catalog, names, "http://127.0.0.1:9/img")
        results = workdir / "results"
        steady_state(results, catalog, thumb)
        stale = age_table(results, 100)
        tag = default_config_tag()
        shards = layout.existing_shard_dirs(results, layout.stage_dir(layout.FEATURES, tag))
        lookups = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            inputs = read_row_inputs(results, shards, tag)
            lookups.append(time.perf_counter() - started)
        assert len(inputs.stale(names, FEATURE_VERSION)) == stale
        dry = [measure(snakemake(workdir, catalog, args.cores, "-n"), workdir)
               for _ in range(args.repeats)]
        line = plan_line(workdir)
        assert f"{stale} to measure again" in line and "changed URL" not in line, line
        moved = move_urls(catalog, 10_000)
        dry_moved = [measure(snakemake(workdir, catalog, args.cores, "-n"), workdir)
                     for _ in range(args.repeats)]
        line = plan_line(workdir)
        assert f"{stale} to measure again" in line and f"{moved} with a changed URL" in line, line
        previewed = f"{stale:,} to measure again, {moved:,} changed URLs"
        without: list[float] = []
        if size <= args.no_table_max:
            (results / "feature_table.parquet").rename(workdir / "table-aside.parquet")
            without = [measure(snakemake(workdir, catalog, args.cores, "-n"), workdir).seconds
                       for _ in range(args.repeats)]
            (workdir / "table-aside.parquet").rename(results / "feature_table.parquet")
        rows.append(f"| {size:,} | {summary(lookups)} | {summary([m.seconds for m in dry])} | "
                    f"{summary([m.seconds for m in dry_moved])} | "
                    f"{max(m.peak_rss_mb for m in dry + dry_moved):.0f} | {previewed} | "
                    f"{summary(without) if without else 'not measured'} |")
        print(rows[-1], flush=True)
        if not verify_lines and not args.no_verify:
            files = 2 * size
            for mode, extra in (("fast (sizes and magic bytes)", ["--fast"]),
                                ("full (decode, read, parse)", [])):
                started = time.perf_counter()
                subprocess.run([THUMBFEAT, "verify", "--results", str(results),
                                "--workers", str(args.cores), *extra],
                               check=True, capture_output=True)
                seconds = time.perf_counter() - started
                verify_lines.append(f"| {mode} | {files:,} | {seconds:.1f} | "
                                    f"{files / seconds:,.0f} |")
                print(verify_lines[-1], flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
    publish(args.report, [
        "## Stale rows in the plan: finding rows to measure or fetch again",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; `--cores {args.cores}`; "
        f"{args.repeats} repeats, median (min-max). The last table marks 1% of the rows as of "
        "feature version 2, and the dry run must preview exactly those; then 0.01% of the "
        "catalog's URLs change (a new catalog, so every row's URL is compared), and it must "
        "preview those too. The lookup (in this process) reads the table's image_id, status, "
        "feature_version and source_url columns once; no per-image file is opened (every "
        "shard folder is older than the table). Without a table the plan instead checks every "
        "thumbnail and row file cheaply (size, magic bytes). The machine is shared: compare "
        "within one run.",
        "",
        *rows,
        "",
        "`thumbfeat verify` over one thumbnail (a 320x240 JPEG) and one row file per image, "
        f"{args.cores} worker processes:",
        "",
        "| mode | files | s | files/s |",
        "| --- | --- | --- | --- |",
        *verify_lines,
        "",
        f"Reproduce: `.venv/bin/python bench/rebuilds.py --sizes "
        f"{' '.join(str(s) for s in args.sizes)} --repeats {args.repeats}`.",
        "",
    ])


if __name__ == "__main__":
    main()
