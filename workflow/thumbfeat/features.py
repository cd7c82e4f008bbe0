"""Per-image visual features computed with numpy on a :class:`DecodedImage`.

Every column is defined in ``docs/feature-table.md`` (meaning, unit, formula, thresholds); this
docstring says how the pixels are prepared, which every measure shares.

Every image is first flattened to 8-bit RGB so that all measures see comparable pixels:

* transparency (RGBA, LA, PA, palette or greyscale/RGB with a ``transparency`` entry) is
  composited onto white, because that is how a catalog page shows a transparent thumbnail;
* 16-bit greyscale (``I;16*``) is scaled linearly, ``round(v * 255 / 65535)``, since Pillow's
  own conversion to ``L`` clips everything above 255 to white;
* 32-bit ``I`` and float ``F`` images carry no fixed sample range, so their finite values are
  stretched from their own minimum..maximum onto 0..255 (a constant image becomes black);
* everything else (CMYK, YCbCr, palette, 1-bit, ...) uses Pillow's ``convert("RGB")``.

The grey image is Pillow's ``L`` conversion of that RGB image (ITU-R 601-2 luma,
``(299 R + 587 G + 114 B) / 1000`` rounded), computed once and shared by the contrast, entropy,
sharpness, edge and hash measures; it is also what ``imagehash`` converts to, so the hashes equal
that package's for the same RGB image.

Means, percentiles and histograms do not depend on resolution, so they use every pixel. Sharpness
and edge density do (the same photo stored at twice the size has much smaller pixel-to-pixel
differences), so they are measured at a common working size: if the grey image's longer side
exceeds :data:`WORKING_SIZE`, it is resized so the longer side is exactly ``WORKING_SIZE`` and the
shorter side is ``max(1, round(shorter * WORKING_SIZE / longer))``, using Pillow's ``BOX`` filter
(an area average, which adds no ringing that would read as false sharpness). Smaller images are
used as they are; they are never enlarged. The hashes and the blurry flag bring their own fixed
sizes (8x8, 9x8, 32x32; 64 px), as their reference implementations do.

Integer sums are used wherever a measure is a mean or variance of integer-valued pixels, so those
results are exact and independent of summation order (``docs/feature-table.md`` lists the few
floating-point columns and their tolerances).

Speed: a thumbnail is measured in about a hundred whole-image numpy passes, each costing a few
microseconds per 100,000 pixels when it streams 8- or 16-bit integers and several times more when
it writes float64 temporaries or branches per pixel. So the measures keep pixels in the narrowest
integer type that holds them exactly, select formulas by multiplying with 0/1 masks rather than
``np.where``, count small value ranges by comparisons rather than histogram loops (which stall on
the runs of equal values photographs are full of), and select order statistics rather than sort.

Bump :data:`FEATURE_VERSION` whenever any definition or the working-size rule changes, so rows
computed under old definitions can be recognised.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter
from PIL import __version__ as PILLOW_VERSION

from thumbfeat.imaging import DecodedImage
from thumbfeat.resample import resize_gray_like_pillow
from thumbfeat.runtime import tune_for_measuring

FEATURE_VERSION = "2"

WORKING_SIZE = 512

EDGE_THRESHOLD = 100
"""Sobel gradient magnitude (8-bit grey units, unnormalised kernels) above which a pixel counts as
an edge: a clean step of more than 25 grey levels (the horizontal kernel answers a step of ``h``
with ``4 h``)."""

HUE_MIN_SATURATION = 0.2
"""Pixels take part in ``hue_mean`` and ``hue_hist`` only when S > this ..."""
HUE_VALUE_RANGE = (0.15, 0.95)
"""... and V lies strictly inside this range: near-grey, near-black and near-white pixels have
no reliable hue."""
HUE_BINS = 12

GRAYSCALE_CHROMA = 10
"""A pixel is neutral when max(R, G, B) - min(R, G, B) is at most this (of 255), which absorbs
JPEG chroma noise ..."""
GRAYSCALE_MAX_COLOURED_SHARE = 0.01
"""... and an image is greyscale content when at most this share of its pixels is not neutral."""

DOMINANT_COLOURS = 3
DOMINANT_BITS = 3
"""Dominant colours are the most populated cells of a grid of ``2**DOMINANT_BITS`` levels per
channel (512 cells of 32x32x32 levels), each reported as the mean colour of its pixels."""

# CleanVision (cleanvision.issue_managers.image_property_issue_manager) default thresholds.
DARK_THRESHOLD = 0.32
LIGHT_THRESHOLD = 0.05
ODD_ASPECT_THRESHOLD = 0.35
LOW_INFORMATION_THRESHOLD = 0.3
LOW_INFORMATION_NORMALIZING = 0.1
BLURRY_THRESHOLD = 0.29
BLURRY_NORMALIZING = 0.01
BLURRY_COLOR_THRESHOLD = 0.18
BLURRY_MAX_RESOLUTION = 64

HASH_SIZE = 8
PHASH_SIZE = 32
_DCT_ZERO = 1e-6
"""pHash DCT coefficients smaller than this are zero in exact arithmetic: each is a sum of 1024
terms of at most 4 * 255, so float rounding leaves noise below 1e-9, while a non-zero coefficient
of an integer image is far larger. They are snapped to zero, as the FFT-based DCT of the reference
implementation (SciPy) leaves them, so ties at the median are broken the same way."""

FEATURE_COLUMNS: tuple[str, ...] = (
    "width",
    "height",
    "aspect_ratio",
    "file_bytes",
    "format",
    "source_mode",
    "sha256",
    "pixels_sha256",
    "brightness_mean",
    "brightness_p05",
    "brightness_p99",
    "contrast_rms",
    "entropy",
    "sharpness",
    "edge_density",
    "saturation_mean",
    "saturation_std",
    "value_mean",
    "hue_mean",
    "hue_hist",
    "colorfulness",
    "is_grayscale_content",
    "dominant_colors",
    "ahash",
    "dhash",
    "phash",
    "is_dark",
    "is_light",
    "is_blurry",
    "is_low_information",
    "is_odd_aspect_ratio",
    "pillow_version",
    "numpy_version",
)

Features = dict[str, Any]

_WHITE_RGBA = (255, 255, 255, 255)
# HSP weights scaled to integers: 241 R² + 691 G² + 68 B² is exact in int32 (at most 65,025,000)
# and orders pixels exactly as the float brightness does.
_HSP_WEIGHTS = (241, 691, 68)
# Brightness of a pixel = sqrt(weighted sum) * _HSP_SCALE = sqrt(w / 1000) / 255.
_HSP_SCALE = 1.0 / (255.0 * math.sqrt(1000.0))


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """Scale 16-bit grey to 8 bits linearly; Pillow's ``convert("L")`` would clip at 255."""
    samples = np.asarray(image).astype(np.uint32)
    return Image.fromarray(((samples * 255 + 32767) // 65535).astype(np.uint8))


def _stretch_to_l(image: Image.Image) -> Image.Image:
    """Map the finite range of an ``I``/``F`` image onto 0..255 (these modes have no scale)."""
    samples = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(samples)
    out = np.zeros(samples.shape, dtype=np.float64)
    if finite.any():
        low = samples[finite].min()
        high = samples[finite].max()
        if high > low:
            out[finite] = (samples[finite] - low) * (255.0 / (high - low))
    return Image.fromarray(np.rint(out).astype(np.uint8))


def to_rgb_on_white(image: Image.Image) -> Image.Image:
    """Return an 8-bit RGB version of ``image`` with any transparency composited on white.

    Features must describe what a viewer sees, and every measure below assumes 8-bit RGB.
    """
    if image.mode.startswith("I;16"):
        return _sixteen_bit_to_l(image).convert("RGB")
    if image.mode in ("I", "F"):
        return _stretch_to_l(image).convert("RGB")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE_RGBA)
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def working_dimensions(width: int, height: int) -> tuple[int, int]:
    """Return the size at which scale-dependent measures are taken (see module docstring)."""
    longer = max(width, height)
    if longer <= WORKING_SIZE:
        return width, height
    scale = WORKING_SIZE / longer
    if width >= height:
        return WORKING_SIZE, max(1, round(height * scale))
    return max(1, round(width * scale)), WORKING_SIZE


def to_working_size(gray: Image.Image) -> Image.Image:
    """Shrink ``gray`` to :func:`working_dimensions` with a BOX filter; never enlarge."""
    size = working_dimensions(gray.width, gray.height)
    if size == gray.size:
        return gray
    return gray.resize(size, Image.Resampling.BOX)


@dataclass(frozen=True)
class Pixels:
    """The prepared views every measure reads: built once per image, never modified.

    ``red``/``green``/``blue`` are flat uint8 channel copies (contiguous, so every pass over them
    is a fast linear scan); ``high``/``low`` are the per-pixel max and min of the three and
    ``chroma`` their difference (HSV's ``V`` and ``S`` numerator), all still 8-bit, since the
    colour measures below need nothing wider until they sum.
    """

    rgb_image: Image.Image
    gray_image: Image.Image
    rgb: NDArray[np.uint8]
    red: NDArray[np.uint8]
    green: NDArray[np.uint8]
    blue: NDArray[np.uint8]
    high: NDArray[np.uint8]
    low: NDArray[np.uint8]
    chroma: NDArray[np.uint8]
    gray: NDArray[np.uint8]
    gray_histogram: NDArray[np.int64]
    working: NDArray[np.uint8]


def prepare(decoded: DecodedImage) -> Pixels:
    """Flatten to RGB on white and derive the shared grey image, channels and histogram."""
    rgb_image = to_rgb_on_white(decoded.image)
    rgb = np.asarray(rgb_image)
    red, green, blue = (np.ascontiguousarray(rgb[..., c]).reshape(-1) for c in range(3))
    high = np.maximum(np.maximum(red, green), blue)
    low = np.minimum(np.minimum(red, green), blue)
    gray_image = rgb_image.convert("L")
    gray = np.asarray(gray_image)
    working_image = to_working_size(gray_image)
    return Pixels(
        rgb_image=rgb_image,
        gray_image=gray_image,
        rgb=rgb,
        red=red,
        green=green,
        blue=blue,
        high=high,
        low=low,
        chroma=high - low,
        gray=gray,
        gray_histogram=np.asarray(gray_image.histogram(), dtype=np.int64),
        working=gray if working_image is gray_image else np.asarray(working_image),
    )


# --- geometry and file ---------------------------------------------------------------------


def pixels_digest(rgb: NDArray[np.uint8]) -> str:
    """SHA-256 of the decoded RGB pixels and their shape: equal exactly for identical pixels."""
    hasher = hashlib.sha256(f"{rgb.shape[1]}x{rgb.shape[0]}:".encode())
    hasher.update(np.ascontiguousarray(rgb).data)
    return hasher.hexdigest()


def geometry(pixels: Pixels, decoded: DecodedImage, data: bytes) -> Features:
    height, width = pixels.rgb.shape[:2]
    return {
        "width": int(width),
        "height": int(height),
        "aspect_ratio": width / height,
        "file_bytes": len(data),
        "format": str(decoded.format),
        "source_mode": str(decoded.source_mode),
        "sha256": hashlib.sha256(data).hexdigest(),
        "pixels_sha256": pixels_digest(pixels.rgb),
    }


# --- light ---------------------------------------------------------------------------------


def hsp_weighted_squares(red: NDArray[np.uint8], green: NDArray[np.uint8],
                         blue: NDArray[np.uint8]) -> NDArray[np.int32]:
    """Per pixel ``241 R² + 691 G² + 68 B²``: 1000 x the HSP brightness squared, exactly.

    Plain int32 arithmetic (vectorised multiplies) beats three table lookups, whose uint8
    indices numpy would first widen to 64 bits.
    """
    total = np.zeros(red.shape, dtype=np.int32)
    for channel, weight in zip((red, green, blue), _HSP_WEIGHTS, strict=True):
        squared = channel.astype(np.int32)
        squared *= squared
        squared *= weight
        total += squared
    return total


def order_statistics(values: NDArray[np.int32], rank: int) -> tuple[int, int]:
    """The values of rank ``rank`` and ``rank + 1`` (0-based, clipped to the last) in sorted order.

    A selection (``np.partition``, linear time) instead of a full sort: after it, every value
    right of ``rank`` is at least the one at ``rank``, so the next rank is their minimum.
    """
    parted = np.partition(values, rank)
    at = int(parted[rank])
    after = int(parted[rank + 1:].min()) if rank + 1 < parted.size else at
    return at, after


def brightness_percentiles(weighted: NDArray[np.int32],
                           percents: tuple[float, ...]) -> list[float]:
    """Percentiles of per-pixel HSP brightness with numpy's default linear interpolation.

    Brightness is monotonic in the integer weighted square, so only the two order statistics
    around each percentile's position are selected on the integers and turned into brightness.
    """
    flat = weighted.reshape(-1)
    last = flat.size - 1
    out = []
    for percent in percents:
        position = percent / 100 * last
        below = math.floor(position)
        low_square, high_square = order_statistics(flat, below)
        low = math.sqrt(low_square) * _HSP_SCALE
        high = math.sqrt(high_square) * _HSP_SCALE
        out.append(low + (high - low) * (position - below))
    return out


def light(pixels: Pixels) -> Features:
    """HSP brightness: mean, 5th and 99th percentiles, each in 0..1."""
    weighted = hsp_weighted_squares(pixels.red, pixels.green, pixels.blue)
    mean = float(np.sqrt(weighted, dtype=np.float64).mean()) * _HSP_SCALE
    p05, p99 = brightness_percentiles(weighted, (5.0, 99.0))
    return {
        "brightness_mean": min(1.0, max(0.0, mean)),
        "brightness_p05": min(1.0, max(0.0, p05)),
        "brightness_p99": min(1.0, max(0.0, p99)),
    }


# --- contrast and detail -------------------------------------------------------------------


def contrast_rms(histogram: NDArray[np.int64]) -> float:
    """Standard deviation of grey levels / 255, exactly from the integer histogram moments."""
    count = int(histogram.sum())
    total = int(histogram @ np.arange(256, dtype=np.int64))
    squares = int(histogram @ (np.arange(256, dtype=np.int64) ** 2))
    variance = (count * squares - total * total) / (count * count)
    return math.sqrt(max(0.0, variance)) / 255.0


def entropy_bits(histogram: NDArray[np.int64]) -> float:
    """Shannon entropy in bits of a histogram (0 for a flat image, at most log2(bins))."""
    nonzero = histogram[histogram > 0]
    probabilities = nonzero / nonzero.sum()
    # "+ 0.0" turns the -0.0 produced for a single-level image into a plain 0.0.
    return float(-(probabilities * np.log2(probabilities)).sum()) + 0.0


def integer_moments(values: NDArray[Any]) -> tuple[int, int, int]:
    """Count, sum and sum of squares of integer values, exactly.

    The values are small integers, so in float64 every square and every partial sum of squares
    is an exact integer below 2**53: the dot product (BLAS) is exact and faster than int64 sums.
    """
    flat = values.reshape(-1).astype(np.float64)
    return flat.size, int(flat.sum()), int(flat @ flat)


def _variance(count: int, total: int, squares: int) -> float:
    # Python integers: count * squares can exceed 2**53.
    return (count * squares - total * total) / (count * count)


def _integer_variance(values: NDArray[Any]) -> float:
    """Population variance of integer values from exact sums."""
    return _variance(*integer_moments(values))


def laplacian_variance(gray: NDArray[np.uint8]) -> float:
    """Variance of the 4-neighbour Laplacian over the valid region; 0.0 below 3x3.

    A standard focus measure: blur removes the high-frequency energy the Laplacian responds to.
    """
    if gray.ndim != 2 or gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    g = gray.astype(np.int16)
    laplacian = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    return _integer_variance(laplacian)


def sobel_edge_density(gray: NDArray[np.uint8], threshold: float = EDGE_THRESHOLD) -> float:
    """Share of valid (interior) pixels whose Sobel gradient magnitude exceeds ``threshold``.

    Exact in 16-bit integers: the gradients lie within +-1020, and each is clipped to
    ``cap = floor(threshold) + 1`` before squaring. A clipped component exceeds the threshold on
    its own, before and after clipping, and unclipped ones are exact, so
    ``min(|gx|, cap)² + min(|gy|, cap)² > threshold²`` decides exactly as the true magnitude does,
    with no square root and no sum above 2 cap².
    """
    if gray.ndim != 2 or gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    cap = math.floor(threshold) + 1
    wide = np.int16 if 2 * cap * cap <= np.iinfo(np.int16).max else np.int32
    g = gray.astype(wide)
    smoothed_vertically = g[:-2] + 2 * g[1:-1] + g[2:]
    gx = smoothed_vertically[:, 2:] - smoothed_vertically[:, :-2]
    diff_vertically = g[2:] - g[:-2]
    gy = diff_vertically[:, :-2] + 2 * diff_vertically[:, 1:-1] + diff_vertically[:, 2:]
    total = np.zeros(gx.shape, dtype=wide)
    for component in (gx, gy):
        clipped = np.minimum(np.abs(component), wide(cap))
        clipped *= clipped
        total += clipped
    # The sums are integers: "> threshold²" equals "> floor(threshold²)".
    strong = total > wide(math.floor(threshold * threshold))
    return int(np.count_nonzero(strong)) / strong.size


def contrast_and_detail(pixels: Pixels) -> Features:
    return {
        "contrast_rms": contrast_rms(pixels.gray_histogram),
        "entropy": entropy_bits(pixels.gray_histogram),
        "sharpness": laplacian_variance(pixels.working),
        "edge_density": sobel_edge_density(pixels.working),
    }


# --- colour --------------------------------------------------------------------------------


def hue_sixths(pixels: Pixels) -> NDArray[np.int16]:
    """HSV hue of every pixel as the integer ``t = hue_degrees * chroma / 60`` (0 <= t < 6 chroma).

    Keeping hue as an exact integer numerator makes the 30-degree histogram bins exact. Pixels
    with chroma 0 get 0 here and must be left out by the caller. Every pixel takes the formula
    of the first channel (red, green, blue) holding its maximum, as HSV defines. The formulas
    are chosen by multiplying with 0/1 masks: selecting with ``np.where`` branches per pixel and
    is several times slower on photographs, whose maximum channel changes from pixel to pixel.
    """
    red, green, blue = (c.astype(np.int16) for c in (pixels.red, pixels.green, pixels.blue))
    chroma = pixels.chroma.astype(np.int16)
    from_red = pixels.high == pixels.red
    from_green = pixels.high == pixels.green
    from_green &= ~from_red
    from_blue = ~(from_red | from_green)
    sixths = (green - blue) * from_red
    sixths += (blue - red + 2 * chroma) * from_green
    sixths += (red - green + 4 * chroma) * from_blue
    sixths += 6 * chroma * (sixths < 0)  # only a red maximum gives a negative numerator
    return sixths


def clearly_coloured(pixels: Pixels) -> NDArray[np.bool_]:
    """The pixels with a reliable hue: S > 0.2 and 0.15 < V < 0.95, decided in 8-bit integers."""
    value_low = math.floor(HUE_VALUE_RANGE[0] * 255) + 1  # V > 0.15  <=>  max >= 39
    value_high = math.ceil(HUE_VALUE_RANGE[1] * 255) - 1  # V < 0.95  <=>  max <= 242
    # Unsigned subtraction wraps values below value_low round to the top, so one comparison
    # tests both ends of the range.
    in_range = (pixels.high - np.uint8(value_low)) <= np.uint8(value_high - value_low)
    # S > 0.2  <=>  5 chroma > max  <=>  chroma > max // 5 (integers).
    saturated = pixels.chroma > pixels.high // np.uint8(round(1 / HUE_MIN_SATURATION))
    return in_range & saturated


def hue_statistics(pixels: Pixels) -> tuple[float | None, list[float] | None]:
    """Circular mean hue (degrees) and 12-bin hue shares over clearly coloured pixels.

    Computed over all pixels at once (the unselected ones get weight 0 and a bin past the last),
    which is cheaper than gathering the selected pixels first.
    """
    mask = clearly_coloured(pixels)
    selected = int(np.count_nonzero(mask))
    if selected == 0:
        return None, None
    # hue / 60 degrees. In float32 the quotient of these small integers is within 1e-6 of the
    # true value, far less than the 1/255 that separates a non-integer 2 t / c from an integer,
    # so truncating 2 t / c gives the exact 30-degree bin.
    sextant = hue_sixths(pixels).astype(np.float32)
    sextant /= np.maximum(pixels.chroma, 1).astype(np.float32)
    bins = (2 * sextant).astype(np.uint8)
    bins += np.uint8(HUE_BINS) * ~mask  # the unselected pixels land beyond the hue bins
    # One vectorised comparison per bin: a histogram loop (bincount, Pillow's) stalls on runs of
    # equal values, which photographs are full of.
    counts = [int(np.count_nonzero(bins == b)) for b in range(HUE_BINS)]
    # float32 sine and cosine (vectorised, several times faster than float64) summed in float64:
    # the mean direction is accurate to about 1e-4 degrees.
    radians = sextant
    radians *= np.float32(math.pi / 3)
    weights = mask.astype(np.float32)
    sums = []
    for function in (np.sin, np.cos):
        terms = function(radians)
        terms *= weights  # exact: a product with 0 or 1
        sums.append(float(terms.sum(dtype=np.float64)))  # converted in small buffered blocks
    sin_sum, cos_sum = sums
    if math.hypot(sin_sum, cos_sum) <= 1e-6 * selected:
        mean = None  # the hues cancel out: no mean direction
    else:
        mean = math.degrees(math.atan2(sin_sum, cos_sum)) % 360.0
    return mean, [count / selected for count in counts[:HUE_BINS]]


def colorfulness(pixels: Pixels) -> float:
    """Hasler and Süsstrunk (2003): sqrt(std_rg² + std_yb²) + 0.3 sqrt(mean_rg² + mean_yb²).

    rg = R - G and yb = (R + G)/2 - B, signed (the published formula, without absolute values).
    Moments come from exact integer sums of rg and 2 yb.
    """
    red = pixels.red.astype(np.int16)
    green = pixels.green.astype(np.int16)
    rg = red - green
    yb2 = red + green
    yb2 -= 2 * pixels.blue.astype(np.int16)
    count, rg_total, rg_squares = integer_moments(rg)
    _, yb2_total, yb2_squares = integer_moments(yb2)
    rg_mean = rg_total / count
    yb_mean = yb2_total / (2 * count)
    rg_var = _variance(count, rg_total, rg_squares)
    yb_var = _variance(count, yb2_total, yb2_squares) / 4
    return math.sqrt(rg_var + yb_var) + 0.3 * math.sqrt(rg_mean**2 + yb_mean**2)


def dominant_colors(pixels: Pixels) -> list[dict[str, object]]:
    """The most populated cells of a 8x8x8 RGB grid, as mean colour (hex) and pixel share.

    Only the few winning cells need their colour sums: each is the cell's base level times its
    count plus the sum of the low bits of its pixels (see :func:`_low_bit_sums`).
    """
    shift = 8 - DOMINANT_BITS
    channels = (pixels.red, pixels.green, pixels.blue)
    cells = (pixels.red >> shift).astype(np.uint16) << (2 * DOMINANT_BITS)
    cells |= (pixels.green >> shift).astype(np.uint16) << DOMINANT_BITS
    cells |= pixels.blue >> shift
    counts = np.bincount(cells, minlength=1 << (3 * DOMINANT_BITS))
    # Stable sort on -count: ties go to the lower cell number, so the result is deterministic.
    top = [int(c) for c in np.argsort(-counts, kind="stable")[:DOMINANT_COLOURS] if counts[c] > 0]
    low_sums = _low_bit_sums(cells, channels, top, shift)
    mask = (1 << DOMINANT_BITS) - 1
    out: list[dict[str, object]] = []
    for cell, sums in zip(top, low_sums, strict=True):
        n = int(counts[cell])
        levels = ((cell >> (2 * DOMINANT_BITS)) & mask, (cell >> DOMINANT_BITS) & mask, cell & mask)
        # Mean colour rounded half up, in integers: (2 sum + n) // (2 n).
        colour = "#" + "".join(f"{(2 * ((level << shift) * n + s) + n) // (2 * n):02x}"
                               for level, s in zip(levels, sums, strict=True))
        out.append({"color": colour, "share": n / cells.size})
    return out


def _low_bit_sums(cells: NDArray[np.uint16], channels: tuple[NDArray[np.uint8], ...],
                  top: list[int], shift: int) -> list[list[int]]:
    """Per chosen cell, the exact sum of each channel's low ``shift`` bits over its pixels.

    Computed as a float32 matrix-vector product of the low bits (one row per channel) with a
    0/1 cell mask: every partial sum is an integer of at most ``(2**shift - 1) * pixels``, exact
    in float32's 24-bit significand for up to half a million pixels; larger images use float64
    (exact far beyond).
    """
    exact = np.float32 if ((1 << shift) - 1) * cells.size < (1 << 24) else np.float64
    low_bits = np.empty((len(channels), cells.size), dtype=exact)
    for row, channel in zip(low_bits, channels, strict=True):
        np.bitwise_and(channel, np.uint8((1 << shift) - 1), out=row, casting="unsafe")
    return [[round(float(s)) for s in low_bits @ (cells == cell).astype(exact)] for cell in top]


def colour(pixels: Pixels) -> Features:
    high, chroma = pixels.high, pixels.chroma
    # S = chroma / max, 0 for black (where chroma is 0 too, so dividing by 1 gives it).
    saturation = chroma.astype(np.float64)
    saturation /= np.maximum(high, 1)
    saturation_mean = float(saturation.mean())
    # Population standard deviation from the deviations (no cancellation), summed by BLAS.
    saturation -= saturation_mean
    saturation_std = math.sqrt(float(saturation @ saturation) / saturation.size)
    hue_mean, hue_hist = hue_statistics(pixels)
    coloured = int(np.count_nonzero(chroma > GRAYSCALE_CHROMA))
    return {
        "saturation_mean": saturation_mean,
        "saturation_std": saturation_std,
        "value_mean": int(high.sum(dtype=np.int64)) / (high.size * 255),
        "hue_mean": hue_mean,
        "hue_hist": hue_hist,
        "colorfulness": colorfulness(pixels),
        "is_grayscale_content": coloured <= GRAYSCALE_MAX_COLOURED_SHARE * chroma.size,
        "dominant_colors": dominant_colors(pixels),
    }


# --- hashes --------------------------------------------------------------------------------


def _bits_to_hex(bits: NDArray[np.bool_]) -> str:
    """Row-major bits, first bit most significant, as hex digits (imagehash's ``str``)."""
    return np.packbits(bits.reshape(-1)).tobytes().hex()


@cache
def _dct_rows(size: int, keep: int) -> NDArray[np.float64]:
    """The first ``keep`` rows of the unnormalised DCT-II matrix, 2 cos(pi k (2n + 1) / 2N)."""
    n = np.arange(size, dtype=np.float64)
    k = np.arange(keep, dtype=np.float64)[:, None]
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * size))


