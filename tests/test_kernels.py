"""Tests for thumbfeat.kernels: the compiled passes against plain numpy formulas."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageFilter
from thumbfeat import kernels
from thumbfeat.features import packed_words

from tests.support import REPO

# Thresholds as thumbfeat.features passes them: V in 39..242, S > 0.2, greyscale chroma 10,
# 3 bits per channel for the colour cells, the 3 largest cells; then the hue directions.
ARGUMENTS = (39, 242, 5, 10, 3, 3, kernels.hue_directions())


def channels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    flat = rgb.reshape(-1, 3)
    return tuple(np.ascontiguousarray(flat[:, c]) for c in range(3))  # type: ignore[return-value]


def tricky(seed: int, pixels: int = 5000) -> np.ndarray:
    """Random pixels plus ties between channels, black, white and grey, as (N, 3) uint8."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (pixels, 3), dtype=np.uint8)
    rgb[:500, 1] = rgb[:500, 0]
    rgb[500:1000, 2] = rgb[500:1000, 1]
    rgb[1000:1300] = rgb[1000:1300, :1]
    rgb[1300:1400] = 0
    rgb[1400:1500] = 255
    rgb[1500:1600] = rgb[1500]  # a run of one colour
    return rgb


def plain_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees (NaN for grey), saturation and value, in float64 the textbook way."""
    values = rgb.astype(np.float64)
    high, low = values.max(axis=1), values.min(axis=1)
    chroma = high - low
    red, green, blue = values.T
    with np.errstate(divide="ignore", invalid="ignore"):
        hue = np.where(high == red, ((green - blue) / chroma) % 6,
                       np.where(high == green, (blue - red) / chroma + 2,
                                (red - green) / chroma + 4)) * 60
        saturation = np.where(high > 0, chroma / high, 0.0)
    hue[chroma == 0] = np.nan
    return hue, saturation, high / 255


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_sums_equal_plain_formulas(seed: int) -> None:
    rgb = tricky(seed)
    weighted, buckets, sums, floats, hue_bins, cells, top, top_sums = kernels.pixel_sums(
        *channels(rgb), *ARGUMENTS)
    wide = rgb.astype(np.int64)
    red, green, blue = wide.T
    expected_weighted = 241 * red**2 + 691 * green**2 + 68 * blue**2
    assert np.array_equal(weighted, expected_weighted)
    assert np.array_equal(buckets, np.bincount(expected_weighted >> kernels.BUCKET_SHIFT,
                                               minlength=buckets.size))
    assert floats[0] == pytest.approx(np.sqrt(expected_weighted).sum(), rel=1e-13)
    high, low = wide.max(axis=1), wide.min(axis=1)
    rg, yb2 = red - green, red + green - 2 * blue
    assert sums.tolist() == [high.sum(), ((high - low) > 10).sum(), rg.sum(), (rg**2).sum(),
                             yb2.sum(), (yb2**2).sum(), sums[kernels.HUE_SELECTED]]
    hue, saturation, value = plain_hsv(rgb)
    assert floats[1] == pytest.approx(saturation.mean(), rel=1e-12)
    assert floats[2] == pytest.approx(saturation.std(), rel=1e-12)
    reliable = (saturation > 0.2) & (value > 0.15) & (value < 0.95)
    assert sums[kernels.HUE_SELECTED] == reliable.sum()
    angles = np.radians(hue[reliable])
    assert floats[3] == pytest.approx(np.cos(angles).sum(), abs=1e-9)
    assert floats[4] == pytest.approx(np.sin(angles).sum(), abs=1e-9)
    # Exact bins: the hue numerator is an integer, so compare 2 t / chroma in integers.
    chroma = high - low
    numerators = kernels.hue_numerators(*channels(rgb)).astype(np.int64)
    expected_bins = np.bincount((2 * numerators[reliable]) // chroma[reliable], minlength=12)
    assert np.array_equal(hue_bins, expected_bins)
    cell_of = (red >> 5) * 64 + (green >> 5) * 8 + (blue >> 5)
    counts = np.bincount(cell_of, minlength=512)
    assert np.array_equal(cells, counts)
    assert top.tolist() == np.argsort(-counts, kind="stable")[:3].tolist()
    for cell, cell_sums in zip(top, top_sums, strict=True):
        assert cell_sums.tolist() == wide[cell_of == cell].sum(axis=0).tolist()


def test_exact_results_do_not_depend_on_pixel_order() -> None:
    rgb = tricky(5, pixels=20_000)
    shuffled = rgb[np.random.default_rng(9).permutation(len(rgb))]
    first = kernels.pixel_sums(*channels(rgb), *ARGUMENTS)
    second = kernels.pixel_sums(*channels(shuffled), *ARGUMENTS)
    for name, a, b in zip(("weighted", "buckets", "sums", "floats", "hue_bins", "cells", "top",
                           "top_sums"), first, second, strict=True):
        if name == "weighted":
            assert np.array_equal(np.sort(a), np.sort(b))
        elif name == "floats":
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9)
        else:
            assert np.array_equal(a, b), name


def test_a_constant_colour_has_exactly_zero_saturation_spread() -> None:
    rgb = np.tile(np.array([[200, 40, 90]], dtype=np.uint8), (3001, 1))
    floats = kernels.pixel_sums(*channels(rgb), *ARGUMENTS)[3]
    assert floats[1] == 160 / 200
    assert floats[2] == 0.0


def test_hue_directions_are_accurate_for_every_hue() -> None:
    directions = kernels.hue_directions()
    chroma, remainder = (np.array(v) for v in zip(*((c, r) for c in range(1, 256)
                                                    for r in range(c)), strict=True))
    fraction = chroma * (chroma - 1) // 2 + remainder
    assert np.array_equal(np.sort(fraction), np.arange(kernels.HUE_FRACTIONS))  # each row once
    for sextant in range(kernels.SEXTANTS):
        # The exact angle, (sextant * c + r) / c sixths of a turn, in float64 at the last step.
        angle = 2 * np.pi * ((sextant * chroma + remainder) / (6 * chroma))
        row = sextant * kernels.HUE_FRACTIONS + fraction
        assert np.abs(directions[row, 0] - np.cos(angle)).max() < 3e-15
        assert np.abs(directions[row, 1] - np.sin(angle)).max() < 3e-15
    assert not directions[kernels.NO_HUE * kernels.HUE_FRACTIONS:].any()


def crowded_buckets() -> list[NDArray[np.int32]]:
    """Values whose lowest or highest bucket holds more than COUNTED_BUCKET members, most of them
    equal: a dark photograph's near-black pixels, a white background's top level."""
    edge = 1 << kernels.BUCKET_SHIFT
    rng = np.random.default_rng(6)
    crowd = kernels.COUNTED_BUCKET + 300
    dark = np.concatenate([np.zeros(crowd, np.int32), rng.integers(0, edge, 400, dtype=np.int32),
                           [edge - 1, edge - 1, edge, 7 * edge]]).astype(np.int32)
    white = np.concatenate([np.full(crowd, 65_025_000, np.int32),
                            rng.integers(0, 65_025_001, 300, dtype=np.int32)]).astype(np.int32)
    return [rng.permutation(dark), rng.permutation(white)]


def test_ranked_pair_across_bucket_edges() -> None:
    edge = 1 << kernels.BUCKET_SHIFT
    cases = [
        np.array([edge - 1, edge, edge + 1, 5 * edge, 0], dtype=np.int32),  # empty buckets between
        np.array([3 * edge] * 7 + [3 * edge - 1], dtype=np.int32),  # ties inside one bucket
        np.random.default_rng(2).integers(0, 65_025_001, 4001, dtype=np.int32),
        np.array([42], dtype=np.int32),
        *crowded_buckets(),
    ]
    for values in cases:
        ordered = np.sort(values)
        buckets = kernels.bucket_counts(values)
        for rank in range(values.size):
            expected = (ordered[rank], ordered[min(rank + 1, values.size - 1)])
            assert kernels.ranked_pair(values, buckets, rank) == expected


def test_ranked_pairs_equal_sorting_for_two_ranks_in_one_pass() -> None:
    edge = 1 << kernels.BUCKET_SHIFT
    rng = np.random.default_rng(8)
    cases = [
        rng.integers(0, 65_025_001, 3001, dtype=np.int32),
        np.array([edge - 1, edge, edge + 1, 5 * edge, 0, 9 * edge], dtype=np.int32),
        np.array([3 * edge] * 7 + [3 * edge - 1], dtype=np.int32),  # both ranks in one bucket
        *crowded_buckets(),
    ]
    for values in cases:
        ordered = np.sort(values)
        buckets = kernels.bucket_counts(values)
        last = values.size - 1
        for first, second in ((0, last), (last // 20, last * 99 // 100), (2, 3), (last, 1)):
            expected = (ordered[first], ordered[min(first + 1, last)],
                        ordered[second], ordered[min(second + 1, last)])
            assert kernels.ranked_pairs(values, buckets, first, second) == expected


def test_grey_equals_pillow_for_every_rgb_colour() -> None:
    # All 2**24 colours once: the compiled grey is Pillow's convert("L") bit for bit.
    codes = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=-1).astype(np.uint8)
    rgb = rgb.reshape(4096, 4096, 3)
    red, green, blue, gray, packed = kernels.split_channels(packed_words(rgb))
    expected = np.asarray(Image.fromarray(rgb).convert("L")).reshape(-1)
    assert np.array_equal(gray, expected)
    assert np.array_equal(np.stack([red, green, blue], axis=-1), rgb.reshape(-1, 3))
    assert np.array_equal(packed, rgb.reshape(-1, 3))


@pytest.mark.parametrize("seed", [0, 1])
def test_level_counts_equal_pillow_histograms(seed: int) -> None:
    rgb = tricky(seed, pixels=4001).reshape(-1, 1, 3)  # an odd count: the last pixel alone
    red, green, blue, gray, _ = kernels.split_channels(packed_words(rgb))
    levels = kernels.level_counts(red, green, blue, gray)
    image = Image.fromarray(rgb)
    assert levels[0].tolist() == image.convert("L").histogram()
    assert levels[1:].reshape(-1).tolist() == image.histogram()


@pytest.mark.parametrize("size", [(1, 1), (7, 2), (2, 7), (3, 3), (64, 48), (48, 64), (5, 64)])
def test_grey_and_edge_histograms_equal_pillow(size: tuple[int, int]) -> None:
    width, height = size
    rng = np.random.default_rng(width * 100 + height)
    for rgb in (rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                # isolated extremes: the edge filter clips far below 0 and above 255
                np.where(rng.random((height, width, 1)) < 0.2, 255, 0).astype(np.uint8)
                .repeat(3, axis=2)):
        planes = [np.ascontiguousarray(rgb[:, :, c]) for c in range(3)]
        grey_counts, edge_counts = kernels.grey_and_edge_histograms(*planes)
        grey = Image.fromarray(rgb, "RGB").convert("L")
        assert grey_counts.tolist() == grey.histogram()
        assert edge_counts.tolist() == grey.filter(ImageFilter.FIND_EDGES).histogram()


def test_member_sums_of_more_cells_than_one_pass_takes() -> None:
    rgb = tricky(3)
    red, green, blue = channels(rgb)
    wide = rgb.astype(np.int64)
    cell_of = ((wide[:, 0] >> 5) * 64 + (wide[:, 1] >> 5) * 8 + (wide[:, 2] >> 5)).astype(
        np.int32) | (5 << 9)  # bits above the mask must be ignored
    wanted = np.array([0, 511, 7, 300, 64], dtype=np.int64)  # five cells: two passes
    sums = kernels._member_sums(cell_of, 511, red, green, blue, wanted)
    for cell, cell_sums in zip(wanted, sums, strict=True):
        assert cell_sums.tolist() == wide[(cell_of & 511) == cell].sum(axis=0).tolist()


def test_transposed_blocks_equal_numpy() -> None:
    rng = np.random.default_rng(9)
    for height, width in ((8, 8), (240, 320), (16, 512), (512, 8)):
        plane = rng.integers(0, 256, (height, width), dtype=np.uint8)
        assert np.array_equal(kernels.transposed_blocks(plane), plane.T)


def test_detail_sums_equal_numpy() -> None:
    rng = np.random.default_rng(4)
    checker = np.indices((64, 96)).sum(axis=0) % 2 * 255  # the largest Laplacian, ±1020
    stripes = np.tile(np.repeat([0, 255], 2), (64, 24))  # the largest gradients, gx² = 1020²
    for gray in (rng.integers(0, 256, (37, 53), dtype=np.uint8),
                 np.where(rng.random((300, 512)) < 0.5, 0, 255).astype(np.uint8),
                 checker.astype(np.uint8), stripes.astype(np.uint8)):
        g = gray.astype(np.int64)
        laplacian = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
        vertical = g[:-2] + 2 * g[1:-1] + g[2:]
        gx = vertical[:, 2:] - vertical[:, :-2]
        across = g[2:] - g[:-2]
        gy = across[:, :-2] + 2 * across[:, 1:-1] + across[:, 2:]
        magnitude = gx**2 + gy**2
        for threshold in (0, 10_000, int(magnitude.max()) - 1, int(magnitude.max()), 10**9):
            expected = (laplacian.size, laplacian.sum(), (laplacian**2).sum(),
                        (magnitude > threshold).sum())
            assert kernels.detail_sums(gray, threshold) == expected


WARM = """
import json
from thumbfeat import features, kernels
seconds = features.warm_kernels()
kernels_used = (kernels.split_channels, kernels.level_counts, kernels.pixel_sums,
                kernels.ranked_pairs, kernels.detail_sums, kernels.resize_passes,
                kernels.grey_and_edge_histograms)
