"""The per-image outcome row: its schema, and the files that hold rows.

Every catalog image ends with exactly one one-row Parquet file: status ``ok`` with its features, or
``failed`` with the kind and reason. A batch also writes its rows as one partial table, so the
feature table (thumbfeat.table) reads one file per batch rather than one per image. The schema is
the outcome columns, the features' own declarations (thumbfeat.features.FEATURE_FIELDS), the
source's and the thumbnail settings' (thumbfeat.thumbnail.THUMBNAIL_FIELDS), the feature version
and the columns that relate images to each other (filled when the table is assembled).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from thumbfeat import atomic, storage
from thumbfeat.features import FEATURE_FIELDS
from thumbfeat.thumbnail import THUMBNAIL_FIELDS
from thumbfeat.urls import recorded_url

STATUS_OK = "ok"
STATUS_FAILED = "failed"
GROUP_COLUMNS = ("exact_duplicate_group", "near_duplicate_group")

# Column by column meaning, unit and formula: docs/feature-table.md.
ROW_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_kind", pa.string()),
        pa.field("error", pa.string()),
        pa.field("retryable", pa.bool_()),
        *FEATURE_FIELDS,
        *THUMBNAIL_FIELDS,
        pa.field("feature_version", pa.string()),
        # The URL the image's thumbnail was fetched from: a changed catalog URL fetches it again.
        pa.field("source_url", pa.string()),
        *(pa.field(name, pa.string()) for name in GROUP_COLUMNS),
    ]
)


def ok_row(image_id: str, features: dict[str, object], feature_version: str,
           source_url: str | None = None) -> dict[str, object]:
    """The row of an image whose features were computed."""
    row: dict[str, object] = {name: None for name in ROW_SCHEMA.names}
    row.update(features)
    row.update(image_id=image_id, status=STATUS_OK, feature_version=feature_version,
               source_url=None if source_url is None else recorded_url(source_url))
    return row


def failed_row(image_id: str, kind: str, error: str, *, retryable: bool,
               feature_version: str | None, source_url: str | None = None) -> dict[str, object]:
    """The row of an image that could not be fetched or decoded."""
    row: dict[str, object] = {name: None for name in ROW_SCHEMA.names}
    row.update(image_id=image_id, status=STATUS_FAILED, error_kind=kind, error=error,
               retryable=retryable, feature_version=feature_version,
               source_url=None if source_url is None else recorded_url(source_url))
    return row


def write_rows(path: str | Path, rows: Sequence[dict[str, object]]) -> None:
    """Write rows with the row schema as one Parquet file (zstd-compressed), atomically."""
    table = pa.Table.from_pylist(list(rows), schema=ROW_SCHEMA)
    atomic.write_with(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def write_row(path: str | Path, row: dict[str, object]) -> None:
    """Write one image's row as its own Parquet file.

    A single row gains nothing from compression, dictionaries or statistics, and setting up a
    zstd context for each of the forty-odd columns cost more than measuring the image's
    brightness: written plain, a row takes about a third of the time.
    """
    table = pa.Table.from_pylist([row], schema=ROW_SCHEMA)
    options = {"compression": "NONE", "use_dictionary": False, "write_statistics": False}
    if storage.is_remote(path):
        # Serialised in memory and sent as one PUT: no temporary file for a few kilobytes.
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, **options)
        storage.put(path, buffer.getvalue().to_pybytes())
        return
    atomic.write_with(path, lambda tmp: pq.write_table(table, tmp, **options))


def read_row(path: str | Path) -> pa.Table:
    if storage.is_remote(path):
        return pq.read_table(pa.BufferReader(storage.get(path)), schema=ROW_SCHEMA)
    return pq.read_table(path, schema=ROW_SCHEMA)


def write_partial(path: str | Path, rows: Sequence[dict[str, object]]) -> None:
    """Write a batch's rows as one file, so the table reads one file per batch, not per image."""
    write_rows(path, rows)
