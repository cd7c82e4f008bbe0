"""Tests for thumbfeat.features: each measure checked against an independent computation."""

from __future__ import annotations

import math
from io import BytesIO

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageFilter
from thumbfeat.features import (
    FEATURE_COLUMNS,
    FEATURE_VERSION,
    WORKING_SIZE,
    compute_features,
)
from thumbfeat.imaging import DecodedImage, decode_image

LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """Serialise ``image`` in memory."""
    buffer = BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def wrap(image: Image.Image, fmt: str = "PNG") -> DecodedImage:
    """Feed an in-memory image straight to the features without an encode round trip."""
    return DecodedImage(image=image, format=fmt, source_mode=image.mode)


def features_of(image: Image.Image) -> dict[str, int | float | str]:
    return compute_features(wrap(image), file_bytes=1234)


def reference_laplacian_variance(gray: np.ndarray) -> float:
    """Laplacian variance via explicit 3x3 windows, independent of the module's slicing."""
    windows = sliding_window_view(gray.astype(np.float64), (3, 3))
    return float(np.einsum("ijkl,kl->ij", windows, LAPLACIAN).var())


def checkerboard(size: int, cell: int = 1) -> Image.Image:
    yy, xx = np.indices((size, size))
    board = (((yy // cell) + (xx // cell)) % 2 * 255).astype(np.uint8)
    return Image.fromarray(board)


def random_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_columns_version_and_types() -> None:
    assert FEATURE_VERSION == "1"
    assert WORKING_SIZE == 512
    assert FEATURE_COLUMNS == (
        "width",
        "height",
        "file_bytes",
        "format",
        "brightness_mean",
        "contrast_rms",
        "entropy",
        "sharpness",
    )
    data = encode(random_rgb(320, 240), "JPEG")
    result = compute_features(decode_image(data), file_bytes=len(data))
    assert tuple(result) == FEATURE_COLUMNS
    assert (result["width"], result["height"]) == (320, 240)
    assert result["file_bytes"] == len(data)
    assert result["format"] == "JPEG"
    for key in ("width", "height", "file_bytes"):
        assert type(result[key]) is int
    for key in ("brightness_mean", "contrast_rms", "entropy", "sharpness"):
        assert type(result[key]) is float  # plain Python floats, not numpy scalars
        assert math.isfinite(result[key])


def test_uniform_grey_has_no_contrast_entropy_or_sharpness() -> None:
    result = features_of(Image.new("RGB", (64, 48), (128, 128, 128)))
    assert result["contrast_rms"] == 0.0
    assert result["entropy"] == 0.0
    assert result["sharpness"] == 0.0
    # The HSP weights sum to 1, so a neutral grey has brightness level / 255.
    assert result["brightness_mean"] == pytest.approx(128 / 255, abs=1e-12)


@pytest.mark.parametrize(
    ("colour", "expected"),
    [
        ((255, 0, 0), math.sqrt(0.241)),
        ((255, 255, 255), 1.0),
        ((0, 0, 0), 0.0),
        ((0, 255, 0), math.sqrt(0.691)),
        ((0, 0, 255), math.sqrt(0.068)),
    ],
)
def test_hsp_brightness_of_pure_colours(colour: tuple[int, int, int], expected: float) -> None:
    result = features_of(Image.new("RGB", (10, 10), colour))
    assert result["brightness_mean"] == pytest.approx(expected, abs=1e-12)


def test_brightness_is_a_mean_over_pixels() -> None:
    image = Image.new("RGB", (10, 10), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 5, 10))  # half red, half black
    assert features_of(image)["brightness_mean"] == pytest.approx(math.sqrt(0.241) / 2)


def test_fully_transparent_image_is_composited_on_white() -> None:
    transparent_black = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    result = compute_features(decode_image(encode(transparent_black, "PNG")), file_bytes=1)
    assert result["brightness_mean"] == pytest.approx(1.0, abs=1e-12)
    assert result["contrast_rms"] == 0.0


def test_half_transparent_black_becomes_mid_grey() -> None:
    result = features_of(Image.new("RGBA", (8, 8), (0, 0, 0, 128)))
    assert result["brightness_mean"] == pytest.approx(127 / 255, abs=1.5 / 255)


@pytest.mark.parametrize("mode", ["LA", "PA"])
def test_other_alpha_modes_are_composited_on_white(mode: str) -> None:
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0)).convert(mode)
    assert features_of(image)["brightness_mean"] == pytest.approx(1.0, abs=1e-12)


def test_palette_png_with_transparency_gives_finite_features_on_white() -> None:
    palette_image = Image.new("P", (20, 20), 0)
    palette_image.putpalette([0, 0, 0] + [255, 0, 0] * 255)  # index 0 is black
    palette_image.paste(1, (0, 0, 10, 20))  # left half red (opaque)
    data = encode(palette_image, "PNG", transparency=0)  # right half: transparent black
    decoded = decode_image(data)
    assert decoded.source_mode == "P"
    result = compute_features(decoded, file_bytes=len(data))
    assert all(math.isfinite(result[key]) for key in ("contrast_rms", "entropy", "sharpness"))
    # Half red, half white (not black): transparency was honoured.
    assert result["brightness_mean"] == pytest.approx((math.sqrt(0.241) + 1.0) / 2)


def test_half_black_half_white_has_exactly_one_bit_of_entropy() -> None:
    image = Image.new("L", (32, 32), 0)
    image.paste(255, (0, 0, 16, 32))
    result = features_of(image)
    assert result["entropy"] == 1.0
    assert result["contrast_rms"] == pytest.approx(0.5)