print(json.dumps({"hits": sum(sum(k.stats.cache_hits.values()) for k in kernels_used),
                  "misses": sum(sum(k.stats.cache_misses.values()) for k in kernels_used)}))
"""


def warm_in_a_fresh_process() -> dict[str, int]:
    environment = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    result = subprocess.run([sys.executable, "-c", WARM], capture_output=True, text=True,
                            env=environment, cwd=REPO, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_fresh_process_loads_the_compiled_kernels_instead_of_compiling() -> None:
    warm_in_a_fresh_process()  # may compile, if nothing was cached yet
    for _ in range(2):
        stats = warm_in_a_fresh_process()
        assert stats["misses"] == 0
        assert stats["hits"] >= 4


def test_full_vector_width_on_cpus_with_avx512() -> None:
    host = "+sse4.2,+avx2,+avx512f,+avx512bw"
    assert kernels.vector_features("emeraldrapids", host) == host + ",-prefer-256-bit"
    assert kernels.vector_features("znver4", host + ",+prefer-256-bit") == (
        host + ",-prefer-256-bit")
    # The Skylake server generation slows its clock most for 512-bit instructions.
    assert kernels.vector_features("skylake-avx512", host) is None
    assert kernels.vector_features("haswell", "+sse4.2,+avx2,-avx512f") is None
    assert kernels.vector_features("generic", "") is None


COMPILED_FOR = """
import json
import llvmlite.binding as llvm
import numpy as np
from numba.core import codegen
from numba.core.registry import cpu_target
from thumbfeat import kernels
kernels.split_channels(np.zeros(4, np.uint32))
print(json.dumps({"used": cpu_target.target_context.codegen().magic_tuple()[2],
                  "host": codegen.get_host_cpu_features(),
                  "name": llvm.get_host_cpu_name()}))
"""


def compiled_for(**environment: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU_")}
    result = subprocess.run([sys.executable, "-c", COMPILED_FOR], capture_output=True, text=True,
                            env={**clean, "PYTHONPATH": str(REPO / "workflow"), **environment},
                            cwd=REPO, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_kernels_are_compiled_for_the_chosen_vector_width() -> None:
    seen = compiled_for()
    chosen = kernels.vector_features(seen["name"], seen["host"])
    assert seen["used"] == (seen["host"] if chosen is None else chosen)


def test_a_target_chosen_by_the_user_is_kept() -> None:
    host = compiled_for()["host"]
    assert compiled_for(NUMBA_CPU_FEATURES=host)["used"] == host
