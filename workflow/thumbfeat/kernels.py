"""Compiled per-pixel loops for the feature set (numba compiles them to machine code).

Written as numpy expressions, the light and colour measures took about a hundred whole-image
passes, each writing a temporary array; here one pass splits the channels and makes the grey
image (:func:`split_channels`), one counts the grey and RGB histograms (:func:`level_counts`),
and one pass over the RGB channels accumulates every light and colour measure's inputs together,
followed by a second for deviations and hue directions and a few counting passes over small
per-pixel codes. Another pass gathers the Laplacian and Sobel sums of the grey image, and
:func:`combine_rows` does the passes of Pillow's resize for :mod:`thumbfeat.resample`. The loops
only gather sums, counts and small tables; :mod:`thumbfeat.features` turns them into columns.

Exactness: every accumulator that the column definitions require to be exact is an integer
(counts, sums and sums of squares of integer pixel values), so it does not depend on the order in
which pixels are visited. The floating-point sums (square roots for ``brightness_mean``,
saturation, the hue direction's cosines and sines from a table) may be added in any order the
compiler likes (``fastmath={"reassoc"}``, which lets it add several pixels per instruction);
they stay within the tolerances of ``docs/feature-table.md`` whatever the order.

Compilation: ``cache=True`` stores the machine code next to this module (or, where that folder is
not writable, in numba's per-user cache), so only the first process on a machine compiles; later
processes load it. Numba writes cache files under a temporary name and renames them, so processes
compiling at the same time do not corrupt each other's files. Integer arithmetic is int64 in
numba whatever the operand types, which the sums rely on. Each kernel is compiled once per set of
argument types (read-only and writable arrays count as different types). Where the CPU has
AVX-512, the kernels are compiled for its full vector width (:func:`vector_features`).
"""

from __future__ import annotations

import math
from functools import cache

import llvmlite.binding as llvm
import numpy as np
from numba import njit
from numba.core import codegen, config
from numpy.typing import NDArray

NARROW_VECTOR_CPUS = frozenset({"skylake-avx512", "cascadelake", "cooperlake"})
"""CPUs with AVX-512 whose clock drops most while they run 512-bit instructions (the Skylake
server generation); the kernels keep LLVM's 256-bit preference there."""


def vector_features(cpu_name: str, host_features: str) -> str | None:
    """The CPU features to compile the kernels for (LLVM's comma-separated ``+name``/``-name``
    list), or None to keep numba's choice, the host's own features.

    On CPUs with AVX-512, LLVM prefers 256-bit vectors (the ``prefer-256-bit`` tuning), a
    default set when the first such CPUs slowed their clock for wider instructions. The kernels
    are dense loops over a few hundred KB, the measuring process's main work, so they are
    compiled for the full width there, except on :data:`NARROW_VECTOR_CPUS`. On an Intel Xeon
    with AVX-512, processes taking turns measured the whole feature set about a tenth faster
    (BENCHMARKS.md, the feature-set entry of "Thumbnails and one decode per image"). Integer
    results do not change; float sums only in their order of addition, which
    ``docs/feature-table.md``'s tolerances allow.
    """
    features = [feature for feature in host_features.split(",") if feature]
    if "+avx512f" not in features or cpu_name in NARROW_VECTOR_CPUS:
        return None
    return ",".join([*(f for f in features if f != "+prefer-256-bit"), "-prefer-256-bit"])


def _choose_vector_width() -> None:
    """Apply :func:`vector_features` to numba's compiler, unless the user chose the target
    (``NUMBA_CPU_NAME`` or ``NUMBA_CPU_FEATURES``). Runs before the kernels below are defined,
    which is when numba sets up its compiler; the compiled-code cache is keyed by these
    features, so code cached for other ones is compiled again, not reused."""
    if config.CPU_NAME is not None or config.CPU_FEATURES is not None:
        return
    chosen = vector_features(llvm.get_host_cpu_name(), codegen.get_host_cpu_features())
    if chosen is not None:
        config.CPU_FEATURES = chosen


_choose_vector_width()

HSP_WEIGHTS = (241, 691, 68)
"""HSP weights scaled to integers: ``241 R² + 691 G² + 68 B²`` is exact in int32 (at most
65,025,000) and orders pixels exactly as the float brightness does."""

BUCKET_SHIFT = 14
"""Order statistics first count values by ``value >> BUCKET_SHIFT`` (at most 3,969 buckets for
the HSP squares), then sort only the values of the one bucket holding the wanted rank. The two
alternating count tables then take 32 KB, which stays in the core's first-level cache; with
four times finer buckets they took four times as much, and counting was slower than sorting the
larger buckets."""

COUNTED_BUCKET = 1024
"""A bucket holding more values than this is read by counting its members' low
:data:`BUCKET_SHIFT` bits (a 64 KB table) instead of sorting them. A dark photograph puts
thousands of near-black pixels into the lowest bucket, and a white background fills the highest
one, most of them equal; sorting such a bucket took longer than the whole rest of the light
measures."""

