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
``(299 R + 587 G + 114 B) / 1000`` in Pillow's 16-bit fixed point, see
:data:`thumbfeat.kernels.GRAY_WEIGHTS`), computed once and shared by the contrast, entropy,
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

Speed: written as numpy expressions, the measures took about a hundred whole-image passes, each
writing a temporary array. Instead, :mod:`thumbfeat.kernels` reads the pixels where Pillow keeps
them (one word a pixel, shared through the Arrow interface without a copy, see
:func:`pixel_words`), splits the channels and makes the grey image in one compiled pass, counts
the grey and RGB histograms in another, gathers the inputs of the light and colour measures in
one pass over the RGB channels (plus a second for the deviations and hue directions), the
Laplacian and Sobel sums in one pass over the grey image, and does each of Pillow's resizes for
the hashes and the blur flag in one compiled call; what remains here turns sums, counts and small
tables into columns. Every compiled result that stands in for a Pillow or numpy call (grey,
histograms, resizes, the pHash median, the blur flag's histogram spread) is the same value,
tested so.

Bump :data:`FEATURE_VERSION` whenever any definition or the working-size rule changes, so rows
computed under old definitions can be recognised.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray
from PIL import Image
from PIL import __version__ as PILLOW_VERSION

from thumbfeat.imaging import DecodedImage
from thumbfeat.lazy import lazy_module
from thumbfeat.resample import resize_gray_like_pillow

# Loaded on first use: see thumbfeat.lazy.
kernels = lazy_module("thumbfeat.kernels")

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


def to_working_size(gray: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Shrink ``gray`` to :func:`working_dimensions` with Pillow's BOX filter; never enlarge."""
    height, width = gray.shape
    size = working_dimensions(width, height)
    if size == (width, height):
        return gray
    return np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BOX))


class PixelSums(NamedTuple):
    """What the one compiled pass over the RGB pixels gathers (see :func:`kernels.pixel_sums`)."""

    weighted: NDArray[np.int32]
    buckets: NDArray[np.int64]
    integers: NDArray[np.int64]
    floats: NDArray[np.float64]
    hue_bins: NDArray[np.int64]
    cells: NDArray[np.int64]
    top_cells: NDArray[np.int64]
    top_cell_sums: NDArray[np.int64]


_VALUE_LOW = math.floor(HUE_VALUE_RANGE[0] * 255) + 1  # V > 0.15  <=>  max >= 39
_VALUE_HIGH = math.ceil(HUE_VALUE_RANGE[1] * 255) - 1  # V < 0.95  <=>  max <= 242
_SATURATION_DIVISOR = round(1 / HUE_MIN_SATURATION)  # S > 0.2  <=>  chroma > max // 5


def pixel_sums(red: NDArray[np.uint8], green: NDArray[np.uint8],
               blue: NDArray[np.uint8]) -> PixelSums:
    """Run the compiled light and colour pass with this module's thresholds."""
    return PixelSums(*kernels.pixel_sums(
        red, green, blue, _VALUE_LOW, _VALUE_HIGH,
        _SATURATION_DIVISOR, GRAYSCALE_CHROMA, DOMINANT_BITS, DOMINANT_COLOURS,
        kernels.hue_directions()))


@dataclass(frozen=True)
class Pixels:
    """The prepared views every measure reads: built once per image, never modified.

    ``red``/``green``/``blue`` are flat uint8 channel copies (contiguous), which the compiled
    pass reads one element per channel at a time; ``gray`` is the grey image (2-D);
    ``levels`` the 256-bin histograms of grey, red, green and blue (rows 0..3); ``sums`` is
    what the compiled pass gathers for the light and colour measures.
    """

    rgb_image: Image.Image
    rgb: NDArray[np.uint8]
    red: NDArray[np.uint8]
    green: NDArray[np.uint8]
    blue: NDArray[np.uint8]
    gray: NDArray[np.uint8]
    levels: NDArray[np.int64]
    working: NDArray[np.uint8]
    sums: PixelSums

    @property
    def gray_histogram(self) -> NDArray[np.int64]:
        """Pillow's ``histogram()`` of the grey image."""
        return self.levels[0]

    @property
    def rgb_histogram(self) -> NDArray[np.int64]:
        """Pillow's ``histogram()`` of the RGB image: 768 bins, red then green then blue."""
        return self.levels[1:].reshape(-1)

    @cached_property
    def chroma(self) -> NDArray[np.uint8]:
        """Per pixel max(R, G, B) - min(R, G, B), flat (for checks; the measures use ``sums``)."""
        return np.ptp(self.rgb.reshape(-1, 3), axis=1).astype(np.uint8)


