"""Failure records: why an image has no thumbnail, and whether a later run tries again.

A failed download leaves two files: its record ``failed/<shard>/<id>.json`` and an empty thumbnail
(the Make idiom for "done, nothing to show", since Snakemake has no optional outputs). The record
is written first, so an empty thumbnail always has its reason beside it. The planner reads the
records to decide what to redo; the feature stage copies them into the image's row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from thumbfeat import layout, storage
from thumbfeat.urls import recorded_url


@dataclass(frozen=True)
class FailureRecord:
    image_id: str
    kind: str
    error: str
    retryable: bool
    # The URL that failed (None in records written before it was recorded): a changed catalog
    # URL retries the image.
    url: str | None = None


def record_failure(results: str, image_id: str, kind: str, error: str, retryable: bool,
                   tag: str, url: str | None = None) -> None:
    """Record why an image failed, then mark its download as done with an empty thumbnail.

    The record is about the source, whatever the thumbnail settings: it names the ``url`` that
    failed, so a changed catalog URL retries the image. The empty thumbnail marks the download
    done for the settings ``tag``.
    """
    record = {"image_id": image_id, "kind": kind, "error": error, "retryable": retryable,
              "url": None if url is None else recorded_url(url),
              "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    storage.put(layout.failure_path(results, image_id), json.dumps(record).encode())
    storage.put(layout.thumb_path(results, image_id, tag), b"")


def read_failure(path: str | Path) -> FailureRecord | None:
    """The record at ``path``, or None when it is missing or unreadable."""
    try:
        data = json.loads(storage.get(path).decode("utf-8"))
        url = data.get("url")
        return FailureRecord(str(data["image_id"]), str(data["kind"]), str(data["error"]),
                             bool(data["retryable"]), None if url is None else str(url))
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        return None


def read_failure_records(results: str | Path,
                         wanted: Collection[str]) -> tuple[dict[str, FailureRecord], list[str]]:
    """Failure records of the catalog's images, and the ids whose record does not parse.

    Records of other images are left alone. An unreadable record is damage, not a reason to
    stop: the plan tries its image again.
    """
    records: dict[str, FailureRecord] = {}
    unreadable: list[str] = []
    for image_id in layout.present_ids(results, layout.FAILED, layout.FAILURE_SUFFIX):
        if image_id not in wanted:
            continue
        path = layout.failure_path(results, image_id)
        record = read_failure(path)
        if record is not None:
            records[image_id] = record
        elif storage.exists(path):
            unreadable.append(image_id)
    return records, unreadable


def read_failures(results: str | Path, wanted: Collection[str]) -> dict[str, FailureRecord]:
    """Failure records of the catalog's images (records of other images are left alone)."""
    return read_failure_records(results, wanted)[0]