SCAN_BLOCK = 64
"""Values checked at a time when gathering the members of a bucket ..."""
SCAN_PART = 8
"""... and, in a block that holds some, the values checked at a time within it."""

ALL_BITS = (1 << 31) - 1

SEXTANTS = 6

NO_HUE = SEXTANTS
"""The sextant a pixel without a reliable hue is filed under: its direction is (0, 0)."""

# Layout of the integer results of :func:`pixel_sums`.
VALUE_SUM = 0  # sum of max(R, G, B)
COLOURED = 1  # pixels whose chroma exceeds the greyscale limit
RG_SUM = 2  # sum of R - G
RG_SQUARES = 3
YB2_SUM = 4  # sum of R + G - 2 B
YB2_SQUARES = 5
HUE_SELECTED = 6  # pixels with a reliable hue
INTEGER_SUMS = 7


GRAY_WEIGHTS = (19595, 38470, 7471)
"""Pillow's ``convert("L")`` of an RGB pixel: ``(19595 R + 38470 G + 7471 B + 2**15) >> 16``,
ITU-R 601-2 luma in 16-bit fixed point (the same grey for each of the 2**24 colours, which
the tests check against Pillow)."""


@njit(cache=True, nogil=True)
def split_channels(words: NDArray[np.uint32]) -> tuple[NDArray[np.uint8], NDArray[np.uint8],
                                                      NDArray[np.uint8], NDArray[np.uint8],
                                                      NDArray[np.uint8]]:
    """The channels of RGB pixels given as one word each (red in the low byte, then green and
    blue; the high byte is ignored), as three flat arrays, their grey level (Pillow's ``L``,
    :data:`GRAY_WEIGHTS`) as a fourth, and the pixels packed as ``(n, 3)`` bytes, the layout
    numpy and the pixel digest use. Words are how Pillow stores RGB, so its storage is read
    directly instead of first being packed by Pillow and then split here."""
    n = words.size
    red = np.empty(n, np.uint8)
    green = np.empty(n, np.uint8)
    blue = np.empty(n, np.uint8)
    gray = np.empty(n, np.uint8)
    for i in range(n):
        word = words[i]
        r = np.int32(word & 255)
        g = np.int32((word >> 8) & 255)
        b = np.int32((word >> 16) & 255)
        red[i], green[i], blue[i] = r, g, b
        gray[i] = (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b
                   + (1 << 15)) >> 16
    packed = np.empty((n, 3), np.uint8)
    for i in range(n):
        packed[i, 0], packed[i, 1], packed[i, 2] = red[i], green[i], blue[i]
    return red, green, blue, gray, packed


@njit(cache=True, nogil=True)
def level_counts(red: NDArray[np.uint8], green: NDArray[np.uint8], blue: NDArray[np.uint8],
                 gray: NDArray[np.uint8]) -> NDArray[np.int64]:
    """The 256-bin histograms of grey, red, green and blue (rows 0..3), in one pass; rows 1..3
    are Pillow's ``histogram()`` of the RGB image, row 0 that of its ``L`` conversion.

    Alternate pixels go to two sets of tables, so that runs of equal levels do not make each
    increment wait for the previous one (see :func:`_counts`).
    """
    tables = np.zeros((8, 256), np.int32)
    for i in range(red.size):
        half = (i & 1) * 4
        tables[half, gray[i]] += 1
        tables[half + 1, red[i]] += 1
        tables[half + 2, green[i]] += 1
        tables[half + 3, blue[i]] += 1
    return tables[:4].astype(np.int64) + tables[4:]


@njit(cache=True, nogil=True)
def grey_and_edge_histograms(red: NDArray[np.uint8], green: NDArray[np.uint8],
                             blue: NDArray[np.uint8]) -> tuple[NDArray[np.int64],
                                                               NDArray[np.int64]]:
    """The 256-bin histograms of the grey image (Pillow's ``L``) of a small RGB image given as
    three 2-D planes, and of that grey image filtered with Pillow's ``FIND_EDGES``.

    ``FIND_EDGES`` is the integer kernel ``8 centre - (sum of the 8 neighbours)``, clipped to
    0..255, on interior pixels; Pillow copies the border pixels (and the whole image when a side
    is under 3 px) unchanged. All integers, so equal to Pillow's (tested on random images).
    """
    height, width = red.shape
    gray = np.empty((height, width), np.int32)
    grey_counts = np.zeros(256, np.int64)
    for y in range(height):
        for x in range(width):
            level = (GRAY_WEIGHTS[0] * np.int32(red[y, x]) + GRAY_WEIGHTS[1] * np.int32(green[y, x])
                     + GRAY_WEIGHTS[2] * np.int32(blue[y, x]) + (1 << 15)) >> 16
            gray[y, x] = level
            grey_counts[level] += 1
    edge_counts = np.zeros(256, np.int64)
    for y in range(height):
        for x in range(width):
            level = gray[y, x]
            if 0 < y < height - 1 and 0 < x < width - 1:
                neighbours = (gray[y - 1, x - 1] + gray[y - 1, x] + gray[y - 1, x + 1]
                              + gray[y, x - 1] + gray[y, x + 1]
                              + gray[y + 1, x - 1] + gray[y + 1, x] + gray[y + 1, x + 1])
                level = min(max(8 * level - neighbours, 0), 255)
            edge_counts[level] += 1
    return grey_counts, edge_counts