def packed_words(rgb: NDArray[np.uint8]) -> NDArray[np.uint32]:
    """(height, width, 3) RGB bytes as one word per pixel, red in the low byte (the layout of
    Pillow's RGB storage), flat and read-only like the words shared by Pillow (so the compiled
    code sees one argument type)."""
    rgb = rgb.reshape(-1, 3).astype(np.uint32)
    words = rgb[:, 0] | (rgb[:, 1] << 8) | (rgb[:, 2] << 16)
    words.setflags(write=False)
    return words


def pixel_words(rgb_image: Image.Image) -> NDArray[np.uint32]:
    """The pixels of an RGB image as one word each, red in the low byte, flat.

    Pillow keeps an RGB pixel in four bytes (R, G, B, padding) and shares that memory through
    the Arrow interface, so it is read without a copy; ``np.asarray`` would first have Pillow
    pack it into three bytes a pixel. Where Pillow cannot share it (an image stored in several
    blocks), or words are not little-endian or not aligned, the packed bytes are turned into
    words instead.
    """
    if sys.byteorder == "little":
        try:
            exported = pa.array(rgb_image)
        except (ValueError, TypeError, pa.ArrowException):
            exported = None
        if (exported is not None and exported.offset == 0 and exported.values.offset == 0
                and len(exported) == rgb_image.width * rgb_image.height):
            words = np.frombuffer(exported.values.buffers()[1], np.uint32, count=len(exported))
            if words.flags.aligned:  # Pillow aligns its rows; unaligned would need its own compile
                return words
    return packed_words(np.asarray(rgb_image))


def prepare(decoded: DecodedImage) -> Pixels:
    """Flatten to RGB on white, derive the shared grey image, channels and histograms (compiled
    passes that equal Pillow's ``convert("L")`` and ``histogram()``), and run the compiled pass
    gathering the light and colour sums."""
    rgb_image = to_rgb_on_white(decoded.image)
    shape = (rgb_image.height, rgb_image.width)
    red, green, blue, gray, rgb = kernels.split_channels(pixel_words(rgb_image))
    rgb = rgb.reshape(*shape, 3)
    gray = gray.reshape(shape)
    return Pixels(
        rgb_image=rgb_image,
        rgb=rgb,
        red=red,
        green=green,
        blue=blue,
        gray=gray,
        levels=kernels.level_counts(red, green, blue, gray.reshape(-1)),
        working=to_working_size(gray),
        sums=pixel_sums(red, green, blue),
    )


# --- geometry and file ---------------------------------------------------------------------


def pixels_digest(rgb: NDArray[np.uint8]) -> str:
    """SHA-256 of the decoded RGB pixels and their shape: equal exactly for identical pixels."""
    hasher = hashlib.sha256(f"{rgb.shape[1]}x{rgb.shape[0]}:".encode())
    hasher.update(np.ascontiguousarray(rgb).data)
    return hasher.hexdigest()