def average_hash(small: NDArray[np.uint8]) -> str:
    """aHash of the 8x8 reduction: bit set where the pixel is above the mean."""
    return _bits_to_hex(small > small.mean())


def difference_hash(small: NDArray[np.uint8]) -> str:
    """dHash of the 9x8 reduction: bit set where a pixel is brighter than its left neighbour."""
    return _bits_to_hex(small[:, 1:] > small[:, :-1])


def perceptual_hash(small: NDArray[np.uint8]) -> str:
    """pHash of the 32x32 reduction: 2-D DCT-II, bit set where a low-frequency (8x8)
    coefficient is above their median."""
    rows = _dct_rows(PHASH_SIZE, HASH_SIZE)
    low = rows @ small.astype(np.float64) @ rows.T
    low[np.abs(low) < _DCT_ZERO] = 0.0
    return _bits_to_hex(low > np.median(low))


def hashes(pixels: Pixels) -> Features:
    """aHash, dHash and pHash as computed by ``imagehash`` (Lanczos reductions of the grey image;
    see :mod:`thumbfeat.resample` for how those reductions equal Pillow's)."""
    for_ahash, for_dhash, for_phash = resize_gray_like_pillow(
        pixels.gray,
        [(HASH_SIZE, HASH_SIZE), (HASH_SIZE + 1, HASH_SIZE), (PHASH_SIZE, PHASH_SIZE)],
        Image.Resampling.LANCZOS,
    )
    return {
        "ahash": average_hash(for_ahash),
        "dhash": difference_hash(for_dhash),
        "phash": perceptual_hash(for_phash),
    }