@njit(cache=True, nogil=True, inline="always")
def _hue_parts(red: int, green: int, blue: int, high: int, chroma: int) -> tuple[int, int]:
    """HSV hue as sextant ``k`` (0..5) and remainder ``r`` (0 <= r < chroma): the hue is
    ``(k + r / chroma) * 60`` degrees. Meaningless when chroma is 0.

    HSV takes the formula of the first channel (red, green, blue) holding the maximum: hue
    ``base + d / chroma`` sixths, base 0, 2 or 4, with ``d`` (-chroma..chroma) the difference of
    the other two channels. Every choice is a conditional expression of simple values, which the
    compiler turns into selects (no branch, no multiplication), so it processes several pixels
    per instruction.
    """
    from_red = high == red
    from_green = high == green
    base = 0 if from_red else (2 if from_green else 4)
    offset = green - blue if from_red else (blue - red if from_green else red - green)
    below = offset < 0
    whole = offset == chroma
    sextant = base - np.int32(below) + np.int32(whole)
    sextant = sextant + SEXTANTS if sextant < 0 else sextant  # red maximum, green < blue
    remainder = offset + chroma if below else (offset - chroma if whole else offset)
    return sextant, remainder


@njit(cache=True, nogil=True)
def hue_numerators(red: NDArray[np.uint8], green: NDArray[np.uint8],
                   blue: NDArray[np.uint8]) -> NDArray[np.int32]:
    """Per pixel the hue as the integer ``hue_degrees * chroma / 60`` (0 <= t < 6 chroma; 0
    where chroma is 0), from the same arithmetic as :func:`pixel_sums`."""
    out = np.zeros(red.size, np.int32)
    for i in range(red.size):
        r, g, b = np.int32(red[i]), np.int32(green[i]), np.int32(blue[i])
        high = max(r, g, b)
        chroma = high - min(r, g, b)
        sextant, remainder = _hue_parts(r, g, b, high, chroma)
        out[i] = (sextant * chroma + remainder) * np.int32(chroma > 0)
    return out


@njit(cache=True, nogil=True, inline="always")
def _saturation(red: int, green: int, blue: int) -> float:
    """HSV saturation ``(max - min) / max``, 0 for black."""
    high = max(red, green, blue)
    return (high - min(red, green, blue)) / np.float64(max(high, 1))


HUE_FRACTIONS = 255 * 256 // 2
"""The fractions ``r / c`` a hue can have within its sextant, ``0 <= r < c <= 255``: 32,640."""


@cache
def hue_directions() -> NDArray[np.float64]:
    """The cosine and sine of every hue a pixel can have, for the directions summed by
    :func:`pixel_sums`.

    An HSV hue is ``(k + r / c) * 60`` degrees for sextant ``k``, remainder ``r`` and chroma
    ``c`` (``0 <= r < c <= 255``). Row ``k * HUE_FRACTIONS + c (c - 1) / 2 + r`` holds its
    cosine and sine, neighbours in memory, so a pixel's look-up reads one cache line; the rows
    of :data:`NO_HUE` are zero. 7 x 32,640 rows (3.7 MB), of which a photograph's usual,
    moderate chromas read a few hundred KB. One table instead of a fraction's rotation times its
    sextant's start saves two look-ups and four multiplications per pixel. Each entry is
    numpy's cosine and sine of the angle in radians, within 3e-15 of the exact value. Built
    once per process (a few milliseconds).
    """
    chroma = np.repeat(np.arange(1, 256), np.arange(1, 256))
    remainder = np.arange(HUE_FRACTIONS) - chroma * (chroma - 1) // 2
    angle = (np.arange(SEXTANTS)[:, None] + remainder / chroma) * (math.pi / 3)
    directions = np.zeros(((SEXTANTS + 1) * HUE_FRACTIONS, 2))
    directions[:SEXTANTS * HUE_FRACTIONS, 0] = np.cos(angle).reshape(-1)
    directions[:SEXTANTS * HUE_FRACTIONS, 1] = np.sin(angle).reshape(-1)
    directions.setflags(write=False)
    return directions


@njit(cache=True, nogil=True)
def _counts(values: NDArray[np.integer], shift: int, mask: int, size: int
            ) -> NDArray[np.int64]:
    """How many ``values`` fall in each bucket ``(value >> shift) & mask`` (0..size-1).

    Alternate values go to two separate tables: photographs hold long runs of equal values,
    and incrementing one counter again and again waits for each previous increment.
    """
    tables = np.zeros((2, size), np.int32)  # a count per pixel at most: int32 is ample
    pairs = values.size // 2
    for i in range(pairs):
        tables[0, (values[2 * i] >> shift) & mask] += 1
        tables[1, (values[2 * i + 1] >> shift) & mask] += 1
    if values.size % 2:
        tables[0, (values[-1] >> shift) & mask] += 1
    return tables[0].astype(np.int64) + tables[1]


