"""Compiled per-pixel loops for the feature set: one pass over the RGB pixels, one over the grey.

Written as numpy expressions, the light and colour measures take about a hundred whole-image
passes, each writing a temporary array; here each pixel is read once and every measure's inputs
are accumulated together (numba compiles these loops to machine code). The loops only gather
sums, counts and small tables; :mod:`thumbfeat.features` turns them into columns.

Exactness: every accumulator that the column definitions require to be exact is an integer
(counts, sums and sums of squares of integer pixel values), so it does not depend on the order in
which pixels are visited. Only two sums are floating point: the square roots behind
``brightness_mean`` (summed per image row, then the row sums added, which keeps the rounding error
near ``(width + height) * 2**-53`` relative) and the hue direction's sines and cosines.

Compilation: ``cache=True`` stores the machine code next to this module (or, where that folder is
not writable, in numba's per-user cache), so only the first process on a machine compiles; later
processes load it. Numba writes cache files under a temporary name and renames them, so processes
compiling at the same time do not corrupt each other's files. The kernels are compiled for one
set of argument types each: callers pass C-contiguous arrays of the documented dtypes.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numba import njit
from numpy.typing import NDArray

HSP_WEIGHTS = (241, 691, 68)
"""HSP weights scaled to integers: ``241 R² + 691 G² + 68 B²`` is exact in int32 (at most
65,025,000) and orders pixels exactly as the float brightness does."""

BUCKET_SHIFT = 12
"""Order statistics first count values by ``value >> BUCKET_SHIFT`` (at most 15,876 buckets for
the HSP squares), then sort only the values of the one bucket holding the wanted rank."""

SEXTANTS = 6

# Layout of the integer results of :func:`pixel_sums`.
VALUE_SUM = 0  # sum of max(R, G, B)
COLOURED = 1  # pixels whose chroma exceeds the greyscale limit
RG_SUM = 2  # sum of R - G
RG_SQUARES = 3
YB2_SUM = 4  # sum of R + G - 2 B
YB2_SQUARES = 5
HUE_SELECTED = 6  # pixels with a reliable hue
INTEGER_SUMS = 7


@njit(cache=True, nogil=True, inline="always")
def _hue_parts(red: int, green: int, blue: int, high: int, chroma: int) -> tuple[int, int]:
    """HSV hue as sextant ``k`` (0..5) and remainder ``r`` (0 <= r < chroma): the hue is
    ``(k + r / chroma) * 60`` degrees. Meaningless when chroma is 0.

    HSV takes the formula of the first channel (red, green, blue) holding the maximum: hue
    ``base + d / chroma`` sixths, base 0, 2 or 4, with ``d`` (-chroma..chroma) the difference of
    the other two channels. Written without branches (0/1 factors), so the compiler can process
    several pixels per instruction.
    """
    from_red = np.int32(high == red)
    from_green = np.int32(high == green) * (1 - from_red)
    from_blue = 1 - from_red - from_green
    base = 2 * from_green + 4 * from_blue
    offset = from_red * (green - blue) + from_green * (blue - red) + from_blue * (red - green)
    below = np.int32(offset < 0)
    whole = np.int32(offset == chroma)
    sextant = base - below + whole
    sextant += 6 * np.int32(sextant < 0)  # a red maximum with green < blue: the last sextant
    return sextant, offset + chroma * (below - whole)


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


FRACTION_ROWS = 255 * 256 // 2


@njit(cache=True, nogil=True, inline="always")
def _saturation(red: int, green: int, blue: int) -> float:
    """HSV saturation ``(max - min) / max``, 0 for black."""
    high = max(red, green, blue)
    return (high - min(red, green, blue)) / np.float64(max(high, 1))


@cache
def hue_fraction_table() -> NDArray[np.float64]:
    """Cosine and sine of ``(pi / 3) * r / c`` for every chroma ``c`` (1..255) and ``r < c``.

    Row ``c (c - 1) / 2 + r``. Summing these per hue sextant and rotating each sextant's sums by
    its multiple of 60 degrees at the end gives the sums of the hue's cosine and sine, without a
    sine per pixel (32,640 rows, half a megabyte).
    """
    chroma = np.repeat(np.arange(1, 256), np.arange(1, 256))
    remainder = np.arange(chroma.size) - chroma * (chroma - 1) // 2
    angle = (math.pi / 3) * (remainder / chroma)
    table = np.ascontiguousarray(np.stack([np.cos(angle), np.sin(angle)], axis=1))
    table.setflags(write=False)
    return table


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def pixel_sums(red: NDArray[np.uint8], green: NDArray[np.uint8], blue: NDArray[np.uint8],
               fractions: NDArray[np.float64], value_low: int, value_high: int,
               saturation_divisor: int, grey_chroma: int, cell_bits: int, top_cells: int
               ) -> tuple[NDArray[np.int32], NDArray[np.int64], NDArray[np.int64],
                          NDArray[np.float64], NDArray[np.int64], NDArray[np.int64],
                          NDArray[np.int64], NDArray[np.int64]]:
    """The light and colour inputs of one image, from its flat uint8 channels.

    Returns, in order:

    * ``weighted``: per pixel the HSP square ``241 R² + 691 G² + 68 B²`` (int32);
    * ``buckets``: the :func:`bucket_counts` of ``weighted``;
    * ``sums``: the integer sums at the indices named above;
    * ``floats``: the sum of ``sqrt(weighted)``, the mean and standard deviation of
      saturation ``chroma / max`` (0 for black), then per hue sextant the sums of the fraction
      table's cosine and sine over the pixels with a reliable hue (``max`` within
      ``value_low..value_high`` and ``chroma > max // saturation_divisor``);
    * ``hue_bins``: those pixels' counts per 30-degree bin;
    * ``cells``: pixel counts of the colour cells (``cell_bits`` high bits per channel);
    * ``top``: the ``top_cells`` most populated cells, most populated first (ties to the lower
      cell number), and ``cell_sums``: their R, G, B sums.

    The first loop has no branches or scattered writes, so it is vectorised; the counting
    loops follow. The float sums may be added in any order (``reassoc``): they are within the
    documented tolerances either way, and every exact result is an integer.
    """
    n = red.size
    weighted = np.empty(n, np.int32)
    cell_of = np.empty(n, np.int32)
    hue_code = np.empty(n, np.int32)
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
        cell_of[i] = ((r >> shift) << (2 * cell_bits)) | ((g >> shift) << cell_bits) | (b >> shift)
        sextant, remainder = _hue_parts(r, g, b, high, chroma)
        reliable = (np.int32(value_low <= high) * np.int32(high <= value_high)
                    * np.int32(chroma * saturation_divisor > high))
        selected += reliable
        # 30-degree bin in the low 4 bits (12 = no reliable hue), table row and sextant above.
        code = (((sextant * FRACTION_ROWS + chroma * (chroma - 1) // 2 + remainder) << 4)
                | (2 * sextant + np.int32(2 * remainder >= chroma)))
        hue_code[i] = reliable * code + (1 - reliable) * 12
    saturation_mean = first + saturation / n
    deviations = 0.0
    for i in range(n):
        gap = _saturation(np.int32(red[i]), np.int32(green[i]), np.int32(blue[i]))
        gap -= saturation_mean
        deviations += gap * gap

    buckets = np.zeros((65_025_000 >> BUCKET_SHIFT) + 1, np.int64)
    cells = np.zeros(1 << (3 * cell_bits), np.int64)
    hue_bins = np.zeros(2 * SEXTANTS + 1, np.int64)
    floats = np.zeros(3 + 2 * SEXTANTS, np.float64)
    for i in range(n):
        buckets[weighted[i] >> BUCKET_SHIFT] += 1
        cells[cell_of[i]] += 1
        code = hue_code[i]
        hue_bins[code & 15] += 1
        if code != 12:
            place = code >> 4
            sextant = place // FRACTION_ROWS
            row = place - sextant * FRACTION_ROWS
            floats[3 + 2 * sextant] += fractions[row, 0]
            floats[4 + 2 * sextant] += fractions[row, 1]

    top = np.argsort(-cells, kind="mergesort")[:top_cells]
    cell_sums = np.zeros((top.size, 3), np.int64)
    for rank in range(top.size):
        wanted = top[rank]
        if cells[wanted] == 0:
            continue
        r_sum = g_sum = b_sum = 0
        for i in range(n):
            member = np.int32(cell_of[i] == wanted)
            r_sum += member * np.int32(red[i])
            g_sum += member * np.int32(green[i])
            b_sum += member * np.int32(blue[i])
        cell_sums[rank, 0], cell_sums[rank, 1], cell_sums[rank, 2] = r_sum, g_sum, b_sum

    sums = np.zeros(INTEGER_SUMS, np.int64)
    sums[VALUE_SUM] = value_sum
    sums[COLOURED] = coloured
    sums[RG_SUM] = rg_sum
    sums[RG_SQUARES] = rg_squares
    sums[YB2_SUM] = yb2_sum
    sums[YB2_SQUARES] = yb2_squares
    sums[HUE_SELECTED] = selected
    floats[0] = roots
    floats[1] = saturation_mean
    floats[2] = math.sqrt(deviations / n)
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
def _bucket_minimum(values: NDArray[np.int32], bucket: int) -> int:
    smallest = np.iinfo(np.int32).max
    for value in values:
        if value >> BUCKET_SHIFT == bucket and value < smallest:
            smallest = value
    return smallest


@njit(cache=True, nogil=True)
def ranked_pair(values: NDArray[np.int32], buckets: NDArray[np.int64], rank: int
                ) -> tuple[int, int]:
    """The values of rank ``rank`` and ``rank + 1`` (0-based, clipped to the last) in sorted
    order, given the :func:`bucket_counts` of ``values``: only the wanted bucket is sorted."""
    seen = 0
    bucket = 0
    while seen + buckets[bucket] <= rank:
        seen += buckets[bucket]
        bucket += 1
    members = np.empty(buckets[bucket], np.int32)
    found = 0
    for value in values:
        if value >> BUCKET_SHIFT == bucket:
            members[found] = value
            found += 1
    members.sort()
    at = members[rank - seen]
    if rank + 1 >= values.size:
        return at, at
    if rank + 1 - seen < members.size:
        return at, members[rank + 1 - seen]
    following = bucket + 1
    while buckets[following] == 0:
        following += 1
    return at, _bucket_minimum(values, following)


@njit(cache=True, nogil=True)
def detail_sums(gray: NDArray[np.uint8], strong_above: int) -> tuple[int, int, int, int]:
    """Over the interior pixels of a 2-D uint8 image (at least 3x3): their count, the sum and sum
    of squares of the 4-neighbour Laplacian, and how many have a squared Sobel magnitude
    ``gx² + gy²`` above ``strong_above`` (all exact integers)."""
    height, width = gray.shape
    total = squares = strong = 0
    for y in range(1, height - 1):
        above, row, below = gray[y - 1], gray[y], gray[y + 1]
        for x in range(1, width - 1):
            centre = np.int32(row[x])
            up, down = np.int32(above[x]), np.int32(below[x])
            left, right = np.int32(row[x - 1]), np.int32(row[x + 1])
            laplacian = up + down + left + right - 4 * centre
            total += laplacian
            squares += laplacian * laplacian
            up_left, up_right = np.int32(above[x - 1]), np.int32(above[x + 1])
            down_left, down_right = np.int32(below[x - 1]), np.int32(below[x + 1])
            gx = up_right + 2 * right + down_right - up_left - 2 * left - down_left
            gy = down_left + 2 * down + down_right - up_left - 2 * up - up_right
            if gx * gx + gy * gy > strong_above:
                strong += 1
    return (height - 2) * (width - 2), total, squares, strong
