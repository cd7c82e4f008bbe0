"""Pillow's 8-bit convolution resize, reproduced bit for bit as matrix products.

The image hashes must equal those of the ``imagehash`` package, which shrinks images with Pillow's
``resize(..., LANCZOS)``, and the blurry flag follows CleanVision, which shrinks with Pillow's
default ``BICUBIC``. Pillow does each of those reductions as a scalar loop over every source pixel
(about 0.25 ms per reduction of a 320x240 image); expressing the same arithmetic as a matrix
product lets BLAS do it several times faster, and three reductions of one image share the
conversion of its pixels.

Pillow's algorithm (``libImaging/Resample.c``), followed exactly:

* per output column, filter weights ``f((x - center + 0.5) / filterscale)`` over the source columns
  whose centres lie within the filter's support (widened by the reduction factor), normalised to sum
  to 1 in double precision, then rounded to integers with 22 fractional bits;
* a horizontal pass, then a vertical pass over its result; each output is
  ``(2**21 + sum(pixel * weight)) >> 22`` clipped to 0..255, so the intermediate image is 8-bit;
* a pass whose size does not change is skipped.

Integer weights times 8-bit pixels, summed over a few hundred source pixels, stay far below 2**53,
so float64 matrix products compute these sums exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image

_PRECISION_BITS = 22
_HALF = float(1 << (_PRECISION_BITS - 1))
_ONE = float(1 << _PRECISION_BITS)


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


def _bicubic(x: float) -> float:
    a = -0.5
    if x < 0.0:
        x = -x
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


_FILTERS: dict[int, tuple[Callable[[float], float], float]] = {
    Image.Resampling.LANCZOS: (_lanczos, 3.0),
    Image.Resampling.BICUBIC: (_bicubic, 2.0),
}


@lru_cache(maxsize=512)
def weights(in_size: int, out_size: int, resample: int) -> NDArray[np.float64]:
    """The ``in_size x out_size`` matrix of Pillow's fixed-point weights (as exact floats).

    Built with the same double-precision steps as Pillow's C code (scalar ``math.sin``, sums in
    the same order). Should a platform's arithmetic still differ, the probe in
    :func:`pillow_order` sees a different result and the resize falls back to Pillow itself.
    """
    function, base_support = _FILTERS[resample]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    inverse = 1.0 / filterscale
    matrix = np.zeros((in_size, out_size), dtype=np.float64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = max(0, int(center - support + 0.5))
        count = min(in_size, int(center + support + 0.5)) - first
        taps = [function((x + first - center + 0.5) * inverse) for x in range(count)]
        total = 0.0
        for tap in taps:
            total += tap
        if total != 0.0:
            taps = [tap / total for tap in taps]
        for x, tap in enumerate(taps):
            # C's (int) cast truncates toward zero, as Python's int() does.
            matrix[first + x, out] = int(tap * _ONE - 0.5) if tap < 0 else int(0.5 + tap * _ONE)
    matrix.setflags(write=False)
    return matrix


def _to_8bit(sums: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.clip(np.floor((sums + _HALF) / _ONE), 0.0, 255.0)


def resize_plane(plane: NDArray[np.float64], size: tuple[int, int], resample: int,
                 order: str = "hv") -> NDArray[np.float64]:
    """Resize one 8-bit plane (given as float64) to ``size`` = (width, height).

    ``order`` is ``"hv"`` (horizontal pass first, Pillow's classic order) or ``"vh"``.
    """
    height, width = plane.shape
    out_width, out_height = size
    for axis in order:
        if axis == "h" and out_width != width:
            plane = _to_8bit(plane @ weights(width, out_width, resample))
        elif axis == "v" and out_height != height:
            plane = _to_8bit(weights(height, out_height, resample).T @ plane)
    return plane


@lru_cache(maxsize=1024)
def pillow_order(width: int, height: int, size: tuple[int, int], resample: int) -> str | None:
    """Which pass order the installed Pillow uses for this resize, or None if neither matches.

    Pillow has always resized horizontally first, but newer releases go vertically first when the
    height shrinks much more than the width, and the intermediate rounding makes the two orders
    differ. Rather than encode one release's rule, ask Pillow: resize a random probe image of the
    same size once (cached per size) and keep the order that reproduces it exactly.
    """
    rng = np.random.default_rng([width, height, *size, resample])
    probe = rng.integers(0, 256, (height, width), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(probe).resize(size, resample))
    plane = probe.astype(np.float64)
    for order in ("hv", "vh"):
        if np.array_equal(resize_plane(plane, size, resample, order), expected):
            return order
    return None


MAX_MATRIX_PIXELS = 4_000_000
"""Larger images are resized by Pillow itself: the dense weights and float64 copy of a very large
image cost more memory than the speed-up is worth."""


@lru_cache(maxsize=256)
def stacked_weights(in_size: int, out_sizes: tuple[int, ...], resample: int) -> NDArray[np.float64]:
    """The weight matrices of several reductions of one axis side by side, for one product."""
    stacked = np.hstack([weights(in_size, out, resample) for out in out_sizes])
    stacked.setflags(write=False)
    return stacked


def _first_passes(plane: NDArray[np.float64], sizes: list[tuple[int, int]], resample: int,
                  axis: str) -> list[NDArray[np.float64]]:
    """The first pass (``axis`` "h" or "v") of every resize in ``sizes``, as one matrix product.

    Reading the plane once for all of them is what makes several reductions of one image cheap;
    a resize that keeps that axis's size skips the pass, as Pillow does.
    """
    height, width = plane.shape
    index = 1 if axis == "v" else 0
    in_size = height if axis == "v" else width
    changing = sorted({size[index] for size in sizes if size[index] != in_size})
    if not changing:
        return [plane for _ in sizes]
    stacked = stacked_weights(in_size, tuple(changing), resample)
    passed = _to_8bit(stacked.T @ plane if axis == "v" else plane @ stacked)
    starts = dict(zip(changing, np.cumsum([0, *changing[:-1]]).tolist(), strict=True))
    out = []
    for size in sizes:
        out_size = size[index]
        if out_size == in_size:
            out.append(plane)
        elif axis == "v":
            out.append(passed[starts[out_size]:starts[out_size] + out_size])
        else:
            out.append(passed[:, starts[out_size]:starts[out_size] + out_size])
    return out


def resize_gray_like_pillow(gray: NDArray[np.uint8], sizes: list[tuple[int, int]],
                            resample: int) -> list[NDArray[np.uint8]]:
    """``Image.fromarray(gray).resize(size, resample)`` for each size, as uint8 arrays.

    Equal to Pillow's output by construction: the matrix path is only taken in the pass order
    the installed Pillow was seen to use for this exact resize. The first passes of all resizes
    in the same order are done as one matrix product.
    """
    height, width = gray.shape
    orders = [pillow_order(width, height, size, resample) if gray.size <= MAX_MATRIX_PIXELS
              else None for size in sizes]
    out: dict[int, NDArray[np.uint8]] = {}
    plane: NDArray[np.float64] | None = None
    for order in ("hv", "vh"):
        chosen = [n for n, o in enumerate(orders) if o == order]
        if not chosen:
            continue
        if plane is None:
            plane = gray.astype(np.float64)
        group = [sizes[n] for n in chosen]
        for n, size, first in zip(chosen, group,
                                  _first_passes(plane, group, resample, order[0]), strict=True):
            out[n] = resize_plane(first, size, resample, order[1]).astype(np.uint8)
    for n, order in enumerate(orders):
        if order is None:
            out[n] = np.asarray(Image.fromarray(gray).resize(sizes[n], resample))
    return [out[n] for n in range(len(sizes))]