@njit(cache=True, nogil=True)
def _largest(counts: NDArray[np.int64], wanted: int) -> NDArray[np.int64]:
    """Indices of the ``wanted`` largest counts, largest first, ties to the lower index."""
    chosen = np.full(min(wanted, counts.size), -1, np.int64)
    for rank in range(chosen.size):
        best = -1
        for index in range(counts.size):
            if (best < 0 or counts[index] > counts[best]) and index not in chosen[:rank]:
                best = index
        chosen[rank] = best
    return chosen


@njit(cache=True, nogil=True)
def _member_sums(cell_of: NDArray[np.int32], cell_mask: int, red: NDArray[np.uint8],
                 green: NDArray[np.uint8], blue: NDArray[np.uint8],
                 wanted: NDArray[np.int64]) -> NDArray[np.int64]:
    """Per wanted cell, the R, G, B sums of the pixels whose ``cell_of & cell_mask`` is that cell.

    Three cells are summed per pass (branch-free, nine accumulators), so the usual three
    dominant colours take one pass over the pixels.
    """
    out = np.zeros((wanted.size, 3), np.int64)
    for first in range(0, wanted.size, 3):
        cells = np.full(3, -1, np.int32)  # -1 matches no cell
        for slot in range(min(3, wanted.size - first)):
            cells[slot] = wanted[first + slot]
        cell_0, cell_1, cell_2 = cells[0], cells[1], cells[2]
        r0 = g0 = b0 = r1 = g1 = b1 = r2 = g2 = b2 = 0
        for i in range(cell_of.size):
            cell = cell_of[i] & cell_mask
            r, g, b = np.int32(red[i]), np.int32(green[i]), np.int32(blue[i])
            in_0, in_1, in_2 = (np.int32(cell == cell_0), np.int32(cell == cell_1),
                                np.int32(cell == cell_2))
            r0 += in_0 * r
            g0 += in_0 * g
            b0 += in_0 * b
            r1 += in_1 * r
            g1 += in_1 * g
            b1 += in_1 * b
            r2 += in_2 * r
            g2 += in_2 * g
            b2 += in_2 * b
        sums = ((r0, g0, b0), (r1, g1, b1), (r2, g2, b2))
        for slot in range(min(3, wanted.size - first)):
            out[first + slot, 0] = sums[slot][0]
            out[first + slot, 1] = sums[slot][1]
            out[first + slot, 2] = sums[slot][2]
    return out


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def pixel_sums(red: NDArray[np.uint8], green: NDArray[np.uint8], blue: NDArray[np.uint8],
               value_low: int, value_high: int,
               saturation_divisor: int, grey_chroma: int, cell_bits: int, top_cells: int,
               directions: NDArray[np.float64]
               ) -> tuple[NDArray[np.int32], NDArray[np.int64], NDArray[np.int64],
                          NDArray[np.float64], NDArray[np.int64], NDArray[np.int64],
                          NDArray[np.int64], NDArray[np.int64]]:
    """The light and colour inputs of one image, from its flat uint8 channels.

    Returns, in order:

    * ``weighted``: per pixel the HSP square ``241 R² + 691 G² + 68 B²`` (int32);
    * ``buckets``: the :func:`bucket_counts` of ``weighted``;
    * ``sums``: the integer sums at the indices named above;
    * ``floats``: the sum of ``sqrt(weighted)``, the mean and standard deviation of
      saturation ``chroma / max`` (0 for black), then the sums of the hue angle's cosine and
      sine over the pixels with a reliable hue (``max`` within ``value_low..value_high`` and
      ``chroma > max // saturation_divisor``, decided as ``chroma * saturation_divisor > max``),
      each direction a row of ``directions`` (:func:`hue_directions`);
    * ``hue_bins``: those pixels' counts per 30-degree bin;
    * ``cells``: pixel counts of the colour cells (``cell_bits`` high bits per channel, at most
      3, so that a pixel's cell, hue bin and hue fit one int32 code: 4 bytes a pixel besides
      ``weighted``);
    * ``top``: the ``top_cells`` most populated cells, most populated first (ties to the lower
      cell number), and ``cell_sums``: their R, G, B sums.

    The first loop has no branches or scattered writes, so it is vectorised; it files each
    pixel's hue as a table index. A second vectorised pass sums the saturation's squared
    deviations and the hue directions (table look-ups, far cheaper than evaluating cosines);
    the counting loops follow. The float sums may be added in any order (``reassoc``): they
    are within the documented tolerances either way, and every exact result is an integer.
    """
    n = red.size
    weighted = np.empty(n, np.int32)
    # Per pixel: colour cell (3 cell_bits), hue bin (4 bits: 0..11, 12 for none), and above
    # them the hue as its row of ``directions`` (18 bits).
    cell_of = np.empty(n, np.int32)
    hue_shift = 3 * cell_bits + 4
    shift = 8 - cell_bits
    # Saturation is summed as the offset from the first pixel's, so that a constant colour gives
    # exactly its own saturation and a standard deviation of exactly 0.
    first = _saturation(np.int32(red[0]), np.int32(green[0]), np.int32(blue[0]))
    roots = saturation = 0.0
    value_sum = coloured = rg_sum = rg_squares = yb2_sum = yb2_squares = selected = 0
    for i in range(n):
        r, g, b = np.int32(red[i]), np.int32(green[i]), np.int32(blue[i])
        square = HSP_WEIGHTS[0] * r * r + HSP_WEIGHTS[1] * g * g + HSP_WEIGHTS[2] * b * b
        weighted[i] = square
        roots += math.sqrt(np.float64(square))
        high = max(r, g, b)
        chroma = high - min(r, g, b)
        saturation += chroma / np.float64(max(high, 1)) - first
        value_sum += high
        coloured += np.int32(chroma > grey_chroma)
        rg = r - g
        yb2 = r + g - 2 * b
        rg_sum += rg
        rg_squares += rg * rg
        yb2_sum += yb2
        yb2_squares += yb2 * yb2
        sextant, remainder = _hue_parts(r, g, b, high, chroma)
        reliable = (value_low <= high) & (high <= value_high) & (
            chroma * saturation_divisor > high)
        selected += np.int32(reliable)
        # Bin 12: no reliable hue.
        hue_bin = 2 * sextant + np.int32(2 * remainder >= chroma) if reliable else 2 * SEXTANTS
        # The colour cell in the low bits, the hue bin above: one count gives both tallies.
        fraction = ((chroma * (chroma - 1)) >> 1) + remainder
        hue = sextant * HUE_FRACTIONS + fraction if reliable else NO_HUE * HUE_FRACTIONS
        cell_of[i] = (hue << hue_shift) | (hue_bin << (3 * cell_bits)) | (
            (r >> shift) << (2 * cell_bits)) | ((g >> shift) << cell_bits) | (b >> shift)
    saturation_mean = first + saturation / n
    deviations = hue_cos = hue_sin = 0.0
    for i in range(n):
        gap = _saturation(np.int32(red[i]), np.int32(green[i]), np.int32(blue[i]))
        gap -= saturation_mean
        deviations += gap * gap
        hue = cell_of[i] >> hue_shift
        hue_cos += directions[hue, 0]
        hue_sin += directions[hue, 1]

    buckets = _counts(weighted, BUCKET_SHIFT, ALL_BITS, (65_025_000 >> BUCKET_SHIFT) + 1)
    cell_count = 1 << (3 * cell_bits)
    tallies = _counts(cell_of, 0, (1 << hue_shift) - 1, (2 * SEXTANTS + 1) * cell_count).reshape(
        2 * SEXTANTS + 1, cell_count)
    cells = np.zeros(cell_count, np.int64)
    hue_bins = np.zeros(2 * SEXTANTS + 1, np.int64)
    for hue in range(2 * SEXTANTS + 1):
        for cell in range(cell_count):
            cells[cell] += tallies[hue, cell]
            hue_bins[hue] += tallies[hue, cell]
    top = _largest(cells, top_cells)
    cell_sums = _member_sums(cell_of, cell_count - 1, red, green, blue, top)

    sums = np.zeros(INTEGER_SUMS, np.int64)
    sums[VALUE_SUM] = value_sum
    sums[COLOURED] = coloured
    sums[RG_SUM] = rg_sum
    sums[RG_SQUARES] = rg_squares
    sums[YB2_SUM] = yb2_sum
    sums[YB2_SQUARES] = yb2_squares
    sums[HUE_SELECTED] = selected
    floats = np.array([roots, saturation_mean, math.sqrt(deviations / n), hue_cos, hue_sin])
    return weighted, buckets, sums, floats, hue_bins[:2 * SEXTANTS], cells, top, cell_sums


