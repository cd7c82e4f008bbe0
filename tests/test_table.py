"""Tests for thumbfeat.table: per-image rows and the feature table assembled from them."""

from __future__ import annotations

import json
import logging
import os
from io import BytesIO
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from thumbfeat import grouping, layout, table
from thumbfeat.catalog import read_snapshot_ids
from thumbfeat.features import compute_features
from thumbfeat.imaging import decode_image
from thumbfeat.rows import ROW_SCHEMA, failed_row, ok_row, read_row, write_partial, write_row
from thumbfeat.rowscan import MANY_FILES, read_rows
from thumbfeat.thumbnail import facts_of_download

from tests.support import TAG


def _real_features() -> dict[str, object]:
    """Every feature column of a real (small, colourful) image, lists and structs included."""
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    data = buffer.getvalue()
    decoded = decode_image(data)
    # As a batch writes them: with the facts of the download, measured from a thumbnail made
    # with the default settings.
    return {**compute_features(decoded, data), **facts_of_download(data, decoded).columns(),
            "thumbnail_settings": TAG}


FEATURES = _real_features()


def write_rows(results: Path, ids: list[str]) -> list[str]:
    paths = []
    for n, image_id in enumerate(ids):
        path = layout.feature_path(results, image_id, TAG)
        if n % 3 == 2:
            row = failed_row(image_id, "timeout", "slow", retryable=True,
                                   feature_version="1")
            row["thumbnail_settings"] = TAG
        else:
            row = ok_row(image_id, {**FEATURES, "width": n + 1}, "1")
        write_row(path, row)
        paths.append(path)
    return paths


@pytest.mark.parametrize("threads", [1, 3])
def test_assemble_table_keeps_catalog_order(tmp_path: Path, threads: int) -> None:
    ids = [f"id{n:03d}" for n in range(40)][::-1]  # not sorted, not shard order
    results = tmp_path / "results"
    write_rows(results, ids)
    out = results / "feature_table.parquet"
    assembled = table.assemble_table(ids, str(results), out, tag=TAG, threads=threads)
    assert assembled.table.column("image_id").to_pylist() == ids
    assert assembled.rows_from_files == 40
    on_disk = pq.read_table(out)
    assert on_disk.column("image_id").to_pylist() == ids
    assert on_disk.column("width").to_pylist()[:3] == [1, 2, None]
    assert on_disk.column("status").to_pylist().count("failed") == 13
    assert on_disk.schema.equals(ROW_SCHEMA)


def test_assemble_table_of_nothing(tmp_path: Path) -> None:
    out = tmp_path / "feature_table.parquet"
    assembled = table.assemble_table([], str(tmp_path), out, tag=TAG)
    assert assembled.table.num_rows == 0
    assert pq.read_table(out).schema.equals(ROW_SCHEMA)


def test_assemble_table_names_a_missing_file(tmp_path: Path) -> None:
    results = tmp_path / "results"
    ids = ["a", "b", "c"]
    paths = write_rows(results, ids)
    write_partial(results / layout.BATCHES / "p.parquet",
                        [read_row(p).to_pylist()[0] for p in paths])
    Path(paths[1]).unlink()
    out = tmp_path / "feature_table.parquet"
    with pytest.raises(FileNotFoundError) as caught:
        table.assemble_table(ids, str(results), out, tag=TAG)
    assert paths[1] in str(caught.value)
    assert not out.exists()


@pytest.mark.parametrize("count", [40, MANY_FILES + 20])
def test_a_row_file_that_does_not_read_is_quarantined_not_fatal(tmp_path: Path,
                                                                count: int) -> None:
    # Both ways of reading (threads over pyarrow, DuckDB for many files); three damaged files,
    # one of which passes the cheap check (magic bytes at both ends) but does not read.
    ids = [f"id{n:03d}" for n in range(count)]
    results = tmp_path / "results"
    paths = write_rows(results, ids)
    Path(paths[4]).write_bytes(Path(paths[4]).read_bytes()[:100])
    Path(paths[7]).write_bytes(b"PAR1" + b"\x00" * 50 + b"PAR1")
    Path(paths[9]).write_bytes(b"")
    out = results / "feature_table.parquet"
    logger = logging.getLogger("test-table")
    assembled = table.assemble_table(ids, str(results), out, tag=TAG, threads=2, logger=logger)
    rows = assembled.table.to_pylist()
    assert [r["image_id"] for r in rows] == ids
    damaged = {ids[4], ids[7], ids[9]}
    for row in rows:
        if row["image_id"] in damaged:
            assert (row["status"], row["error_kind"], row["retryable"]) == (
                "failed", "damaged_file", True)
            assert row["thumbnail_settings"] == TAG
        else:
            assert row["error_kind"] != "damaged_file"
    for n in (4, 7, 9):
        assert not Path(paths[n]).exists()
        kept = results / "quarantine" / Path(paths[n]).relative_to(results)
        assert kept.exists() and Path(f"{kept}.why").read_text()
    assert rows[3]["width"] == 4


