"""Safe decoding of untrusted image bytes into fully loaded, upright Pillow images.

Catalog images come from arbitrary web servers, so the bytes may be an HTML error page,
a cut-off download, a format we never meant to parse, or a file engineered to expand into
gigabytes of pixels. Every one of those cases is turned into :class:`ImageRejected` with a
machine-readable ``kind`` so the pipeline can record *why* an image has no features instead
of crashing, hanging, or silently computing features from grey filler.

Guarantees of :func:`decode_image`:

* Only the Pillow plugins named in :data:`ACCEPTED_FORMATS` are tried, so bytes that look
  like EPS/PostScript never reach Ghostscript and other rarely audited decoders never run.
* The pixel count from the header is checked against ``max_pixels`` before any pixel data
  is decoded; Pillow's own decompression-bomb error and warning are mapped to the same kind.
  The process-wide ``Image.MAX_IMAGE_PIXELS`` is never modified, so Pillow's global limit
  still applies on top of ``max_pixels``.
* Truncated data is an error: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left at its default of
  ``False`` (Pillow would otherwise pad the missing rows with grey), and the image is fully
  decoded with ``load()`` because ``verify()`` does not decode pixel data.
* The EXIF orientation is applied, so width/height are what a viewer shows.
* For animated GIF/WebP only the first frame is decoded.
* Given ``max_side``, a JPEG larger than that is decoded straight from its DCT coefficients at
  1/2, 1/4 or 1/8 size (Pillow's ``draft``), never at full size: a thumbnail needs no more.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from io import BytesIO

from PIL import Image, ImageOps

WANTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
"""The formats web image servers send. AVIF needs a Pillow built with it (wheels from 11.3)."""


def _available(formats: tuple[str, ...]) -> tuple[str, ...]:
    Image.init()
    return tuple(name for name in formats if name in Image.OPEN)


ACCEPTED_FORMATS: tuple[str, ...] = _available(WANTED_FORMATS)
"""Pillow format names tried when opening; everything else is rejected as ``not_image``."""

DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own default ``Image.MAX_IMAGE_PIXELS`` (about 0.25 GiB of 24-bit RGB)."""

_PREVIEW_BYTES = 16
"""How many leading bytes an error message shows; enough to recognise HTML, JSON or a magic
number without dumping a whole response body into logs."""

# Exception types Pillow's decoders are known to raise on malformed input. Catching exactly
# these (instead of ``Exception``) keeps genuine programming errors visible.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    ValueError,
    SyntaxError,  # Pillow's historical "broken file" signal
    EOFError,
    struct.error,
    IndexError,
    TypeError,
    NotImplementedError,
    OverflowError,
)

_BOMB_ERRORS: tuple[type[BaseException], ...] = (
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


class ImageRejected(Exception):
    """Raised when bytes cannot be turned into trustworthy pixels.

    ``kind`` is a stable, machine-readable reason (``"not_image"``, ``"truncated"`` or
    ``"decompression_bomb"``) meant for an output column; ``message`` is for humans.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class DecodedImage:
    """A fully loaded, EXIF-upright image plus facts about the original bytes.

    ``format`` is Pillow's name for the container that was parsed (e.g. ``"JPEG"``; a
    multi-picture JPEG from a phone is reported as ``"MPO"``). ``source_mode`` is the pixel
    mode before any conversion, kept because later colour conversion erases it.
    """

    image: Image.Image
    format: str
    source_mode: str
    source_size: tuple[int, int] = (0, 0)
    """Width and height of the whole image as served, upright (before any reduced decode)."""


def _preview(data: bytes) -> str:
    """Return a short, log-safe repr of the first bytes, to make rejections diagnosable."""
    return repr(data[:_PREVIEW_BYTES])


def _not_image(data: bytes) -> ImageRejected:
    """Build the rejection for bytes no accepted decoder recognises."""
    return ImageRejected(
        "not_image",
        f"bytes are not an image in an accepted format (starts with {_preview(data)})",
    )


def _over_limit(size: str, pixels: int, max_pixels: int) -> ImageRejected:
    """The rejection of an image of ``pixels`` pixels, naming the limit the user can change.

    ``max_pixels`` is named whenever it is the limit crossed; otherwise it was set above
    Pillow's own limit, which still applies, and the message says so.
    """
    if pixels > max_pixels:
        limit = f"above max_pixels ({max_pixels})"
    else:
        limit = (f"above Pillow's own limit of {Image.MAX_IMAGE_PIXELS} pixels, which "
                 f"max_pixels ({max_pixels}) cannot raise")
    return ImageRejected("decompression_bomb", f"image is {size}{pixels} pixels, {limit}")


def _bomb(width: int, height: int, max_pixels: int) -> ImageRejected:
    """Build the rejection for images whose header announces too many pixels."""
    return _over_limit(f"{width}x{height} = ", width * height, max_pixels)


_PILLOW_PIXELS = re.compile(r"\((\d+) pixels\)")


def _pillow_bomb(exc: Exception, max_pixels: int) -> ImageRejected:
    """Pillow's own refusal, told in the same words as ours when its message gives the size."""
    found = _PILLOW_PIXELS.search(str(exc))
    if found is None:
        return ImageRejected("decompression_bomb", f"image rejected by Pillow (max_pixels is "
                                                   f"{max_pixels}): {exc}")
    return _over_limit("", int(found[1]), max_pixels)


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    """Parse only the header, trying the accepted plugins and nothing else."""
    try:
        return Image.open(BytesIO(data), formats=ACCEPTED_FORMATS)
    except _BOMB_ERRORS as exc:
        raise _pillow_bomb(exc, max_pixels) from exc
    except _DECODE_ERRORS as exc:
        # A header we cannot parse is indistinguishable from "not an image at all".
        raise _not_image(data) from exc