@njit(cache=True, nogil=True)
def bucket_counts(values: NDArray[np.int32]) -> NDArray[np.int64]:
    """How many of the non-negative ``values`` fall in each bucket ``value >> BUCKET_SHIFT``."""
    top = 0
    for value in values:
        top = max(top, value)
    counts = np.zeros((top >> BUCKET_SHIFT) + 1, np.int64)
    for value in values:
        counts[value >> BUCKET_SHIFT] += 1
    return counts


@njit(cache=True, nogil=True)
def _smallest_from(values: NDArray[np.int32], lower: int) -> int:
    """The smallest of the non-negative ``values`` at or above ``lower`` (which one must be).

    Unsigned, a value below ``lower`` minus ``lower`` wraps around to a huge number, so a plain
    minimum of the differences finds it: no branch, and the compiler takes many values per
    instruction (a conditional minimum took several times as long)."""
    start = np.uint32(lower)
    gap = np.uint32(0xFFFF_FFFF)
    for i in range(values.size):
        gap = min(gap, np.uint32(values[i]) - start)
    return np.int64(gap) + lower


@njit(cache=True, nogil=True)
def _bucket_of_rank(buckets: NDArray[np.int64], rank: int) -> tuple[int, int]:
    """The bucket holding the value of ``rank``, and how many values lie in lower buckets."""
    seen = 0
    bucket = 0
    while seen + buckets[bucket] <= rank:
        seen += buckets[bucket]
        bucket += 1
    return bucket, seen


