"""Benchmark: the whole per-image feature set on 320x240 JPEGs, on one core, measure by measure.

Decodes a set of 320x240 JPEGs once (the twelve demo photographs scaled and cropped to 320x240, plus
synthetic photo-like images as used by the pipeline benchmark), then runs
``thumbfeat.features.compute_features`` on each of them for several rounds in this one
single-threaded process (one core at a time). Reports, per image, the median over rounds; then
across images the median and the 10th-90th percentile spread, for the whole set and for each step
(pixel preparation and each measure group). Writes its section into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "workflow"))

from thumbfeat.features import MEASURES, compute_features  # noqa: E402
from thumbfeat.imaging import DecodedImage, decode_image  # noqa: E402

from bench.common import machine, publish  # noqa: E402
from tests.support import make_jpeg  # noqa: E402

SIZE = (320, 240)


def demo_jpegs() -> list[bytes]:
    out = []
    for path in sorted((ROOT / "config" / "demo" / "images").glob("*.jpg")):
        try:
            image = Image.open(path).convert("RGB")
        except OSError:
            continue  # the demo's deliberately broken files
        buffer = io.BytesIO()
        ImageOps.fit(image, SIZE, Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def spread(values_ms: list[float]) -> str:
    return (f"{statistics.median(values_ms):.2f} | {percentile(values_ms, 0.1):.2f}-"
            f"{percentile(values_ms, 0.9):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--synthetic", type=int, default=48, help="synthetic images besides photos")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()

    files = demo_jpegs() + [make_jpeg(f"bench{n}", SIZE) for n in range(args.synthetic)]
    decoded: list[tuple[DecodedImage, bytes]] = [(decode_image(d), d) for d in files]
    assert all(d.image.size == SIZE for d, _ in decoded)
    steps = ["prepare", *(name for name, _ in MEASURES)]
    compute_features(*decoded[0])  # warm caches (weights, per-process settings)

    clocks = {"wall": time.perf_counter, "cpu": time.thread_time}
    totals: dict[str, list[list[float]]] = {c: [[] for _ in decoded] for c in clocks}
    by_step: dict[str, list[dict[str, list[float]]]] = {
        c: [{s: [] for s in steps} for _ in decoded] for c in clocks}
    decode_wall: list[list[float]] = [[] for _ in decoded]
    for _round in range(args.rounds):
        for index, (image, data) in enumerate(decoded):
            started = time.perf_counter()
            decode_image(data)
            decode_wall[index].append(time.perf_counter() - started)
            for name, clock in clocks.items():
                timings: dict[str, float] = {}
                started = clock()
                compute_features(image, data, timings=timings, clock=clock)
                totals[name][index].append(clock() - started)
                for step in steps:
                    by_step[name][index][step].append(timings[step])

    def medians_ms(series: list[list[float]]) -> list[float]:
        return [statistics.median(values) * 1000 for values in series]

    def row(label: str, wall: list[float], cpu: list[float] | None) -> str:
        return f"| {label} | {spread(wall)} | {spread(cpu) if cpu is not None else '- | -'} |"

    lines = [
        "## Per-image features: 320x240 JPEG, one core",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; one single-threaded process "
        f"on a shared machine; {len(decoded)} images ({len(decoded) - args.synthetic} demo "
        f"photographs cropped to 320x240, {args.synthetic} synthetic photo-like JPEGs), each "
        f"measured {args.rounds} times by the wall clock and {args.rounds} times by the thread's "
        "CPU clock (which leaves out time spent waiting for a core others are using). Per image "
        "the median over rounds; the table gives the median over images and the 10th-90th "
        "percentile range. Decoding is not part of the feature set and is shown for scale.",
        "",
        "| step | wall median ms | wall p10-p90 ms | CPU median ms | CPU p10-p90 ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for step in steps:
        lines.append(row(step, *(medians_ms([per[step] for per in by_step[c]])
                                 for c in clocks)))
    lines += [
        row("**whole feature set** (`compute_features`)",
            *(medians_ms(totals[c]) for c in clocks)),
        row("JPEG decode (not included)", medians_ms(decode_wall), None),
        "",
        "Steps: `prepare` flattens to RGB and derives the grey image, channels and histogram; "
        "`geometry` includes both SHA-256 digests; `light` the HSP brightness and percentiles; "
        "`contrast_detail` contrast, entropy, Laplacian and Sobel; `colour` HSV, hue, "
        "colourfulness, greyscale test and dominant colours; `hashes` the three Lanczos "
        "reductions and aHash, dHash, pHash; `flags` the CleanVision flags (its own 64 px "
        "reduction); `provenance` the library versions.",
        "",
        f"Reproduce: `.venv/bin/python bench/bench_features.py --rounds {args.rounds}`.",
        "",
    ]
    publish(args.report, lines)


if __name__ == "__main__":
    main()
