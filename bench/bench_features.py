"""Benchmark: the whole per-image feature set on 320x240 JPEGs, on one core, measure group by group.

Decodes a set of 320x240 JPEGs once (the twelve demo photographs scaled and cropped to 320x240, plus
synthetic photo-like images as used by the pipeline benchmark), then runs
``thumbfeat.features.compute_features`` on each of them for many rounds in this one
single-threaded process (BLAS limited to one thread, as the measuring processes do). Reports, per
image, the median over rounds; then across images the median and the 10th-90th percentile spread,
for the whole set and for each step (pixel preparation and each measure group).

With ``--before REV`` the feature code of that git revision (``features.py`` and the
``resample.py`` it uses) is loaded into separate modules and timed in the same rounds, the two
implementations alternating image by image, so both see the same machine load; every value of
the two rows is compared as well. Writes its section into BENCHMARKS.md.
"""

from __future__ import annotations

import os

# Before numpy is imported: one BLAS thread, as thumbfeat.runtime sets for measuring processes.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from PIL import Image, ImageOps  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "workflow"))

import thumbfeat.features as current  # noqa: E402
from thumbfeat.imaging import DecodedImage, decode_image  # noqa: E402
from thumbfeat.runtime import tune_for_measuring  # noqa: E402

from bench.common import machine, publish  # noqa: E402
from tests.support import make_jpeg  # noqa: E402

SIZE = (320, 240)
PACKAGE = "workflow/thumbfeat"


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


def _module_from_file(name: str, path: Path) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
    return module


BEFORE_MODULES = ("kernels", "resample", "features")
"""The feature code taken from the compared revision, in import order (each one may import the
ones before it); a module the revision does not have is taken from this revision."""


def features_at(revision: str, folder: Path) -> types.ModuleType:
    """``thumbfeat.features`` as of ``revision``, importing that revision's ``resample`` and
    compiled ``kernels`` too. The sources are written into ``folder`` as real files, because
    the compiled kernels cache their machine code next to their source."""
    import thumbfeat

    # This revision's kernels first: they set how numba compiles (the vector width), once per
    # process, so both revisions' kernels are compiled alike.
    current.warm_kernels()
    replaced = {}
    try:
        for name in BEFORE_MODULES:
            shown = subprocess.run(["git", "show", f"{revision}:{PACKAGE}/{name}.py"], cwd=ROOT,
                                   capture_output=True, text=True)
            if shown.returncode != 0:
                continue
            path = folder / f"{name}.py"
            path.write_text(shown.stdout)
            module = _module_from_file(f"thumbfeat_before.{name}", path)
            replaced.setdefault(name, sys.modules.get(f"thumbfeat.{name}"))
            # Both "import thumbfeat.x" and "from thumbfeat import x" must find the old module.
            sys.modules[f"thumbfeat.{name}"] = module
            setattr(thumbfeat, name, module)
        return sys.modules["thumbfeat_before.features"]
    finally:
        for name, installed in replaced.items():
            sys.modules[f"thumbfeat.{name}"] = installed
            setattr(thumbfeat, name, installed)


FIRST_CALL = """
import time
started = time.perf_counter()
from thumbfeat.features import warm_kernels
warm_kernels()
print(time.perf_counter() - started)
"""


def first_call(cache_dir: str | None) -> tuple[float, float]:
    """Wall and CPU seconds of importing the feature code and measuring one image in a fresh
    process: with the compiled kernels' usual cache, or compiling into an empty ``cache_dir``."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "workflow")}
    if cache_dir is not None:
        environment["NUMBA_CACHE_DIR"] = cache_dir
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, "-c", FIRST_CALL], cwd=ROOT, env=environment,
                            check=True, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return float(result.stdout.split()[-1]), cpu


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def spread(values_ms: list[float]) -> str:
    return (f"{statistics.median(values_ms):.2f} | {percentile(values_ms, 0.1):.2f}-"
            f"{percentile(values_ms, 0.9):.2f}")


def differences(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Per column, how far two rows differ: absolute difference for numbers (inf when one is
    missing), 1.0 for any other unequal value, 0.0 when equal."""
    out = {}
    for column, old in before.items():
        new = after.get(column)
        if isinstance(old, float) and isinstance(new, float):
            out[column] = abs(old - new) if math.isfinite(old - new) else math.inf
        else:
            out[column] = 0.0 if old == new else 1.0
    return out