# --- flags (CleanVision's definitions and default thresholds) ------------------------------


def cleanvision_blurriness(rgb_image: Image.Image) -> tuple[float, float]:
    """CleanVision's raw blur inputs: sqrt(var(FIND_EDGES)) and std of the 256-bin histogram,
    on the image shrunk (Pillow's default ``resize`` filter) to at most 64 px per side."""
    ratio = max(rgb_image.width, rgb_image.height) / BLURRY_MAX_RESOLUTION
    if ratio > 1:
        rgb_image = rgb_image.resize((max(int(rgb_image.width // ratio), 1),
                                      max(int(rgb_image.height // ratio), 1)))
    gray = rgb_image.convert("L")
    edges = gray.filter(ImageFilter.FIND_EDGES)
    return (math.sqrt(histogram_variance(np.asarray(edges.histogram(), dtype=np.int64))),
            float(np.std(np.asarray(gray.histogram(), dtype=np.float64))))


def histogram_variance(histogram: NDArray[np.int64]) -> float:
    """Variance of the levels counted in a 256-bin histogram, computed as Pillow's
    ``ImageStat.Stat(image).var`` does (exact integer sums, then ``(Σx² - (Σx)² / n) / n``),
    so the result is the same float, without ImageStat's per-bin Python loops."""
    levels = np.arange(histogram.size, dtype=np.int64)
    count = int(histogram.sum())
    total = int(histogram @ levels)
    squares = int(histogram @ (levels * levels))
    return (squares - total**2 / count) / count if count else 0.0


def blurry_score(blurriness: float, histogram_std: float) -> float:
    blur = 1 - math.exp(-blurriness * BLURRY_NORMALIZING)
    spread = 1 - math.exp(-histogram_std * BLURRY_NORMALIZING)
    if spread <= BLURRY_COLOR_THRESHOLD:
        spread = 0.0
    return min(blur + spread, 1.0)


def flags(pixels: Pixels, found: Features) -> Features:
    """CleanVision's per-image issue flags, each ``score < default threshold``."""
    width, height = found["width"], found["height"]
    rgb_entropy = entropy_bits(np.asarray(pixels.rgb_image.histogram(), dtype=np.int64))
    return {
        "is_dark": found["brightness_p99"] < DARK_THRESHOLD,
        "is_light": 1 - found["brightness_p05"] < LIGHT_THRESHOLD,
        "is_blurry": blurry_score(*cleanvision_blurriness(pixels.rgb_image)) < BLURRY_THRESHOLD,
        "is_low_information": min(1.0, LOW_INFORMATION_NORMALIZING * rgb_entropy)
        < LOW_INFORMATION_THRESHOLD,
        "is_odd_aspect_ratio": min(width / height, height / width) < ODD_ASPECT_THRESHOLD,
    }


def provenance() -> Features:
    return {"pillow_version": PILLOW_VERSION, "numpy_version": np.__version__}


Measure = Callable[[Pixels, DecodedImage, bytes, Features], Features]

MEASURES: tuple[tuple[str, Measure], ...] = (
    ("geometry", lambda p, d, data, found: geometry(p, d, data)),
    ("light", lambda p, d, data, found: light(p)),
    ("contrast_detail", lambda p, d, data, found: contrast_and_detail(p)),
    ("colour", lambda p, d, data, found: colour(p)),
    ("hashes", lambda p, d, data, found: hashes(p)),
    ("flags", lambda p, d, data, found: flags(p, found)),
    ("provenance", lambda p, d, data, found: provenance()),
)
"""The measures in the order they run; later ones may read earlier results (the flags read the
brightness percentiles). The benchmark times each one separately."""


def compute_features(decoded: DecodedImage, data: bytes, *,
                     timings: dict[str, float] | None = None,
                     clock: Callable[[], float] = time.perf_counter) -> Features:
    """Compute the :data:`FEATURE_COLUMNS` for one decoded image.

    ``data`` is the downloaded file, for its size and SHA-256, so a feature row is
    self-contained. When ``timings`` is given, the seconds spent preparing the pixels and in each
    of :data:`MEASURES` are added to it under their names, read from ``clock`` (the benchmark's
    breakdown, in wall or CPU time).
    """
    tune_for_measuring()
    started = clock()
    pixels = prepare(decoded)
    if timings is not None:
        timings["prepare"] = timings.get("prepare", 0.0) + clock() - started
    found: Features = {}
    for name, measure in MEASURES:
        started = clock()
        found.update(measure(pixels, decoded, data, found))
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + clock() - started
    return {name: found[name] for name in FEATURE_COLUMNS}