def set_mtime(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns))


def test_rows_come_from_the_newest_source(tmp_path: Path) -> None:
    results = tmp_path / "results"
    ids = ["a", "b", "c"]
    paths = [Path(p) for p in write_rows(results, ids)]
    base = 1_700_000_000 * 10**9
    for path in paths:
        set_mtime(path, base)
    older = results / layout.BATCHES / "older.parquet"
    newer = results / layout.BATCHES / "newer.parquet"
    made = {"thumbnail_settings": TAG}
    write_partial(older, [ok_row("a", {"width": 100, **made}, "1"),
                                ok_row("b", {"width": 100, **made}, "1")])
    write_partial(newer, [ok_row("a", {"width": 200, **made}, "1")])
    set_mtime(older, base + 10)
    set_mtime(newer, base + 20)
    # "b" was rewritten after every partial (a job stopped before writing its partial).
    set_mtime(paths[1], base + 30)
    out = results / "feature_table.parquet"
    assembled = table.assemble_table(ids, str(results), out, tag=TAG)
    widths = dict(zip(ids, assembled.table.column("width").to_pylist(), strict=True))
    assert widths["a"] == 200
    assert widths["b"] == read_row(paths[1]).column("width")[0].as_py()
    assert widths["c"] == read_row(paths[2]).column("width")[0].as_py()
    assert (assembled.rows_from_partials, assembled.rows_from_files) == (1, 2)
    # The new table is kept as the cache; the partials it covers are gone.
    remaining = sorted(p.name for p in (results / layout.BATCHES).glob("*.parquet"))
    assert remaining == [table.TABLE_CACHE]
    again = table.assemble_table(ids, str(results), out, tag=TAG)
    assert again.table.equals(assembled.table)
    assert (again.rows_from_partials, again.rows_from_files) == (3, 0)