def per_image_ratios(timings: Timings, clock_name: str) -> str:
    """The whole feature set's after/before ratio of every image, summarised: what it is for
    any one image, not only for the median image."""
    ratios = [after / before for before, after in
              zip(timings.medians_ms(f"before/{clock_name}", None),
                  timings.medians_ms(f"after/{clock_name}", None), strict=True)]
    return (f"{statistics.median(ratios):.2f} ({percentile(ratios, 0.1):.2f}-"
            f"{percentile(ratios, 0.9):.2f}, largest {max(ratios):.2f})")


class Timings:
    """Per implementation, clock and step: for each image the list of seconds over rounds."""

    def __init__(self, steps: list[str], images: int) -> None:
        self.steps = steps
        self.by_step: dict[str, list[dict[str, list[float]]]] = {}
        self.totals: dict[str, list[list[float]]] = {}
        self.images = images

    def add(self, key: str, index: int, total: float, timings: dict[str, float]) -> None:
        by_image = self.by_step.setdefault(key, [{s: [] for s in self.steps}
                                                 for _ in range(self.images)])
        self.totals.setdefault(key, [[] for _ in range(self.images)])[index].append(total)
        for step in self.steps:
            by_image[index][step].append(timings.get(step, 0.0))

    def round_medians_ms(self, key: str) -> list[float]:
        """Per round, the median over images of the whole feature set: how steady the machine
        was during the run (the same code, measured again a few seconds later)."""
        rounds = len(self.totals[key][0])
        return [statistics.median(per_image[r] for per_image in self.totals[key]) * 1000
                for r in range(rounds)]

    def medians_ms(self, key: str, step: str | None) -> list[float]:
        series = (self.totals[key] if step is None
                  else [per[step] for per in self.by_step[key]])
        return [statistics.median(values) * 1000 for values in series]


def run(implementations: dict[str, types.ModuleType],
        decoded: list[tuple[DecodedImage, bytes]], rounds: int,
        clocks: dict[str, Callable[[], float]]) -> Timings:
    steps = ["prepare", *(name for name, _ in current.MEASURES)]
    timings = Timings(steps, len(decoded))
    for _round in range(rounds):
        for index, (image, data) in enumerate(decoded):
            for label, module in implementations.items():
                for clock_name, clock in clocks.items():
                    spent: dict[str, float] = {}
                    started = clock()
                    module.compute_features(image, data, timings=spent, clock=clock)
                    timings.add(f"{label}/{clock_name}", index, clock() - started, spent)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--synthetic", type=int, default=48, help="synthetic images besides photos")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--before", metavar="REV",
                        help="git revision whose feature code is timed alongside, for comparison")
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()

    files = demo_jpegs() + [make_jpeg(f"bench{n}", SIZE) for n in range(args.synthetic)]
    decoded: list[tuple[DecodedImage, bytes]] = [(decode_image(d), d) for d in files]
    assert all(d.image.size == SIZE for d, _ in decoded)
    implementations = {"after": current}
    before_folder = tempfile.TemporaryDirectory()
    if args.before:
        implementations = {"before": features_at(args.before, Path(before_folder.name)),
                           "after": current}
    worst: dict[str, float] = {}
    # Tuned as a batch job tunes its measuring processes.
    tune_for_measuring()
    for module in implementations.values():
        module.compute_features(*decoded[0])  # warm caches (weights, compiled kernels)
    if args.before:
        for image, data in decoded:
            rows = [m.compute_features(image, data) for m in implementations.values()]
            for column, gap in differences(*rows).items():
                worst[column] = max(worst.get(column, 0.0), gap)

    load_before = os.getloadavg()
    clocks = {"wall": time.perf_counter, "cpu": time.thread_time}
    timings = run(implementations, decoded, args.rounds, clocks)
    load_after = os.getloadavg()
    decode_ms = []
    for _image, data in decoded:
        samples = []
        for _round in range(args.rounds):
            started = time.perf_counter()
            decode_image(data)
            samples.append(time.perf_counter() - started)
        decode_ms.append(statistics.median(samples) * 1000)

    first_call(None)  # fills the usual cache if it was empty
    with tempfile.TemporaryDirectory() as empty:
        first_calls = {"cached": first_call(None), "compiling": first_call(empty)}
    lines = section(args, implementations, timings, decode_ms, worst,
                    (load_before, load_after), len(decoded), first_calls)
    publish(args.report, lines)


