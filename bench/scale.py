"""Benchmark: the workflow at 10k, 100k and 1M catalog rows, on this machine's cores.

Two kinds of state are measured:

* real: ``--real`` images (default 100,000) generated as 320x240 JPEGs, served by nginx on
  loopback and run through the workflow: fresh dry run, the full run, no-op runs, runs after
  appending 1% new images (with the time spent outside the new images' own batch jobs), and the
  aggregation of the table from the per-image files alone;
* synthetic steady state: for each of ``--sizes``, a catalog whose per-image files are generated
  directly (hard links to one thumbnail and one row file, plus a table and catalog snapshot), so
  a million-row catalog can be measured without downloading a million images: fresh dry run (no
  files), steady-state dry run and no-op run, with the workflow process's peak memory.

The largest steady-state dry run is also profiled (cProfile), to say where its time goes. The
section "## Scale" of BENCHMARKS.md is replaced with the results. Needs nginx (Debian:
nginx-light).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import os
import pstats
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "workflow"))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402
from thumbfeat import layout  # noqa: E402
from thumbfeat.catalog import CatalogSpec, load_catalog, write_snapshot  # noqa: E402
from thumbfeat.features import FEATURE_VERSION  # noqa: E402
from thumbfeat.rows import ROW_SCHEMA, failed_row, write_row  # noqa: E402
from thumbfeat.rowscan import jemalloc_library  # noqa: E402
from thumbfeat.table import assemble_table, write_settings_marker  # noqa: E402
from thumbfeat.thumbnail import thumbnail_settings  # noqa: E402
from thumbfeat.urls import recorded_url  # noqa: E402

from bench.common import (  # noqa: E402
    Measured,
    generate_images,
    machine,
    measure,
    nginx_version,
    publish,
    start_nginx,
    summary,
    write_catalog,
)

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def snakemake(workdir: Path, catalog: Path, cores: int, *extra: str) -> list[str]:
    return [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", str(cores),
            "--config", f"catalog={catalog}", *extra]


def job_intervals(results: Path, since: float) -> list[tuple[float, float]]:
    """(start, end) of every batch job that finished after ``since``, from its manifest."""
    spans = []
    for path in (results / layout.BATCHES).glob("*.json"):
        manifest = json.loads(path.read_text())
        if manifest.get("finished", 0) >= since:
            spans.append((manifest["started"], manifest["finished"]))
    return spans


def covered(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of the intervals."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def steady_state(results: Path, catalog: Path, thumb_source: Path) -> None:
    """Per-image files for every catalog row, made directly: hard links, then table + snapshot."""
    shutil.rmtree(results, ignore_errors=True)
    spec = CatalogSpec(path=catalog)
    selected = load_catalog(spec)
    ids = selected.ids
    row_source = results.parent / "row-source.parquet"
    write_row(row_source, failed_row("x", "synthetic", "synthetic", retryable=False,
                                     feature_version="synthetic"))
    tag = default_config_tag()
    # One source file per shard folder: a file system allows only so many links to one file.
    for shard in layout.SHARDS:
        for stage, source, suffix in ((layout.THUMBS, thumb_source, layout.THUMB_SUFFIX),
                                      (layout.FEATURES, row_source, layout.FEATURE_SUFFIX)):
            folder = results / layout.stage_dir(stage, tag) / shard
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, results.parent / f"source-{stage}-{shard}{suffix}")
    for image_id in ids:
        shard = layout.shard_of(image_id)
        os.link(results.parent / f"source-thumbs-{shard}{layout.THUMB_SUFFIX}",
                layout.thumb_path(results, image_id, tag))
        os.link(results.parent / f"source-features-{shard}{layout.FEATURE_SUFFIX}",
                layout.feature_path(results, image_id, tag))
    digest = selected.digest()
    write_snapshot(spec, results / "catalog" / f"{digest}.parquet", expected_digest=digest,
                   logger=logging.getLogger("bench"))
    columns = {name: pa.nulls(len(ids), type=field.type) for name, field in
               zip(ROW_SCHEMA.names, ROW_SCHEMA, strict=True)}
    columns["image_id"] = pa.array(ids)
    columns["status"] = pa.array(["ok"] * len(ids))
    # Current rows fetched from the catalog's URLs: nothing to measure or fetch again.
    columns["feature_version"] = pa.array([FEATURE_VERSION] * len(ids))
    columns["source_url"] = pa.array([recorded_url(url) for url in selected.urls])
    columns["thumbnail_settings"] = pa.array([tag] * len(ids))
    pq.write_table(pa.table(columns, schema=ROW_SCHEMA), results / "feature_table.parquet")
    distance = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())[
        "near_duplicate_distance"]
    write_settings_marker(layout.table_settings_path(str(results), distance, tag), distance)


def default_config_tag() -> str:
    """The thumbnail settings folder of the default config (where the workflow looks)."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return thumbnail_settings(config["thumbnail"]).tag


