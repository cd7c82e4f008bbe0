"""Benchmark: the workflow against a plain script and img2dataset, side by side in one run.

Generates N thumbnails of 320x240 (JPEG), serves them from nginx on loopback, then for each repeat
measures with a fresh output folder, in rotating order: the workflow's fresh dry run, full run
(download, the full feature set, table) and no-op run; the plain script (bench/plain_pipeline.py:
the same functions without Snakemake); and img2dataset downloading and resizing the same images
from the same server (its settings from the peer measurements: 2 processes x 32 threads, resize to
256 keeping the ratio, files output). Reports medians with min-max spread, the ratios of rates per
repeat, and peak memory (largest process in each measured command's tree), and writes the section
into BENCHMARKS.md.

Needs nginx on PATH (Debian: apt-get install nginx-light). img2dataset is installed into its own
virtual environment under the work folder (bench/requirements-img2dataset.txt); `--no-img2dataset`
leaves it out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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

PYTHON = sys.executable
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def count_ok(table: Path) -> int:
    import pyarrow.parquet as pq

    statuses = pq.read_table(table, columns=["status"]).column("status").to_pylist()
    return sum(s == "ok" for s in statuses)


def img2dataset_command(work: Path) -> list[str]:
    """The peer's command line, installing it into its own environment on first use."""
    venv = work / "img2dataset-venv"
    program = venv / "bin" / "img2dataset"
    if not program.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "-r",
                        str(ROOT / "bench" / "requirements-img2dataset.txt")], check=True)
    return [str(program)]


def img2dataset_successes(folder: Path) -> int:
    return sum(json.loads(p.read_text())["successes"] for p in folder.glob("out/*_stats.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-img2dataset", dest="img2dataset", action="store_false")
    parser.add_argument("--config", nargs="*", default=[],
                        help="extra workflow config, e.g. batch_size=1000 batch_threads=1")
    args = parser.parse_args()
    if shutil.which("nginx") is None:
        sys.exit("nginx is not on PATH (Debian: apt-get install nginx-light)")

    work = args.work.resolve()
    images = work / "images"
    names = [f"b{i:07d}" for i in range(args.images)]
    generate_images(images, names, args.cores)
    server, base = start_nginx(images, work)
    catalog = work / "catalog.csv"
    write_catalog(catalog, names, base)

    sides = ["workflow", "plain"] + (["img2dataset"] if args.img2dataset else [])
    peer = img2dataset_command(work) if args.img2dataset else []
    results: dict[str, list[Measured]] = {
        k: [] for k in ("dry", "run", "noop", "plain", "img2dataset")}
    try:
        for repeat in range(args.repeats):
            order = sides[repeat % len(sides):] + sides[: repeat % len(sides)]
            for which in order:
                folder = work / f"{which}-{repeat}"
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                if which == "img2dataset":
                    results["img2dataset"].append(measure(
                        [*peer, "--url_list", str(catalog), "--input_format", "csv",
                         "--url_col", "url", "--output_folder", str(folder / "out"),
                         "--processes_count", str(args.cores), "--thread_count", "32",
                         "--image_size", "256", "--resize_mode", "keep_ratio",
                         "--output_format", "files", "--enable_wandb", "False"], folder))
                    done = img2dataset_successes(folder)
                    if done != args.images:
                        raise RuntimeError(f"img2dataset: {done} successes of {args.images}")
                    print(f"repeat {repeat} {which}: done", flush=True)
                    continue
                if which == "plain":
                    results["plain"].append(measure(
                        [PYTHON, str(ROOT / "bench" / "plain_pipeline.py"), str(catalog),
                         "--cores", str(args.cores)], folder))
                    table = folder / "results" / "feature_table.parquet"
                else:
                    smk = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--cores", str(args.cores),
                           "--config", f"catalog={catalog}", *args.config]
                    results["dry"].append(measure([*smk, "-n"], folder))
                    results["run"].append(measure(smk, folder))
                    results["noop"].append(measure(smk, folder))
                    table = folder / "results" / "feature_table.parquet"
                ok = count_ok(table)
                if ok != args.images:
                    raise RuntimeError(f"{which}: {ok} ok rows of {args.images}")
                print(f"repeat {repeat} {which}: done", flush=True)
    finally:
        server.terminate()
        server.wait()

    overrides = f" with {' '.join(args.config)}" if args.config else ""
    rate = {k: [args.images / m.seconds for m in results[k]]
            for k in ("run", "plain", "img2dataset")}
    ratios = [w / p for w, p in zip(rate["run"], rate["plain"], strict=True)]
    peer_lines = []
    if args.img2dataset:
        peer_ratios = [w / p for w, p in zip(rate["run"], rate["img2dataset"], strict=True)]
        peer_lines = [
            f"| img2dataset 1.47.0 download + resize only, images/s | "
            f"{summary(rate['img2dataset'])} | "
            f"{statistics.median(m.peak_rss_mb for m in results['img2dataset']):.0f} |",
            f"| ratio workflow / img2dataset (per repeat) | {summary(peer_ratios)} | |",
        ]
    lines = [
        f"## Core pipeline: {args.images:,} thumbnails, workflow vs plain script and img2dataset",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; nginx {nginx_version()} on "
        f"loopback serving 320x240 JPEGs (about "
        f"{sum(p.stat().st_size for p in images.iterdir()) / len(names) / 1024:.0f} KB each); "
        f"`--cores {args.cores}`, default config{overrides}"
        f" (defaults: {defaults()}); {args.repeats} repeats, the sides taking turns to go "
        "first. Rates are images over the whole command's wall time. "
        "Median (min-max). Peak memory is the largest single process of the command's tree.",
        "",
        "| measure | median (min-max) | peak memory MB (median) |",
        "| --- | --- | --- |",
        f"| workflow end to end, images/s | {summary(rate['run'])} | "
        f"{statistics.median(m.peak_rss_mb for m in results['run']):.0f} |",
        f"| plain script end to end, images/s | {summary(rate['plain'])} | "
        f"{statistics.median(m.peak_rss_mb for m in results['plain']):.0f} |",
        f"| ratio workflow / plain (per repeat) | {summary(ratios)} | |",
        *peer_lines,
        f"| fresh dry run, s | {summary([m.seconds for m in results['dry']])} | "
        f"{statistics.median(m.peak_rss_mb for m in results['dry']):.0f} |",
        f"| no-op run, s | {summary([m.seconds for m in results['noop']])} | "
        f"{statistics.median(m.peak_rss_mb for m in results['noop']):.0f} |",
        "",
        f"Reproduce: `.venv/bin/python bench/run_bench.py --images {args.images} "
        f"--repeats {args.repeats}` (needs nginx).",
        "",
    ]
    publish(args.report, lines)


def defaults() -> str:
    import yaml

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return (f"batch_size {config['batch_size']}, batch_threads {config['batch_threads']}, "
            f"download.concurrency {config['download']['concurrency']}")


if __name__ == "__main__":
    main()