def section(args: argparse.Namespace, implementations: dict[str, types.ModuleType],
            timings: Timings, decode_ms: list[float], worst: dict[str, float],
            loads: tuple[tuple[float, ...], tuple[float, ...]], images: int,
            first_calls: dict[str, tuple[float, float]]) -> list[str]:
    labels = list(implementations)
    header = "| step |"
    rule = "| --- |"
    for label in labels:
        name = "" if len(labels) == 1 else f"{label} "
        header += f" {name}CPU median ms | {name}CPU p10-p90 ms |"
        rule += " --- | --- |"
    for label in labels:
        name = "" if len(labels) == 1 else f"{label} "
        header += f" {name}wall median ms |"
        rule += " --- |"

    def row(title: str, step: str | None) -> str:
        cells = [spread(timings.medians_ms(f"{label}/cpu", step)) for label in labels]
        cells += [f"{statistics.median(timings.medians_ms(f'{label}/wall', step)):.2f}"
                  for label in labels]
        return f"| {title} | " + " | ".join(cells) + " |"

    compared = (f" The feature code of `{args.before}` (before) and of this revision (after) "
                "alternate image by image in the same rounds, so both see the same load."
                if args.before else "")
    lines = [
        "## Per-image features: 320x240 JPEG, one core",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; one single-threaded process "
        "(BLAS limited to one thread) on a shared machine: load average "
        f"{loads[0][0]:.1f} when the timing started and {loads[1][0]:.1f} when it ended, on "
        f"{os.cpu_count()} cores. {images} images ({images - args.synthetic} demo photographs "
        f"cropped to 320x240, {args.synthetic} synthetic photo-like JPEGs), each measured "
        f"{args.rounds} times by the thread's CPU clock (which leaves out time spent waiting for "
        f"a core others are using) and {args.rounds} times by the wall clock.{compared} Per "
        "image the median over rounds; the table gives the median over images and the "
        "10th-90th percentile range.",
        "",
        header,
        rule,
    ]
    for step in timings.steps:
        lines.append(row(step, step))
    steadiness = timings.round_medians_ms(f"{labels[-1]}/cpu")
    lines += [
        row("**whole feature set** (`compute_features`)", None),
        "",
        f"How steady the machine was: round by round, the median CPU time of the whole set "
        f"({labels[-1] if len(labels) > 1 else 'this revision'}) ranged from "
        f"{min(steadiness):.2f} to {max(steadiness):.2f} ms, the same code on the same images "
        "a few seconds apart; only ratios measured in the same rounds compare revisions.",
        "",
        f"For scale, decoding one of these JPEGs (not part of the feature set) takes "
        f"{statistics.median(decode_ms):.2f} ms (wall median).",
        "",
        "First call in a fresh process (importing the feature code and measuring one small "
        "image; not in the table): {:.2f} s wall, {:.2f} s CPU with the compiled kernels in "
        "their cache (once per batch job: its measuring processes are forked after it); "
        "{:.1f} s wall, {:.1f} s CPU compiling them into an empty cache (once per machine, "
        "at install time with `thumbfeat warm`).".format(*first_calls["cached"],
                                                           *first_calls["compiling"]),
        "",
        "Steps: `prepare` flattens to RGB, splits the channels, derives the grey image and the "
        "grey and RGB histograms, and runs the compiled pass that gathers every light and "
        "colour sum (so `light` and `colour` are left with selecting percentiles and "
        "arithmetic on sums); `geometry` includes both SHA-256 digests; `light` the HSP "
        "brightness and percentiles; `contrast_detail` contrast, entropy, Laplacian and Sobel; "
        "`colour` HSV, hue, colourfulness, greyscale test and dominant colours; `hashes` the "
        "three Lanczos reductions and aHash, dHash, pHash; `flags` the CleanVision flags (its "
        "own 64 px reduction, grey conversion and edge filter); `provenance` the library "
        "versions.",
        "",
    ]
    if args.before:
        before, after = (statistics.median(timings.medians_ms(f"{label}/cpu", None))
                         for label in labels)
        changed = {c: gap for c, gap in worst.items() if gap > 0}
        lines += [
            f"After against before, whole feature set: {after / before:.2f} of the CPU time "
            f"({before - after:.2f} ms less per image).",
            "",
            "Per image, after over before (each image's median over rounds), median, 10th-90th "
            "percentile and largest: " + "; ".join(
                f"{clock_name} {per_image_ratios(timings, clock_name)}"
                for clock_name in ("cpu", "wall")) + ".",
            "",
            "Values, before against after, on all the images above: "
            + ("every column equal." if not changed else
               "every column equal except " + ", ".join(
                   f"`{c}` (largest difference {gap:.1e})" for c, gap in sorted(changed.items()))
               + "."),
            "",
        ]
    command = f"--rounds {args.rounds}" + (f" --before {args.before}" if args.before else "")
    lines += [f"Reproduce: `.venv/bin/python bench/bench_features.py {command}`.", ""]
    return lines


if __name__ == "__main__":
    main()
