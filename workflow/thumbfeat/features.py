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
results are exact and independent of summation order. Bump :data:`FEATURE_VERSION` whenever any
definition or the working-size rule changes, so rows computed under old definitions can be
recognised.
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
import pyarrow as pa
from numpy.typing import NDArray
from PIL import Image, ImageFilter, ImageStat
from PIL import __version__ as PILLOW_VERSION

from thumbfeat.imaging import DecodedImage
from thumbfeat.resample import resize_gray_like_pillow
from thumbfeat.runtime import tune_for_measuring

FEATURE_VERSION = "3"

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

DOMINANT_COLOR_TYPE = pa.struct([pa.field("color", pa.string()), pa.field("share", pa.float64())])

# Every column this module computes, with its type, in table order: the feature part of the row
# schema (thumbfeat.rows). Meaning, unit and formula of each: docs/feature-table.md.
FEATURE_FIELDS: tuple[pa.Field, ...] = (
    # geometry and file
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("aspect_ratio", pa.float64()),
    pa.field("file_bytes", pa.int64()),
    pa.field("format", pa.string()),
    pa.field("source_mode", pa.string()),
    pa.field("sha256", pa.string()),
    pa.field("pixels_sha256", pa.string()),
    # light
    pa.field("brightness_mean", pa.float64()),
    pa.field("brightness_p05", pa.float64()),
    pa.field("brightness_p99", pa.float64()),
    # contrast and detail
    pa.field("contrast_rms", pa.float64()),
    pa.field("entropy", pa.float64()),
    pa.field("sharpness", pa.float64()),
    pa.field("edge_density", pa.float64()),
    # colour
    pa.field("saturation_mean", pa.float64()),
    pa.field("saturation_std", pa.float64()),
    pa.field("value_mean", pa.float64()),
    pa.field("hue_mean", pa.float64()),
    pa.field("hue_hist", pa.list_(pa.float64())),
    pa.field("colorfulness", pa.float64()),
    pa.field("is_grayscale_content", pa.bool_()),
    pa.field("dominant_colors", pa.list_(DOMINANT_COLOR_TYPE)),
    # hashes
    pa.field("ahash", pa.string()),
    pa.field("dhash", pa.string()),
    pa.field("phash", pa.string()),
    # flags
    pa.field("is_dark", pa.bool_()),
    pa.field("is_light", pa.bool_()),
    pa.field("is_blurry", pa.bool_()),
    pa.field("is_low_information", pa.bool_()),
    pa.field("is_odd_aspect_ratio", pa.bool_()),
    # the scores the flags compare with their thresholds (version 3)
    pa.field("dark_score", pa.float64()),
    pa.field("light_score", pa.float64()),
    pa.field("blurriness_score", pa.float64()),
    pa.field("low_information_score", pa.float64()),
    pa.field("odd_aspect_score", pa.float64()),
    # provenance
    pa.field("pillow_version", pa.string()),
    pa.field("numpy_version", pa.string()),
)
FEATURE_COLUMNS: tuple[str, ...] = tuple(field.name for field in FEATURE_FIELDS)

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
    is a fast linear scan); ``high``/``low`` are the per-pixel max and min of the three.
    """

    rgb_image: Image.Image
    gray_image: Image.Image
    rgb: NDArray[np.uint8]
    red: NDArray[np.uint8]
    green: NDArray[np.uint8]
    blue: NDArray[np.uint8]
    high: NDArray[np.uint8]
    low: NDArray[np.uint8]
    gray: NDArray[np.uint8]
    gray_histogram: NDArray[np.int64]
    working: NDArray[np.uint8]


def prepare(decoded: DecodedImage) -> Pixels:
    """Flatten to RGB on white and derive the shared grey image, channels and histogram."""
    rgb_image = to_rgb_on_white(decoded.image)
    rgb = np.asarray(rgb_image)
    red, green, blue = (np.ascontiguousarray(rgb[..., c]).reshape(-1) for c in range(3))
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
        high=np.maximum(np.maximum(red, green), blue),
        low=np.minimum(np.minimum(red, green), blue),
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


def brightness_percentiles(weighted: NDArray[np.int32],
                           percents: tuple[float, ...]) -> list[float]:
    """Percentiles of per-pixel HSP brightness with numpy's default linear interpolation.

    Brightness is monotonic in the integer weighted square, so the pixels are ordered on the
    integers and only the few order statistics needed are turned into brightness.
    """
    ordered = np.sort(weighted, axis=None)
    last = ordered.size - 1
    out = []
    for percent in percents:
        position = percent / 100 * last
        below = math.floor(position)
        above = min(last, below + 1)
        low = math.sqrt(int(ordered[below])) * _HSP_SCALE
        high = math.sqrt(int(ordered[above])) * _HSP_SCALE
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


def _integer_variance(values: NDArray[Any]) -> float:
    """Population variance of integer values from exact sums.

    The values are small integers, so in float64 every square and every partial sum of squares
    is an exact integer below 2**53: the dot product (BLAS) is exact and faster than int64 sums.
    """
    flat = values.reshape(-1).astype(np.float64)
    count = flat.size
    total = int(flat.sum())
    squares = int(flat @ flat)
    # Python integers from here on: count * squares can exceed 2**53.
    return (count * squares - total * total) / (count * count)


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

    float32 holds every intermediate exactly (integers below 2**24), and is the fastest type.
    """
    if gray.ndim != 2 or gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    g = gray.astype(np.float32)
    smoothed_vertically = g[:-2] + 2 * g[1:-1] + g[2:]
    gx = smoothed_vertically[:, 2:] - smoothed_vertically[:, :-2]
    diff_vertically = g[2:] - g[:-2]
    gy = diff_vertically[:, :-2] + 2 * diff_vertically[:, 1:-1] + diff_vertically[:, 2:]
    # Compare squared magnitudes: exact, and no square root per pixel.
    strong = (gx * gx + gy * gy) > np.float32(threshold * threshold)
    return int(np.count_nonzero(strong)) / strong.size


