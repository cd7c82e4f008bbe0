"""Tests for thumbfeat.warehouse: accumulating and pruning upserts, keys, duplicate groups, rows
read from disk, schema changes, crash safety, receipts."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from thumbfeat import layout
from thumbfeat.dbcatalog import CatalogKey
from thumbfeat.grouping import with_duplicate_groups
from thumbfeat.rows import ROW_SCHEMA, failed_row, ok_row, write_row
from thumbfeat.warehouse import LOADS, TABLE, Target, WarehouseError, load_warehouse

from tests.support import REPO, TAG


def rows_for(ids: list[str], *, brightness: float = 0.5) -> list[dict[str, object]]:
    rows = []
    for number, image_id in enumerate(ids):
        if number % 5 == 4:
            rows.append(failed_row(image_id, "http_status", "HTTP 404",
                                                 retryable=False, feature_version="1"))
        else:
            rows.append(ok_row(
                image_id,
                {"width": 320, "height": 240, "file_bytes": 1000 + number, "format": "JPEG",
                 "brightness_mean": brightness + number / 1000, "contrast_rms": 0.2,
                 "entropy": 7.1, "sharpness": float("nan") if number == 2 else 30.0},
                "1"))
    return rows


def write_table(path: Path, rows: list[dict[str, object]], distance: int = 6) -> Path:
    """A feature table as the workflow assembles it: rows plus their duplicate groups."""
    built = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
    pq.write_table(with_duplicate_groups(built, distance), path)
    return path


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def differences(db: Path, parquet: Path) -> tuple[int, int]:
    """Rows only in the Parquet table, rows only in the warehouse (all columns compared)."""
    with duckdb.connect(str(db), read_only=True) as con:
        columns = ", ".join(f'"{c}"' for c in pq.read_schema(parquet).names)
        source = f"(SELECT {columns} FROM read_parquet('{parquet}'))"
        loaded = f"(SELECT {columns} FROM {TABLE})"
        only_source = con.execute(f"SELECT count(*) FROM ({source} EXCEPT {loaded})").fetchone()
        only_loaded = con.execute(f"SELECT count(*) FROM ({loaded} EXCEPT {source})").fetchone()
    assert only_source is not None and only_loaded is not None
    return only_source[0], only_loaded[0]


def test_first_load_creates_the_table_keyed_by_image_id(tmp_path: Path) -> None:
    ids = [f"i{n:03d}" for n in range(20)]
    source = write_table(tmp_path / "t.parquet", rows_for(ids))
    db = tmp_path / "w.duckdb"
    result = load_warehouse(source, db)
    assert (result.rows, result.inserted, result.updated, result.deleted) == (20, 20, 0, 0)
    assert differences(db, source) == (0, 0)
    assert query(db, f"SELECT count(*), count(DISTINCT image_id) FROM {TABLE}") == [(20, 20)]
    constraints = query(db, "SELECT constraint_type FROM information_schema.table_constraints "
                            f"WHERE table_name = '{TABLE}'")
    assert ("PRIMARY KEY",) in constraints
    # The schema follows the Parquet table, column for column.
    names = [r[0] for r in query(db, f"DESCRIBE {TABLE}")]
    assert names == ROW_SCHEMA.names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet", "w.duckdb"]


def test_reloading_the_same_table_changes_nothing(tmp_path: Path) -> None:
    source = write_table(tmp_path / "t.parquet", rows_for([f"i{n}" for n in range(30)]))
    db = tmp_path / "w.duckdb"
    load_warehouse(source, db)
    again = load_warehouse(source, db)
    assert (again.inserted, again.updated, again.deleted, again.unchanged) == (0, 0, 0, 30)
    assert not again.rebuilt
    assert query(db, f"SELECT count(*) FROM {TABLE}") == [(30,)]
    assert differences(db, source) == (0, 0)
    loads = query(db, f"SELECT rows, inserted, unchanged, source_digest FROM {LOADS} "
                      "ORDER BY loaded_at, inserted DESC")
    assert [row[:3] for row in loads] == [(30, 30, 0), (30, 0, 30)]
    assert loads[0][3] == loads[1][3]


def test_changed_added_and_removed_images_when_pruning(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    first = rows_for([f"i{n}" for n in range(10)])
    load_warehouse(write_table(tmp_path / "t.parquet", first), db, prune=True)

    second = [dict(row) for row in first[2:]]  # i0, i1 left the catalog
    second[0]["brightness_mean"] = 0.99  # i2 was measured again
    second[1] = failed_row("i3", "timeout", "slow", retryable=True,
                                         feature_version="1")
    second += rows_for(["new1", "new2"])
    source = write_table(tmp_path / "t.parquet", second)
    result = load_warehouse(source, db, prune=True)
    assert (result.inserted, result.updated, result.deleted, result.unchanged) == (2, 2, 2, 6)
    assert differences(db, source) == (0, 0)
    got = dict(query(db, f"SELECT image_id, status FROM {TABLE}"))
    assert "i0" not in got and "i1" not in got
    assert got["i3"] == "failed" and got["new2"] == "ok"
    assert query(db, f"SELECT brightness_mean FROM {TABLE} WHERE image_id = 'i2'") == [(0.99,)]


def test_new_columns_rebuild_the_table_when_pruning(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    rows = rows_for(["a", "b", "c"])
    load_warehouse(write_table(tmp_path / "t.parquet", rows), db)

    wider = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
    position = wider.schema.get_field_index("sharpness") + 1
    # Columns a later feature version might add (names not in the current schema).
    wider = wider.add_column(position, "future_score", pa.array([0.1, None, 0.3]))
    wider = wider.append_column("future_hash", pa.array(["00ff", "0f0f", None]))
    wider = wider.set_column(wider.schema.get_field_index("width"), "width",
                             wider.column("width").cast(pa.int64()))
    wider = wider.filter(pa.array([True, True, False]))  # and c leaves
    source = tmp_path / "t2.parquet"
    pq.write_table(wider, source)
    result = load_warehouse(source, db, prune=True)
    assert result.rebuilt
    assert (result.inserted, result.updated, result.deleted) == (0, 2, 1)
    assert [r[0] for r in query(db, f"DESCRIBE {TABLE}")] == wider.schema.names
    assert query(db, "SELECT data_type FROM information_schema.columns "
                     f"WHERE table_name = '{TABLE}' AND column_name = 'width'") == [("BIGINT",)]
    assert differences(db, source) == (0, 0)
    # Still keyed by image_id after the rebuild: a plain reload is an upsert again.
    again = load_warehouse(source, db, prune=True)
    assert not again.rebuilt and again.unchanged == 2
    with duckdb.connect(str(db)) as con, pytest.raises(duckdb.ConstraintException):
        con.execute(f"INSERT INTO {TABLE} (image_id, status) VALUES ('a', 'ok')")


def test_bad_tables_leave_the_warehouse_as_it_was(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    good = write_table(tmp_path / "t.parquet", rows_for(["a", "b"]))
    load_warehouse(good, db)
    repeated = tmp_path / "repeated.parquet"
    pq.write_table(pa.Table.from_pylist(rows_for(["x", "y"]) + rows_for(["x"]),
                                        schema=ROW_SCHEMA), repeated)
    with pytest.raises(WarehouseError, match=r"repeated, e\.g\. 'x'"):
        load_warehouse(repeated, db)
    keyless = tmp_path / "keyless.parquet"
    pq.write_table(pa.table({"name": ["z"]}), keyless)
    with pytest.raises(WarehouseError, match="no 'image_id' column"):
        load_warehouse(keyless, db)
    with pytest.raises(WarehouseError, match="does not exist"):
        load_warehouse(tmp_path / "nope.parquet", db)
    assert differences(db, good) == (0, 0)
    assert query(db, f"SELECT count(*) FROM {LOADS}") == [(1,)]


def test_a_failed_first_load_leaves_no_file(tmp_path: Path) -> None:
    keyless = tmp_path / "keyless.parquet"
    pq.write_table(pa.table({"name": ["z"]}), keyless)
    with pytest.raises(WarehouseError):
        load_warehouse(keyless, tmp_path / "w.duckdb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyless.parquet"]


KILLED_LOAD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[3])
    from thumbfeat import warehouse

    def die(con, result):
        # Every change of this load is made; only the commit is missing.
        os.kill(os.getpid(), signal.SIGKILL)

    warehouse._record = die
    warehouse.load_warehouse(sys.argv[1], sys.argv[2], prune=sys.argv[4] == "prune")
""")