def geometry(pixels: Pixels, decoded: DecodedImage, data: bytes,
             data_sha256: str | None = None) -> Features:
    """Size, file facts and both digests; ``data_sha256`` is the digest of ``data`` when the
    caller already has it (the bytes are then not hashed again)."""
    height, width = pixels.rgb.shape[:2]
    return {
        "width": int(width),
        "height": int(height),
        "aspect_ratio": width / height,
        "file_bytes": len(data),
        "format": str(decoded.format),
        "source_mode": str(decoded.source_mode),
        "sha256": hashlib.sha256(data).hexdigest() if data_sha256 is None else data_sha256,
        "pixels_sha256": pixels_digest(pixels.rgb),
    }


# --- light ---------------------------------------------------------------------------------


def order_statistics(values: NDArray[np.int32], rank: int) -> tuple[int, int]:
    """The values of rank ``rank`` and ``rank + 1`` (0-based, clipped to the last) in sorted order,
    of non-negative int32 ``values``: a bucket count, then a sort of one bucket only."""
    values = np.ascontiguousarray(values, dtype=np.int32)
    at, after = kernels.ranked_pair(values, kernels.bucket_counts(values), rank)
    return int(at), int(after)


def brightness_percentiles(weighted: NDArray[np.int32], buckets: NDArray[np.int64],
                           percents: tuple[float, float]) -> list[float]:
    """Two percentiles of per-pixel HSP brightness with numpy's default linear interpolation.

    Brightness is monotonic in the integer weighted square, so only the two order statistics
    around each percentile's position are selected on the integers (both percentiles in one
    compiled pass) and turned into brightness.
    """
    last = weighted.size - 1
    positions = [percent / 100 * last for percent in percents]
    below = [math.floor(position) for position in positions]
    squares = kernels.ranked_pairs(weighted, buckets, below[0], below[1])
    out = []
    for index, position in enumerate(positions):
        low = math.sqrt(squares[2 * index]) * _HSP_SCALE
        high = math.sqrt(squares[2 * index + 1]) * _HSP_SCALE
        out.append(low + (high - low) * (position - below[index]))
    return out


def light(pixels: Pixels) -> Features:
    """HSP brightness: mean, 5th and 99th percentiles, each in 0..1."""
    sums = pixels.sums
    mean = float(sums.floats[0]) / sums.weighted.size * _HSP_SCALE
    p05, p99 = brightness_percentiles(sums.weighted, sums.buckets, (5.0, 99.0))
    return {
        "brightness_mean": min(1.0, max(0.0, mean)),
        "brightness_p05": min(1.0, max(0.0, p05)),
        "brightness_p99": min(1.0, max(0.0, p99)),
    }


# --- contrast and detail -------------------------------------------------------------------


def _level_powers() -> NDArray[np.int64]:
    levels = np.arange(256, dtype=np.int64)
    powers = np.stack([np.ones_like(levels), levels, levels * levels])
    powers.setflags(write=False)
    return powers


_LEVEL_POWERS = _level_powers()
"""Rows 1, x and x² for the levels x of a 256-bin histogram (see :func:`level_moments`)."""


def level_moments(histogram: NDArray[np.int64]) -> tuple[int, int, int]:
    """How many values a 256-bin histogram counts, their sum and their sum of squares, as exact
    integers (one matrix product)."""
    count, total, squares = (_LEVEL_POWERS @ histogram).tolist()
    return count, total, squares


def contrast_rms(histogram: NDArray[np.int64]) -> float:
    """Standard deviation of grey levels / 255, exactly from the integer histogram moments."""
    count, total, squares = level_moments(histogram)
    variance = (count * squares - total * total) / (count * count)
    return math.sqrt(max(0.0, variance)) / 255.0


def entropy_bits(histogram: NDArray[np.int64]) -> float:
    """Shannon entropy in bits of a histogram (0 for a flat image, at most log2(bins))."""
    nonzero = histogram[histogram > 0]
    probabilities = nonzero / nonzero.sum()
    # "+ 0.0" turns the -0.0 produced for a single-level image into a plain 0.0.
    return float(-(probabilities * np.log2(probabilities)).sum()) + 0.0


def _variance(count: int, total: int, squares: int) -> float:
    # Python integers: count * squares can exceed 2**53.
    return (count * squares - total * total) / (count * count)


