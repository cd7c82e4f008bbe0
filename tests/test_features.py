"""Tests for thumbfeat.features: each measure checked against an independent computation."""

from __future__ import annotations

import colorsys
import hashlib
import math
import re
from io import BytesIO
from pathlib import Path

import imagehash
import numpy as np
import PIL
import pyarrow as pa
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageFilter, ImageStat
from thumbfeat.features import (
    FEATURE_COLUMNS,
    FEATURE_VERSION,
    WORKING_SIZE,
    Pixels,
    compute_features,
    histogram_std,
    histogram_variance,
    hue_sixths,
    order_statistics,
    packed_words,
    pixel_words,
    prepare,
    sobel_edge_density,
    to_rgb_on_white,
)
from thumbfeat.imaging import DecodedImage, decode_image
from thumbfeat.rows import ROW_SCHEMA, ok_row

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
    return compute_features(wrap(image), b"bytes")


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


FLOAT_COLUMNS = (
    "aspect_ratio", "brightness_mean", "brightness_p05", "brightness_p99", "contrast_rms",
    "entropy", "sharpness", "edge_density", "saturation_mean", "saturation_std", "value_mean",
    "colorfulness", "dark_score", "light_score", "blurriness_score", "low_information_score",
    "odd_aspect_score",
)
BOOL_COLUMNS = (
    "is_grayscale_content", "is_dark", "is_light", "is_blurry", "is_low_information",
    "is_odd_aspect_ratio",
)


def all_finite(result: dict[str, object]) -> bool:
    return all(math.isfinite(result[key]) for key in FLOAT_COLUMNS)  # type: ignore[arg-type]


def test_columns_version_and_types() -> None:
    assert FEATURE_VERSION == "3"
    assert WORKING_SIZE == 512
    data = encode(random_rgb(320, 240), "JPEG")
    result = compute_features(decode_image(data), data)
    assert tuple(result) == FEATURE_COLUMNS
    assert (result["width"], result["height"]) == (320, 240)
    assert result["aspect_ratio"] == 320 / 240
    assert result["file_bytes"] == len(data)
    assert (result["format"], result["source_mode"]) == ("JPEG", "RGB")
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    for key in ("width", "height", "file_bytes"):
        assert type(result[key]) is int
    for key in (*FLOAT_COLUMNS, "hue_mean"):
        assert type(result[key]) is float  # plain Python floats, not numpy scalars
    for key in BOOL_COLUMNS:
        assert type(result[key]) is bool
    assert all_finite(result)
    assert len(result["hue_hist"]) == 12
    assert sum(result["hue_hist"]) == pytest.approx(1.0)
    for key in ("ahash", "dhash", "phash"):
        assert re.fullmatch(r"[0-9a-f]{16}", result[key])
    assert (result["pillow_version"], result["numpy_version"]) == (PIL.__version__, np.__version__)
    # The row is storable with the table's schema as it is.
    stored = pa.Table.from_pylist([ok_row("x", result, FEATURE_VERSION)], schema=ROW_SCHEMA)
    assert stored.to_pylist()[0]["dominant_colors"] == result["dominant_colors"]


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
    result = compute_features(decode_image(encode(transparent_black, "PNG")), b"x")
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
    result = compute_features(decoded, data)
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
    result = compute_features(decode_image(data), data)
    assert (result["width"], result["height"]) == (30, 60)


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    level = 100 * 257  # 16-bit value that corresponds to 8-bit 100
    data = encode(Image.fromarray(np.full((20, 30), level, dtype=np.uint16)), "PNG")
    decoded = decode_image(data)
    assert decoded.source_mode == "I;16"
    result = compute_features(decoded, data)
    # Clipping (Pillow's convert("L")) would make this 1.0.
    assert result["brightness_mean"] == pytest.approx(100 / 255, abs=1e-12)


def test_sixteen_bit_gradient_gives_finite_features() -> None:
    gradient = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    data = encode(Image.fromarray(gradient), "PNG")
    result = compute_features(decode_image(data), data)
    assert all_finite(result)
    assert result["contrast_rms"] > 0.2
    assert result["entropy"] > 7.5  # the full 16-bit range spreads over all 256 grey levels


