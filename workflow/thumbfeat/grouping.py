"""Duplicate groups across the feature table, extended when the table only grew.

The group columns relate images to each other, so they are computed when the table is assembled,
from the rows' pixel digests and pHashes (thumbfeat.duplicates). The table records the distance it
was grouped with in its schema metadata; a later table that only added images to it (same
distance, every earlier image still there with the same pHash) extends its near-duplicate groups
with the new images' edges instead of regrouping everything: the result is the same.
"""

from __future__ import annotations

import pyarrow as pa

from thumbfeat.duplicates import (
    exact_duplicate_groups,
    extend_near_duplicate_groups,
    near_duplicate_groups,
)
from thumbfeat.rows import GROUP_COLUMNS, ROW_SCHEMA

DISTANCE_KEY = b"thumbfeat.near_duplicate_distance"


def _grown_from(built: pa.Table, previous: pa.Table | None,
                near_duplicate_distance: int) -> tuple[list[str | None], list[bool]] | None:
    """The previous table's near-duplicate groups placed on ``built``'s rows, and which rows are
    new, when ``built`` only added images to it; None when they must be regrouped from scratch.

    Growth means: the previous table was grouped with the same distance, and every image in it
    is still in ``built`` with the same pHash (a removed image can split a group, a re-measured
    one can move between groups).
    """
    if previous is None or previous.num_rows == 0:
        return None
    metadata = previous.schema.metadata or {}
    if metadata.get(DISTANCE_KEY) != str(near_duplicate_distance).encode():
        return None
    row_of = {image_id: row for row, image_id in enumerate(built.column("image_id").to_pylist())}
    phashes = built.column("phash").to_pylist()
    earlier: list[str | None] = [None] * built.num_rows
    is_new = [True] * built.num_rows
    for image_id, phash, group in zip(previous.column("image_id").to_pylist(),
                                      previous.column("phash").to_pylist(),
                                      previous.column("near_duplicate_group").to_pylist(),
                                      strict=True):
        row = row_of.get(image_id)
        if row is None or phashes[row] != phash:
            return None
        earlier[row] = group
        is_new[row] = False
    return earlier, is_new


def with_duplicate_groups(built: pa.Table, near_duplicate_distance: int,
                          previous: pa.Table | None = None) -> pa.Table:
    """Fill the group columns from the rows' pixel digests and pHashes (see thumbfeat.duplicates).

    The groups always describe exactly the images of this table. When ``previous`` (the last
    assembled table) holds a subset of them with unchanged hashes, its near-duplicate groups are
    extended with the new images' edges instead of regrouping every image; the result is the same.
    """
    image_ids = built.column("image_id").to_pylist()
    exact = exact_duplicate_groups(image_ids, built.column("pixels_sha256").to_pylist())
    phashes = built.column("phash").to_pylist()
    grown = _grown_from(built, previous, near_duplicate_distance)
    if grown is None:
        near = near_duplicate_groups(image_ids, phashes, near_duplicate_distance)
    else:
        near = extend_near_duplicate_groups(image_ids, phashes, near_duplicate_distance, *grown)
    for name, values in zip(GROUP_COLUMNS, (exact, near), strict=True):
        built = built.set_column(built.schema.get_field_index(name), ROW_SCHEMA.field(name),
                                 pa.array(values, type=pa.string()))
    return built.replace_schema_metadata({DISTANCE_KEY: str(near_duplicate_distance).encode()})
