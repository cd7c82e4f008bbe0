"""Pillow's 8-bit convolution resize, reproduced bit for bit by compiled loops.

The image hashes must equal those of the ``imagehash`` package, which shrinks images with Pillow's
``resize(..., LANCZOS)``, and the blurry flag follows CleanVision, which shrinks with Pillow's
default ``BICUBIC``. Pillow does each of those reductions as a scalar loop over every source pixel
(about 0.25 ms per reduction of a 320x240 image). Here each pass adds whole rows of pixels times
one weight at a time (:func:`thumbfeat.kernels.combine_rows`), which the compiler turns into
instructions handling many pixels at once; a horizontal pass runs on the transposed image. Both
passes of a resize, and the transposition of the small image between them, are one compiled call
(:func:`thumbfeat.kernels.resize_passes`).

Pillow's algorithm (``libImaging/Resample.c``), followed exactly:

* per output column, filter weights ``f((x - center + 0.5) / filterscale)`` over the source columns
  whose centres lie within the filter's support (widened by the reduction factor), normalised to sum
  to 1 in double precision, then rounded to integers with 22 fractional bits;
* a horizontal pass, then a vertical pass over its result; each output is
  ``(2**21 + sum(pixel * weight)) >> 22`` clipped to 0..255, so the intermediate image is 8-bit;
* a pass whose size does not change is skipped.

The sums are int32, as in Pillow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from thumbfeat.lazy import lazy_module

# Loaded on first use: see thumbfeat.lazy.
kernels = lazy_module("thumbfeat.kernels")

_PRECISION_BITS = 22
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


@lru_cache(maxsize=512)
def taps(in_size: int, out_size: int, resample: int) -> tuple[NDArray[np.int64], NDArray[np.int32]]:
    """:func:`weights` as windows: per output, the first source index and the integer weights
    from there on (rows padded with zeros to the widest window)."""
    matrix = weights(in_size, out_size, resample)
    starts = np.zeros(out_size, dtype=np.int64)
    windows = []
    for out in range(out_size):
        used = np.flatnonzero(matrix[:, out])
        first, stop = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 0)
        starts[out] = first
        windows.append(matrix[first:stop, out])
    coefficients = np.zeros((out_size, max(1, *(w.size for w in windows))), dtype=np.int32)
    for out, window in enumerate(windows):
        coefficients[out, :window.size] = window
    starts.setflags(write=False)
    coefficients.setflags(write=False)
    return starts, coefficients


def _transposed(plane: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The plane transposed: by 8x8 blocks in registers where both sides allow (as for most
    thumbnails) and the pixels start on a word boundary, else by numpy."""
    height, width = plane.shape
    if (height % 8 == 0 and width % 8 == 0 and plane.flags.c_contiguous
            and plane.ctypes.data % 8 == 0):
        return kernels.transposed_blocks(plane)
    return np.ascontiguousarray(plane.T)


Passes = tuple[NDArray[np.int64], NDArray[np.int32], NDArray[np.int64], NDArray[np.int32]]
"""The taps (starts, coefficients) of the horizontal pass, then of the vertical pass."""


def _skipped() -> tuple[NDArray[np.int64], NDArray[np.int32]]:
    """The taps of a pass whose size does not change (Pillow skips it): empty, and read-only
    like :func:`taps`, so the compiled code sees one argument type."""
    starts = np.zeros(0, dtype=np.int64)
    coefficients = np.zeros((0, 1), dtype=np.int32)
    starts.setflags(write=False)
    coefficients.setflags(write=False)
    return starts, coefficients


_SKIPPED = _skipped()


def _passes(width: int, height: int, size: tuple[int, int], resample: int
            ) -> Passes:
    """The taps of the horizontal and the vertical pass (empty for a pass that is skipped)."""
    out_width, out_height = size
    across = taps(width, out_width, resample) if out_width != width else _SKIPPED
    down = taps(height, out_height, resample) if out_height != height else _SKIPPED
    return *across, *down


def _resize(plane: NDArray[np.uint8], across: NDArray[np.uint8],
            passes: Passes, across_first: bool) -> NDArray[np.uint8]:
    """Resize one contiguous plane (see :func:`kernels.resize_passes`); ``across`` is the plane
    transposed when the horizontal pass goes first and is not skipped."""
    return kernels.resize_passes(plane, across, *passes, across_first, _PRECISION_BITS)


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
    passes = _passes(width, height, size, resample)
    for order in ("hv", "vh"):
        if np.array_equal(_resize(probe, _transposed(probe), passes, order == "hv"), expected):
            return order
    return None


MAX_MATRIX_PIXELS = 4_000_000
"""Larger images are resized by Pillow itself: the probe that confirms the pass order costs as
much as a resize, and large images are rare here."""


@lru_cache(maxsize=1024)
def resize_plan(width: int, height: int, size: tuple[int, int], resample: int
                ) -> tuple[bool, Passes] | None:
    """Whether the horizontal pass goes first, and the taps of both passes, for this resize;
    None where the compiled path did not reproduce Pillow (see :func:`pillow_order`)."""
    order = pillow_order(width, height, size, resample)
    if order is None:
        return None
    return order == "hv", _passes(width, height, size, resample)


def resize_gray_like_pillow(gray: NDArray[np.uint8], sizes: list[tuple[int, int]],
                            resample: int) -> list[NDArray[np.uint8]]:
    """``Image.fromarray(gray).resize(size, resample)`` for each size, as uint8 arrays.

    Equal to Pillow's output by construction: the compiled path is only taken in the pass order
    the installed Pillow was seen to use for this exact resize. Resizes going horizontally first
    share one transposed copy of the plane.
    """
    height, width = gray.shape
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    transposed = None
    compiled = gray.size <= MAX_MATRIX_PIXELS
    out = []
    for size in sizes:
        plan = resize_plan(width, height, size, resample) if compiled else None
        if plan is None:
            out.append(np.asarray(Image.fromarray(gray).resize(size, resample)))
            continue
        across_first, passes = plan
        if across_first and passes[0].size and transposed is None:
            transposed = _transposed(gray)
        across = transposed if across_first and passes[0].size else gray
        out.append(_resize(gray, across, passes, across_first))
    return out