@pytest.mark.parametrize("mode", ["I", "F"])
def test_i_and_f_modes_are_stretched_to_full_range(mode: str) -> None:
    values = np.linspace(-5000, 5000, 40 * 30).reshape(30, 40)
    image = Image.fromarray(values.astype(np.int32 if mode == "I" else np.float32))
    assert image.mode == mode
    result = features_of(image)
    assert all_finite(result)
    assert result["brightness_mean"] == pytest.approx(0.5, abs=0.01)


def test_float_image_with_nan_is_finite() -> None:
    values = np.ones((10, 10), dtype=np.float32)
    values[0, 0] = np.nan
    values[5:, :] = 3.0
    result = features_of(Image.fromarray(values))
    assert all_finite(result)


def test_cmyk_jpeg_gives_finite_features() -> None:
    cmyk = Image.new("CMYK", (40, 30), (0, 255, 255, 0))  # red in CMYK
    cmyk.paste((0, 0, 0, 255), (0, 0, 20, 30))  # left half black
    data = encode(cmyk, "JPEG", quality=95)
    decoded = decode_image(data)
    assert decoded.source_mode == "CMYK"
    result = compute_features(decoded, data)
    assert all_finite(result)
    assert result["brightness_mean"] == pytest.approx(math.sqrt(0.241) / 2, abs=0.03)


# --- new measures of feature version 2 -----------------------------------------------------

DEMO_IMAGES = Path(__file__).resolve().parent.parent / "config" / "demo" / "images"
DEMO_PHOTOS = sorted(p for p in DEMO_IMAGES.glob("*.jpg") if p.stem not in ("broken_text",
                                                                             "cut_photo"))


def per_pixel_hsp(rgb: np.ndarray) -> np.ndarray:
    """CleanVision's per-pixel brightness formula, in plain float64 numpy."""
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    return np.sqrt(0.241 * r * r + 0.691 * g * g + 0.068 * b * b) / 255


def test_uniform_grey_has_flat_colour_and_detail_measures() -> None:
    result = features_of(Image.new("RGB", (64, 48), (128, 128, 128)))
    assert result["edge_density"] == 0.0
    assert result["brightness_p05"] == result["brightness_p99"] == pytest.approx(128 / 255)
    assert (result["saturation_mean"], result["saturation_std"]) == (0.0, 0.0)
    assert result["value_mean"] == pytest.approx(128 / 255)
    assert result["hue_mean"] is None and result["hue_hist"] is None
    assert result["colorfulness"] == 0.0
    assert result["is_grayscale_content"] is True
    assert result["dominant_colors"] == [{"color": "#808080", "share": 1.0}]
    assert result["is_low_information"] is True  # one level per channel: log2(3) bits < 3


def test_brightness_percentiles_match_numpy_percentile() -> None:
    image = random_rgb(97, 61, seed=11)
    expected = np.percentile(per_pixel_hsp(np.asarray(image)), [5, 99])
    result = features_of(image)
    assert result["brightness_p05"] == pytest.approx(expected[0], abs=1e-12)
    assert result["brightness_p99"] == pytest.approx(expected[1], abs=1e-12)
    assert result["brightness_mean"] == pytest.approx(per_pixel_hsp(np.asarray(image)).mean())


def test_step_edges_above_and_below_the_sobel_threshold() -> None:
    # A vertical step of h grey levels gives |gx| = 4 h on the two columns beside it.
    def step(height: int) -> Image.Image:
        pixels = np.full((20, 30), 100, dtype=np.uint8)
        pixels[:, 15:] += height
        return Image.fromarray(pixels)

    assert features_of(step(25))["edge_density"] == 0.0  # 4 * 25 = 100, not above 100
    assert features_of(step(26))["edge_density"] == pytest.approx(2 / 28)


def test_edge_density_matches_an_independent_sobel() -> None:
    image = Image.open(DEMO_IMAGES / "astronaut.jpg").convert("RGB")
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    windows = sliding_window_view(gray, (3, 3))
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
    gx = np.einsum("ijkl,kl->ij", windows, kx)
    gy = np.einsum("ijkl,kl->ij", windows, kx.T)
    expected = float((np.hypot(gx, gy) > 100).mean())
    assert 0.05 < expected < 0.95
    assert features_of(image)["edge_density"] == pytest.approx(expected)


def test_checkerboard_has_more_edges_than_its_blurred_copy() -> None:
    board = checkerboard(96, cell=4)
    blurred = board.filter(ImageFilter.GaussianBlur(radius=3))
    assert features_of(board)["edge_density"] > features_of(blurred)["edge_density"]


