"""Tests for thumbfeat.rowinputs: what each row was built from, read once from the last table."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from thumbfeat import layout
from thumbfeat.rowinputs import read_row_inputs
from thumbfeat.rows import failed_row, ok_row, write_row, write_rows

from tests.support import TAG

FEATURES = layout.stage_dir(layout.FEATURES, TAG)


def ok(image_id: str, version: str, url: str | None, tag: str = TAG) -> dict[str, object]:
    return ok_row(image_id, {"thumbnail_settings": tag}, version, url)


def test_without_a_table_nothing_is_known(tmp_path: Path) -> None:
    write_row(layout.feature_path(tmp_path, "a", TAG), ok("a", "2", "http://h/a"))
    inputs = read_row_inputs(tmp_path, layout.existing_shard_dirs(tmp_path, FEATURES), TAG)
    assert not inputs.from_table
    assert inputs.stale(["a"], "3") == {}
    assert inputs.changed_urls({"a": "http://h/other"}) == set()


def test_the_table_then_only_files_written_after_it(tmp_path: Path) -> None:
    rows = [ok("a", "2", "http://h/a"), ok("b", "3", "http://h/b"), ok("c", "3", None),
            {**failed_row("d", "http_status", "404", retryable=False, feature_version="1",
                          source_url="http://h/d"), "thumbnail_settings": TAG}]
    for row in rows:
        write_row(layout.feature_path(tmp_path, str(row["image_id"]), TAG), row)
    table = Path(layout.feature_table_path(tmp_path))
    write_rows(table, rows)
    stamp = table.stat().st_mtime_ns
    # Every folder older than the table: no per-image file is opened.
    for folder in layout.existing_shard_dirs(tmp_path, FEATURES):
        os.utime(folder, ns=(stamp - 10**9,) * 2)
    shards = layout.existing_shard_dirs(tmp_path, FEATURES)
    inputs = read_row_inputs(tmp_path, shards, TAG)
    assert inputs.from_table and inputs.files_opened == 0
    # Only ok rows of another version are stale; rows without a URL are unknown, not changed.
    assert inputs.stale(["a", "b", "c", "d", "new"], "3") == {"a": "2"}
    assert inputs.changed_urls({"a": "http://h/a", "b": "http://h/B", "c": "x", "d": "y",
                                "e": "z"}) == {"b", "d"}
    assert inputs.changed_urls({"b": "http://h/B"}, later_only=True) == set()

    # A row rewritten after the table (renamed into place, so its folder's time moves on).
    write_row(layout.feature_path(tmp_path, "b", TAG), ok("b", "1", "http://h/B"))
    later = max(stamp, Path(layout.feature_path(tmp_path, "b", TAG)).stat().st_mtime_ns) + 10**9
    os.utime(layout.feature_path(tmp_path, "b", TAG), ns=(later, later))
    os.utime(Path(layout.feature_path(tmp_path, "b", TAG)).parent, ns=(later, later))
    inputs = read_row_inputs(tmp_path, shards, TAG)
    assert inputs.files_opened == 1
    assert inputs.stale(["a", "b"], "3") == {"a": "2", "b": "1"}
    assert inputs.changed_urls({"b": "http://h/B"}) == set()
    assert inputs.changed_urls({"b": "http://h/C"}, later_only=True) == {"b"}


def test_the_cache_is_read_before_the_table_and_old_tables_lack_columns(tmp_path: Path) -> None:
    table = Path(layout.feature_table_path(tmp_path))
    write_rows(table, [ok("a", "3", "http://h/a")])
    cache = Path(tmp_path, layout.BATCHES, layout.TABLE_CACHE)
    cache.parent.mkdir(parents=True)
    # A table written before source_url existed.
    old = pq.read_table(table).drop_columns(["source_url"])
    pq.write_table(old.set_column(old.schema.get_field_index("feature_version"),
                                  "feature_version", pa.array(["1"], pa.string())), cache)
    inputs = read_row_inputs(tmp_path, [], TAG)
    assert inputs.stale(["a"], "3") == {"a": "1"}
    assert inputs.changed_urls({"a": "http://h/other"}) == set()
    # A damaged cache: nothing is known (the table job rebuilds it), never an error.
    cache.write_bytes(b"garbage")
    assert not read_row_inputs(tmp_path, [], TAG).from_table


def test_partials_written_after_the_table_spare_opening_their_files(tmp_path: Path) -> None:
    table = Path(layout.feature_table_path(tmp_path))
    write_rows(table, [ok("a", "2", "http://h/a"), ok("b", "2", "http://h/b")])
    stamp = table.stat().st_mtime_ns
    for image_id in ("a", "b"):
        write_row(layout.feature_path(tmp_path, image_id, TAG), ok(image_id, "3", "http://h/new"))
        os.utime(layout.feature_path(tmp_path, image_id, TAG), ns=(stamp + 10**9,) * 2)
        os.utime(Path(layout.feature_path(tmp_path, image_id, TAG)).parent,
                 ns=(stamp + 10**9,) * 2)
    shards = layout.existing_shard_dirs(tmp_path, FEATURES)
    assert read_row_inputs(tmp_path, shards, TAG).files_opened == 2
    # A batch's partial, written after its files, holds both rows: no file is opened.
    partial = Path(tmp_path, layout.BATCHES, "00001-abc.parquet")
    write_rows(partial, [ok("a", "3", "http://h/new"), ok("b", "3", "http://h/new")])
    os.utime(partial, ns=(stamp + 2 * 10**9,) * 2)
    inputs = read_row_inputs(tmp_path, shards, TAG)
    assert inputs.files_opened == 0
    assert inputs.stale(["a", "b"], "3") == {}
    # A file rewritten after the partial is opened again.
    write_row(layout.feature_path(tmp_path, "b", TAG), ok("b", "1", "http://h/new"))
    os.utime(layout.feature_path(tmp_path, "b", TAG), ns=(stamp + 3 * 10**9,) * 2)
    inputs = read_row_inputs(tmp_path, shards, TAG)
    assert inputs.files_opened == 1
    assert inputs.stale(["a", "b"], "3") == {"b": "1"}


def test_only_rows_of_the_current_thumbnail_settings_are_read(tmp_path: Path) -> None:
    # The table and a partial hold rows of two settings; a row of other settings (or of no
    # recorded settings) says nothing about this run's thumbnails and rows.
    table = Path(layout.feature_table_path(tmp_path))
    write_rows(table, [ok("a", "2", "http://h/a"), ok("b", "2", "http://h/b", "256px-webp-q80")])
    stamp = table.stat().st_mtime_ns
    partial = Path(tmp_path, layout.BATCHES, "00001-abc.parquet")
    write_rows(partial, [ok("c", "1", "http://h/c", "256px-webp-q80"),
                         ok("a", "3", "http://h/new", "256px-webp-q80")])
    os.utime(partial, ns=(stamp + 10**9,) * 2)
    inputs = read_row_inputs(tmp_path, [], TAG)
    assert inputs.stale(["a", "b", "c"], "3") == {"a": "2"}
    assert inputs.changed_urls({"a": "http://h/a", "b": "x", "c": "y"}) == set()
    other = read_row_inputs(tmp_path, [], "256px-webp-q80")
    assert other.stale(["a", "b", "c"], "3") == {"b": "2", "c": "1"}
    assert other.changed_urls({"a": "http://h/a", "b": "http://h/b"}) == {"a"}
    # A table written before rows named their settings: nothing is known of its rows.
    pq.write_table(pq.read_table(table).drop_columns(["thumbnail_settings"]), table)
    assert read_row_inputs(tmp_path, [], TAG).stale(["a", "b"], "3") == {}
