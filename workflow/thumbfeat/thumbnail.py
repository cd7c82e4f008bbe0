"""Thumbnails made from downloaded bytes, and the facts about the source they keep.

An image is decoded once: at reduced size when it is a large JPEG (see thumbfeat.imaging), then
turned upright, shrunk so its longest side is ``max_side`` and encoded in the chosen format. Its
features are then measured on exactly the pixels of the stored file (the small encoded thumbnail
is decoded again, because JPEG and WebP change pixels when they encode), so measuring the stored
thumbnail later gives the same row.

Facts only the download knows (the source's size, byte count, format and SHA-256) travel inside
the thumbnail, in a text field of the file (a JPEG comment, a PNG text chunk, WebP XMP), so a row
measured again from disk still has them. An image kept as served is its own source.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml
from PIL import Image, PngImagePlugin

from thumbfeat import layout
from thumbfeat.features import to_rgb_on_white
from thumbfeat.imaging import ACCEPTED_FORMATS, DecodedImage, decode_image

LOSSY = frozenset({"jpeg", "webp"})

SOURCE_KEY = "thumbfeat-source"
"""The name of the text field holding the source facts inside a made thumbnail."""

_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}
_WHITE = (255, 255, 255)
# Shrink by whole factors (pixel averaging, cheap) down to three times the target, then resample
# the rest with Lanczos: the result is as sharp as a Lanczos shrink of the whole.
_REDUCING_GAP = 3.0


@dataclass(frozen=True)
class ThumbnailSettings:
    """The ``thumbnail`` part of the config: how large and in what format thumbnails are kept."""

    max_side: int | None
    format: str
    quality: int
    only_if_larger: bool

    @property
    def keeps_originals(self) -> bool:
        return self.max_side is None or self.format == "source"

    @property
    def tag(self) -> str:
        """The folder name of thumbnails made with these settings (one folder per settings).

        Readable, so a person sees what a folder holds; every setting that changes the stored
        bytes is in it, so thumbnails made under two settings never share a folder.
        """
        if self.keeps_originals:
            return layout.ORIGINALS_TAG
        parts = [f"{self.max_side}px", self.format]
        if self.format in LOSSY:
            parts.append(f"q{self.quality}")
        if not self.only_if_larger:
            parts.append("all")
        return "-".join(parts)


def thumbnail_settings(section: dict[str, Any]) -> ThumbnailSettings:
    """The settings from the config section (defaults already filled in by the schema)."""
    return ThumbnailSettings(max_side=section["max_side"], format=section["format"],
                             quality=int(section["quality"]),
                             only_if_larger=bool(section["only_if_larger"]))


SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


def default_settings() -> ThumbnailSettings:
    """The settings a config without a ``thumbnail`` section gets (the schema's defaults)."""
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    fields = schema["properties"]["thumbnail"]["properties"]
    return thumbnail_settings({name: spec["default"] for name, spec in fields.items()})


@dataclass(frozen=True)
class SourceFacts:
    """What the download was: its upright size, byte count, format and SHA-256."""

    width: int
    height: int
    bytes: int
    format: str
    sha256: str

    def columns(self) -> dict[str, object]:
        """The feature-table columns describing the source (see docs/feature-table.md)."""
        return {"source_width": self.width, "source_height": self.height,
                "source_bytes": self.bytes, "source_format": self.format,
                "source_sha256": self.sha256}


# The row's columns about the download and the settings its thumbnail was made with, in table
# order (part of the row schema, thumbfeat.rows).
THUMBNAIL_FIELDS: tuple[pa.Field, ...] = (
    pa.field("source_width", pa.int32()),
    pa.field("source_height", pa.int32()),
    pa.field("source_bytes", pa.int64()),
    pa.field("source_format", pa.string()),
    pa.field("source_sha256", pa.string()),
    pa.field("thumbnail_settings", pa.string()),
)


@dataclass(frozen=True)
class Thumbnail:
    """The bytes to store, their decoded pixels (what features describe) and the source facts."""

    data: bytes
    decoded: DecodedImage
    source: SourceFacts
    made: bool
    """True when the bytes were made here; False when they are the download, kept as served."""


def facts_of_download(data: bytes, decoded: DecodedImage,
                      data_sha256: str | None = None) -> SourceFacts:
    """The facts of downloaded bytes; ``data_sha256`` is their SHA-256 (hex) when the caller
    has computed it already."""
    width, height = decoded.source_size
    digest = hashlib.sha256(data).hexdigest() if data_sha256 is None else data_sha256
    return SourceFacts(width, height, len(data), decoded.format, digest)


def target_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` shrunk so its longest side is ``max_side``, keeping the ratio (never below 1)."""
    width, height = size
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_storable(image: Image.Image, fmt: str) -> Image.Image:
    """Pixels every viewer reads in ``fmt``: 8-bit grey or RGB, with alpha where ``fmt`` keeps it.

    CMYK, 16-bit, palette and other modes become RGB (or grey); JPEG has no alpha, so
    transparency is composited on white, as the features see it.
    """
    transparent = image.has_transparency_data
    if fmt != "jpeg" and transparent:
        return image if image.mode == "RGBA" else image.convert("RGBA")
    if image.mode == "L" and fmt != "webp":
        return image
    if image.mode == "RGB":
        return image
    return to_rgb_on_white(image)


def encode(image: Image.Image, settings: ThumbnailSettings, source: SourceFacts) -> bytes:
    """The thumbnail file, carrying the source facts in a text field of the format."""
    note = json.dumps({SOURCE_KEY: source.columns()}, sort_keys=True)
    out = BytesIO()
    fmt = settings.format
    if fmt == "jpeg":
        image.save(out, "JPEG", quality=settings.quality, comment=note.encode())
    elif fmt == "webp":
        image.save(out, "WEBP", quality=settings.quality, xmp=note.encode())
    else:
        info = PngImagePlugin.PngInfo()
        info.add_text(SOURCE_KEY, note)
        image.save(out, "PNG", pnginfo=info)
    return out.getvalue()


def make_thumbnail(data: bytes, settings: ThumbnailSettings, max_pixels: int) -> Thumbnail:
    """Decode downloaded bytes once and return what to store and measure.

    Raises thumbfeat.imaging.ImageRejected for bytes that are not a whole image.
    """
    max_side = None if settings.keeps_originals else settings.max_side
    decoded = decode_image(data, max_pixels=max_pixels, max_side=max_side)
    source = facts_of_download(data, decoded)
    if max_side is None or (settings.only_if_larger and max(source.width, source.height)
                            <= max_side):
        return Thumbnail(data, decoded, source, made=False)
    # A reduced decode may already be within max_side (never below it): size it from there.
    image = decoded.image
    size = target_size(image.size, max_side)
    storable = to_storable(image, settings.format)
    if size != storable.size:
        storable = storable.resize(size, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)
    stored = encode(storable, settings, source)
    return Thumbnail(stored, decode_image(stored, max_pixels=max_pixels), source, made=True)


def stored_source_facts(data: bytes, decoded: DecodedImage,
                        data_sha256: str | None = None) -> SourceFacts:
    """The source facts of a stored thumbnail: those it carries, else its own (kept as served);
    ``data_sha256`` as for :func:`facts_of_download`."""
    note = _note(data)
    if note is not None:
        try:
            columns = json.loads(note)[SOURCE_KEY]
            return SourceFacts(int(columns["source_width"]), int(columns["source_height"]),
                               int(columns["source_bytes"]), str(columns["source_format"]),
                               str(columns["source_sha256"]))
        except (ValueError, KeyError, TypeError):
            pass
    return facts_of_download(data, decoded, data_sha256)


def _note(data: bytes) -> str | bytes | None:
    """The text field a made thumbnail carries, read from the header alone (no pixel decode)."""
    try:
        with Image.open(BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            for key in ("comment", "xmp", SOURCE_KEY):
                value = image.info.get(key)
                if value and SOURCE_KEY in (value.decode(errors="replace")
                                            if isinstance(value, bytes) else str(value)):
                    return value
    except (OSError, ValueError, SyntaxError):
        return None
    return None