def contrast_and_detail(pixels: Pixels) -> Features:
    return {
        "contrast_rms": contrast_rms(pixels.gray_histogram),
        "entropy": entropy_bits(pixels.gray_histogram),
        "sharpness": laplacian_variance(pixels.working),
        "edge_density": sobel_edge_density(pixels.working),
    }


# --- colour --------------------------------------------------------------------------------


def hue_sixths(pixels: Pixels, chroma: NDArray[np.int16]) -> NDArray[np.int16]:
    """HSV hue of every pixel as the integer ``t = hue_degrees * chroma / 60`` (0 <= t < 6 chroma).

    Keeping hue as an exact integer numerator makes the 30-degree histogram bins exact. Pixels
    with chroma 0 get 0 here and must be left out by the caller.
    """
    red, green, blue = (c.astype(np.int16) for c in (pixels.red, pixels.green, pixels.blue))
    from_red = green - blue
    from_red += np.where(from_red < 0, 6 * chroma, 0).astype(np.int16)
    return np.where(pixels.high == pixels.red, from_red,
                    np.where(pixels.high == pixels.green, 2 * chroma + blue - red,
                             4 * chroma + red - green))


def hue_statistics(pixels: Pixels) -> tuple[float | None, list[float] | None]:
    """Circular mean hue (degrees) and 12-bin hue shares over clearly coloured pixels."""
    high = pixels.high
    value_low = math.floor(HUE_VALUE_RANGE[0] * 255) + 1  # V > 0.15  <=>  max >= 39
    value_high = math.ceil(HUE_VALUE_RANGE[1] * 255) - 1  # V < 0.95  <=>  max <= 242
    chroma_all = (high - pixels.low).astype(np.int16)
    # S > 0.2  <=>  5 (max - min) > max, in integers.
    mask = ((high >= value_low) & (high <= value_high)
            & (chroma_all * round(1 / HUE_MIN_SATURATION) > high))
    selected = int(np.count_nonzero(mask))
    if selected == 0:
        return None, None
    sixths = hue_sixths(pixels, chroma_all)[mask]
    # hue / 60 degrees. In float32 the quotient of these small integers is within 1e-6 of the
    # true value, far less than the 1/255 that separates a non-integer 2 t / c from an integer,
    # so truncating 2 t / c gives the exact 30-degree bin.
    sextant = sixths.astype(np.float32) / chroma_all[mask].astype(np.float32)
    bins = np.bincount((2 * sextant).astype(np.intp), minlength=HUE_BINS)
    # float32 sine and cosine (vectorised, several times faster than float64) summed in float64:
    # the mean direction is accurate to about 1e-4 degrees.
    radians = sextant * np.float32(math.pi / 3)
    sin_sum = float(np.sin(radians).sum(dtype=np.float64))
    cos_sum = float(np.cos(radians).sum(dtype=np.float64))
    if math.hypot(sin_sum, cos_sum) <= 1e-6 * selected:
        mean = None  # the hues cancel out: no mean direction
    else:
        mean = math.degrees(math.atan2(sin_sum, cos_sum)) % 360.0
    return mean, (bins / selected).tolist()