@njit(cache=True, nogil=True)
def _sorted_pair(members: NDArray[np.int32], index: int) -> tuple[int, int]:
    """The values at positions ``index`` and ``index + 1`` of the members of one bucket in sorted
    order; the second is -1 when ``index`` is the last position. Sorts ``members`` in place,
    or counts them when there are more than :data:`COUNTED_BUCKET`."""
    if members.size <= COUNTED_BUCKET:
        members.sort()
        after = np.int64(members[index + 1]) if index + 1 < members.size else np.int64(-1)
        return np.int64(members[index]), after
    base = np.int64(members[0] >> BUCKET_SHIFT) << BUCKET_SHIFT
    counts = np.zeros(1 << BUCKET_SHIFT, np.int32)
    for value in members:
        counts[value - base] += 1
    passed = 0
    at = np.int64(-1)
    for slot in range(counts.size):
        passed += counts[slot]
        if at < 0:
            if passed > index:
                at = base + slot
                if passed > index + 1:
                    return at, at
        elif counts[slot]:
            return at, base + slot
    return at, np.int64(-1)


@njit(cache=True, nogil=True)
def _pair_in_bucket(values: NDArray[np.int32], members: NDArray[np.int32], bucket: int,
                    seen: int, rank: int) -> tuple[int, int]:
    """Ranks ``rank`` and ``rank + 1`` from the ``members`` of the rank's bucket (and the
    smallest value above that bucket, when ``rank`` is its bucket's last)."""
    at, after = _sorted_pair(members, rank - seen)
    if rank + 1 >= values.size:
        return at, at
    if after >= 0:
        return at, after
    return at, _smallest_from(values, (bucket + 1) << BUCKET_SHIFT)


@njit(cache=True, nogil=True, inline="always")
def _members_in(values: NDArray[np.int32], start: int, length: int, first_bucket: int,
                second_bucket: int) -> int:
    """How many of ``length`` values from ``start`` lie in either bucket (branch-free)."""
    hits = 0
    for offset in range(length):
        bucket = values[start + offset] >> BUCKET_SHIFT
        hits += np.int32(bucket == first_bucket) + np.int32(bucket == second_bucket)
    return hits


@njit(cache=True, nogil=True, inline="always")
def _gather(values: NDArray[np.int32], start: int, stop: int, first_bucket: int,
            second_bucket: int, first_members: NDArray[np.int32],
            second_members: NDArray[np.int32], first_found: int, second_found: int
            ) -> tuple[int, int]:
    """Append the members of either bucket among ``values[start:stop]``; the new counts."""
    for i in range(start, stop):
        value = values[i]
        bucket = value >> BUCKET_SHIFT
        if bucket == first_bucket:
            first_members[first_found] = value
            first_found += 1
        elif bucket == second_bucket:
            second_members[second_found] = value
            second_found += 1
    return first_found, second_found


@njit(cache=True, nogil=True)
def ranked_pairs(values: NDArray[np.int32], buckets: NDArray[np.int64], first_rank: int,
                 second_rank: int) -> tuple[int, int, int, int]:
    """The values of ranks ``r`` and ``r + 1`` (0-based, clipped to the last) in sorted order,
    for ``r`` = ``first_rank`` and then ``second_rank``, given the :func:`bucket_counts` of
    ``values``: one pass gathers the members of the (at most two) buckets holding those ranks,
    and only those are sorted or counted (:func:`_sorted_pair`)."""
    first_bucket, first_seen = _bucket_of_rank(buckets, first_rank)
    second_bucket, second_seen = _bucket_of_rank(buckets, second_rank)
    shared = first_bucket == second_bucket
    first_members = np.empty(buckets[first_bucket], np.int32)
    second_members = np.empty(0 if shared else buckets[second_bucket], np.int32)
    first_found = second_found = 0
    # Blocks without a member (most of them) are passed over by a branch-free check of a fixed
    # length, which the compiler unrolls into a few wide instructions; so are the parts of a
    # block holding one, and only the parts that hold members are read value by value.
    whole_blocks = values.size - values.size % SCAN_BLOCK
    for start in range(0, whole_blocks, SCAN_BLOCK):
        if _members_in(values, start, SCAN_BLOCK, first_bucket, second_bucket) == 0:
            continue
        for part in range(start, start + SCAN_BLOCK, SCAN_PART):
            if _members_in(values, part, SCAN_PART, first_bucket, second_bucket):
                first_found, second_found = _gather(
                    values, part, part + SCAN_PART, first_bucket, second_bucket,
                    first_members, second_members, first_found, second_found)
    _gather(values, whole_blocks, values.size, first_bucket, second_bucket,
            first_members, second_members, first_found, second_found)
    if shared:
        second_members = first_members
    first_at, first_after = _pair_in_bucket(values, first_members, first_bucket,
                                            first_seen, first_rank)
    second_at, second_after = _pair_in_bucket(values, second_members, second_bucket,
                                              second_seen, second_rank)
    return first_at, first_after, second_at, second_after