def _check_size(image: Image.Image, max_pixels: int) -> None:
    """Reject from the header's dimensions alone, before any pixel buffer is allocated."""
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejected("not_image", f"image header declares an empty size {width}x{height}")
    limit = max_pixels
    if Image.MAX_IMAGE_PIXELS is not None:
        # Pillow only warns between its limit and twice it; treat its limit as a limit too.
        limit = min(limit, Image.MAX_IMAGE_PIXELS)
    if width * height > limit:
        raise _bomb(width, height, max_pixels)


def _load_pixels(image: Image.Image, max_pixels: int) -> None:
    """Decode all pixel data of the current (first) frame; a short file is an error here."""
    try:
        image.load()
    except _BOMB_ERRORS as exc:
        raise _pillow_bomb(exc, max_pixels) from exc
    except _DECODE_ERRORS as exc:
        # The header parsed, so the container is real; failing now means the pixel data is
        # cut short or damaged, which callers treat the same way (a re-download may help).
        raise ImageRejected(
            "truncated", f"{image.format} image data is truncated or corrupt: {exc}"
        ) from exc


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation so dimensions and pixels match what viewers display.

    The result is always a new, single-frame image detached from the source file.
    """
    try:
        return ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as exc:
        raise ImageRejected(
            "not_image", f"could not apply the image's EXIF orientation: {exc}"
        ) from exc


_TURNED_ORIENTATIONS = frozenset({5, 6, 7, 8})
"""EXIF orientations that turn the image by a quarter: width and height swap."""


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """The size a viewer shows, from the header alone (the EXIF orientation may swap it)."""
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112)
    except _DECODE_ERRORS:
        orientation = None
    return (height, width) if orientation in _TURNED_ORIENTATIONS else (width, height)


def draft_size(size: tuple[int, int], max_side: int) -> tuple[int, int] | None:
    """The smallest size a reduced decode may give so the longest side still reaches ``max_side``.

    None when the image is not larger than ``max_side`` (nothing to gain).
    """
    width, height = size
    longest = max(width, height)
    if longest <= max_side:
        return None
    scale = max_side / longest
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_side: int | None = None) -> DecodedImage:
    """Decode untrusted ``data`` into an upright, fully loaded first frame.

    Raises :class:`ImageRejected` for empty or unrecognised bytes (``not_image``), cut or
    damaged pixel data (``truncated``), and images with more than ``max_pixels`` pixels or
    that trip Pillow's own limit (``decompression_bomb``).

    The effective limit is the smaller of ``max_pixels`` and Pillow's ``MAX_IMAGE_PIXELS``,
    checked from the header; no process-wide warning filter is touched, so decoding is safe
    from many threads at once.

    With ``max_side``, a JPEG is decoded at the smallest DCT scale whose longest side is still at
    least ``max_side`` (other formats have no such shortcut and decode whole).
    """
    if not data:
        raise ImageRejected("not_image", "empty input: 0 bytes")
    image = _open_header(data, max_pixels)
    with image:
        source_format = image.format or "UNKNOWN"
        source_mode = image.mode
        _check_size(image, max_pixels)
        source_size = _upright_size(image)
        if max_side is not None and image.format in ("JPEG", "MPO"):
            wanted = draft_size(image.size, max_side)
            if wanted is not None:
                image.draft(image.mode if image.mode in ("RGB", "L") else None, wanted)
        _load_pixels(image, max_pixels)
        upright = _upright(image)
    return DecodedImage(image=upright, format=source_format, source_mode=source_mode,
                        source_size=source_size)
