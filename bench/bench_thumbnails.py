"""Benchmarks of thumbnails: large photos, a distant server, and the CPU of each stage.

``photos``: N camera-like JPEG photos of 4000x3000 (made from the demo's photos, upscaled with
grain: bench.common.camera_photo) from nginx on loopback; the workflow (thumbnails of the same
longest side and quality as the peer) against img2dataset (2 processes x 16 threads, resize to that
side keeping the ratio), side by side in one run, sides taking turns to go first. Reports images/s
and the bytes each keeps.

``distant``: N 320x240 JPEGs from a loopback server answering every request 100 ms late
(bench/slow_server.py); the workflow at its default config against img2dataset at 2 processes x 64
threads.

``stages``: the CPU per image of each stage of the workflow on N 320x240 JPEGs from nginx:
download, decode, resize, encode, features, writing the files, and what the whole run costs beyond
them (Snakemake, job start-up, handing work between processes, the table).

Each writes its section into BENCHMARKS.md. Needs nginx (Debian: apt-get install nginx-light);
img2dataset is installed into its own virtual environment under the work folder.

    .venv/bin/python bench/bench_thumbnails.py photos --images 200 --repeats 3
    .venv/bin/python bench/bench_thumbnails.py distant --images 3000 --repeats 3
    .venv/bin/python bench/bench_thumbnails.py stages --images 2000
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "workflow"))

from bench.common import (  # noqa: E402
    Measured,
    free_port,
    generate_images,
    generate_photos,
    machine,
    measure,
    nginx_version,
    publish,
    serving,
    start_nginx,
    summary,
    write_catalog,
)
from bench.run_bench import count_ok, img2dataset_command, img2dataset_successes  # noqa: E402

PYTHON = sys.executable
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def folder_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


def workflow_command(catalog: Path, cores: int, settings: Path | None) -> list[str]:
    command = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--cores", str(cores),
               "--config", f"catalog={catalog}"]
    return command + (["--configfile", str(settings)] if settings else [])


def img2dataset_run(peer: list[str], catalog: Path, folder: Path, *, cores: int, threads: int,
                    side: int, quality: int) -> list[str]:
    return [*peer, "--url_list", str(catalog), "--input_format", "csv", "--url_col", "url",
            "--output_folder", str(folder / "out"), "--processes_count", str(cores),
            "--thread_count", str(threads), "--image_size", str(side),
            "--resize_mode", "keep_ratio", "--encode_quality", str(quality),
            "--output_format", "files", "--enable_wandb", "False"]


def side_by_side(args: argparse.Namespace, catalog: Path, images: int, settings: Path | None,
                 peer_command: object, work: Path) -> dict[str, list[tuple[Measured, Path]]]:
    """Run the workflow and img2dataset ``args.repeats`` times each, taking turns to go first."""
    sides = ["workflow", "img2dataset"]
    done: dict[str, list[tuple[Measured, Path]]] = {side: [] for side in sides}
    for repeat in range(args.repeats):
        for which in sides[repeat % 2:] + sides[: repeat % 2]:
            folder = work / f"{which}-{repeat}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            if which == "workflow":
                run = measure(workflow_command(catalog, args.cores, settings), folder)
                ok = count_ok(folder / "results" / "feature_table.parquet")
            else:
                run = measure(peer_command(folder), folder)  # type: ignore[operator]
                ok = img2dataset_successes(folder)
            if ok != images:
                raise RuntimeError(f"{which}: {ok} images of {images}")
            done[which].append((run, folder))
            print(f"repeat {repeat} {which}: {images / run.seconds:.1f} images/s", flush=True)
    return done


def rates(runs: list[tuple[Measured, Path]], images: int) -> list[float]:
    return [images / run.seconds for run, _ in runs]


def photos(args: argparse.Namespace) -> None:
    work = args.work.resolve() / "photos"
    images = work / "images"
    names = [f"p{i:04d}" for i in range(args.images)]
    started = time.monotonic()
    generate_photos(images, names, args.cores)
    print(f"photos ready in {time.monotonic() - started:.0f} s", flush=True)
    sizes = [p.stat().st_size for p in images.glob("*.jpg")]
    server, base = start_nginx(images, work)
    catalog = work / "catalog.csv"
    write_catalog(catalog, names, base)
    settings = work / "settings.yaml"
    settings.write_text(f"thumbnail: {{max_side: {args.side}, format: jpeg, "
                        f"quality: {args.quality}}}\n")
    peer = img2dataset_command(args.work.resolve())
    try:
        runs = side_by_side(args, catalog, len(names), settings, lambda folder: img2dataset_run(
            peer, catalog, folder, cores=args.cores, threads=16, side=args.side,
            quality=args.quality), work)
    finally:
        server.terminate()
        server.wait()
    tag = f"{args.side}px-jpeg-q{args.quality}"
    ours = [folder_bytes(folder / "results" / "thumbs" / tag, "*/*.img")
            for _, folder in runs["workflow"]]
    theirs = [folder_bytes(folder / "out", "*/*.jpg") for _, folder in runs["img2dataset"]]
    ratio = [w / p for w, p in zip(rates(runs["workflow"], len(names)),
                                   rates(runs["img2dataset"], len(names)), strict=True)]
    lines = [
        f"## Large photos: {len(names)} JPEGs of 4000x3000, workflow vs img2dataset",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; nginx {nginx_version()} on "
        f"loopback serving {len(names)} camera-like photos of 4000x3000 made from the demo's "
        f"photos (crops upscaled with grain, `bench.common.camera_photo`; "
        f"{statistics.median(sizes) / 1e6:.1f} MB median, {sum(sizes) / 1e6:.0f} MB in all). "
        f"Both keep JPEG thumbnails of {args.side} px on the longest side at quality "
        f"{args.quality}: the workflow with `thumbnail: {{max_side: {args.side}, quality: "
        f"{args.quality}}}` and the full feature set, `--cores {args.cores}`, otherwise default "
        f"config; img2dataset 1.47.0 with {args.cores} processes x 16 threads, `--image_size "
        f"{args.side} --resize_mode keep_ratio --encode_quality {args.quality}`, files output. "
        f"{args.repeats} repeats, the sides taking turns to go first. Rates are images over the "
        "whole command's wall time; median (min-max).",
        "",
        "| measure | workflow | img2dataset | ratio (per repeat) |",
        "| --- | --- | --- | --- |",
        f"| images/s | {summary(rates(runs['workflow'], len(names)))} | "
        f"{summary(rates(runs['img2dataset'], len(names)))} | {summary(ratio)} |",
        f"| bytes kept, MB | {statistics.median(ours) / 1e6:.2f} | "
        f"{statistics.median(theirs) / 1e6:.2f} | "
        f"{statistics.median(ours) / statistics.median(theirs):.2f} |",
        f"| CPU seconds per image | "
        f"{statistics.median(r.cpu_seconds for r, _ in runs['workflow']) / len(names):.3f} | "
        f"{statistics.median(r.cpu_seconds for r, _ in runs['img2dataset']) / len(names):.3f}"
        " | |",
        "",
        f"Reproduce: `.venv/bin/python bench/bench_thumbnails.py photos --images {len(names)} "
        f"--repeats {args.repeats}` (needs nginx).",
        "",
    ]
    publish(args.report, lines)


def start_slow_server(folder: Path, delay: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "bench" / "slow_server.py"), str(folder),
                                "--port", str(port), "--delay", str(delay)])
    return serving(process, port, "the slow server")


def distant(args: argparse.Namespace) -> None:
    work = args.work.resolve() / "distant"
    images = args.work.resolve() / "images"
    names = [f"b{i:07d}" for i in range(args.images)]
    generate_images(images, names, args.cores)
    server, base = start_slow_server(images, args.delay)
    catalog = work / "catalog.csv"
    work.mkdir(parents=True, exist_ok=True)
    write_catalog(catalog, names, base)
    peer = img2dataset_command(args.work.resolve())
    try:
        runs = side_by_side(args, catalog, len(names), None, lambda folder: img2dataset_run(
            peer, catalog, folder, cores=args.cores, threads=64, side=256, quality=95), work)
    finally:
        server.terminate()
        server.wait()
    ratio = [w / p for w, p in zip(rates(runs["workflow"], len(names)),
                                   rates(runs["img2dataset"], len(names)), strict=True)]
    import yaml

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    lines = [
        f"## Distant server: {len(names):,} thumbnails answered {args.delay * 1000:.0f} ms late, "
        "workflow vs img2dataset",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; a loopback server answering "
        f"every request {args.delay * 1000:.0f} ms late (bench/slow_server.py, asyncio, "
        f"keep-alive), serving 320x240 JPEGs. The workflow at its default config "
        f"(`download.concurrency` {config['download']['concurrency']}, `batch_threads` "
        f"{config['batch_threads']}, thumbnails within 512 px kept as served) with the full "
        f"feature set, `--cores {args.cores}`; img2dataset 1.47.0 with {args.cores} processes x "
        f"64 threads, resize to 256 keeping the ratio, files output. {args.repeats} repeats, the "
        "sides taking turns to go first; rates are images over the whole command's wall time; "
        "median (min-max).",
        "",
        "| measure | workflow | img2dataset | ratio (per repeat) |",
        "| --- | --- | --- | --- |",
        f"| images/s | {summary(rates(runs['workflow'], len(names)))} | "
        f"{summary(rates(runs['img2dataset'], len(names)))} | {summary(ratio)} |",
        "",
        f"Reproduce: `.venv/bin/python bench/bench_thumbnails.py distant --images {len(names)} "
        f"--repeats {args.repeats}`.",
        "",
    ]
    publish(args.report, lines)


def stage_cpu(datas: list[bytes], base_names: list[str]) -> dict[str, float]:
    """Seconds of CPU per image of each stage, run one after another in this process."""
    from thumbfeat import atomic, rows
    from thumbfeat.features import FEATURE_VERSION, compute_features
    from thumbfeat.imaging import decode_image
    from thumbfeat.runtime import tune_for_measuring
    from thumbfeat.thumbnail import (
        ThumbnailSettings,
        encode,
        facts_of_download,
        target_size,
        to_storable,
    )

    # Tuned as a batch job tunes its measuring processes.
    tune_for_measuring()
    small = ThumbnailSettings(256, "jpeg", 85, True)
    spent = dict.fromkeys(("decode", "resize to 256", "encode at 256", "features",
                           "write thumbnail and row"), 0.0)
    scratch = Path(tempfile.mkdtemp())
    for name, data in zip(base_names, datas, strict=True):
        clock = time.thread_time()
        decoded = decode_image(data)
        now = time.thread_time()
        spent["decode"] += now - clock
        clock = now
        resized = to_storable(decoded.image, "jpeg").resize(
            target_size(decoded.image.size, 256))
        now = time.thread_time()
        spent["resize to 256"] += now - clock
        clock = now
        encode(resized, small, facts_of_download(data, decoded))
        now = time.thread_time()
        spent["encode at 256"] += now - clock
        clock = now
        features = compute_features(decoded, data)
        now = time.thread_time()
        spent["features"] += now - clock
        clock = now
        atomic.write_bytes(scratch / name[:2] / f"{name}.img", data)
        rows.write_row(scratch / name[:2] / f"{name}.parquet",
                        rows.ok_row(name, features, FEATURE_VERSION))
        spent["write thumbnail and row"] += time.thread_time() - clock
    shutil.rmtree(scratch)
    return {stage: seconds / len(datas) for stage, seconds in spent.items()}


def stages(args: argparse.Namespace) -> None:
    from thumbfeat.fetch import FetchSettings, fetch_with_retries, make_session

    work = args.work.resolve() / "stages"
    images = args.work.resolve() / "images"
    names = [f"b{i:07d}" for i in range(args.images)]
    generate_images(images, names, args.cores)
    server, base = start_nginx(images, work)
    catalog = work / "catalog.csv"
    write_catalog(catalog, names, base)
    settings = FetchSettings()
    try:
        session = make_session(settings)
        cpu = time.process_time()
        with ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
            datas = [f.data or b"" for f in pool.map(
                lambda n: fetch_with_retries(session, f"{base}/{n}.jpg", settings), names)]
        download = (time.process_time() - cpu) / len(names)
        session.close()
        assert all(datas)
        per_stage = stage_cpu(datas, names)
        runs = []
        for repeat in range(args.repeats):
            folder = work / f"workflow-{repeat}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            runs.append(measure(workflow_command(catalog, args.cores, None), folder))
            if count_ok(folder / "results" / "feature_table.parquet") != len(names):
                raise RuntimeError("the workflow did not measure every image")
    finally:
        server.terminate()
        server.wait()
    total = statistics.median(r.cpu_seconds for r in runs) / len(names)
    default_path = download + sum(per_stage[s] for s in ("decode", "features",
                                                          "write thumbnail and row"))
    rows = [("download (fetch over HTTP, in threads)", download),
            *[(stage, seconds) for stage, seconds in per_stage.items()],
            ("Snakemake, job start-up, hand-over between processes, the table",
             total - default_path)]
    lines = [
        f"## CPU per image by stage: {len(names):,} thumbnails of 320x240",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; nginx {nginx_version()} on "
        "loopback. Each stage is run alone over every image in one process and timed with the "
        "CPU clock of its thread (download: the process's CPU while "
        f"{settings.concurrency} threads fetch all images). The last line is the whole "
        f"workflow run's CPU (its command and every process it waited for; median of "
        f"{args.repeats} runs at the default config, `--cores {args.cores}`) less the stages "
        "it runs at the default config (download, decode, features, writes: these images are "
        "within 512 px, so they are kept as served and neither resized nor encoded; the resize "
        "and encode lines show what a 256 px thumbnail of them would add).",
        "",
        "| stage | CPU ms per image |",
        "| --- | --- |",
        *[f"| {stage} | {seconds * 1000:.2f} |" for stage, seconds in rows],
        f"| whole workflow run | {total * 1000:.2f} |",
        "",
        f"Reproduce: `.venv/bin/python bench/bench_thumbnails.py stages --images {len(names)}` "
        "(needs nginx).",
        "",
    ]
    publish(args.report, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["photos", "distant", "stages"])
    parser.add_argument("--images", type=int)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--side", type=int, default=256, help="photos: longest side kept")
    parser.add_argument("--quality", type=int, default=85, help="photos: JPEG quality")
    parser.add_argument("--delay", type=float, default=0.1, help="distant: seconds per answer")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    if args.which != "distant" and shutil.which("nginx") is None:
        sys.exit("nginx is not on PATH (Debian: apt-get install nginx-light)")
    args.images = args.images or {"photos": 200, "distant": 3000, "stages": 2000}[args.which]
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    {"photos": photos, "distant": distant, "stages": stages}[args.which](args)


if __name__ == "__main__":
    main()
