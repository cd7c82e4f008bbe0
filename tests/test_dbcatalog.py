"""Tests for thumbfeat.dbcatalog: database kinds and writing thumb_downloaded back."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import duckdb
import pytest
from thumbfeat import layout
from thumbfeat.dbcatalog import (
    FLAG_COLUMN,
    CatalogKey,
    DatabaseError,
    database_kind,
    find_catalog_key,
    read_query,
    thumbnail_flags,
    warehouse_type,
    write_back,
    write_back_and_log,
)

from tests.support import TAG, duckdb_catalog, sqlite_catalog

LOGGER = logging.getLogger("tests.dbcatalog")


def flags_in(path: Path) -> dict[int, object]:
    if database_kind(path) == "sqlite":
        with contextlib.closing(sqlite3.connect(path)) as con:
            rows = con.execute(f"SELECT image_id, {FLAG_COLUMN} FROM dim_image").fetchall()
        return {i: None if v is None else bool(v) for i, v in rows}
    with duckdb.connect(str(path), read_only=True) as con:
        return dict(con.execute(f"SELECT image_id, {FLAG_COLUMN} FROM dim_image").fetchall())


@pytest.fixture(params=["sqlite", "duckdb"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "sqlite":
        return sqlite_catalog(tmp_path / "cat.sqlite")
    return duckdb_catalog(tmp_path / "cat.duckdb")


def test_database_kind_reads_the_file_not_the_name(tmp_path: Path) -> None:
    assert database_kind(sqlite_catalog(tmp_path / "a.db")) == "sqlite"
    assert database_kind(duckdb_catalog(tmp_path / "b.db")) == "duckdb"


def test_thumbnail_flags_follow_the_files(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for image_id, data in (("ok", b"jpeg"), ("failed", b"")):
        path = Path(layout.thumb_path(results, image_id, TAG))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # Only thumbnails of the settings asked about count.
    assert thumbnail_flags(results, ["ok"], "original") == {"ok": False}
    assert thumbnail_flags(results, ["ok", "failed", "pending"], TAG) == {
        "ok": True, "failed": False, "pending": False}


def test_write_back_sets_the_selection_only(database: Path) -> None:
    result = write_back(database, "dim_image", "image_id", {"7": True, "9": False})
    assert result.column_added
    assert (result.selected, result.downloaded, result.matched, result.changed) == (2, 1, 2, 2)
    assert flags_in(database) == {7: True, 8: None, 9: False, 10: None}

    again = write_back(database, "dim_image", "image_id", {"7": True, "9": False})
    assert not again.column_added and again.changed == 0
    assert flags_in(database) == {7: True, 8: None, 9: False, 10: None}

    # A later run where 9 was downloaded and 8 joined the selection, still failed.
    later = write_back(database, "dim_image", "image_id", {"7": True, "8": False, "9": True})
    assert later.changed == 2
    assert flags_in(database) == {7: True, 8: False, 9: True, 10: None}


def test_write_back_reports_ids_not_in_the_table(database: Path, caplog:
                                                 pytest.LogCaptureFixture) -> None:
    results = database.parent / "results"
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        result = write_back_and_log(database, "dim_image", "image_id", ["7", "elsewhere"],
                                    results, tag=TAG, logger=LOGGER)
    assert (result.selected, result.matched, result.changed) == (2, 1, 1)
    assert "1 selected image ids have no row" in caplog.text
    assert flags_in(database)[7] is False


@pytest.mark.parametrize(("table", "id_column", "message"),
                         [("photos", "image_id", "no table 'photos'"),
                          ("dim_image", "id", "no column 'id'")])
def test_write_back_errors_change_nothing(database: Path, table: str, id_column: str,
                                          message: str) -> None:
    with pytest.raises(DatabaseError, match=message) as caught:
        write_back(database, table, id_column, {"7": True})
    assert str(database) in str(caught.value)
    with pytest.raises((sqlite3.Error, duckdb.Error)):
        flags_in(database)  # the column was not added


def test_numbers_read_as_the_same_text_from_sqlite_and_duckdb(tmp_path: Path) -> None:
    lite, duck = tmp_path / "n.sqlite", tmp_path / "n.duckdb"
    with contextlib.closing(sqlite3.connect(lite)) as con, con:
        con.execute("CREATE TABLE t AS SELECT 2.0, 2.5, 10, 1, NULL")
    with duckdb.connect(str(duck)) as con:
        con.execute("CREATE TABLE t AS SELECT 2.0::DOUBLE, 2.5::DOUBLE, 10, true, NULL")
    rows = {kind: list(read_query(path, "SELECT * FROM t").to_pylist()[0].values())
            for kind, path in (("sqlite", lite), ("duckdb", duck))}
    assert rows["sqlite"] == ["2", "2.5", "10", "1", None]
    assert rows["duckdb"] == ["2", "2.5", "10", "true", None]


def test_the_catalog_key_keeps_its_type(database: Path) -> None:
    key = find_catalog_key(database, "dim_image", "image_id", None, write_back=True)
    # SQLite declares INTEGER loosely: any declared integer is a BIGINT in the warehouse.
    assert key == CatalogKey("image_id", "BIGINT" if database.suffix == ".sqlite" else "INTEGER")
    assert find_catalog_key(database, "dim_image", "id", "url", write_back=False) == CatalogKey(
        "url", "VARCHAR")
    # Nothing asks for a key and the table does not hold the ids: the warehouse keys by text.
    assert find_catalog_key(database, "dim_image", "image_id_alias", None,
                            write_back=False) is None
    assert find_catalog_key(database, "photos", "image_id", None, write_back=False) is None


@pytest.mark.parametrize(("table", "id_column", "catalog_key", "message"), [
    ("dim_image", "image", None,
     "'catalog_write_back': table 'dim_image' has no column 'image' .* set catalog_key"),
    ("dim_image", "image", "sk", "'catalog_key': table 'dim_image' has no column 'sk'; "
                                 "its columns are image_id, url, vote_pool_flag"),
    ("photos", "image_id", None, "'catalog_write_back' needs the table 'photos'.*catalog_table"),
])
def test_a_write_back_that_cannot_land_is_refused(database: Path, table: str, id_column: str,
                                                  catalog_key: str | None, message: str) -> None:
    with pytest.raises(DatabaseError, match=message):
        find_catalog_key(database, table, id_column, catalog_key, write_back=True)


def test_warehouse_types_of_key_columns() -> None:
    assert warehouse_type("int", "sqlite") == "BIGINT"
    assert warehouse_type("TEXT", "sqlite") == "VARCHAR"
    assert warehouse_type("UBIGINT", "duckdb") == "UBIGINT"
    assert warehouse_type("DECIMAL(18,3)", "duckdb") == "VARCHAR"
