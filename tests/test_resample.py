"""Tests for thumbfeat.resample: the matrix resize must equal Pillow's, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from thumbfeat.resample import MAX_MATRIX_PIXELS, pillow_order, resize_gray_like_pillow

FILTERS = [Image.Resampling.LANCZOS, Image.Resampling.BICUBIC]


def planes(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(12):
        height, width = (int(v) for v in rng.integers(1, 360, 2))
        out.append(rng.integers(0, 256, (height, width), dtype=np.uint8))
        yy, xx = np.mgrid[0:height, 0:width]
        out.append(((xx * 7 + yy * 3) % 256).astype(np.uint8))
        out.append(np.where(rng.random((height, width)) < 0.5, 0, 255).astype(np.uint8))
    return out


@pytest.mark.parametrize("resample", FILTERS)
def test_equals_pillow_on_random_sizes(resample: int) -> None:
    rng = np.random.default_rng(7)
    for plane in planes(1):
        sizes = [(8, 8), (9, 8), (32, 32), (64, 43),
                 tuple(int(v) for v in rng.integers(1, 120, 2))]
        got = resize_gray_like_pillow(plane, sizes, resample)
        for size, ours in zip(sizes, got, strict=True):
            expected = np.asarray(Image.fromarray(plane).resize(size, resample))
            assert ours.dtype == np.uint8
            assert np.array_equal(ours, expected), (plane.shape, size)


def test_both_pass_orders_occur_and_are_found() -> None:
    # Pillow may go vertically first for tall images; the probe must find that order.
    tall, wide = (40, 400), (400, 40)
    orders = {pillow_order(w, h, (32, 32), Image.Resampling.LANCZOS) for w, h in (tall, wide)}
    assert orders <= {"hv", "vh"}
    for width, height in (tall, wide, (320, 240)):
        plane = np.random.default_rng(width).integers(0, 256, (height, width), dtype=np.uint8)
        (ours,) = resize_gray_like_pillow(plane, [(32, 32)], Image.Resampling.LANCZOS)
        assert np.array_equal(ours, np.asarray(Image.fromarray(plane).resize((32, 32), 1)))


def test_same_size_and_upscaling() -> None:
    plane = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)
    same, larger = resize_gray_like_pillow(plane, [(8, 8), (32, 32)], Image.Resampling.LANCZOS)
    assert np.array_equal(same, plane)
    assert np.array_equal(larger, np.asarray(Image.fromarray(plane).resize((32, 32), 1)))


def test_very_large_images_fall_back_to_pillow() -> None:
    side = int(MAX_MATRIX_PIXELS**0.5) + 1
    plane = np.zeros((side, side), dtype=np.uint8)
    plane[::7, ::5] = 255
    (ours,) = resize_gray_like_pillow(plane, [(8, 8)], Image.Resampling.LANCZOS)
    assert np.array_equal(ours, np.asarray(Image.fromarray(plane).resize((8, 8), 1)))


@pytest.mark.parametrize("resample", FILTERS)
def test_many_sizes_in_one_call_share_first_passes_and_equal_pillow(resample: int) -> None:
    # Repeated sizes, sizes keeping one side, and both pass orders (tall and wide reductions
    # of one plane) in a single call: each result must still be Pillow's.
    plane = np.random.default_rng(11).integers(0, 256, (300, 280), dtype=np.uint8)
    sizes = [(8, 8), (9, 8), (8, 8), (280, 40), (32, 300), (280, 300), (3, 250), (250, 3),
             (32, 32)]
    orders = {pillow_order(280, 300, size, resample) for size in sizes}
    got = resize_gray_like_pillow(plane, sizes, resample)
    for size, ours in zip(sizes, got, strict=True):
        assert np.array_equal(ours, np.asarray(Image.fromarray(plane).resize(size, resample))), size
    assert orders <= {"hv", "vh"}


@pytest.mark.parametrize("resample", FILTERS)
def test_sides_in_eights_and_unaligned_pixels_equal_pillow(resample: int) -> None:
    # Sides that are multiples of 8 are transposed by blocks, unless the pixels do not start on
    # a word boundary (a view one byte into a buffer); both must give Pillow's result.
    rng = np.random.default_rng(13)
    for height, width in ((240, 320), (8, 512), (512, 8), (48, 64)):
        plane = rng.integers(0, 256, (height, width), dtype=np.uint8)
        unaligned = np.empty(height * width + 1, dtype=np.uint8)[1:].reshape(height, width)
        unaligned[:] = plane
        for pixels in (plane, unaligned):
            sizes = [(8, 8), (9, 8), (32, 32), (64, 48)]
            for size, ours in zip(sizes, resize_gray_like_pillow(pixels, sizes, resample),
                                  strict=True):
                expected = np.asarray(Image.fromarray(plane).resize(size, resample))
                assert np.array_equal(ours, expected), (plane.shape, size)
