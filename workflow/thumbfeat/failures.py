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


@dataclass(frozen=True)
class FailureRecord:
    image_id: str
    kind: str
    error: str
    retryable: bool


def record_failure(results: str, image_id: str, kind: str, error: str, retryable: bool) -> None:
    """Record why an image failed, then mark its download as done with an empty thumbnail."""
    record = {"image_id": image_id, "kind": kind, "error": error, "retryable": retryable,
              "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    storage.put(layout.failure_path(results, image_id), json.dumps(record).encode())
    storage.put(layout.thumb_path(results, image_id), b"")


def read_failure(path: str | Path) -> FailureRecord | None:
    """The record at ``path``, or None when it is missing or unreadable."""
    try:
        data = json.loads(storage.get(path).decode("utf-8"))
        return FailureRecord(str(data["image_id"]), str(data["kind"]), str(data["error"]),
                             bool(data["retryable"]))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def read_failures(results: str | Path, wanted: Collection[str]) -> dict[str, FailureRecord]:
    """Failure records of the catalog's images (records of other images are left alone)."""
    records: dict[str, FailureRecord] = {}
    for image_id in layout.present_ids(results, layout.FAILED, layout.FAILURE_SUFFIX):
        if image_id not in wanted:
            continue
        record = read_failure(layout.failure_path(results, image_id))
        if record is not None:
            records[image_id] = record
    return records