def colorfulness(pixels: Pixels) -> float:
    """Hasler and Süsstrunk (2003): sqrt(std_rg² + std_yb²) + 0.3 sqrt(mean_rg² + mean_yb²).

    rg = R - G and yb = (R + G)/2 - B, signed (the published formula, without absolute values).
    Moments come from exact integer sums of rg and 2 yb.
    """
    red = pixels.red.astype(np.int16)
    green = pixels.green.astype(np.int16)
    rg = red - green
    yb2 = red + green - 2 * pixels.blue.astype(np.int16)
    count = rg.size
    rg_mean = int(rg.sum(dtype=np.int64)) / count
    yb_mean = int(yb2.sum(dtype=np.int64)) / (2 * count)
    rg_var = _integer_variance(rg)
    yb_var = _integer_variance(yb2) / 4
    return math.sqrt(rg_var + yb_var) + 0.3 * math.sqrt(rg_mean**2 + yb_mean**2)


def dominant_colors(pixels: Pixels) -> list[dict[str, object]]:
    """The most populated cells of a 8x8x8 RGB grid, as mean colour (hex) and pixel share."""
    shift = 8 - DOMINANT_BITS
    cells = (((pixels.red >> shift).astype(np.uint16) << (2 * DOMINANT_BITS))
             | ((pixels.green >> shift).astype(np.uint16) << DOMINANT_BITS)
             | (pixels.blue >> shift))
    counts, sums = _cell_counts_and_sums(cells, pixels, 1 << (3 * DOMINANT_BITS))
    # Stable sort on -count: ties go to the lower cell number, so the result is deterministic.
    top = [int(c) for c in np.argsort(-counts, kind="stable")[:DOMINANT_COLOURS] if counts[c] > 0]
    out: list[dict[str, object]] = []
    for cell in top:
        n = int(counts[cell])
        # Mean colour rounded half up, in integers: (2 sum + n) // (2 n).
        colour = "#" + "".join(f"{(2 * int(s[cell]) + n) // (2 * n):02x}" for s in sums)
        out.append({"color": colour, "share": n / cells.size})
    return out