def test_pure_red_is_more_colourful_than_grey() -> None:
    red = features_of(Image.new("RGB", (16, 16), (255, 0, 0)))
    grey = features_of(Image.new("RGB", (16, 16), (90, 90, 90)))
    # No spread; mean rg = 255, mean yb = 127.5.
    assert red["colorfulness"] == pytest.approx(0.3 * math.hypot(255, 127.5))
    assert grey["colorfulness"] == 0.0
    assert red["is_grayscale_content"] is False


def test_colourfulness_matches_the_published_formula() -> None:
    image = random_rgb(70, 50, seed=8)
    rgb = np.asarray(image).astype(np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    expected = math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())
    assert features_of(image)["colorfulness"] == pytest.approx(expected, rel=1e-12)


def colorsys_hsv(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image).reshape(-1, 3) / 255.0
    return np.array([colorsys.rgb_to_hsv(*pixel) for pixel in rgb])


def test_hsv_statistics_match_colorsys() -> None:
    image = random_rgb(40, 30, seed=2)
    hsv = colorsys_hsv(image)
    hue, saturation, value = hsv[:, 0] * 360, hsv[:, 1], hsv[:, 2]
    coloured = (saturation > 0.2) & (value > 0.15) & (value < 0.95)
    angles = np.radians(hue[coloured])
    mean = math.degrees(math.atan2(np.sin(angles).sum(), np.cos(angles).sum())) % 360
    histogram = np.bincount(np.floor(hue[coloured] / 30).astype(int), minlength=12)
    result = features_of(image)
    assert result["saturation_mean"] == pytest.approx(saturation.mean(), rel=1e-12)
    assert result["saturation_std"] == pytest.approx(saturation.std(), rel=1e-12)
    assert result["value_mean"] == pytest.approx(value.mean(), rel=1e-12)
    assert result["hue_mean"] == pytest.approx(mean, abs=1e-3)
    assert result["hue_hist"] == pytest.approx((histogram / coloured.sum()).tolist())


@pytest.mark.parametrize(
    ("colour", "hue", "bin_"),
    [((200, 40, 40), 0.0, 0), ((200, 120, 40), 30.0, 1), ((40, 200, 40), 120.0, 4),
     ((40, 40, 200), 240.0, 8), ((200, 40, 120), 330.0, 11)],
)
def test_hue_of_single_colours_and_exact_bin_edges(colour: tuple[int, int, int], hue: float,
                                                   bin_: int) -> None:
    result = features_of(Image.new("RGB", (8, 8), colour))
    assert result["hue_mean"] == pytest.approx(hue, abs=1e-4)
    assert result["hue_hist"][bin_] == 1.0


def test_hue_mean_is_circular() -> None:
    image = Image.new("RGB", (10, 10), (200, 40, 60))  # hue 352.5
    image.paste((200, 60, 40), (0, 0, 5, 10))  # hue 7.5
    hue = features_of(image)["hue_mean"]
    assert min(hue, 360 - hue) < 1e-4  # 0 degrees, however it is rounded


@pytest.mark.parametrize("colour", [(20, 5, 5), (250, 245, 245), (120, 110, 110)])
def test_hue_is_null_without_clearly_coloured_pixels(colour: tuple[int, int, int]) -> None:
    # Too dark (V <= 0.15), too light (V >= 0.95), too grey (S <= 0.2).
    result = features_of(Image.new("RGB", (8, 8), colour))
    assert result["hue_mean"] is None and result["hue_hist"] is None


def test_grayscale_content_comes_from_pixels_not_the_file_mode() -> None:
    grey_photo = Image.open(DEMO_IMAGES / "camera.jpg").convert("RGB")
    data = encode(grey_photo, "JPEG", quality=85)
    decoded = decode_image(data)
    assert decoded.source_mode == "RGB"
    assert compute_features(decoded, data)["is_grayscale_content"] is True
    colour_photo = Image.open(DEMO_IMAGES / "coffee.jpg")
    assert features_of(colour_photo)["is_grayscale_content"] is False
    speck = Image.new("RGB", (100, 100), (128, 128, 128))
    speck.paste((255, 0, 0), (0, 0, 10, 10))  # 1% coloured: still greyscale content
    assert features_of(speck)["is_grayscale_content"] is True
    speck.paste((255, 0, 0), (0, 0, 10, 11))  # 1.1%: not
    assert features_of(speck)["is_grayscale_content"] is False