def test_contrast_and_entropy_match_independent_numpy_computation() -> None:
    image = random_rgb(123, 77, seed=3)
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    _levels, counts = np.unique(gray, return_counts=True)
    probabilities = counts / counts.sum()
    result = features_of(image)
    assert result["contrast_rms"] == pytest.approx(gray.std() / 255, rel=1e-12)
    assert result["entropy"] == pytest.approx(-(probabilities * np.log2(probabilities)).sum())


def test_one_pixel_checkerboard_has_known_laplacian_variance() -> None:
    # Every interior Laplacian value is +-4 * 255 with mean 0, so the variance is 1020^2.
    assert features_of(checkerboard(64))["sharpness"] == pytest.approx(1020.0**2)


def test_checkerboard_is_sharper_than_its_blurred_copy() -> None:
    board = checkerboard(96, cell=4)
    blurred = board.filter(ImageFilter.GaussianBlur(radius=2))
    assert features_of(board)["sharpness"] > 4 * features_of(blurred)["sharpness"] > 0.0


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (2, 50), (50, 2)])
def test_images_smaller_than_3x3_have_zero_sharpness(size: tuple[int, int]) -> None:
    assert features_of(random_rgb(*size))["sharpness"] == 0.0


@pytest.mark.parametrize(("width", "height"), [(1200, 800), (700, 1300), (513, 100)])
def test_large_images_are_reduced_to_the_working_size_before_sharpness(
    width: int, height: int
) -> None:
    image = random_rgb(width, height, seed=5).filter(ImageFilter.GaussianBlur(1))
    # Documented rule: longer side -> WORKING_SIZE, shorter side scaled and rounded, BOX filter,
    # applied to Pillow's L conversion.
    longer, shorter = max(width, height), min(width, height)
    reduced_shorter = max(1, round(shorter * WORKING_SIZE / longer))
    size = (WORKING_SIZE, reduced_shorter) if width >= height else (reduced_shorter, WORKING_SIZE)
    reduced = image.convert("L").resize(size, Image.Resampling.BOX)
    expected = reference_laplacian_variance(np.asarray(reduced))
    full_resolution = reference_laplacian_variance(np.asarray(image.convert("L")))

    result = features_of(image)
    assert result["sharpness"] == pytest.approx(expected, rel=1e-12)
    assert result["sharpness"] != pytest.approx(full_resolution, rel=1e-3)
    assert (result["width"], result["height"]) == (width, height)  # reported at full size


def test_images_within_the_working_size_are_not_resampled() -> None:
    image = random_rgb(WORKING_SIZE, 300, seed=9)
    expected = reference_laplacian_variance(np.asarray(image.convert("L")))
    assert features_of(image)["sharpness"] == pytest.approx(expected, rel=1e-12)


def test_exif_rotated_image_reports_displayed_dimensions() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(random_rgb(60, 30), "JPEG", exif=exif)
    result = compute_features(decode_image(data), file_bytes=len(data))
    assert (result["width"], result["height"]) == (30, 60)


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    level = 100 * 257  # 16-bit value that corresponds to 8-bit 100
    data = encode(Image.fromarray(np.full((20, 30), level, dtype=np.uint16)), "PNG")
    decoded = decode_image(data)
    assert decoded.source_mode == "I;16"
    result = compute_features(decoded, file_bytes=len(data))
    # Clipping (Pillow's convert("L")) would make this 1.0.
    assert result["brightness_mean"] == pytest.approx(100 / 255, abs=1e-12)


def test_sixteen_bit_gradient_gives_finite_features() -> None:
    gradient = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    data = encode(Image.fromarray(gradient), "PNG")
    result = compute_features(decode_image(data), file_bytes=len(data))
    assert all(math.isfinite(result[key]) for key in FEATURE_COLUMNS[4:])
    assert result["contrast_rms"] > 0.2
    assert result["entropy"] > 7.5  # the full 16-bit range spreads over all 256 grey levels


@pytest.mark.parametrize("mode", ["I", "F"])
def test_i_and_f_modes_are_stretched_to_full_range(mode: str) -> None:
    values = np.linspace(-5000, 5000, 40 * 30).reshape(30, 40)
    image = Image.fromarray(values.astype(np.int32 if mode == "I" else np.float32))
    assert image.mode == mode
    result = features_of(image)
    assert all(math.isfinite(result[key]) for key in FEATURE_COLUMNS[4:])
    assert result["brightness_mean"] == pytest.approx(0.5, abs=0.01)


def test_float_image_with_nan_is_finite() -> None:
    values = np.ones((10, 10), dtype=np.float32)
    values[0, 0] = np.nan
    values[5:, :] = 3.0
    result = features_of(Image.fromarray(values))
    assert all(math.isfinite(result[key]) for key in FEATURE_COLUMNS[4:])


def test_cmyk_jpeg_gives_finite_features() -> None:
    cmyk = Image.new("CMYK", (40, 30), (0, 255, 255, 0))  # red in CMYK
    cmyk.paste((0, 0, 0, 255), (0, 0, 20, 30))  # left half black
    data = encode(cmyk, "JPEG", quality=95)
    decoded = decode_image(data)
    assert decoded.source_mode == "CMYK"
    result = compute_features(decoded, file_bytes=len(data))
    assert all(math.isfinite(result[key]) for key in FEATURE_COLUMNS[4:])
    assert result["brightness_mean"] == pytest.approx(math.sqrt(0.241) / 2, abs=0.03)