@njit(cache=True, nogil=True)
def ranked_pair(values: NDArray[np.int32], buckets: NDArray[np.int64], rank: int
                ) -> tuple[int, int]:
    """:func:`ranked_pairs` for one rank."""
    at, after, _, _ = ranked_pairs(values, buckets, rank, rank)
    return at, after


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def detail_sums(gray: NDArray[np.uint8], strong_above: int) -> tuple[int, int, int, int]:
    """Over the interior pixels of a 2-D uint8 image (at least 3x3): their count, the sum and sum
    of squares of the 4-neighbour Laplacian, and how many have a squared Sobel magnitude
    ``gx² + gy²`` above ``strong_above`` (all exact integers).

    Each row is first computed into small buffers (no branch, so many pixels go per
    instruction), then added up. The per-pixel arithmetic is float32, which holds every value
    it meets exactly: the Laplacian and both gradients lie within ±1020, their squares and
    ``gx² + gy²`` below 2**21 (float32 is exact to 2**24), so any order of operations gives the
    integer result; the row sums are float64, exact to 2**53. Float32 takes twice as many pixels
    per instruction as the 64-bit integers the compiler otherwise uses.
    """
    height, width = gray.shape
    total = squares = 0.0
    strong = 0
    # Above every possible gx² + gy², a threshold cannot be crossed (and stays exact in float32).
    threshold = np.float32(min(strong_above, 1 << 22))
    laplacians = np.zeros(width, np.float32)
    squared = np.zeros(width, np.float32)
    strong_flags = np.zeros(width, np.int32)
    four, two = np.float32(4), np.float32(2)
    for y in range(1, height - 1):
        above, row, below = gray[y - 1], gray[y], gray[y + 1]
        for x in range(1, width - 1):
            centre = np.float32(row[x])
            up, down = np.float32(above[x]), np.float32(below[x])
            left, right = np.float32(row[x - 1]), np.float32(row[x + 1])
            laplacian = up + down + left + right - four * centre
            laplacians[x] = laplacian
            squared[x] = laplacian * laplacian
            up_left, up_right = np.float32(above[x - 1]), np.float32(above[x + 1])
            down_left, down_right = np.float32(below[x - 1]), np.float32(below[x + 1])
            gx = up_right + two * right + down_right - up_left - two * left - down_left
            gy = down_left + two * down + down_right - up_left - two * up - up_right
            strong_flags[x] = gx * gx + gy * gy > threshold
        for x in range(1, width - 1):
            total += np.float64(laplacians[x])
            squares += np.float64(squared[x])
            strong += strong_flags[x]
    return (height - 2) * (width - 2), int(total), int(squares), strong


_LOW_32 = np.uint64(0x0000_0000_FFFF_FFFF)
_LOW_16 = np.uint64(0x0000_FFFF_0000_FFFF)
_LOW_8 = np.uint64(0x00FF_00FF_00FF_00FF)


@njit(cache=True, nogil=True, inline="always")
def _exchange(upper: np.uint64, lower: np.uint64, shift: np.uint64, mask: np.uint64
              ) -> tuple[np.uint64, np.uint64]:
    """Swap the bytes of ``upper`` selected by ``mask << shift`` with those of ``lower``
    selected by ``mask``."""
    differ = ((upper >> shift) ^ lower) & mask
    return upper ^ (differ << shift), lower ^ differ


@njit(cache=True, nogil=True, inline="always")
def _exchange_pairs(a: np.uint64, b: np.uint64, c: np.uint64, d: np.uint64, e: np.uint64,
                    f: np.uint64, g: np.uint64, h: np.uint64, shift: np.uint64,
                    mask: np.uint64) -> tuple[np.uint64, ...]:
    """One round of transposing 8x8 bytes held in eight words: :func:`_exchange` within each
    of the pairs (a, b), (c, d), (e, f) and (g, h)."""
    a, b = _exchange(a, b, shift, mask)
    c, d = _exchange(c, d, shift, mask)
    e, f = _exchange(e, f, shift, mask)
    g, h = _exchange(g, h, shift, mask)
    return a, b, c, d, e, f, g, h