def test_dominant_colours_are_cell_means_with_shares() -> None:
    image = Image.new("RGB", (10, 10), (250, 10, 10))
    image.paste((10, 10, 250), (0, 0, 10, 3))  # 30%
    image.paste((10, 250, 10), (0, 0, 10, 1))  # 10% (over the blue)
    image.paste((12, 250, 10), (0, 0, 5, 1))  # same cell as that green, mean 11
    assert features_of(image)["dominant_colors"] == [
        {"color": "#fa0a0a", "share": 0.7},
        {"color": "#0a0afa", "share": 0.2},
        {"color": "#0bfa0a", "share": 0.1},
    ]


def test_pixel_digest_is_equal_for_equal_pixels_in_any_container() -> None:
    image = random_rgb(33, 21, seed=6)
    png, bmp = encode(image, "PNG"), encode(image, "BMP")
    from_png = compute_features(decode_image(png), png)
    from_bmp = compute_features(decode_image(bmp), bmp)
    assert from_png["sha256"] != from_bmp["sha256"]
    assert from_png["pixels_sha256"] == from_bmp["pixels_sha256"]
    changed = image.copy()
    changed.putpixel((0, 0), (0, 0, 0) if image.getpixel((0, 0)) != (0, 0, 0) else (1, 1, 1))
    assert features_of(changed)["pixels_sha256"] != from_png["pixels_sha256"]
    # The size is part of the digest: same bytes, other shape.
    pixels = np.asarray(image).reshape(-1, 3)
    assert (features_of(Image.fromarray(pixels.reshape(21, 33, 3)))["pixels_sha256"]
            != features_of(Image.fromarray(pixels.reshape(33, 21, 3)))["pixels_sha256"])


