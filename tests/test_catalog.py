"""Tests for thumbfeat.catalog: reading, filtering and validating catalogs, and snapshots."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from thumbfeat.catalog import (
    CatalogError,
    CatalogSpec,
    load_catalog,
    read_snapshot_ids,
    resolve_url,
    selected_ids,
    url_warnings,
    write_snapshot,
)
from thumbfeat.fetch import FetchSettings, fetch_once, make_session

from tests.s3server import SeaweedServer
from tests.support import duckdb_catalog, sqlite_catalog, write_catalog

LOGGER = logging.getLogger("tests.catalog")


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path, **options: object) -> tuple[list[str], list[str]]:
    catalog = load_catalog(CatalogSpec(path=path, **options))  # type: ignore[arg-type]
    return list(catalog.ids), list(catalog.urls)


def error_of(path: Path, **options: object) -> str:
    with pytest.raises(CatalogError) as caught:
        load_catalog(CatalogSpec(path=path, **options))  # type: ignore[arg-type]
    message = str(caught.value)
    assert str(path) in message
    return message


# --- formats -----------------------------------------------------------------------------


def test_csv_catalog_keeps_order_and_leading_zeros(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "cat.csv", [
        ("007", "http://h/7.jpg"),
        ("0010", "http://h/10.jpg"),
        ("b", "http://h/b.jpg"),
        ("1e5", "http://h/e.jpg"),
    ])
    catalog = load_catalog(CatalogSpec(path=path))
    assert catalog.ids == ("007", "0010", "b", "1e5")
    assert catalog.urls == ("http://h/7.jpg", "http://h/10.jpg", "http://h/b.jpg",
                            "http://h/e.jpg")
    assert len(catalog) == 4
    assert catalog.source == path


def test_tsv_catalog(tmp_path: Path) -> None:
    path = write_text(tmp_path / "cat.tsv",
                      "image_id\turl\textra\n001\thttp://h/1.jpg\tx, y\n002\thttp://h/2.jpg\t\n")
    assert load(path) == (["001", "002"], ["http://h/1.jpg", "http://h/2.jpg"])


def test_parquet_catalog(tmp_path: Path) -> None:
    path = tmp_path / "cat.parquet"
    pq.write_table(pa.table({
        "image_id": ["001", "002", "003"],
        "url": ["http://h/1.jpg", "http://h/2.jpg", "http://h/3.jpg"],
        "score": [1, 2, 3],
    }), path)
    assert load(path) == (["001", "002", "003"],
                          ["http://h/1.jpg", "http://h/2.jpg", "http://h/3.jpg"])


def test_parquet_integer_ids_become_text(tmp_path: Path) -> None:
    path = tmp_path / "cat.parquet"
    pq.write_table(pa.table({"image_id": [10, 2], "url": ["http://h/a", "http://h/b"]}), path)
    assert load(path)[0] == ["10", "2"]


def test_csv_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "cat.csv"
    path.write_bytes("\ufeffimage_id,url\n007,http://h/7.jpg\n".encode())
    assert load(path) == (["007"], ["http://h/7.jpg"])


def test_custom_columns_and_whitespace(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "cat.csv", [(" 01 ", " http://h/1.jpg "), ("02", "http://h/2")],
                         header=("name", "link"))
    assert load(path, id_column="name", url_column="link") == (
        ["01", "02"], ["http://h/1.jpg", "http://h/2"])


def test_url_template(tmp_path: Path) -> None:
    path = write_text(tmp_path / "cat.csv", "image_id\n007\nb\n")
    ids, urls = load(path, url_template="https://cdn.example/{image_id}/full.jpg")
    assert ids == ["007", "b"]
    assert urls == ["https://cdn.example/007/full.jpg", "https://cdn.example/b/full.jpg"]


def test_url_template_uses_the_trimmed_id(tmp_path: Path) -> None:
    path = write_text(tmp_path / "cat.csv", "image_id\n 007 \n")
    assert load(path, url_template="https://cdn.example/{image_id}.jpg") == (
        ["007"], ["https://cdn.example/007.jpg"])


def test_url_template_without_placeholder(tmp_path: Path) -> None:
    path = write_text(tmp_path / "cat.csv", "image_id\n007\n")
    with pytest.raises(CatalogError, match="placeholder"):
        load_catalog(CatalogSpec(path=path, url_template="https://cdn.example/x.jpg"))


# --- row filter ----------------------------------------------------------------------------


def test_boolean_row_filter(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "cat.csv", [
        ("a", "http://h/a", "true"),
        ("b", "http://h/b", "false"),
        ("c", "http://h/c", "True"),
        ("d", "http://h/d", "1"),
        ("e", "http://h/e", "0"),
        ("f", "http://h/f", "FALSE"),
        ("g", "http://h/g", "yes"),
    ], header=("image_id", "url", "keep"))
    assert load(path, row_filter={"keep": True})[0] == ["a", "c", "d", "g"]
    assert load(path, row_filter={"keep": False})[0] == ["b", "e", "f"]


FLAGS = [("a", "true"), ("b", "false"), ("c", ""), ("d", "yes"), ("e", "1"), ("f", "010"),
         ("g", "8"), ("h", " No ")]


@pytest.mark.parametrize(("value", "expected"), [
    # booleans, typed (a config file) or as text (the command line): the same rows
    (True, ["a", "d", "e"]), ("true", ["a", "d", "e"]), ("TRUE", ["a", "d", "e"]),
    ("yes", ["a", "d", "e"]), ("on", ["a", "d", "e"]),
    (False, ["b", "h"]), ("false", ["b", "h"]), ("no", ["b", "h"]),
    # a blank cell is neither true nor false; only '' selects it
    ("", ["c"]),
    # anything else is the cell's text, leading zeros included
    ("010", ["f"]), ("8", ["g"]), (8, ["g"]), ("1", ["e"]), (1, ["e"]),
    (["010", "8"], ["f", "g"]), (["true", ""], ["a", "c", "d", "e"]),
])
def test_filter_rule_is_one_rule_for_typed_and_text_values(tmp_path: Path, value: object,
                                                           expected: list[str]) -> None:
    path = write_catalog(tmp_path / "cat.csv", [(i, f"http://h/{i}", f) for i, f in FLAGS],
                         header=("image_id", "url", "flag"))
    assert load(path, row_filter={"flag": value})[0] == expected


def test_list_row_filter(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "cat.csv", [
        ("a", "http://h/a", "train", "x"),
        ("b", "http://h/b", "test", "x"),
        ("c", "http://h/c", "Val", "x"),
        ("d", "http://h/d", "train", "y"),
    ], header=("image_id", "url", "split", "group"))
    assert load(path, row_filter={"split": ["train", "val"]})[0] == ["a", "c", "d"]
    assert load(path, row_filter={"split": "train", "group": "x"})[0] == ["a"]


def test_row_filter_on_unknown_column(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "cat.csv", [("a", "http://h/a")])
    message = error_of(path, row_filter={"keep": True})
    assert "'keep'" in message


def test_filter_selecting_nothing(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "cat.csv", [("a", "http://h/a", "no"), ("b", "http://h/b", "")],
                         header=("image_id", "url", "keep"))
    message = error_of(path, row_filter={"keep": True})
    assert "no images" in message
    assert "filter" in message


# --- errors --------------------------------------------------------------------------------


def test_missing_id_column(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "cat.csv", [("a", "http://h/a")], header=("id", "url"))
    message = error_of(path)
    assert "'image_id'" in message
    assert "id, url" in message  # lists the columns there are


def test_missing_url_column(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "cat.csv", [("a", "http://h/a")], header=("image_id", "link"))
    assert "'url'" in error_of(path)


def test_empty_id_names_the_line(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "cat.csv", [("a", "http://h/a"), ("", "http://h/b")])
    message = error_of(path)
    assert "line 3" in message
    assert "empty" in message


def test_empty_url_names_the_line(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "cat.csv", [("a", "http://h/a"), ("b", "  ")])
    assert "line 3" in error_of(path)


@pytest.mark.parametrize("bad_id", ["../x", "a/b", ".hidden", "..", "a b", "x\\y", "é", "a" * 201])
def test_unsafe_ids(tmp_path: Path, bad_id: str) -> None:
    path = write_catalog(tmp_path / "cat.csv",
                         [("ok1", "http://h/1"), ("ok2", "http://h/2"), (bad_id, "http://h/x")])
    message = error_of(path)
    assert "line 4" in message
    assert "safe" in message


def test_unsafe_id_in_parquet_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "cat.parquet"
    pq.write_table(pa.table({"image_id": ["ok", "../x"], "url": ["http://h/1", "http://h/2"]}),
                   path)
    assert "row 2" in error_of(path)


def test_duplicate_id_with_different_url(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "cat.csv", [
        ("a", "http://h/a"), ("b", "http://h/b"), ("c", "http://h/c"), ("b", "http://h/other"),
    ])
    message = error_of(path)
    assert "'b'" in message
    assert "line 5" in message  # the repeat
    assert "line 3" in message  # the first occurrence


def test_duplicate_id_with_same_url_is_kept_once(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "cat.csv", [
        ("a", "http://h/a"), ("b", "http://h/b"), ("a", "http://h/a"), ("c", "http://h/c"),
    ])
    assert load(path) == (["a", "b", "c"], ["http://h/a", "http://h/b", "http://h/c"])


def test_header_only_catalog(tmp_path: Path) -> None:
    path = write_text(tmp_path / "cat.csv", "image_id,url\n")
    assert "no images" in error_of(path)


def test_empty_file(tmp_path: Path) -> None:
    path = write_text(tmp_path / "cat.csv", "")
    assert "empty" in error_of(path)


def test_unknown_extension(tmp_path: Path) -> None:
    path = write_text(tmp_path / "cat.xlsx", "image_id,url\na,http://h/a\n")
    assert "'.xlsx'" in error_of(path)


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in error_of(tmp_path / "nope.csv")


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = write_text(tmp_path / "cat.parquet", "image_id,url\na,http://h/a\n")
    assert "cannot read" in error_of(path)


# --- URLs ----------------------------------------------------------------------------------


def test_relative_file_urls_resolve_against_the_catalog_folder(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.jpg").write_bytes(b"jpeg bytes")
    path = write_catalog(folder / "cat.csv", [
        ("a", "file:images/a.jpg"),
        ("b", "file:///abs/b.jpg"),
        ("c", "http://h/c.jpg"),
    ])
    ids, urls = load(path)
    assert ids == ["a", "b", "c"]
    assert urls[0] == (folder / "images" / "a.jpg").resolve().as_uri()
    assert urls[1:] == ["file:///abs/b.jpg", "http://h/c.jpg"]
    # The resolved URL is readable when the catalog folder is an allowed root.
    settings = FetchSettings(local_file_roots=(str(folder),))
    with make_session(settings) as session:
        assert fetch_once(session, urls[0], settings) == b"jpeg bytes"


def test_resolve_url_leaves_other_urls_alone(tmp_path: Path) -> None:
    assert resolve_url("http://h/x.jpg", tmp_path) == "http://h/x.jpg"
    assert resolve_url("file:///x/y.jpg", tmp_path) == "file:///x/y.jpg"
    assert resolve_url("file:sub/my%20pic.jpg", tmp_path) == (
        (tmp_path / "sub" / "my pic.jpg").resolve().as_uri())


# --- digest and snapshot -------------------------------------------------------------------


def test_digest_follows_the_selection_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cat.csv"
    rows = [("a", "http://h/a"), ("b", "http://h/b")]
    write_catalog(path, rows)
    first = load_catalog(CatalogSpec(path=path)).digest()
    write_catalog(path, rows)  # rewritten, same content
    assert load_catalog(CatalogSpec(path=path)).digest() == first
    write_catalog(path, [(*row, "note") for row in rows], header=("image_id", "url", "extra"))
    assert load_catalog(CatalogSpec(path=path)).digest() == first
    write_catalog(path, [("a", "http://h/a"), ("b", "http://h/b2")])
    assert load_catalog(CatalogSpec(path=path)).digest() != first
    write_catalog(path, [("b", "http://h/b"), ("a", "http://h/a")])
    assert load_catalog(CatalogSpec(path=path)).digest() != first


def test_snapshot_round_trip(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "cat.csv", [("007", "http://h/7"), ("b", "http://h/b")])
    spec = CatalogSpec(path=path)
    digest = load_catalog(spec).digest()
    folder = tmp_path / "results" / "catalog"
    folder.mkdir(parents=True)
    (folder / "olddigest.parquet").write_bytes(b"an older snapshot")
    out = folder / f"{digest}.parquet"
    write_snapshot(spec, out, expected_digest=digest, logger=LOGGER)
    assert read_snapshot_ids(out) == ["007", "b"]
    assert pq.read_table(out).column("url").to_pylist() == ["http://h/7", "http://h/b"]
    assert sorted(p.name for p in folder.iterdir()) == [out.name]


def test_snapshot_refuses_a_changed_catalog(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "cat.csv", [("a", "http://h/a")])
    out = tmp_path / "snap.parquet"
    with pytest.raises(CatalogError, match="changed"):
        write_snapshot(CatalogSpec(path=path), out, expected_digest="0" * 20, logger=LOGGER)
    assert not out.exists()


def test_urls_that_cannot_be_fetched_are_rows_not_catalog_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("image_id,url\na,https://x.example/a.jpg\nb,javascript:alert(1)\n"
                    "c,www.example.org/c.jpg?token=abc\nd,http://[::1/d.jpg\n")
    catalog = load_catalog(CatalogSpec(path))
    assert catalog.ids == ("a", "b", "c", "d")
    warnings = url_warnings(path, dict(zip(catalog.ids, catalog.urls, strict=True)))
    assert len(warnings) == 3
    assert all(str(path) in w and "bad_url" in w for w in warnings)
    assert "image 'b'" in warnings[0] and "javascript" in warnings[0]
    assert "no scheme" in warnings[1] and "token" not in warnings[1]
    assert "malformed" in warnings[2]
    many = {f"i{n}": "nope" for n in range(9)}
    assert url_warnings(path, many, shown=5)[-1].endswith("4 more URLs cannot be fetched")


def test_file_urls_outside_the_local_roots_are_warned_about(tmp_path: Path) -> None:
    inside = tmp_path / "images"
    inside.mkdir()
    urls = {"in": (inside / "a.jpg").as_uri(), "out": (tmp_path / "b.jpg").as_uri(),
            "up": (inside / ".." / "c.jpg").as_uri(), "web": "https://x.example/d.jpg"}
    warnings = url_warnings(tmp_path / "c.csv", urls, [str(inside)])
    assert [w.split("'")[1] for w in warnings] == ["out", "up"]
    assert all("outside the allowed local_file_roots" in w for w in warnings)
    # With no roots, every file: URL is refused, and said so before the run.
    none = url_warnings(tmp_path / "c.csv", urls, [])
    assert len(none) == 3 and all("set local_file_roots" in w for w in none)


def test_parquet_columns_of_any_type_that_are_not_used_are_not_read(tmp_path: Path) -> None:
    path = tmp_path / "cat.parquet"
    pq.write_table(pa.table({
        "image_id": ["007", "b"],
        "url": ["http://h/7", "http://h/b"],
        "tags": pa.array([["x", "y"], []], type=pa.list_(pa.string())),
        "meta": pa.array([{"w": 1, "h": 2}, {"w": 3, "h": 4}]),
        "blob": pa.array([b"\x00\xff", b""], type=pa.binary()),
        "keep": [True, False],
    }), path)
    assert load(path) == (["007", "b"], ["http://h/7", "http://h/b"])
    assert load(path, row_filter={"keep": True})[0] == ["007"]
    # A missing column is still named against every column the file has.
    assert "tags, meta, blob" in error_of(path, id_column="name")
    # A used column that cannot be text is one clear message, not a traceback.
    message = error_of(path, row_filter={"tags": "x"})
    assert "cannot read the catalog" in message


def test_repeated_header_names(tmp_path: Path) -> None:
    unused = write_text(tmp_path / "a.csv", "image_id,note,url,note\na,x,http://h/a,y\n")
    assert load(unused) == (["a"], ["http://h/a"])
    used = write_text(tmp_path / "b.csv", "image_id,url,size,url\na,http://h/a,1,http://h/b\n")
    message = error_of(used)
    assert "line 1" in message and "'url' appears 2 times (columns 2, 4)" in message
    names = ["image_id", "url", "note", "note"]
    unused_parquet, used_parquet = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([v]) for v in ("a", "http://h/a", "x", "y")],
                                        names=names), unused_parquet)
    assert load(unused_parquet) == (["a"], ["http://h/a"])
    pq.write_table(pa.Table.from_arrays([pa.array([v]) for v in ("a", "http://h/a", "x", "y")],
                                        names=["image_id", "url", "url", "n"]), used_parquet)
    assert "'url' appears 2 times (columns 2, 3)" in error_of(used_parquet)


@pytest.mark.parametrize(("text", "line"), [
    # a blank line before the bad row
    ("image_id,url\na,http://h/a\n\nb,http://h/b\n\n../x,http://h/x\n", 6),
    # a quoted field over two lines
    ('image_id,url,note\na,http://h/a,"one\ntwo"\nb,http://h/b,x\n../x,http://h/x,y\n', 5),
    # CRLF line ends and a BOM
    ("\ufeffimage_id,url\r\na,http://h/a\r\n\r\n../x,http://h/x\r\n", 4),
])
def test_errors_name_the_physical_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "cat.csv"
    path.write_bytes(text.encode("utf-8"))
    message = error_of(path)
    assert f"line {line}:" in message and "'../x'" in message


def test_ragged_row_names_its_line(tmp_path: Path) -> None:
    path = write_text(tmp_path / "cat.csv",
                      "image_id,url,a,b,c\nx,http://h/x,1,2,3\n\ny,http://h/y\n")
    message = error_of(path)
    assert "line 4 has 2 fields, the header has 5" in message


def test_selected_ids_need_no_url_column(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "cat.csv", [("a", "x"), ("b", "y"), ("a", "x")],
                         header=("image_id", "split"))
    assert selected_ids(CatalogSpec(path, url_template="http://h/{image_id}")) == ["a", "b"]
    assert selected_ids(CatalogSpec(path, row_filter={"split": "y"})) == ["b"]


# --- database catalogs -----------------------------------------------------------------------

DATABASES = {"sqlite": (sqlite_catalog, "cat.sqlite"), "duckdb": (duckdb_catalog, "cat.duckdb"),
             "sqlite .db": (sqlite_catalog, "cat.db"), "duckdb .db": (duckdb_catalog, "cat.db")}


@pytest.fixture(params=sorted(DATABASES))
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    make, name = DATABASES[request.param]
    return make(tmp_path / name)


def test_database_catalog_reads_the_table(database: Path) -> None:
    ids, urls = load(database)
    assert ids == ["7", "8", "9", "10"]
    assert urls[0] == "http://h/7.jpg"
    # Relative file: URLs resolve against the database's folder, as for catalog files.
    assert urls[2] == (database.parent / "images" / "9.jpg").resolve().as_uri()


def test_database_catalog_query_and_filter(database: Path) -> None:
    query = "SELECT image_id AS id, url FROM dim_image WHERE vote_pool_flag ORDER BY image_id DESC"
    assert load(database, query=query, id_column="id")[0] == ["9", "7"]
    # The row filter sees the query's columns as text, booleans included.
    assert load(database, row_filter={"vote_pool_flag": True})[0] == ["7", "9"]
    # A NULL is blank: neither true nor false, selected only by ''.
    assert load(database, row_filter={"vote_pool_flag": False})[0] == ["8"]
    assert load(database, row_filter={"vote_pool_flag": "false"})[0] == ["8"]
    assert load(database, row_filter={"vote_pool_flag": ""})[0] == ["10"]
    # Typed columns compare by the database's text: the integer id 10 is '10', not '010'.
    assert load(database, row_filter={"image_id": "10"})[0] == ["10"]
    message = error_of(database, row_filter={"image_id": "010"})
    assert "selects no images" in message and "'10'" in message


def test_database_catalog_custom_table(tmp_path: Path) -> None:
    path = tmp_path / "cat.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE photos AS SELECT '007' AS image_id, 'http://h/7' AS url")
    assert load(path, table="photos") == (["007"], ["http://h/7"])


def test_database_catalog_is_closed_after_reading(tmp_path: Path) -> None:
    path = duckdb_catalog(tmp_path / "cat.duckdb")
    load(path)
    # Another process can open it for writing right away: the read released its lock.
    subprocess.run([sys.executable, "-c", "import duckdb, sys; con = duckdb.connect(sys.argv[1]);"
                    " con.execute('UPDATE dim_image SET url = url'); con.close()", str(path)],
                   check=True, timeout=120)


def test_database_catalog_digest_and_snapshot(database: Path) -> None:
    spec = CatalogSpec(path=database)
    digest = load_catalog(spec).digest()
    out = database.parent / "results" / "catalog" / f"{digest}.parquet"
    write_snapshot(spec, out, expected_digest=digest, logger=LOGGER)
    assert read_snapshot_ids(out) == ["7", "8", "9", "10"]
    narrower = CatalogSpec(path=database,
                           query="SELECT * FROM dim_image WHERE image_id < 9")
    assert load_catalog(narrower).digest() != digest


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT * FROM no_such_table", "query failed"),
        ("SELEKT nonsense", "query failed"),
        ("SELECT url FROM dim_image", "no column 'image_id'"),
        ("SELECT image_id, url, url FROM dim_image", "more than once"),
        ("SELECT * FROM dim_image WHERE image_id > 100", "selects no images"),
        ("SELECT image_id || '/x' AS image_id, url FROM dim_image", "not a safe file name"),
        ("SELECT 7 AS image_id, 'http://a' AS url UNION ALL SELECT 7, 'http://b'",
         "repeated with a different URL"),
        ("DELETE FROM dim_image", "query failed"),
    ],
)
def test_database_catalog_errors_name_the_file_and_query(database: Path, query: str,
                                                         message: str) -> None:
    text = error_of(database, query=query)
    assert message in text
    assert query in text
    # Reading never changes the catalog, whatever the query says.
    assert load(database)[0] == ["7", "8", "9", "10"]


def test_database_catalog_missing_default_table(tmp_path: Path) -> None:
    path = tmp_path / "cat.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as con:
        con.execute("CREATE TABLE other (x)")
    text = error_of(path)
    assert "dim_image" in text and "query failed" in text


def test_not_a_database(tmp_path: Path) -> None:
    path = write_text(tmp_path / "cat.db", "image_id,url\na,http://h/a\n")
    assert "neither a SQLite nor a DuckDB" in error_of(path)
    assert "not found" in error_of(tmp_path / "missing.duckdb")


# Catalogs in a bucket, read through pyarrow's S3 file system from a real S3 server.


@pytest.fixture
def s3_env(s3: SeaweedServer, monkeypatch: pytest.MonkeyPatch,
           tmp_path: Path) -> SeaweedServer:
    """The standard AWS variables pointing at the test server; a fresh working directory."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return s3


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_a_catalog_is_read_from_a_bucket(s3_env: SeaweedServer, tmp_path: Path,
                                         suffix: str) -> None:
    from thumbfeat.config import catalog_spec

    rows = [("007", "https://example.org/7.jpg"), ("a-1", "https://example.org/a.jpg")]
    local = tmp_path / f"upload{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.table({"image_id": [r[0] for r in rows], "url": [r[1] for r in rows],
                                 "size": [7, 8]}), local)
    else:
        delimiter = "\t" if suffix == ".tsv" else ","
        local.write_text("image_id" + delimiter + "url\n"
                         + "".join(f"{i}{delimiter}{u}\n" for i, u in rows))
    key = f"catalogs/read{suffix}"
    s3_env.put(key, local.read_bytes())
    spec = catalog_spec({"catalog": f"s3://thumbfeat-test/{key}"}, tmp_path)
    catalog = load_catalog(spec)
    assert list(catalog.ids) == ["007", "a-1"]
    assert list(catalog.urls) == [r[1] for r in rows]
    # A changed object is read again at the next parse.
    s3_env.put(key, local.read_bytes() if suffix == ".parquet" else
               local.read_bytes() + (b"b2\thttps://example.org/b.jpg\n" if suffix == ".tsv"
                                     else b"b2,https://example.org/b.jpg\n"))
    again = load_catalog(catalog_spec({"catalog": f"s3://thumbfeat-test/{key}"}, tmp_path))
    assert len(again) == (2 if suffix == ".parquet" else 3)


def test_a_missing_catalog_object_is_one_clear_error(s3_env: SeaweedServer,
                                                     tmp_path: Path) -> None:
    from thumbfeat.config import catalog_spec

    url = "s3://thumbfeat-test/catalogs/not-there.csv"
    with pytest.raises(CatalogError) as error:
        catalog_spec({"catalog": url}, tmp_path)
    assert str(error.value).startswith(f"{url}: cannot read the catalog")
    with pytest.raises(CatalogError, match="s3://BUCKET/KEY"):
        catalog_spec({"catalog": "s3://thumbfeat-test"}, tmp_path)