@njit(cache=True, nogil=True)
def transposed_blocks(plane: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The transpose of a C-contiguous 2-D uint8 ``plane`` whose sides are multiples of 8.

    Each 8x8 block is read as eight 64-bit words (one per row) and transposed in registers
    by three rounds of masked swaps (4-byte halves of rows 4 apart, then 2-byte quarters of
    rows 2 apart, then single bytes of neighbouring rows), then written as eight words: numpy's
    transpose copies byte by byte, which took a third longer for a 320x240 plane. (The same
    rounds as loops over an array of eight words took a tenth longer than these calls, whose
    words stay in registers.)
    """
    height, width = plane.shape
    out = np.empty((width, height), np.uint8)
    rows_in, rows_out = width // 8, height // 8
    source = plane.reshape(-1).view(np.uint64)
    target = out.reshape(-1).view(np.uint64)
    w32, w16, w8 = np.uint64(32), np.uint64(16), np.uint64(8)
    for block_y in range(rows_out):
        for block_x in range(rows_in):
            at = 8 * block_y * rows_in + block_x
            a0, a1 = source[at], source[at + rows_in]
            a2, a3 = source[at + 2 * rows_in], source[at + 3 * rows_in]
            a4, a5 = source[at + 4 * rows_in], source[at + 5 * rows_in]
            a6, a7 = source[at + 6 * rows_in], source[at + 7 * rows_in]
            a0, a4, a1, a5, a2, a6, a3, a7 = _exchange_pairs(
                a0, a4, a1, a5, a2, a6, a3, a7, w32, _LOW_32)
            a0, a2, a1, a3, a4, a6, a5, a7 = _exchange_pairs(
                a0, a2, a1, a3, a4, a6, a5, a7, w16, _LOW_16)
            a0, a1, a2, a3, a4, a5, a6, a7 = _exchange_pairs(
                a0, a1, a2, a3, a4, a5, a6, a7, w8, _LOW_8)
            to = 8 * block_x * rows_out + block_y
            target[to], target[to + rows_out] = a0, a1
            target[to + 2 * rows_out], target[to + 3 * rows_out] = a2, a3
            target[to + 4 * rows_out], target[to + 5 * rows_out] = a4, a5
            target[to + 6 * rows_out], target[to + 7 * rows_out] = a6, a7
    return out


@njit(cache=True, nogil=True)
def combine_rows(source: NDArray[np.uint8], starts: NDArray[np.int64],
                 coefficients: NDArray[np.int32], precision_bits: int) -> NDArray[np.uint8]:
    """One pass of Pillow's 8-bit convolution resize, along the first axis of ``source``.

    Output row ``m`` is ``(2**(p-1) + sum_k coefficients[m, k] * source[starts[m] + k]) >> p``
    clipped to 0..255, per element, with ``p = precision_bits`` and int32 sums as in Pillow
    (zero coefficients pad short windows and are skipped). Whole rows are combined at a time,
    so the compiler processes many elements per instruction; a horizontal pass is done on the
    transposed image.
    """
    rows, length = coefficients.shape[0], source.shape[1]
    out = np.empty((rows, length), np.uint8)
    sums = np.empty(length, np.int32)
    for row in range(rows):
        sums[:] = np.int32(1 << (precision_bits - 1))
        for tap in range(coefficients.shape[1]):
            weight = coefficients[row, tap]
            if weight == 0:
                continue
            line = source[starts[row] + tap]
            for j in range(length):
                sums[j] += weight * np.int32(line[j])
        for j in range(length):
            out[row, j] = min(max(sums[j] >> precision_bits, 0), 255)
    return out


@njit(cache=True, nogil=True)
def resize_passes(plane: NDArray[np.uint8], across: NDArray[np.uint8],
                  across_starts: NDArray[np.int64], across_coefficients: NDArray[np.int32],
                  down_starts: NDArray[np.int64], down_coefficients: NDArray[np.int32],
                  across_first: bool, precision_bits: int) -> NDArray[np.uint8]:
    """One whole resize of a 2-D uint8 ``plane`` as Pillow does it: the horizontal pass
    (:func:`combine_rows` on ``across``, the plane transposed, given by the caller so that
    several sizes share it) and the vertical pass, in the order ``across_first`` says, each
    skipped when its ``starts`` are empty. One call per size, where calling the passes and
    transposing the small intermediate images one by one from Python cost more than the
    arithmetic for thumbnail-sized planes."""
    if across_first:
        if across_starts.size:
            narrow = combine_rows(across, across_starts, across_coefficients, precision_bits)
            current = np.ascontiguousarray(narrow.T)
        else:
            current = plane.copy()
        if down_starts.size:
            current = combine_rows(current, down_starts, down_coefficients, precision_bits)
        return current
    if down_starts.size:
        current = combine_rows(plane, down_starts, down_coefficients, precision_bits)
    else:
        current = plane.copy()
    if across_starts.size:
        narrow = combine_rows(np.ascontiguousarray(current.T), across_starts,
                              across_coefficients, precision_bits)
        current = np.ascontiguousarray(narrow.T)
    return current