def _has_interior(gray: NDArray[np.uint8]) -> bool:
    return gray.ndim == 2 and gray.shape[0] >= 3 and gray.shape[1] >= 3


def _detail_sums(gray: NDArray[np.uint8], threshold: float) -> tuple[int, int, int, int]:
    # The Sobel sums are integers: "magnitude > threshold" equals "gx² + gy² > floor(threshold²)".
    return kernels.detail_sums(np.ascontiguousarray(gray, dtype=np.uint8),
                               math.floor(threshold * threshold))


def sobel_edge_density(gray: NDArray[np.uint8], threshold: float = EDGE_THRESHOLD) -> float:
    """Share of valid (interior) pixels whose Sobel gradient magnitude exceeds ``threshold``,
    decided exactly on the integer ``gx² + gy²`` (no square root)."""
    if not _has_interior(gray):
        return 0.0
    count, _, _, strong = _detail_sums(gray, threshold)
    return strong / count


def contrast_and_detail(pixels: Pixels) -> Features:
    sharpness = edge_density = 0.0
    if _has_interior(pixels.working):
        count, total, squares, strong = _detail_sums(pixels.working, EDGE_THRESHOLD)
        sharpness, edge_density = _variance(count, total, squares), strong / count
    return {
        "contrast_rms": contrast_rms(pixels.gray_histogram),
        "entropy": entropy_bits(pixels.gray_histogram),
        "sharpness": sharpness,
        "edge_density": edge_density,
    }


# --- colour --------------------------------------------------------------------------------


def hue_sixths(pixels: Pixels) -> NDArray[np.int32]:
    """HSV hue of every pixel as the integer ``t = hue_degrees * chroma / 60`` (0 <= t < 6 chroma;
    0 where chroma is 0), computed as the compiled pass does."""
    return kernels.hue_numerators(pixels.red, pixels.green, pixels.blue)


def hue_statistics(sums: PixelSums) -> tuple[float | None, list[float] | None]:
    """Circular mean hue (degrees) and 12-bin hue shares over clearly coloured pixels
    (S > 0.2 and 0.15 < V < 0.95, decided in 8-bit integers by the compiled pass).

    The bins are exact (integer hue numerators); the mean direction comes from the float64 sums
    of the angles' cosines and sines.
    """
    selected = int(sums.integers[kernels.HUE_SELECTED])
    if selected == 0:
        return None, None
    cos_sum, sin_sum = float(sums.floats[3]), float(sums.floats[4])
    if math.hypot(sin_sum, cos_sum) <= 1e-6 * selected:
        mean = None  # the hues cancel out: no mean direction
    else:
        mean = math.degrees(math.atan2(sin_sum, cos_sum)) % 360.0
    return mean, [int(count) / selected for count in sums.hue_bins]


def colorfulness(sums: PixelSums) -> float:
    """Hasler and Süsstrunk (2003): sqrt(std_rg² + std_yb²) + 0.3 sqrt(mean_rg² + mean_yb²).

    rg = R - G and yb = (R + G)/2 - B, signed (the published formula, without absolute values).
    Moments come from exact integer sums of rg and 2 yb.
    """
    count = sums.weighted.size
    rg_total, rg_squares, yb2_total, yb2_squares = (
        int(sums.integers[index]) for index in
        (kernels.RG_SUM, kernels.RG_SQUARES, kernels.YB2_SUM, kernels.YB2_SQUARES))
    rg_mean = rg_total / count
    yb_mean = yb2_total / (2 * count)
    rg_var = _variance(count, rg_total, rg_squares)
    yb_var = _variance(count, yb2_total, yb2_squares) / 4
    return math.sqrt(rg_var + yb_var) + 0.3 * math.sqrt(rg_mean**2 + yb_mean**2)


