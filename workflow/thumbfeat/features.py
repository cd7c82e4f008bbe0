"""Starter per-image visual features computed with numpy on a :class:`DecodedImage`.

Every image is first flattened to 8-bit RGB so that all measures see comparable pixels:

* transparency (RGBA, LA, PA, palette or greyscale/RGB with a ``transparency`` entry) is
  composited onto white, because that is how a catalog page shows a transparent thumbnail;
* 16-bit greyscale (``I;16*``) is scaled linearly, ``round(v * 255 / 65535)``, since Pillow's
  own conversion to ``L`` clips everything above 255 to white;
* 32-bit ``I`` and float ``F`` images carry no fixed sample range, so their finite values are
  stretched from their own minimum..maximum onto 0..255 (a constant image becomes black);
* everything else (CMYK, YCbCr, palette, 1-bit, ...) uses Pillow's ``convert("RGB")``.

The grey image used by the contrast, entropy and sharpness measures is Pillow's ``L``
conversion of that RGB image (ITU-R 601-2 luma), so results match ``Image.convert("L")``.

Brightness, contrast and entropy are means/histogram statistics, which do not depend on
resolution, so they use every pixel. Sharpness does depend on scale (the same photo stored at
twice the size has much smaller pixel-to-pixel differences), so it is measured at a common
working size: if the grey image's longer side exceeds :data:`WORKING_SIZE`, it is resized so
the longer side is exactly ``WORKING_SIZE`` and the shorter side is
``max(1, round(shorter * WORKING_SIZE / longer))``, using Pillow's ``BOX`` filter (an area
average, which adds no ringing that would read as false sharpness). Smaller images are used
as they are; they are never enlarged.

Bump :data:`FEATURE_VERSION` whenever any definition or the working-size rule changes, so
cached results computed under the old definitions can be recognised.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from thumbfeat.imaging import DecodedImage

FEATURE_VERSION = "1"

WORKING_SIZE = 512

FEATURE_COLUMNS: tuple[str, ...] = (
    "width",
    "height",
    "file_bytes",
    "format",
    "brightness_mean",
    "contrast_rms",
    "entropy",
    "sharpness",
)

_WHITE_RGBA = (255, 255, 255, 255)

# HSP (Darel Rex Finley's perceived-brightness model) weights for squared R, G, B. Pre-weighted
# lookup tables of squares turn the per-pixel work into three table lookups in float64, which
# is both exact to double precision and faster than squaring a float copy of the image.
_LEVELS = np.arange(256, dtype=np.float64)
_HSP_SQUARE_LUTS: tuple[NDArray[np.float64], ...] = tuple(
    weight * _LEVELS**2 for weight in (0.241, 0.691, 0.068)
)


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


def hsp_brightness_mean(rgb: NDArray[np.uint8]) -> float:
    """Mean HSP perceived brightness, sqrt(.241 R² + .691 G² + .068 B²) / 255, in 0..1.

    HSP weights squared channels, which tracks perceived lightness of saturated colours
    better than a plain luma average does.
    """
    red_sq, green_sq, blue_sq = _HSP_SQUARE_LUTS
    weighted = red_sq[rgb[..., 0]] + green_sq[rgb[..., 1]] + blue_sq[rgb[..., 2]]
    mean = float(np.sqrt(weighted).mean()) / 255.0
    # The weights sum to 1.0, but their float products can land a hair outside [0, 1].
    return min(1.0, max(0.0, mean))


def contrast_rms(histogram: NDArray[np.float64]) -> float:
    """RMS contrast: standard deviation of grey levels / 255, taken from the histogram.

    Working from the 256-bin histogram avoids another full pass over the pixels and equals
    ``np.std(gray) / 255`` up to float rounding.
    """
    count = histogram.sum()
    mean = float(histogram @ _LEVELS) / count
    variance = float(histogram @ (_LEVELS - mean) ** 2) / count
    return float(np.sqrt(variance)) / 255.0


def entropy_bits(histogram: NDArray[np.float64]) -> float:
    """Shannon entropy in bits of the grey-level histogram (0 for a flat image, max 8)."""
    probabilities = histogram[histogram > 0] / histogram.sum()
    # "+ 0.0" turns the -0.0 produced for a single-level image into a plain 0.0.
    return float(-(probabilities * np.log2(probabilities)).sum()) + 0.0


def laplacian_variance(gray: NDArray[np.float64]) -> float:
    """Variance of the 4-neighbour Laplacian over the valid region; 0.0 below 3x3.

    A standard focus measure: blur removes the high-frequency energy the Laplacian responds to.
    """
    if gray.ndim != 2 or gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    laplacian = (
        gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4.0 * gray[1:-1, 1:-1]
    )
    return float(laplacian.var())


def compute_features(decoded: DecodedImage, file_bytes: int) -> dict[str, int | float | str]:
    """Compute the :data:`FEATURE_COLUMNS` for one decoded image.

    ``file_bytes`` is the size of the downloaded file and is passed through so a feature row
    is self-contained.
    """
    rgb = to_rgb_on_white(decoded.image)
    gray = rgb.convert("L")
    histogram = np.asarray(gray.histogram(), dtype=np.float64)
    working = np.asarray(to_working_size(gray), dtype=np.float64)
    return {
        "width": int(rgb.width),
        "height": int(rgb.height),
        "file_bytes": int(file_bytes),
        "format": str(decoded.format),
        "brightness_mean": hsp_brightness_mean(np.asarray(rgb)),
        "contrast_rms": contrast_rms(histogram),
        "entropy": entropy_bits(histogram),
        "sharpness": laplacian_variance(working),
    }
