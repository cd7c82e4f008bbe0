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
sys.path.insert(0, str(ROOT / "bench"))

from run_bench import machine, update_report  # noqa: E402
from thumbfeat.features import MEASURES, compute_features  # noqa: E402
from thumbfeat.imaging import DecodedImage, decode_image  # noqa: E402

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
    return (f"{statistics.median(values_ms):.3f} | {percentile(values_ms, 0.1):.3f}-"
            f"{percentile(values_ms, 0.9):.3f}")


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

    per_image_total: list[list[float]] = [[] for _ in decoded]
    per_image_step: list[dict[str, list[float]]] = [{s: [] for s in steps} for _ in decoded]
    per_image_decode: list[list[float]] = [[] for _ in decoded]
    for _round in range(args.rounds):
        for index, (image, data) in enumerate(decoded):
            started = time.perf_counter()
            decode_image(data)
            per_image_decode[index].append(time.perf_counter() - started)
            timings: dict[str, float] = {}
            started = time.perf_counter()
            compute_features(image, data, timings=timings)
            per_image_total[index].append(time.perf_counter() - started)
            for step in steps:
                per_image_step[index][step].append(timings[step])

    def medians_ms(series: list[list[float]]) -> list[float]:
        return [statistics.median(values) * 1000 for values in series]

    totals = medians_ms(per_image_total)
    lines = [
        "## Per-image features: 320x240 JPEG, one core",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; one single-threaded process "
        f"on a shared machine; {len(decoded)} images ({len(decoded) - args.synthetic} demo "
        f"photographs cropped to 320x240, {args.synthetic} synthetic photo-like JPEGs), each "
        f"measured "
        f"{args.rounds} times. Per image the median over rounds; the table gives the median over "
        "images and the 10th-90th percentile range. Decoding is not part of the feature set and "
        "is shown for scale.",
        "",
        "| step | median ms | p10-p90 ms |",
        "| --- | --- | --- |",
    ]
    for step in steps:
        step_ms = medians_ms([per_image[step] for per_image in per_image_step])
        lines.append(f"| {step} | {spread(step_ms)} |")
    lines += [
        f"| **whole feature set** (`compute_features`) | {spread(totals)} |",
        f"| JPEG decode (not included) | {spread(medians_ms(per_image_decode))} |",
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
    section = "\n".join(lines)
    print(section)
    update_report(args.report, section)


if __name__ == "__main__":
    main()
