"""Benchmark: the workflow at two revisions, side by side in one run, on the same images.

For each repeat, the two revisions take turns to go first. Each runs from its own checkout (a
detached ``git worktree`` of ``--before`` made under the work folder; its Snakefile puts its own
``workflow/`` first on the import path, so each side runs its own ``thumbfeat``) with this
environment's Snakemake, against the same nginx serving the same 320x240 JPEGs:

- a fresh dry run of a catalog of ``--dry-rows`` rows (nothing on disk: every image planned);
- the full run of ``--images`` images (download, the full feature set, the table, the warehouse);
- a no-op run and a dry run of that finished folder.

It answers "is this revision any slower than that one" without comparing numbers taken on
different days or machines. The section "## Revisions side by side" of BENCHMARKS.md is replaced.

    .venv/bin/python bench/revisions.py --before 5dfb570 --images 10000 --dry-rows 100000
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    generate_images,
    machine,
    measure,
    nginx_version,
    publish,
    start_nginx,
    summary,
    write_catalog,
)
from bench.run_bench import SNAKEMAKE, count_ok  # noqa: E402

MEASURES = ("fresh dry run", "run", "no-op run", "no-op dry run")


def checkout(revision: str, work: Path) -> tuple[Path, str]:
    """A detached worktree of ``revision`` under ``work`` (made once), and its short hash."""
    short = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", revision],
                           check=True, capture_output=True, text=True).stdout.strip()
    folder = work / f"rev-{short}"
    if not (folder / "Snakefile").exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder),
                        revision], check=True, capture_output=True)
    return folder, short


def head_revision() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          check=True, capture_output=True, text=True).stdout.strip()


def run_side(snakefile: Path, folder: Path, catalog: Path, big_catalog: Path, cores: int,
             images: int) -> dict[str, float]:
    """Seconds of each measure for one revision in a fresh folder."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    smk = [SNAKEMAKE, "-s", str(snakefile), "--cores", str(cores)]
    seconds = {
        "fresh dry run": measure([*smk, "-n", "--config", f"catalog={big_catalog}"],
                                 folder).seconds,
        "run": measure([*smk, "--config", f"catalog={catalog}"], folder).seconds,
    }
    ok = count_ok(folder / "results" / "feature_table.parquet")
    if ok != images:
        raise RuntimeError(f"{snakefile}: {ok} ok rows of {images}")
    seconds["no-op run"] = measure([*smk, "--config", f"catalog={catalog}"], folder).seconds
    seconds["no-op dry run"] = measure([*smk, "-n", "--config", f"catalog={catalog}"],
                                       folder).seconds
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", required=True, help="the revision to compare against")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--dry-rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    if args.dry_rows < 1:
        parser.error("--dry-rows must be at least 1: the fresh dry run plans a catalog of that "
                     "many rows, and a catalog that selects nothing is refused")
    if shutil.which("nginx") is None:
        sys.exit("nginx is not on PATH (Debian: apt-get install nginx-light)")

    work = args.work.resolve()
    images = work / "images"
    names = [f"b{i:07d}" for i in range(args.images)]
    generate_images(images, names, args.cores)
    before_root, before = checkout(args.before, work)
    after = head_revision()
    sides = {before: before_root / "Snakefile", after: ROOT / "Snakefile"}
    server, base = start_nginx(images, work)
    catalog = work / "revisions-catalog.csv"
    write_catalog(catalog, names, base)
    big_catalog = work / "revisions-catalog-dry.csv"
    write_catalog(big_catalog, [f"d{i:08d}" for i in range(args.dry_rows)], base)
    seconds: dict[str, dict[str, list[float]]] = {
        side: {m: [] for m in MEASURES} for side in sides}
    try:
        for repeat in range(args.repeats):
            order = list(sides) if repeat % 2 == 0 else list(sides)[::-1]
            for side in order:
                measured = run_side(sides[side], work / f"revision-{side}", catalog,
                                    big_catalog, args.cores, args.images)
                for name, value in measured.items():
                    seconds[side][name].append(value)
                print(f"repeat {repeat} {side}: {measured}", flush=True)
    finally:
        server.terminate()
        server.wait()

    rows = []
    for name in MEASURES:
        old, new = seconds[before][name], seconds[after][name]
        ratios = [n / o for o, n in zip(old, new, strict=True)]
        rows.append(f"| {name}, s | {summary(old)} | {summary(new)} | {summary(ratios)} |")
    rate_old = [args.images / s for s in seconds[before]["run"]]
    rate_new = [args.images / s for s in seconds[after]["run"]]
    lines = [
        "## Revisions side by side: the workflow before and after a change",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; nginx {nginx_version()} on "
        f"loopback serving {args.images:,} JPEGs of 320x240; `--cores {args.cores}`, default "
        f"config of each revision; {args.repeats} repeats, the two revisions taking turns to go "
        f"first, each in a fresh folder. `{before}` is the revision before; `{after}` the one "
        f"measured. The fresh dry run plans a catalog of {args.dry_rows:,} rows with nothing on "
        "disk; the run, no-op run and no-op dry run use the "
        f"{args.images:,} images. Median (min-max); the ratio is after / before per repeat "
        "(below 1 is faster).",
        "",
        f"| measure | `{before}` | `{after}` | after / before |",
        "| --- | --- | --- | --- |",
        *rows,
        f"| run, images/s | {summary(rate_old)} | {summary(rate_new)} | "
        f"{summary([n / o for o, n in zip(rate_old, rate_new, strict=True)])} |",
        "",
        f"Reproduce: `.venv/bin/python bench/revisions.py --before {before} --images "
        f"{args.images} --dry-rows {args.dry_rows} --repeats {args.repeats}` (needs nginx).",
        "",
    ]
    publish(args.report, lines)


if __name__ == "__main__":
    main()