def profile_dry_run(workdir: Path, catalog: Path, cores: int, out: Path) -> list[str]:
    """cProfile of one dry run in this process; the top entries by cumulative time."""
    from snakemake.cli import main as snakemake_main

    argv = sys.argv
    sys.argv = ["snakemake", *snakemake(workdir, catalog, cores, "-n")[1:]]
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        with contextlib.suppress(SystemExit):
            snakemake_main()
        profiler.disable()
    finally:
        sys.argv = argv
    profiler.dump_stats(out)
    stats = pstats.Stats(str(out))
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    interesting = ("thumbfeat", "snakemake/dag", "snakemake/workflow", "snakemake/rules",
                   "parser", "csv", "scandir", "load_catalog", "plan_work", "present_ids")
    for (filename, _line, name), (_, _, _, cumulative, _) in sorted(
            stats.stats.items(), key=lambda item: -item[1][3]):  # type: ignore[attr-defined]
        label = f"{Path(filename).name}:{name}"
        if any(key in filename or key in name for key in interesting) and cumulative > 0.02 * total:
            rows.append(f"| `{label}` | {cumulative:.1f} | {100 * cumulative / total:.0f}% |")
        if len(rows) >= 14:
            break
    return [f"Total profiled time {total:.1f} s (cProfile slows Python code down).", "",
            "| function (cumulative) | s | share |", "| --- | --- | --- |", *rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--real", type=int, default=100_000)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "scale")
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    if shutil.which("nginx") is None:
        sys.exit("nginx is not on PATH (Debian: apt-get install nginx-light)")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    images = work / "images"
    step = max(1, args.real // 100)
    names = [f"s{i:08d}" for i in range(args.real + args.repeats * step)]
    print(f"generating {len(names)} images", flush=True)
    generate_images(images, names, args.cores)
    server, base = start_nginx(images, work)
    lines: list[str] = []
    try:
        if args.real:
            lines += real_state(work, names, base, args, step)
            save_partial(work, lines)
        lines += steady_states(work, images / f"{names[0]}.jpg", base, args)
    finally:
        server.terminate()
        server.wait()
        save_partial(work, lines)
    publish(args.report, [
        "## Scale: 10k to 1M catalog rows on one machine",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; nginx {nginx_version()} on "
        f"loopback; jemalloc for the row scan workers: {jemalloc_library() or 'none'}; "
        f"`--cores {args.cores}`, default config; {args.repeats} repeats per figure, "
        "median (min-max). Peak memory is the largest single process of the command's tree "
        "(the Snakemake process for dry and no-op runs). The machine is shared: compare figures "
        "within one run.",
        "",
        *lines,
        "",
        f"Reproduce: `.venv/bin/python bench/scale.py --real {args.real} --sizes "
        f"{' '.join(str(s) for s in args.sizes)} --repeats {args.repeats}` (needs nginx).",
        "",
    ])


def save_partial(work: Path, lines: list[str]) -> None:
    """Keep what is measured so far, so a failure later in a long run loses nothing."""
    (work / "partial-results.md").write_text("\n".join(lines) + "\n")


def real_state(work: Path, names: list[str], base: str, args: argparse.Namespace,
               step: int) -> list[str]:
    """Fresh dry run, full run, no-op, +1% and aggregation on a really downloaded catalog."""
    n = args.real
    workdir = work / "real"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    catalog = work / "real-catalog.csv"
    write_catalog(catalog, names[:n], base)
    dry = [measure(snakemake(workdir, catalog, args.cores, "-n"), workdir)
           for _ in range(args.repeats)]
    print("real: dry runs done", flush=True)
    full = measure(snakemake(workdir, catalog, args.cores), workdir)
    print(f"real: full run {full.seconds:.0f} s", flush=True)
    ok = pq.read_table(workdir / "results" / "feature_table.parquet", columns=["status"])
    ok_count = ok.column("status").to_pylist().count("ok")
    noop = [measure(snakemake(workdir, catalog, args.cores), workdir)
            for _ in range(args.repeats)]
    grown: list[tuple[float, float, float]] = []
    size = n
    for _ in range(args.repeats):
        size += step
        write_catalog(catalog, names[:size], base)
        since = time.time()
        run = measure(snakemake(workdir, catalog, args.cores), workdir)
        inside = covered(job_intervals(workdir / "results", since))
        grown.append((run.seconds, inside, run.seconds - inside))
    print("real: +1% runs done", flush=True)
    ids = names[:size]
    scratch = []
    for _ in range(args.repeats):
        batches = workdir / "results" / layout.BATCHES
        for path in batches.glob("*.parquet"):
            path.unlink()
        out = work / "scratch-table.parquet"
        started = time.perf_counter()
        # As the table job runs it: its threads (the cores here) as scan workers.
        assembled = assemble_table(ids, str(workdir / "results"), out, tag=default_config_tag(),
                                   workers=args.cores)
        scratch.append(time.perf_counter() - started)
        assert assembled.rows_from_files == len(ids)
    cached = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        assemble_table(ids, str(workdir / "results"), work / "scratch-table.parquet",
                       tag=default_config_tag(), workers=args.cores)
        cached.append(time.perf_counter() - started)
    return [
        f"### Real downloads: {n:,} images",
        "",
        "| measure | median (min-max) | peak memory MB |",
        "| --- | --- | --- |",
        f"| fresh dry run, s | {summary([m.seconds for m in dry])} | {peak(dry)} |",
        f"| full run (once), s | {full.seconds:.1f} ({n / full.seconds:.0f} images/s, "
        f"{ok_count:,} ok rows) | {full.peak_rss_mb:.0f} |",
        f"| no-op run, s | {summary([m.seconds for m in noop])} | {peak(noop)} |",
        f"| run after adding 1% ({step:,} images), s | {summary([g[0] for g in grown])} | |",
        f"| of which inside the new batch jobs, s | {summary([g[1] for g in grown])} | |",
        f"| of which outside them (overhead), s | {summary([g[2] for g in grown])} | |",
        f"| table from {len(ids):,} per-image files alone (no partials, no previous table), s "
        f"| {summary(scratch)} | |",
        f"| table from the previous table plus partials, s | {summary(cached)} | |",
        "",
    ]


def peak(runs: list[Measured]) -> str:
    return f"{statistics.median(m.peak_rss_mb for m in runs):.0f}"


def steady_states(work: Path, thumb_source: Path, base: str,
                  args: argparse.Namespace) -> list[str]:
    """Dry runs and no-op runs on generated per-image files, at each catalog size."""
    rows = []
    profile: list[str] = []
    for size in args.sizes:
        names = [f"g{i:08d}" for i in range(size)]
        catalog = work / f"steady-{size}.csv"
        write_catalog(catalog, names, base)
        fresh_dir = work / f"fresh-{size}"
        shutil.rmtree(fresh_dir, ignore_errors=True)
        fresh_dir.mkdir()
        fresh = [measure(snakemake(fresh_dir, catalog, args.cores, "-n"), fresh_dir)
                 for _ in range(args.repeats)]
        workdir = work / f"steady-{size}"
        workdir.mkdir(exist_ok=True)
        started = time.perf_counter()
        steady_state(workdir / "results", catalog, thumb_source)
        print(f"steady {size}: files made in {time.perf_counter() - started:.0f} s", flush=True)
        dry = [measure(snakemake(workdir, catalog, args.cores, "-n"), workdir)
               for _ in range(args.repeats)]
        # The warehouse of the generated table, loaded by a real run, so the next runs are no-ops.
        measure(snakemake(workdir, catalog, args.cores), workdir)
        noop = [measure(snakemake(workdir, catalog, args.cores), workdir)
                for _ in range(args.repeats)]
        log = (workdir / "bench-command.log").read_text()
        if "Nothing to be done" not in log:
            raise RuntimeError(f"steady state {size} was not a no-op:\n{log[-2000:]}")
        rows.append(f"| {size:,} | {summary([m.seconds for m in fresh])} | {peak(fresh)} | "
                    f"{summary([m.seconds for m in dry])} | {peak(dry)} | "
                    f"{summary([m.seconds for m in noop])} | {peak(noop)} |")
        print(rows[-1], flush=True)
        if size == max(args.sizes):
            profile = profile_dry_run(workdir, catalog, args.cores, work / "dry-run.prof")
        if size != max(args.sizes):
            shutil.rmtree(workdir, ignore_errors=True)
    return [
        "### Catalog size: dry runs and no-op runs (per-image files generated directly)",
        "",
        "| catalog rows | fresh dry run, s | MB | steady-state dry run, s | MB | no-op run, s "
        "| MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"### Where the time goes: steady-state dry run at {max(args.sizes):,} rows",
        "",
        *profile,
        "",
    ]


if __name__ == "__main__":
    main()