def test_assemble_from_snapshot(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    results = tmp_path / "results"
    ids = ["b", "a", "c"]
    write_rows(results, ids)
    snapshot = results / "catalog" / "d1.parquet"
    snapshot.parent.mkdir()
    pq.write_table(pa.table({"image_id": ids, "url": ["u"] * 3}), snapshot)
    out = results / "feature_table.parquet"
    logger = logging.getLogger("tests.table")
    with caplog.at_level(logging.INFO, logger="tests.table"):
        built = table.assemble_and_log(read_snapshot_ids(snapshot), str(results), out, tag=TAG,
                                       threads=2, logger=logger)
    assert built.column("image_id").to_pylist() == ids
    assert "3 rows" in caplog.text
    assert "failed 1" in caplog.text and "ok 2" in caplog.text


def _grouping_row(image_id: str, digest: str, phash: str) -> dict[str, object]:
    return ok_row(image_id, {**FEATURES, "pixels_sha256": digest, "phash": phash}, "2")


def _assemble_rows(tmp_path: Path, rows: list[dict[str, object]],
                   distance: int) -> pa.Table:
    results = tmp_path / "results"
    for row in rows:
        write_row(layout.feature_path(results, str(row["image_id"]), TAG), row)
    out = results / "feature_table.parquet"
    table.assemble_table([str(r["image_id"]) for r in rows], str(results), out, tag=TAG,
                         near_duplicate_distance=distance)
    return pq.read_table(out)


@pytest.mark.parametrize("distance", [6, 7])
def test_assembly_fills_duplicate_groups(tmp_path: Path, distance: int) -> None:
    far = 0xF0F0_F0F0_F0F0_F0F0
    rows = [
        _grouping_row("m", "d1", f"{0:016x}"),
        _grouping_row("b", "d2", f"{0b11:016x}"),  # 2 bits from m
        _grouping_row("k", "d1", f"{0:016x}"),  # same pixels as m
        _grouping_row("x", "d3", f"{far:016x}"),
        _grouping_row("y", "d4", f"{far ^ 0x7F:016x}"),  # 7 bits from x
        failed_row("z", "http_status", "HTTP 404", retryable=False, feature_version="2"),
        _grouping_row("q", "d5", f"{0xFFFF_0000_FFFF_0000:016x}"),  # far from all
    ]
    built = _assemble_rows(tmp_path, rows, distance)
    exact = dict(zip(built.column("image_id").to_pylist(),
                     built.column("exact_duplicate_group").to_pylist(), strict=True))
    near = dict(zip(built.column("image_id").to_pylist(),
                    built.column("near_duplicate_group").to_pylist(), strict=True))
    assert exact == {"m": "k", "b": None, "k": "k", "x": None, "y": None, "z": None, "q": None}
    expected_near = {"m": "b", "b": "b", "k": "b", "z": None, "q": None}
    linked = "x" if distance >= 7 else None
    assert near == {**expected_near, "x": linked, "y": linked}
    assert built.schema.metadata[b"thumbfeat.near_duplicate_distance"] == str(distance).encode()
    assert built.schema.equals(ROW_SCHEMA)


def test_groups_are_recomputed_not_taken_from_the_cached_table(tmp_path: Path) -> None:
    rows = [_grouping_row("a", "d1", f"{0:016x}"), _grouping_row("b", "d1", f"{1:016x}")]
    first = _assemble_rows(tmp_path, rows, 6)
    assert first.column("exact_duplicate_group").to_pylist() == ["a", "a"]
    # "b" is re-measured with other pixels: the cached table's groups must not survive.
    rows[1] = _grouping_row("b", "d2", f"{0xFFFF_FFFF_FFFF_FFFF:016x}")
    second = _assemble_rows(tmp_path, rows, 6)
    assert second.column("exact_duplicate_group").to_pylist() == [None, None]
    assert second.column("near_duplicate_group").to_pylist() == [None, None]


def _planted_rows(count: int, seed: int) -> list[dict[str, object]]:
    """Rows whose pHashes are random or a few bits from an earlier row's (groups form)."""
    rng = np.random.default_rng(seed)
    hashes: list[int] = []
    for _ in range(count):
        if hashes and rng.random() < 0.5:
            value = hashes[int(rng.integers(0, len(hashes)))]
            for bit in rng.choice(64, size=int(rng.integers(1, 8)), replace=False):
                value ^= 1 << int(bit)
        else:
            value = int(rng.integers(0, 2**62))
        hashes.append(value)
    return [_grouping_row(f"r{seed}-{n:04d}", f"d{seed}-{n}", f"{h:016x}")
            for n, h in enumerate(hashes)]


def test_only_files_in_shard_folders_changed_since_their_partial_are_looked_at(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "results"
    ids = [f"img{n:03d}" for n in range(60)]
    paths = write_rows(results, ids)
    partial = results / layout.BATCHES / "p.parquet"
    write_partial(partial, [read_row(p).to_pylist()[0] for p in paths])
    base = partial.stat().st_mtime_ns
    for shard in {layout.shard_of(i) for i in ids}:
        set_mtime(results / layout.FEATURES / TAG / shard, base - 10**9)
    # One image re-measured after the partial: its folder is newer, its file is read.
    changed = ids[7]
    write_row(layout.feature_path(results, changed, TAG),
                    ok_row(changed, {**FEATURES, "width": 999}, "1"))
    set_mtime(Path(layout.feature_path(results, changed, TAG)), base + 10**9)
    set_mtime(Path(layout.feature_path(results, changed, TAG)).parent, base + 10**9)
    looked_at: list[str] = []
    real_mtime = table.row_file_mtime_ns

    def counting_mtime(path: str) -> int:
        looked_at.append(Path(path).stem)
        return real_mtime(path)

    monkeypatch.setattr(table, "row_file_mtime_ns", counting_mtime)
    built = table.assemble_table(ids, str(results), tmp_path / "feature_table.parquet",
                                 tag=TAG).table
    same_shard = {i for i in ids if layout.shard_of(i) == layout.shard_of(changed)}
    assert set(looked_at) == same_shard
    widths = dict(zip(ids, built.column("width").to_pylist(), strict=True))
    assert widths[changed] == 999
    assert widths[ids[0]] == 1


def test_a_grown_table_extends_the_previous_groups(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from thumbfeat.duplicates import near_duplicate_groups

    results = tmp_path / "results"
    out = results / "feature_table.parquet"
    rows = _planted_rows(300, 1)
    first, added = rows[:240], rows[240:]
    for row in first:
        write_row(layout.feature_path(results, str(row["image_id"]), TAG), row)
    table.assemble_table([str(r["image_id"]) for r in first], str(results), out, tag=TAG)

    def regroup_everything(*args: object) -> None:
        raise AssertionError("a grown table regrouped every image")

    monkeypatch.setattr(grouping, "near_duplicate_groups", regroup_everything)
    for row in added:
        write_row(layout.feature_path(results, str(row["image_id"]), TAG), row)
    ids = [str(r["image_id"]) for r in rows]
    grown = table.assemble_table(ids, str(results), out, tag=TAG).table
    expected = near_duplicate_groups(ids, [str(r["phash"]) for r in rows], 6)
    assert grown.column("near_duplicate_group").to_pylist() == expected
    assert sum(g is not None for g in expected) > 100


@pytest.mark.parametrize("change", ["removed", "rehashed", "distance"])
def test_groups_are_recomputed_when_the_table_did_not_only_grow(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    from thumbfeat.duplicates import near_duplicate_groups

    results = tmp_path / "results"
    out = results / "feature_table.parquet"
    rows = _planted_rows(200, 2)
    for row in rows:
        write_row(layout.feature_path(results, str(row["image_id"]), TAG), row)
    table.assemble_table([str(r["image_id"]) for r in rows], str(results), out, tag=TAG)
    distance = 6
    if change == "removed":
        rows = rows[1:]
    elif change == "rehashed":
        rows[5] = _grouping_row(str(rows[5]["image_id"]), "other", f"{2**63 + 12345:016x}")
        write_row(layout.feature_path(results, str(rows[5]["image_id"]), TAG), rows[5])
    else:
        distance = 9
    calls: list[int] = []

    def counted(*args: object) -> list[str | None]:
        calls.append(1)
        return near_duplicate_groups(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(grouping, "near_duplicate_groups", counted)
    ids = [str(r["image_id"]) for r in rows]
    again = table.assemble_table(ids, str(results), out, tag=TAG,
                                 near_duplicate_distance=distance).table
    assert calls == [1]
    assert again.column("near_duplicate_group").to_pylist() == near_duplicate_groups(
        ids, [str(r["phash"]) for r in rows], distance)


def test_settings_marker_names_the_distance_and_replaces_older_ones(tmp_path: Path) -> None:
    results = str(tmp_path / "results")
    six = layout.table_settings_path(results, 6, TAG)
    table.write_settings_marker(six, 6)
    seven = layout.table_settings_path(results, 7, TAG)
    assert seven != six
    table.write_settings_marker(seven, 7)
    assert not Path(six).exists()
    assert json.loads(Path(seven).read_text()) == {"near_duplicate_distance": 7}


def test_many_files_read_in_the_order_asked(tmp_path: Path) -> None:
    # Enough files for the DuckDB scan; the order asked is neither name nor shard order.
    ids = [f"m{(i * 7919) % 1000:04d}" for i in range(MANY_FILES + 100)]
    for number, image_id in enumerate(ids):
        if number % 3:
            row = ok_row(image_id, {"width": number, "format": "JPEG"}, "test")
        else:
            row = failed_row(image_id, "timeout", "slow", retryable=True,
                                   feature_version="test")
        write_row(layout.feature_path(tmp_path, image_id, TAG), row)
    paths = [layout.feature_path(tmp_path, i, TAG) for i in ids]
    scanned = read_rows(paths)
    one_by_one = pa.concat_tables([read_row(p) for p in paths])
    assert scanned.schema == ROW_SCHEMA
    assert scanned.column("image_id").to_pylist() == ids
    assert scanned.equals(one_by_one)


def test_many_files_keep_list_and_struct_columns(tmp_path: Path) -> None:
    # The DuckDB scan must bring hue_hist (list) and dominant_colors (list of structs) back intact.
    ids = [f"f{i:04d}" for i in range(MANY_FILES + 10)]
    for number, image_id in enumerate(ids):
        features = dict(FEATURES)
        if number % 2:
            features.update(hue_mean=None, hue_hist=None)
        write_row(layout.feature_path(tmp_path, image_id, TAG),
                        ok_row(image_id, features, "2"))
    paths = [layout.feature_path(tmp_path, i, TAG) for i in ids]
    scanned = read_rows(paths)
    assert scanned.equals(pa.concat_tables([read_row(p) for p in paths]))
    first = scanned.slice(0, 1).to_pylist()[0]
    assert first["dominant_colors"] == FEATURES["dominant_colors"]
    assert first["hue_hist"] == FEATURES["hue_hist"]


def test_many_files_of_an_older_row_schema_read_by_name(tmp_path: Path) -> None:
    # Rows written before columns were added: the new columns read as nulls.
    ids = [f"o{i:04d}" for i in range(MANY_FILES)]
    older = pa.schema([ROW_SCHEMA.field("image_id"), ROW_SCHEMA.field("status"),
                       ROW_SCHEMA.field("width")])
    for number, image_id in enumerate(ids):
        path = Path(layout.feature_path(tmp_path, image_id, TAG))
        path.parent.mkdir(parents=True, exist_ok=True)
        schema = older if number % 2 else ROW_SCHEMA
        row = {"image_id": image_id, "status": "ok", "width": number}
        pq.write_table(pa.Table.from_pylist([row], schema=schema), path)
    scanned = read_rows([layout.feature_path(tmp_path, i, TAG) for i in ids])
    assert scanned.schema == ROW_SCHEMA
    assert scanned.column("image_id").to_pylist() == ids
    assert scanned.column("width").to_pylist() == list(range(len(ids)))
    assert scanned.column("format").null_count == len(ids)