def dominant_colors(sums: PixelSums) -> list[dict[str, object]]:
    """The most populated cells of a 8x8x8 RGB grid, as mean colour (hex) and pixel share.

    Ties go to the lower cell number, so the result is deterministic.
    """
    out: list[dict[str, object]] = []
    counts = sums.cells[sums.top_cells].tolist()
    for n, (red, green, blue) in zip(counts, sums.top_cell_sums.tolist(), strict=True):
        if n == 0:
            break
        # Mean colour rounded half up, in integers: (2 sum + n) // (2 n).
        halves = 2 * n
        colour = (f"#{(2 * red + n) // halves:02x}{(2 * green + n) // halves:02x}"
                  f"{(2 * blue + n) // halves:02x}")
        out.append({"color": colour, "share": n / sums.weighted.size})
    return out


def colour(pixels: Pixels) -> Features:
    sums = pixels.sums
    count = sums.weighted.size
    hue_mean, hue_hist = hue_statistics(sums)
    return {
        "saturation_mean": float(sums.floats[1]),
        "saturation_std": float(sums.floats[2]),
        "value_mean": int(sums.integers[kernels.VALUE_SUM]) / (count * 255),
        "hue_mean": hue_mean,
        "hue_hist": hue_hist,
        "colorfulness": colorfulness(sums),
        "is_grayscale_content": int(sums.integers[kernels.COLOURED])
        <= GRAYSCALE_MAX_COLOURED_SHARE * count,
        "dominant_colors": dominant_colors(sums),
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
    # The mean of a few uint8 values, as numpy's mean gives it: their exact integer sum over their
    # number, correctly rounded, without numpy's general reduction steps.
    return _bits_to_hex(small > int(small.sum()) / small.size)


def difference_hash(small: NDArray[np.uint8]) -> str:
    """dHash of the 9x8 reduction: bit set where a pixel is brighter than its left neighbour."""
    return _bits_to_hex(small[:, 1:] > small[:, :-1])


def perceptual_hash(small: NDArray[np.uint8]) -> str:
    """pHash of the 32x32 reduction: 2-D DCT-II, bit set where a low-frequency (8x8)
    coefficient is above their median."""
    rows = _dct_rows(PHASH_SIZE, HASH_SIZE)
    low = rows @ small.astype(np.float64) @ rows.T
    low[np.abs(low) < _DCT_ZERO] = 0.0
    ordered = np.sort(low, axis=None)
    middle = ordered.size // 2
    # numpy's median of an even count, without its general-purpose overhead.
    return _bits_to_hex(low > (ordered[middle - 1] + ordered[middle]) / 2)


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


def cleanvision_blurriness(pixels: Pixels) -> tuple[float, float]:
    """CleanVision's raw blur inputs: sqrt(var(FIND_EDGES)) and std of the 256-bin histogram,
    on the image shrunk (Pillow's default ``resize`` filter, bicubic) to at most 64 px per side
    and converted to grey.

    Pillow resizes each channel of an RGB image with the same 8-bit arithmetic as a greyscale
    image, so the channels are shrunk one by one as :mod:`thumbfeat.resample` does (equal to
    Pillow's result, and several times faster); the grey conversion, edge filter and histograms
    of the small image are one compiled pass (:func:`kernels.grey_and_edge_histograms`).
    """
    rgb_image = pixels.rgb_image
    shape = (rgb_image.height, rgb_image.width)
    channels = [channel.reshape(shape) for channel in (pixels.red, pixels.green, pixels.blue)]
    ratio = max(rgb_image.width, rgb_image.height) / BLURRY_MAX_RESOLUTION
    if ratio > 1:
        size = (max(int(rgb_image.width // ratio), 1), max(int(rgb_image.height // ratio), 1))
        channels = [resize_gray_like_pillow(channel, [size], Image.Resampling.BICUBIC)[0]
                    for channel in channels]
    grey_counts, edge_counts = kernels.grey_and_edge_histograms(*channels)
    return math.sqrt(histogram_variance(edge_counts)), histogram_std(grey_counts)


def histogram_variance(histogram: NDArray[np.int64]) -> float:
    """Variance of the levels counted in a 256-bin histogram, computed as Pillow's
    ``ImageStat.Stat(image).var`` does (exact integer sums, then ``(Σx² - (Σx)² / n) / n``),
    so the result is the same float, without ImageStat's per-bin Python loops."""
    count, total, squares = level_moments(histogram)
    return (squares - total**2 / count) / count if count else 0.0


def histogram_std(histogram: NDArray[np.int64]) -> float:
    """``np.std`` of the bin counts of a 256-bin histogram of at most 64x64 pixels, from exact
    integers: the same float, without numpy's general-purpose reduction steps.

    Why it is the same: the mean ``n / 256`` has at most 8 fractional bits, so numpy's deviations,
    their squares (under 2**41) and their sum are all exact in float64, and its result is the
    correctly rounded square root of the exact ``(256 Σc² - n²) / 256²``, as this is.
    """
    bins = histogram.size
    count = int(histogram.sum())
    squares = int(histogram @ histogram)
    return math.sqrt((bins * squares - count * count) / (bins * bins))


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
    rgb_entropy = entropy_bits(pixels.rgb_histogram)
    scores = {
        "dark_score": found["brightness_p99"],
        "light_score": 1 - found["brightness_p05"],
        "blurriness_score": blurry_score(*cleanvision_blurriness(pixels)),
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
    ("geometry", lambda p, d, data, found: geometry(p, d, data, found.get("sha256"))),
    ("light", lambda p, d, data, found: light(p)),
    ("contrast_detail", lambda p, d, data, found: contrast_and_detail(p)),
    ("colour", lambda p, d, data, found: colour(p)),
    ("hashes", lambda p, d, data, found: hashes(p)),
    ("flags", lambda p, d, data, found: flags(p, found)),
    ("provenance", lambda p, d, data, found: provenance()),
)
"""The measures in the order they run; later ones may read earlier results (the flags read the
brightness percentiles). The benchmark times each one separately."""


def warm_kernels() -> float:
    """Measure one small synthetic image so that every compiled kernel is built (or loaded from
    the cache of compiled code); returns the seconds it took.

    The first process on a machine pays the compilation (several seconds) and stores the result;
    ``thumbfeat warm`` does this at install time so that batch jobs only load it.
    """
    started = time.perf_counter()
    ramp = np.arange(96 * 80 * 3, dtype=np.uint32).reshape(80, 96, 3) * 2654435761 % 256
    image = Image.fromarray(ramp.astype(np.uint8), "RGB")
    compute_features(DecodedImage(image=image, format="PNG", source_mode="RGB"), b"")
    return time.perf_counter() - started


def compute_features(decoded: DecodedImage, data: bytes, *, data_sha256: str | None = None,
                     timings: dict[str, float] | None = None,
                     clock: Callable[[], float] = time.perf_counter) -> Features:
    """Compute the :data:`FEATURE_COLUMNS` for one decoded image.

    ``data`` is the downloaded file, for its size and SHA-256, so a feature row is
    self-contained; ``data_sha256``, when given, is that SHA-256 (hex) computed already, by a
    caller that hashed the same bytes. When ``timings`` is given, the seconds spent preparing the
    pixels and in each of :data:`MEASURES` are added to it under their names, read from
    ``clock`` (the benchmark's breakdown, in wall or CPU time). The process measuring is expected
    to have been tuned for it when it started (thumbfeat.runtime.tune_for_measuring): that is no
    business of one image.
    """
    started = clock()
    pixels = prepare(decoded)
    if timings is not None:
        timings["prepare"] = timings.get("prepare", 0.0) + clock() - started
    found: Features = {} if data_sha256 is None else {"sha256": data_sha256}
    for name, measure in MEASURES:
        started = clock()
        found.update(measure(pixels, decoded, data, found))
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + clock() - started
    return {name: found[name] for name in FEATURE_COLUMNS}