def varied_images() -> list[tuple[str, bytes]]:
    """Photos, gradients, noise, transparency, CMYK, greyscale, palette, tall and tiny images."""
    images = [(p.stem, p.read_bytes()) for p in DEMO_PHOTOS]
    yy, xx = np.mgrid[0:240, 0:320]
    gradients = {
        "horizontal": (xx * 255 // 319).astype(np.uint8),
        "diagonal": ((xx + yy) * 255 // 558).astype(np.uint8),
        "radial": (np.hypot(xx - 160, yy - 120) % 256).astype(np.uint8),
    }
    for name, plane in gradients.items():
        images.append((f"gradient-{name}", encode(Image.fromarray(plane), "PNG")))
    images.append(("noise", encode(random_rgb(320, 240, seed=1), "PNG")))
    images.append(("noise-jpeg", encode(random_rgb(200, 300, seed=2), "JPEG")))
    transparent = Image.open(DEMO_IMAGES / "coffee.jpg").convert("RGBA")
    alpha = Image.fromarray((xx[:213] % 256).astype(np.uint8)).resize(transparent.size)
    transparent.putalpha(alpha)
    images.append(("transparent", encode(transparent, "PNG")))
    cmyk = Image.open(DEMO_IMAGES / "flower.jpg").convert("CMYK")
    images.append(("cmyk", encode(cmyk, "JPEG")))
    images.append(("grey", (DEMO_IMAGES / "camera.jpg").read_bytes()))
    images.append(("palette", encode(Image.open(DEMO_IMAGES / "china.jpg").quantize(64), "PNG")))
    images.append(("tall", encode(random_rgb(40, 400, seed=3), "PNG")))
    images.append(("tiny", encode(random_rgb(5, 7, seed=4), "PNG")))
    images.append(("uniform", encode(Image.new("RGB", (64, 64), (30, 60, 90)), "PNG")))
    return images


@pytest.mark.parametrize(("name", "data"), varied_images(), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_hashes_equal_imagehash(name: str, data: bytes) -> None:
    decoded = decode_image(data)
    result = compute_features(decoded, data)
    # "The same image": the oriented RGB image with transparency on white, as every measure sees.
    seen = to_rgb_on_white(decoded.image)
    assert result["ahash"] == str(imagehash.average_hash(seen))
    assert result["dhash"] == str(imagehash.dhash(seen))
    assert result["phash"] == str(imagehash.phash(seen))


def cleanvision_blurry(image: Image.Image) -> bool:
    """CleanVision's blurry score re-derived here: FIND_EDGES spread and histogram spread at 64 px,
    variances taken with numpy rather than ImageStat."""
    ratio = max(image.size) / 64
    if ratio > 1:
        size = (max(int(image.width // ratio), 1), max(int(image.height // ratio), 1))
        image = image.resize(size)
    gray = image.convert("L")
    edges = np.asarray(gray.filter(ImageFilter.FIND_EDGES), dtype=np.float64)
    blur = 1 - math.exp(-0.01 * math.sqrt(edges.var()))
    spread = 1 - math.exp(-0.01 * float(np.std(gray.histogram())))
    return min(blur + (spread if spread > 0.18 else 0.0), 1.0) < 0.29


@pytest.mark.parametrize("path", DEMO_PHOTOS, ids=lambda p: p.stem)
def test_blurry_flag_follows_cleanvision_on_photos_and_blurred_copies(path: Path) -> None:
    photo = Image.open(path).convert("RGB")
    for image in (photo, photo.filter(ImageFilter.GaussianBlur(6))):
        assert features_of(image)["is_blurry"] is cleanvision_blurry(image)


def test_blurring_a_photo_makes_it_blurry() -> None:
    photo = Image.open(DEMO_IMAGES / "rocket.jpg").convert("RGB")
    assert features_of(photo)["is_blurry"] is False
    assert features_of(photo.filter(ImageFilter.GaussianBlur(6)))["is_blurry"] is True


def test_dark_light_and_low_information_flags() -> None:
    black = features_of(Image.new("RGB", (20, 20), (0, 0, 0)))
    white = features_of(Image.new("RGB", (20, 20), (255, 255, 255)))
    photo = features_of(Image.open(DEMO_IMAGES / "chelsea_cat.jpg"))
    assert (black["is_dark"], black["is_light"]) == (True, False)
    assert (white["is_dark"], white["is_light"]) == (False, True)
    assert (photo["is_dark"], photo["is_light"], photo["is_low_information"]) == (False,) * 3
    # Just above / below CleanVision's thresholds: p99 < 0.32 is dark, p05 > 0.95 is light.
    assert features_of(Image.new("RGB", (4, 4), (82, 82, 82)))["is_dark"] is False  # 0.3216
    assert features_of(Image.new("RGB", (4, 4), (81, 81, 81)))["is_dark"] is True  # 0.3176
    assert features_of(Image.new("RGB", (4, 4), (243, 243, 243)))["is_light"] is True  # 0.953
    assert features_of(Image.new("RGB", (4, 4), (242, 242, 242)))["is_light"] is False  # 0.949


def test_each_flag_is_its_stored_score_below_the_threshold() -> None:
    photo = Image.open(DEMO_IMAGES / "rocket.jpg").convert("RGB")
    cases = [photo, photo.filter(ImageFilter.GaussianBlur(6)), photo.resize((300, 40)),
             Image.new("RGB", (20, 20), (0, 0, 0)), Image.new("RGB", (20, 20), (255, 255, 255))]
    thresholds = {"is_dark": ("dark_score", 0.32), "is_light": ("light_score", 0.05),
                  "is_blurry": ("blurriness_score", 0.29),
                  "is_low_information": ("low_information_score", 0.3),
                  "is_odd_aspect_ratio": ("odd_aspect_score", 0.35)}
    seen = set()
    for image in cases:
        found = features_of(image)
        for flag, (score, threshold) in thresholds.items():
            assert found[flag] is (found[score] < threshold)
            seen.add((flag, found[flag]))
    # Every flag was seen both raised and not raised, so the scores are not all on one side.
    assert seen == {(flag, value) for flag in thresholds for value in (True, False)}
    assert features_of(photo)["dark_score"] == features_of(photo)["brightness_p99"]


def test_low_information_uses_the_entropy_of_the_rgb_histogram() -> None:
    # CleanVision scores Pillow's Image.entropy() of the RGB image (768 bins) times 0.1 < 0.3.
    for levels in (2, 4, 8, 16):
        plane = (np.arange(64 * 64).reshape(64, 64) % levels * (255 // levels)).astype(np.uint8)
        image = Image.fromarray(plane).convert("RGB")
        expected = min(1.0, 0.1 * image.entropy()) < 0.3
        assert features_of(image)["is_low_information"] is expected
    assert features_of(random_rgb(64, 64))["is_low_information"] is False


@pytest.mark.parametrize(("size", "odd"), [((1000, 340), True), ((1000, 360), False),
                                           ((340, 1000), True), ((100, 100), False)])
def test_odd_aspect_ratio_flag(size: tuple[int, int], odd: bool) -> None:
    assert features_of(Image.new("RGB", size, (9, 9, 9)))["is_odd_aspect_ratio"] is odd


# --- the fast computations against straightforward formulas ----------------------------------


def prepared(image: Image.Image) -> Pixels:
    return prepare(wrap(image))


def tricky_rgb(seed: int) -> Image.Image:
    """Random pixels plus many ties (two or three equal channels, black, white, grey runs)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    rgb[:10, :, 1] = rgb[:10, :, 0]  # red == green
    rgb[10:20, :, 2] = rgb[10:20, :, 1]  # green == blue
    rgb[20:25] = rgb[20:25, :, :1]  # grey
    rgb[25:27] = 0
    rgb[27:29] = 255
    return Image.fromarray(rgb)


def test_order_statistics_equal_sorting() -> None:
    rng = np.random.default_rng(4)
    for values in (rng.integers(0, 65_000_000, 999, dtype=np.int32),
                   rng.integers(0, 3, 500, dtype=np.int32),  # nearly all ties
                   np.array([7], dtype=np.int32)):
        ordered = np.sort(values)
        ranks = {0, 1, values.size // 2, values.size - 2, values.size - 1}
        for rank in (r for r in ranks if 0 <= r < values.size):
            above = ordered[min(rank + 1, values.size - 1)]
            assert order_statistics(values, rank) == (ordered[rank], above)


@pytest.mark.parametrize("threshold", [100, 25, 100.5, 0.5, 200])
def test_sobel_in_integers_equals_the_float_magnitude(threshold: float) -> None:
    # 200 exceeds the 16-bit path (2 * 201² > 32767): the 32-bit path must agree too.
    rng = np.random.default_rng(int(threshold * 2))
    noise = rng.integers(0, 256, (50, 70), dtype=np.uint8)
    steps = np.repeat(rng.integers(0, 256, (50, 7), dtype=np.uint8), 10, axis=1)
    for gray in (noise, steps, np.full((5, 5), 9, dtype=np.uint8)):
        windows = sliding_window_view(gray.astype(np.float64), (3, 3))
        kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
        magnitude = np.hypot(np.einsum("ijkl,kl->ij", windows, kx),
                             np.einsum("ijkl,kl->ij", windows, kx.T))
        expected = float((magnitude > threshold).mean())
        assert sobel_edge_density(gray, threshold) == expected


@pytest.mark.parametrize("seed", [0, 1])
def test_hue_numerators_equal_colorsys(seed: int) -> None:
    image = tricky_rgb(seed)
    pixels = prepared(image)
    hsv = colorsys_hsv(image)
    chroma = pixels.chroma.astype(np.float64)
    coloured = chroma > 0
    sixths = hue_sixths(pixels)
    assert sixths.min() >= 0 and np.all(sixths < np.maximum(6 * chroma, 1))
    np.testing.assert_allclose(sixths[coloured] / chroma[coloured], hsv[coloured, 0] * 6,
                               atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_colour_statistics_equal_plain_formulas(seed: int) -> None:
    """Documented tolerances: saturation within 1e-12 relative of numpy's mean and std,
    hue_mean within 1e-4 degrees of a float64 computation, everything else exactly equal."""
    image = tricky_rgb(seed)
    rgb = np.asarray(image).reshape(-1, 3)
    result = features_of(image)
    high, low = rgb.max(axis=1).astype(np.float64), rgb.min(axis=1).astype(np.float64)
    saturation = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
    assert result["saturation_mean"] == pytest.approx(saturation.mean(), rel=1e-12, abs=1e-15)
    assert result["saturation_std"] == pytest.approx(saturation.std(), rel=1e-12, abs=1e-15)
    hsv = colorsys_hsv(image)
    selected = (hsv[:, 1] > 0.2) & (hsv[:, 2] > 0.15) & (hsv[:, 2] < 0.95)
    angles = np.radians(hsv[selected, 0] * 360)
    mean = math.degrees(math.atan2(np.sin(angles).sum(), np.cos(angles).sum())) % 360
    gap = abs(result["hue_mean"] - mean)
    assert min(gap, 360 - gap) < 1e-4
    bins = np.minimum(np.floor(hsv[selected, 0] * 12 + 1e-9), 11).astype(int)
    assert result["hue_hist"] == (np.bincount(bins, minlength=12) / selected.sum()).tolist()
    assert result["value_mean"] == pytest.approx(high.mean() / 255, rel=1e-15)


def test_saturation_std_of_a_constant_colour_has_no_cancellation_error() -> None:
    # Deviations from the mean are squared, not the mean of squares minus the squared mean,
    # which would leave an error near sqrt(1e-16) = 1e-8 here.
    assert features_of(Image.new("RGB", (50, 40), (200, 40, 90)))["saturation_std"] < 1e-15


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dominant_colours_equal_a_per_cell_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # A few strong colours with noise, so cells are large and means are not cell centres.
    centres = rng.integers(0, 256, (6, 3))
    labels = rng.integers(0, 6, 3000) ** 2 % 6
    rgb = np.clip(centres[labels] + rng.integers(-20, 21, (3000, 3)), 0, 255).astype(np.uint8)
    cells = [tuple(int(v) >> 5 for v in pixel) for pixel in rgb]
    counts: dict[tuple[int, ...], int] = {}
    for cell in cells:
        counts[cell] = counts.get(cell, 0) + 1
    order = sorted(counts, key=lambda c: (-counts[c], c[0] * 64 + c[1] * 8 + c[2]))[:3]
    expected = []
    for cell in order:
        members = rgb[[c == cell for c in cells]].astype(int)
        mean = [math.floor(v + 0.5) for v in members.sum(axis=0) / len(members)]
        expected.append({"color": "#" + "".join(f"{v:02x}" for v in mean),
                         "share": counts[cell] / len(cells)})
    assert features_of(Image.fromarray(rgb.reshape(50, 60, 3)))["dominant_colors"] == expected


def test_histogram_variance_is_the_same_float_as_imagestat() -> None:
    rng = np.random.default_rng(12)
    images = [Image.fromarray(rng.integers(0, 256, (48, 64), dtype=np.uint8)),
              Image.fromarray((rng.random((48, 64)) < 0.1).astype(np.uint8) * 255),
              Image.new("L", (64, 48), 77)]
    images += [checkerboard(64, 3).filter(ImageFilter.FIND_EDGES)]
    for image in images:
        histogram = np.asarray(image.histogram(), dtype=np.int64)
        assert histogram_variance(histogram) == ImageStat.Stat(image).var[0]


def test_histogram_std_is_the_same_float_as_numpy() -> None:
    rng = np.random.default_rng(13)
    images = [Image.fromarray(rng.integers(0, 256, (48, 64), dtype=np.uint8)),
              Image.fromarray(rng.integers(100, 104, (64, 64), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 256, (1, 37), dtype=np.uint8)),
              Image.new("L", (64, 64), 77), checkerboard(64, 3)]
    for image in images:
        histogram = np.asarray(image.histogram(), dtype=np.int64)
        assert histogram_std(histogram) == float(np.std(histogram.astype(np.float64)))


def test_pixel_words_are_the_pixels_whether_shared_by_pillow_or_packed() -> None:
    # A small image is shared by Pillow as it stores it (with a padding byte); a large one is
    # stored in several blocks, which Pillow does not share, and is packed instead.
    rng = np.random.default_rng(14)
    for height, width in ((5, 7), (1, 1), (2400, 2400)):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        words = pixel_words(Image.fromarray(rgb))
        assert words.shape == (height * width,)
        assert np.array_equal(words & 0xFFFFFF, packed_words(rgb))
        assert np.array_equal(prepare(wrap(Image.fromarray(rgb))).rgb, rgb)


def test_a_digest_given_by_the_caller_is_used_and_nothing_else_changes() -> None:
    data = encode(checkerboard(40, 4).convert("RGB"), "PNG")
    decoded = decode_image(data)
    computed = compute_features(decoded, data)
    assert computed["sha256"] == hashlib.sha256(data).hexdigest()
    given = compute_features(decoded, data, data_sha256="ab" * 32)
    assert given["sha256"] == "ab" * 32
    assert {k: v for k, v in given.items() if k != "sha256"} == {
        k: v for k, v in computed.items() if k != "sha256"}
