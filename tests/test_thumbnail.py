"""Tests for thumbfeat.thumbnail: settings folders, making thumbnails, the facts they carry."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from thumbfeat.imaging import ImageRejected, decode_image
from thumbfeat.thumbnail import (
    ThumbnailSettings,
    default_settings,
    make_thumbnail,
    stored_source_facts,
    target_size,
)

from tests.support import make_jpeg

MAX_PIXELS = 100_000_000


def settings(max_side: int | None = 256, fmt: str = "jpeg", quality: int = 85,
             only_if_larger: bool = True) -> ThumbnailSettings:
    return ThumbnailSettings(max_side, fmt, quality, only_if_larger)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def test_tags_name_every_setting_that_changes_the_bytes() -> None:
    assert settings().tag == "256px-jpeg-q85"
    assert settings(quality=60).tag == "256px-jpeg-q60"
    assert settings(fmt="webp", only_if_larger=False).tag == "256px-webp-q85-all"
    # PNG has no quality: the setting changes nothing, so it is not in the name.
    assert settings(fmt="png", quality=10).tag == settings(fmt="png").tag == "256px-png"
    assert settings(max_side=None).tag == settings(fmt="source").tag == "original"
    assert len({settings(max_side=s).tag for s in (128, 256, 512)}) == 3


def test_default_settings_are_the_schema_defaults() -> None:
    assert default_settings() == ThumbnailSettings(512, "jpeg", 85, True)


@pytest.mark.parametrize(("size", "side", "expected"), [
    ((4000, 3000), 512, (512, 384)),
    ((3000, 4000), 512, (384, 512)),
    ((1, 4000), 256, (1, 256)),
    ((4000, 1), 256, (256, 1)),
    ((1000, 750), 512, (512, 384)),
])
def test_target_size_keeps_the_ratio(size: tuple[int, int], side: int,
                                     expected: tuple[int, int]) -> None:
    assert target_size(size, side) == expected


def test_a_large_jpeg_is_decoded_small_and_carries_its_source() -> None:
    data = make_jpeg("big", (4000, 3000))
    made = make_thumbnail(data, settings(512), MAX_PIXELS)
    assert made.made
    assert made.decoded.image.size == (512, 384)
    assert (made.source.width, made.source.height, made.source.bytes) == (4000, 3000, len(data))
    # The row is measured on the stored file's pixels, exactly.
    again = decode_image(made.data)
    assert np.array_equal(np.asarray(again.image), np.asarray(made.decoded.image))
    assert stored_source_facts(made.data, again) == made.source
    # The reduced decode: 1/4 of 4000x3000 is the smallest at least 512 on its longest side.
    assert decode_image(data, max_side=512).image.size == (1000, 750)
    assert decode_image(data, max_side=400).image.size == (500, 375)
    assert decode_image(data, max_side=4000).image.size == (4000, 3000)


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "png"])
def test_source_facts_survive_in_every_format(fmt: str) -> None:
    data = make_jpeg("photo", (900, 600))
    made = make_thumbnail(data, settings(fmt=fmt), MAX_PIXELS)
    assert made.decoded.format == {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}[fmt]
    assert stored_source_facts(made.data, decode_image(made.data)) == made.source
    assert made.source.format == "JPEG"


def test_small_images_keep_their_bytes_unless_asked() -> None:
    data = make_jpeg("small", (256, 100))
    kept = make_thumbnail(data, settings(), MAX_PIXELS)
    assert not kept.made and kept.data == data
    assert stored_source_facts(data, kept.decoded) == kept.source
    remade = make_thumbnail(data, settings(fmt="webp", only_if_larger=False), MAX_PIXELS)
    assert remade.made and remade.decoded.format == "WEBP"
    assert remade.decoded.image.size == (256, 100)


def test_originals_are_kept_whatever_their_size() -> None:
    data = make_jpeg("big", (2000, 1500))
    for kept in (settings(max_side=None), settings(fmt="source")):
        made = make_thumbnail(data, kept, MAX_PIXELS)
        assert not made.made and made.data == data
        assert made.decoded.image.size == (2000, 1500)


def test_transparency_and_odd_modes() -> None:
    rgba = np.zeros((100, 400, 4), dtype=np.uint8)
    rgba[:, :200] = (0, 0, 255, 255)
    png = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    in_webp = make_thumbnail(png, settings(100, "webp"), MAX_PIXELS).decoded.image
    assert in_webp.mode == "RGBA" and in_webp.getpixel((90, 10))[3] == 0
    in_png = make_thumbnail(png, settings(100, "png"), MAX_PIXELS).decoded.image
    assert in_png.mode == "RGBA" and in_png.getpixel((90, 10))[3] == 0
    in_jpeg = make_thumbnail(png, settings(100), MAX_PIXELS).decoded.image
    assert in_jpeg.mode == "RGB" and min(in_jpeg.getpixel((90, 10))) > 240
    grey = make_thumbnail(encode(Image.new("L", (600, 300), 90), "PNG"), settings(100, "png"),
                          MAX_PIXELS).decoded.image
    assert grey.mode == "L" and grey.size == (100, 50)
    palette = encode(Image.new("RGB", (600, 300), (0, 128, 0)).convert("P"), "GIF")
    assert make_thumbnail(palette, settings(100), MAX_PIXELS).decoded.image.mode == "RGB"


def test_bytes_that_are_no_image_are_rejected() -> None:
    with pytest.raises(ImageRejected) as rejected:
        make_thumbnail(b"<html>login</html>", settings(), MAX_PIXELS)
    assert rejected.value.kind == "not_image"
    cut = make_jpeg("cut", (1200, 900))[:5000]
    with pytest.raises(ImageRejected) as rejected:
        make_thumbnail(cut, settings(), MAX_PIXELS)
    assert rejected.value.kind == "truncated"
