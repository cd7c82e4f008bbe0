"""Whether a per-image file is whole, and moving one that is not out of the way.

Every per-image file is written atomically, so a file that exists was whole when written; it can
still be damaged afterwards (a disk error, a careless copy between machines, an edit by hand). A
damaged file is never fatal: it is moved to ``results/quarantine/`` (same relative path, with a
``.why`` note beside it) and the image is built again, by the same run when the plan learns of
it in time, else by the next.

Two depths of check: the cheap one reads at most a few bytes at each end of a file (size, magic
bytes: Parquet's ``PAR1`` at both ends, an image signature); the full one reads the file as the
workflow would (the row with its schema, the image decoded, the record parsed). The plan runs the
cheap check when the table is built from scratch, the table job survives a file that passes it
but does not read, and ``thumbfeat verify`` runs either over every file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from thumbfeat import atomic, layout, storage

QUARANTINE = "quarantine"
# The failure kind of an image whose stored file was damaged: retried by the next run.
DAMAGED_KIND = "damaged_file"
WHY_SUFFIX = ".why"

PARQUET_MAGIC = b"PAR1"
# A one-row file holds at least both magics, a footer length and a footer.
PARQUET_MIN_BYTES = 12

# Leading bytes of the formats a thumbnail can have (thumbfeat.imaging.WANTED_FORMATS); WebP and
# AVIF are checked at an offset (RIFF....WEBP, ....ftyp).
IMAGE_SIGNATURES: tuple[bytes, ...] = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"GIF87a",
    b"GIF89a",
    b"BM",  # BMP
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)


@dataclass(frozen=True)
class Damage:
    """A per-image file that is not whole, and why."""

    path: str
    reason: str


def cheap_row_problem(path: str | Path) -> str | None:
    """Why a feature row file is not whole by its size and magic bytes, or None."""
    if storage.is_remote(path):
        return _remote_row_problem(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < PARQUET_MIN_BYTES:
                return _parquet_ends_problem(size, b"", b"")
            head = handle.read(4)
            handle.seek(-4, os.SEEK_END)
            tail = handle.read(4)
    except FileNotFoundError:
        return None
    return _parquet_ends_problem(size, head, tail)


def _parquet_ends_problem(size: int, head: bytes, tail: bytes) -> str | None:
    """Why a file of ``size`` bytes starting with ``head`` and ending with ``tail`` (4 bytes
    each) cannot be a whole Parquet file, or None."""
    if size < PARQUET_MIN_BYTES:
        return f"only {size} bytes, too short for a Parquet file"
    if head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
        return ("Parquet magic bytes (PAR1) missing at its start or end: the file is cut or "
                "overwritten")
    return None


def _remote_row_problem(path: str | Path) -> str | None:
    """``cheap_row_problem`` of an object: a row is a few kilobytes, read whole."""
    try:
        data = storage.get(path)
    except FileNotFoundError:
        return None
    return _parquet_ends_problem(len(data), data[:4], data[-4:])


def image_signature_ok(head: bytes) -> bool:
    """Whether the first bytes of a file are those of an image format thumbfeat keeps."""
    if head.startswith(IMAGE_SIGNATURES):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head[4:8] == b"ftyp"


def cheap_thumb_problem(path: str | Path) -> str | None:
    """Why a thumbnail is not whole by its first bytes, or None (empty marks a failed download)."""
    try:
        if storage.is_remote(path):
            head = storage.get(path)[:16]
        else:
            with open(path, "rb") as handle:
                head = handle.read(16)
    except FileNotFoundError:
        return None
    if not head or image_signature_ok(head):
        return None
    return f"not an image: it starts with {head[:8]!r}"


def failure_problem(path: str | Path) -> str | None:
    """Why a failure record does not parse, or None."""
    try:
        data = json.loads(storage.get(path))
    except FileNotFoundError:
        return None
    except ValueError as error:
        return f"not a JSON failure record ({error})"
    if not isinstance(data, dict) or not {"image_id", "kind", "error", "retryable"} <= set(data):
        return "not a failure record: fields image_id, kind, error or retryable are missing"
    return None


def full_row_problem(path: str | Path) -> str | None:
    """Why a feature row file does not read as a row, or None."""
    problem = cheap_row_problem(path)
    if problem is not None:
        return problem
    import pyarrow as pa

    from thumbfeat.rows import read_row

    try:
        rows = read_row(path)
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowException, ValueError) as error:
        return f"does not read as a row: {' '.join(str(error).split())}"
    if rows.num_rows != 1:
        return f"holds {rows.num_rows} rows, not one"
    return None


def full_thumb_problem(path: str | Path) -> str | None:
    """Why a thumbnail does not decode, or None. Too many pixels is a setting, not damage."""
    from thumbfeat.imaging import ImageRejected, decode_image

    try:
        data = storage.get(path)
    except FileNotFoundError:
        return None
    if not data:
        return None
    try:
        decode_image(data, max_pixels=2**62)
    except ImageRejected as rejected:
        if rejected.kind == "decompression_bomb":
            return None
        return f"does not decode ({rejected.kind}: {rejected})"
    return None


# Each stage's folder, file suffix and checks (cheap, full).
Check = Callable[[str | Path], str | None]
STAGES: tuple[tuple[str, str, Check, Check], ...] = (
    (layout.THUMBS, layout.THUMB_SUFFIX, cheap_thumb_problem, full_thumb_problem),
    (layout.FEATURES, layout.FEATURE_SUFFIX, cheap_row_problem, full_row_problem),
    (layout.FAILED, layout.FAILURE_SUFFIX, failure_problem, failure_problem),
)


def problem_of(path: str, fast: bool) -> str | None:
    """Why the per-image file at ``path`` is not whole (by its stage's check), or None."""
    for stage, suffix, cheap, full in STAGES:
        if path.endswith(suffix) and f"/{stage}/" in path:
            return (cheap if fast else full)(path)
    return None


def check_many(paths: Sequence[str], fast: bool) -> list[Damage]:
    """The damaged files among ``paths``: one task's worth of checks."""
    found = []
    for path in paths:
        reason = problem_of(path, fast)
        if reason is not None:
            found.append(Damage(path, reason))
    return found


def stage_folders(results: str | Path, stage: str) -> list[str]:
    """The folders of ``stage`` holding shard folders: one per settings folder of thumbnails and
    features (every settings folder is checked), the stage itself for failure records."""
    if stage == layout.FAILED:
        return [stage]
    tags = sorted(name for name in storage.subfolders(f"{results}/{stage}")
                  if name not in layout.SHARD_SET)
    return [layout.stage_dir(stage, tag) for tag in tags]


def per_image_files(results: str | Path) -> Iterator[str]:
    """Every finished per-image file under ``results``, stage by stage, shard by shard (one
    listing per shard folder or prefix)."""
    for stage, suffix, _, _ in STAGES:
        for shard in (f"{results}/{folder}/{shard}"
                      for folder in stage_folders(results, stage)
                      for shard in sorted(storage.subfolders(f"{results}/{folder}"))
                      if shard in layout.SHARD_SET):
            for name in sorted(storage.names(shard)):
                if name.endswith(suffix) and not layout.is_temporary_name(name):
                    yield f"{shard}/{name}"


def check_files(paths: Sequence[str], *, fast: bool, workers: int,
                on_progress: Callable[[int, int], None] | None = None,
                chunk: int = 500) -> list[Damage]:
    """Check ``paths`` in ``workers`` processes; ``on_progress(done, total)`` after each chunk."""
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    damaged: list[Damage] = []
    done = 0
    if workers < 2 or len(chunks) < 2:
        for part in chunks:
            damaged += check_many(part, fast)
            done += len(part)
            if on_progress:
                on_progress(done, len(paths))
        return damaged
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for part, found in zip(chunks, pool.map(check_many, chunks, [fast] * len(chunks)),
                               strict=True):
            damaged += found
            done += len(part)
            if on_progress:
                on_progress(done, len(paths))
    return damaged


def quarantine_path(results: str | Path, path: str | Path) -> Path | str:
    """Where a damaged file goes: its path under the results folder, moved under quarantine/
    (in a bucket, the same key under the prefix's quarantine/)."""
    if storage.is_remote(results):
        return f"{results}/{QUARANTINE}/{str(path)[len(str(results)) + 1:]}"
    relative = Path(os.path.relpath(path, results))
    return Path(results, QUARANTINE, relative)


def quarantine(results: str | Path, damage: Damage,
               logger: logging.Logger | None = None) -> Path | str | None:
    """Move a damaged file to the quarantine folder with a note of why; warn naming it.

    An earlier quarantined copy of the same file is kept under a numbered name: nothing is ever
    deleted. Returns where the file went, or None when it was already gone.
    """
    if storage.is_remote(results):
        return _quarantine_object(results, damage, logger)
    target = Path(quarantine_path(results, damage.path))
    target.parent.mkdir(parents=True, exist_ok=True)
    number = 1
    while target.exists():
        number += 1
        target = target.with_name(f"{Path(quarantine_path(results, damage.path)).name}.{number}")
    try:
        os.replace(damage.path, target)
    except FileNotFoundError:
        return None
    atomic.write_bytes(f"{target}{WHY_SUFFIX}", (damage.reason + "\n").encode("utf-8"))
    if logger is not None:
        logger.warning("damaged file %s moved to %s: %s; it is built again", damage.path,
                       target, damage.reason)
    return target


def _quarantine_object(results: str | Path, damage: Damage,
                       logger: logging.Logger | None) -> str | None:
    """``quarantine`` in a bucket: a server-side copy under quarantine/, then a delete."""
    first = str(quarantine_path(results, damage.path))
    target, number = first, 1
    while storage.exists(target):
        number += 1
        target = f"{first}.{number}"
    if not storage.move(damage.path, target):
        return None
    storage.put(f"{target}{WHY_SUFFIX}", (damage.reason + "\n").encode("utf-8"))
    if logger is not None:
        logger.warning("damaged file %s moved to %s: %s; it is built again", damage.path,
                       target, damage.reason)
    return target


def quarantine_all(results: str | Path, damaged: Iterable[Damage],
                   logger: logging.Logger | None = None) -> list[Path | str]:
    """Quarantine each damaged file (see quarantine); the ones moved."""
    moved = []
    for damage in damaged:
        with contextlib.suppress(FileNotFoundError):
            target = quarantine(results, damage, logger)
            if target is not None:
                moved.append(target)
    return moved


def cheap_damage(results: str | Path, thumbs: Iterable[str], rows: Iterable[str],
                 tag: str) -> list[Damage]:
    """Cheap checks of the given images' thumbnails and feature rows (ids) made with the
    settings ``tag``, in that order."""
    found = []
    for image_id in thumbs:
        path = layout.thumb_path(results, image_id, tag)
        if (reason := cheap_thumb_problem(path)) is not None:
            found.append(Damage(path, reason))
    for image_id in rows:
        path = layout.feature_path(results, image_id, tag)
        if (reason := cheap_row_problem(path)) is not None:
            found.append(Damage(path, reason))
    return found
