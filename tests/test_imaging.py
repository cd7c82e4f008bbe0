"""Tests for thumbfeat.imaging: untrusted bytes either decode fully or are rejected by kind."""

from __future__ import annotations

import dataclasses
import struct
import warnings
import zlib
from io import BytesIO

import numpy as np
import pytest
from PIL import Image, ImageFile, features
from thumbfeat.imaging import (
    ACCEPTED_FORMATS,
    DecodedImage,
    ImageRejected,
    decode_image,
    draft_size,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """Serialise ``image`` in memory, the way a download would hand us bytes."""
    buffer = BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noisy_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random pixels: incompressible, so cutting the file really removes pixel data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_chunk(tag: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a correct CRC."""
    crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)


def one_bit_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit greyscale PNG; huge in pixels, tiny on disk."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    pixels = zlib.compress(row * height, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", pixels)
        + png_chunk(b"IEND", b"")
    )


def rejection(data: bytes, **kwargs: int) -> ImageRejected:
    """Decode ``data`` expecting a rejection and return it."""
    with pytest.raises(ImageRejected) as info:
        decode_image(data, **kwargs)
    return info.value


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [
        ("JPEG", "RGB"),
        ("PNG", "RGB"),
        ("WEBP", "RGB"),
        ("GIF", "P"),
        ("BMP", "RGB"),
        ("TIFF", "RGB"),
    ],
)
def test_accepted_formats_decode_with_format_size_and_mode(fmt: str, mode: str) -> None:
    original = noisy_rgb(37, 23)
    decoded = decode_image(encode(original, fmt))
    assert isinstance(decoded, DecodedImage)
    assert decoded.format == fmt
    assert decoded.image.size == (37, 23)
    assert decoded.source_mode == mode
    if fmt in ("PNG", "BMP", "TIFF"):  # lossless: every pixel must have been decoded
        assert np.array_equal(np.asarray(decoded.image), np.asarray(original))


def test_accepted_formats_constant() -> None:
    # AVIF comes with Pillow >= 11.3, the project's minimum.
    assert ACCEPTED_FORMATS == ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
    assert features.check("avif")


def test_avif_decodes_when_pillow_has_it() -> None:
    decoded = decode_image(encode(noisy_rgb(37, 23), "AVIF"))
    assert (decoded.format, decoded.image.size) == ("AVIF", (37, 23))


def test_decoded_image_is_frozen() -> None:
    decoded = decode_image(encode(Image.new("RGB", (4, 4)), "PNG"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.format = "GIF"  # type: ignore[misc]


def test_source_mode_is_recorded_before_conversion() -> None:
    sixteen = Image.fromarray(np.full((5, 7), 40_000, dtype=np.uint16))
    assert decode_image(encode(sixteen, "PNG")).source_mode == "I;16"
    cmyk = decode_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    assert (cmyk.format, cmyk.source_mode) == ("JPEG", "CMYK")


def test_empty_bytes_are_not_an_image() -> None:
    exc = rejection(b"")
    assert exc.kind == "not_image"
    assert str(exc) == exc.message


def test_html_page_is_not_an_image_and_message_shows_only_16_bytes() -> None:
    html = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head></html>"
    exc = rejection(html)
    assert exc.kind == "not_image"
    assert repr(html[:16]) in exc.message
    assert repr(html[:17]) not in exc.message
    assert str(exc) == exc.message


def test_random_bytes_are_not_an_image() -> None:
    garbage = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert rejection(garbage).kind == "not_image"


def test_valid_image_in_unaccepted_format_is_rejected() -> None:
    # Pillow can read PPM, but it is not in ACCEPTED_FORMATS, so it must not be parsed.
    assert rejection(encode(noisy_rgb(8, 8), "PPM")).kind == "not_image"


def test_postscript_is_rejected_without_reaching_ghostscript() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert rejection(eps).kind == "not_image"


def test_jpeg_cut_in_half_is_truncated() -> None:
    data = encode(noisy_rgb(320, 240), "JPEG", quality=90)
    exc = rejection(data[: len(data) // 2])
    assert exc.kind == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_png_cut_short_is_truncated() -> None:
    data = encode(noisy_rgb(320, 240), "PNG")
    assert rejection(data[: len(data) // 2]).kind == "truncated"
    assert rejection(data[:200]).kind == "truncated"


def test_header_claiming_too_many_pixels_is_a_decompression_bomb() -> None:
    data = one_bit_png(10_000, 10_000)
    assert len(data) < 100_000  # small on disk, 10^8 pixels when decoded
    limit_before = Image.MAX_IMAGE_PIXELS
    filters_before = list(warnings.filters)
    exc = rejection(data, max_pixels=1_000_000)
    assert exc.kind == "decompression_bomb"
    assert limit_before == Image.MAX_IMAGE_PIXELS
    assert warnings.filters == filters_before


def test_pixel_limit_is_checked_before_any_pixel_data_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = one_bit_png(1_500, 1_000)  # below Pillow's own limit, above ours

    def forbidden_load(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixel data was decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden_load)
    exc = rejection(data, max_pixels=1_000_000)
    assert exc.kind == "decompression_bomb"
    assert "1500x1000" in exc.message


def test_bomb_messages_name_max_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    data = one_bit_png(1_500, 1_000)
    message = rejection(data, max_pixels=1_000_000).message
    assert message == "image is 1500x1000 = 1500000 pixels, above max_pixels (1000000)"
    # max_pixels above Pillow's own limit: Pillow's still applies, and the message says so.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_200_000)
    message = rejection(data, max_pixels=1_600_000).message
    assert message == ("image is 1500x1000 = 1500000 pixels, above Pillow's own limit of "
                       "1200000 pixels, which max_pixels (1600000) cannot raise")
    # Beyond twice Pillow's limit Pillow refuses while opening; the words are the same.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500_000)
    assert rejection(data, max_pixels=1_000_000).message == (
        "image is 1500000 pixels, above max_pixels (1000000)")
    assert rejection(data, max_pixels=2_000_000).message == (
        "image is 1500000 pixels, above Pillow's own limit of 500000 pixels, which "
        "max_pixels (2000000) cannot raise")


def test_image_exactly_at_the_pixel_limit_is_accepted() -> None:
    decoded = decode_image(one_bit_png(1_000, 1_000), max_pixels=1_000_000)
    assert decoded.image.size == (1_000, 1_000)


@pytest.mark.parametrize("pixels", [150, 900])  # warning band and error band of Pillow
def test_pillow_bomb_warning_and_error_become_decompression_bomb(
    monkeypatch: pytest.MonkeyPatch, pixels: int
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    data = encode(Image.new("L", (pixels, 1)), "PNG")
    assert rejection(data).kind == "decompression_bomb"


def test_exif_orientation_6_is_applied() -> None:
    stored = Image.new("RGB", (40, 20), RED)
    stored.paste(BLUE, (20, 0, 40, 20))  # left half red, right half blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    decoded = decode_image(encode(stored, "JPEG", exif=exif, quality=95))
    assert decoded.image.size == (20, 40)
    top = decoded.image.getpixel((10, 5))
    bottom = decoded.image.getpixel((10, 34))
    assert top[0] > 200 and top[2] < 60  # red rotated to the top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_images_use_the_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)
    decoded = decode_image(data)
    assert decoded.format == fmt
    red, _green, blue = decoded.image.convert("RGB").getpixel((8, 8))
    assert red > 200 and blue < 60


def test_draft_size_asks_for_no_less_than_the_longest_side() -> None:
    assert draft_size((4000, 3000), 512) == (512, 384)
    assert draft_size((3000, 4000), 512) == (384, 512)
    assert draft_size((1, 4000), 256) == (1, 256)
    assert draft_size((512, 300), 512) is None
    assert draft_size((100, 80), 512) is None


def test_a_reduced_decode_reports_the_whole_size_upright() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    out = BytesIO()
    Image.new("RGB", (2400, 1600), (10, 20, 30)).save(out, "JPEG", exif=exif.tobytes())
    decoded = decode_image(out.getvalue(), max_side=300)
    # 1/8 of 2400x1600 still has 300 px on its longest side; then it is turned upright.
    assert decoded.image.size == (200, 300)
    assert decoded.source_size == (1600, 2400)