def _cell_counts_and_sums(cells: NDArray[np.uint16], pixels: Pixels,
                          length: int) -> tuple[NDArray[np.int64], tuple[NDArray[np.int64], ...]]:
    """Exact pixel count and R, G, B sums per cell, in as few weighted bincounts as fit.

    A float64 weight holds two small integers exactly as ``high * 2**k + low`` when the per-cell
    sum of ``low`` fits in ``k`` bits and the packed sum stays below 2**53. For a thumbnail the
    count packs with blue and red with green, so two passes give all four; large images fall
    back to one pass per quantity.
    """
    count_bits = max(1, cells.size.bit_length())
    sum_bits = max(1, (255 * cells.size).bit_length())

    def split(weights: NDArray[np.float64], low_bits: int) -> tuple[NDArray[np.int64], ...]:
        both = np.bincount(cells, weights=weights, minlength=length).astype(np.int64)
        return both >> low_bits, both & ((1 << low_bits) - 1)

    if count_bits + sum_bits <= 53 and 2 * sum_bits <= 53:
        blue, counts = split(pixels.blue * float(1 << count_bits) + 1.0, count_bits)
        red, green = split(pixels.red * float(1 << sum_bits) + pixels.green, sum_bits)
        return counts, (red, green, blue)
    counts = np.bincount(cells, minlength=length).astype(np.int64)
    red, green, blue = (np.bincount(cells, weights=c, minlength=length).astype(np.int64)
                        for c in (pixels.red, pixels.green, pixels.blue))
    return counts, (red, green, blue)


def colour(pixels: Pixels) -> Features:
    high = pixels.high
    chroma = high - pixels.low
    saturation = np.divide(chroma, high, out=np.zeros(high.shape, dtype=np.float64),
                           where=high > 0)
    hue_mean, hue_hist = hue_statistics(pixels)
    coloured = int(np.count_nonzero(chroma > GRAYSCALE_CHROMA))
    return {
        "saturation_mean": float(saturation.mean()),
        "saturation_std": float(saturation.std()),
        "value_mean": int(high.sum(dtype=np.int64)) / (high.size * 255),
        "hue_mean": hue_mean,
        "hue_hist": hue_hist,
        "colorfulness": colorfulness(pixels),
        "is_grayscale_content": coloured <= GRAYSCALE_MAX_COLOURED_SHARE * chroma.size,
        "dominant_colors": dominant_colors(pixels),
    }


# --- hashes --------------------------------------------------------------------------------


def _bits_to_hex(bits: NDArray[np.bool_]) -> str:
    """Row-major bits, first bit most significant, as 16 hex digits (imagehash's ``str``)."""
    value = 0
    for bit in bits.reshape(-1):
        value = (value << 1) | int(bit)
    return f"{value:0{bits.size // 4}x}"


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
    blurriness = math.sqrt(ImageStat.Stat(edges).var[0])
    return blurriness, float(np.std(np.asarray(gray.histogram(), dtype=np.float64)))


def blurry_score(blurriness: float, histogram_std: float) -> float:
    blur = 1 - math.exp(-blurriness * BLURRY_NORMALIZING)
    spread = 1 - math.exp(-histogram_std * BLURRY_NORMALIZING)
    if spread <= BLURRY_COLOR_THRESHOLD:
        spread = 0.0
    return min(blur + spread, 1.0)


def flags(pixels: Pixels, found: Features) -> Features:
    """CleanVision's per-image issue flags, each ``score < default threshold``, with the scores.

    The scores are kept beside the flags so users can choose thresholds of their own.
    """
    width, height = found["width"], found["height"]
    rgb_entropy = entropy_bits(np.asarray(pixels.rgb_image.histogram(), dtype=np.int64))
    scores = {
        "dark_score": found["brightness_p99"],
        "light_score": 1 - found["brightness_p05"],
        "blurriness_score": blurry_score(*cleanvision_blurriness(pixels.rgb_image)),
        "low_information_score": min(1.0, LOW_INFORMATION_NORMALIZING * rgb_entropy),
        "odd_aspect_score": min(width / height, height / width),
    }
    return {
        "is_dark": scores["dark_score"] < DARK_THRESHOLD,
        "is_light": scores["light_score"] < LIGHT_THRESHOLD,
        "is_blurry": scores["blurriness_score"] < BLURRY_THRESHOLD,
        "is_low_information": scores["low_information_score"] < LOW_INFORMATION_THRESHOLD,
        "is_odd_aspect_ratio": scores["odd_aspect_score"] < ODD_ASPECT_THRESHOLD,
        **scores,
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