def killed_load(source: Path, db: Path, *, prune: bool = False) -> None:
    result = subprocess.run([sys.executable, "-c", KILLED_LOAD, str(source), str(db),
                             str(REPO / "workflow"), "prune" if prune else "accumulate"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr


def test_a_killed_load_keeps_the_previous_warehouse(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    old = write_table(tmp_path / "old.parquet", rows_for([f"i{n}" for n in range(50)]))
    load_warehouse(old, db)
    new = write_table(tmp_path / "new.parquet",
                      rows_for([f"i{n}" for n in range(25, 90)], brightness=0.1))
    # Killed three times over: each time the warehouse is the one before the load.
    for _ in range(3):
        killed_load(new, db, prune=True)
        assert differences(db, old) == (0, 0)
        assert query(db, f"SELECT count(*) FROM {LOADS}") == [(1,)]
    # The next load starts from the intact warehouse and completes.
    result = load_warehouse(new, db, prune=True)
    # Of the 25 kept images, the 5 failed ones have no measured value to change.
    assert (result.inserted, result.updated, result.deleted, result.unchanged) == (40, 20, 25, 5)
    assert differences(db, new) == (0, 0)


def test_a_killed_first_load_leaves_no_warehouse(tmp_path: Path) -> None:
    source = write_table(tmp_path / "t.parquet", rows_for(["a", "b"]))
    db = tmp_path / "w.duckdb"
    killed_load(source, db)
    assert not db.exists()
    assert any(p.name.startswith(".w.duckdb.") for p in tmp_path.iterdir())
    load_warehouse(source, db)
    assert differences(db, source) == (0, 0)
    # The killed load's temporary file is gone too.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet", "w.duckdb"]


def test_a_warehouse_held_open_elsewhere_is_reported(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    source = write_table(tmp_path / "t.parquet", rows_for(["a"]))
    load_warehouse(source, db)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, duckdb; con = duckdb.connect(sys.argv[1]); print('open', flush=True); "
         "sys.stdin.read()", str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        with pytest.raises(WarehouseError, match="open in another process"):
            load_warehouse(source, db)
    finally:
        holder.communicate("", timeout=60)
    assert load_warehouse(source, db).unchanged == 1


def hashed_rows(ids: list[str], phashes: list[str]) -> list[dict[str, object]]:
    """Measured rows carrying the hashes the duplicate groups are computed from."""
    rows = rows_for(ids)
    for row, phash in zip(rows, phashes, strict=True):
        row.update(status="ok", error_kind=None, error=None, retryable=None, phash=phash,
                   pixels_sha256=f"px-{phash}")
    return rows


def test_images_leaving_the_table_stay_by_default(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    everything = rows_for([f"i{n}" for n in range(10)])
    load_warehouse(write_table(tmp_path / "t.parquet", everything), db)
    # The next selection is "what is left": two of the images, one of them re-measured.
    left = [dict(everything[3]), dict(everything[4])]
    left[0]["brightness_mean"] = 0.77
    for _ in range(3):
        result = load_warehouse(write_table(tmp_path / "t.parquet", left), db)
        assert result.deleted == 0
        assert query(db, f"SELECT count(*) FROM {TABLE}") == [(10,)]
    assert query(db, f"SELECT brightness_mean FROM {TABLE} WHERE image_id = 'i3'") == [(0.77,)]
    assert differences(db, write_table(tmp_path / "all.parquet", [
        *everything[:3], left[0], *everything[4:]])) == (0, 0)


def test_loading_in_pieces_gives_the_warehouse_of_one_load(tmp_path: Path) -> None:
    # i0 and i7 are near duplicates (1 bit apart), i3 and i5 exact duplicates of each other.
    phashes = [f"{n:016x}" for n in range(100, 1100, 100)]
    phashes[7] = f"{int(phashes[0], 16) ^ 1:016x}"
    rows = hashed_rows([f"i{n}" for n in range(10)], phashes)
    rows[5]["pixels_sha256"] = rows[3]["pixels_sha256"]
    whole = tmp_path / "whole.duckdb"
    load_warehouse(write_table(tmp_path / "all.parquet", rows), whole)
    pieces = tmp_path / "pieces.duckdb"
    for number, part in enumerate((rows[:4], rows[4:6], rows[6:], rows[2:8])):
        load_warehouse(write_table(tmp_path / f"part{number}.parquet", part), pieces)
    # NaN is not equal to itself in Python: compare its text.
    everything = (f"SELECT * REPLACE (CAST(sharpness AS VARCHAR) AS sharpness) FROM {TABLE} "
                  "ORDER BY image_id")
    assert query(pieces, everything) == query(whole, everything)
    groups = dict(query(pieces, f"SELECT image_id, near_duplicate_group FROM {TABLE}"))
    assert groups["i0"] == groups["i7"] == "i0"
    exact = dict(query(pieces, f"SELECT image_id, exact_duplicate_group FROM {TABLE}"))
    assert exact["i3"] == exact["i5"] == "i3" and exact["i0"] is None


def write_on_disk(results: Path, rows: list[dict[str, object]]) -> None:
    for row in rows:
        write_row(layout.feature_path(results, str(row["image_id"]), TAG), row)


def test_rows_on_disk_fill_the_warehouse_unless_pruning(tmp_path: Path) -> None:
    results = tmp_path / "results"
    rows = rows_for([f"i{n}" for n in range(12)])
    write_on_disk(results, rows)
    source = write_table(tmp_path / "t.parquet", rows[:3])
    db = tmp_path / "w.duckdb"
    first = load_warehouse(source, db, results=results, tag=TAG)
    assert (first.rows, first.inserted, first.from_files) == (12, 12, 9)
    assert differences(db, write_table(tmp_path / "all.parquet", rows)) == (0, 0)
    # Known rows are not read again; a deleted warehouse is built again from the disk.
    assert load_warehouse(source, db, results=results, tag=TAG).from_files == 0
    for _ in range(3):
        db.unlink()
        assert load_warehouse(source, db, results=results, tag=TAG).from_files == 9
        assert query(db, f"SELECT count(*) FROM {TABLE}") == [(12,)]
    pruned = load_warehouse(source, db, results=results, tag=TAG, prune=True)
    assert (pruned.deleted, pruned.from_files) == (9, 0)
    assert differences(db, source) == (0, 0)


def test_an_integer_catalog_key_stays_an_integer(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE dim_image (image_sk INTEGER PRIMARY KEY, title VARCHAR)")
        con.execute("INSERT INTO dim_image SELECT i, 'photo ' || i FROM range(1, 6) t(i)")
    key = CatalogKey("image_sk", "INTEGER")
    source = write_table(tmp_path / "t.parquet", rows_for(["1", "2", "3", "4"]))
    load_warehouse(source, db, key=key)
    assert query(db, "SELECT column_name, data_type FROM information_schema.columns "
                     f"WHERE table_name = '{TABLE}' ORDER BY ordinal_position LIMIT 2") == [
        ("image_sk", "INTEGER"), ("status", "VARCHAR")]
    joined = query(db, f"SELECT image_sk, title, status FROM dim_image JOIN {TABLE} "
                       "USING (image_sk) ORDER BY image_sk")
    assert joined == [(1, "photo 1", "ok"), (2, "photo 2", "ok"), (3, "photo 3", "ok"),
                      (4, "photo 4", "ok")]
    # An id the key cannot hold stops the load, naming the setting, and changes nothing.
    bad = write_table(tmp_path / "bad.parquet", rows_for(["5", "x9"]))
    with pytest.raises(WarehouseError, match=r"'x9' is not a INTEGER value.*catalog_key"):
        load_warehouse(bad, db, key=key)
    assert query(db, f"SELECT count(*) FROM {TABLE}") == [(4,)]


def test_a_new_key_type_rebuilds_and_keeps_every_row(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    load_warehouse(write_table(tmp_path / "t.parquet", rows_for(["1", "2", "3"])), db)
    later = write_table(tmp_path / "t2.parquet", rows_for(["3", "4"]))
    result = load_warehouse(later, db, key=CatalogKey("image_id", "BIGINT"))
    assert result.rebuilt and (result.inserted, result.updated, result.deleted) == (1, 1, 0)
    assert query(db, f"SELECT image_id FROM {TABLE} ORDER BY 1") == [(1,), (2,), (3,), (4,)]
    # Text ids an integer key cannot hold are never dropped: the load stops instead.
    load_warehouse(write_table(tmp_path / "t3.parquet", rows_for(["a"])), tmp_path / "x.duckdb")
    with pytest.raises(WarehouseError, match=r"cannot hold.*warehouse\.table"):
        load_warehouse(later, tmp_path / "x.duckdb", key=CatalogKey("image_id", "BIGINT"))
    assert query(tmp_path / "x.duckdb", f"SELECT image_id FROM {TABLE}") == [("a",)]


def test_receipts_are_named_by_the_warehouse_they_describe(tmp_path: Path) -> None:
    default = Target("results/warehouse.duckdb")
    same = Target("results/../results/warehouse.duckdb")
    others = [Target(str(tmp_path / "elsewhere.duckdb")),
              Target("results/warehouse.duckdb", table="other"),
              Target("results/warehouse.duckdb", key=CatalogKey("image_sk", "INTEGER")),
              Target("results/warehouse.duckdb", prune=True)]
    assert same.receipt_path("results") == default.receipt_path("results")
    paths = {t.receipt_path("results") for t in [default, *others]}
    assert len(paths) == 5
    assert Target.from_dict(dataclasses.asdict(others[2])) == others[2]


def test_a_new_distance_regroups_rows_that_did_not_change(tmp_path: Path) -> None:
    # i1 is 3 bits from i0: near duplicates at distance 6, not at distance 2.
    phashes = ["00000000000000f0", "00000000000000f7", "ffff000000000000"]
    db, pruned = tmp_path / "w.duckdb", tmp_path / "pruned.duckdb"
    load_warehouse(write_table(tmp_path / "o.parquet", rows_for(["other"])), db)
    group = f"SELECT image_id, near_duplicate_group FROM {TABLE} ORDER BY 1"
    rows = hashed_rows(["i0", "i1", "i2"], phashes)
    for distance, expected in ((6, "i0"), (2, None), (6, "i0")):
        source = write_table(tmp_path / "t.parquet", rows, distance)
        # The warehouse also holds an image the table does not: it regroups itself.
        load_warehouse(source, db, near_duplicate_distance=distance)
        assert query(db, group) == [("i0", expected), ("i1", expected), ("i2", None),
                                    ("other", None)]
        # Mirroring the table, it takes the table's groups.
        load_warehouse(source, pruned, near_duplicate_distance=distance, prune=True)
        assert query(pruned, group) == [("i0", expected), ("i1", expected), ("i2", None)]
