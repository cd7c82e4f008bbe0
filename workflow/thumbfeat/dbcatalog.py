"""Catalogs kept in a database table (DuckDB or SQLite), and writing download flags back to them.

A database catalog is read with an SQL query whose result is treated exactly like the rows of a
catalog file: every value becomes text and goes through the same id, URL and filter checks. The
database is opened read-only for that, and closed straight after, so the workflow never holds it
while a job writes to it.

Writing back (``catalog_write_back``) sets a ``thumb_downloaded`` BOOLEAN column of the catalog
table, adding the column when it is missing: true for each selected image whose thumbnail exists
and is non-empty (an empty thumbnail marks a failed download), false for the other selected images.
Rows outside the selection are not touched, only rows whose flag changes are written, and the whole
update is one transaction, so it can be repeated at will.

Rows are matched by the catalog key: the column of the catalog table that holds the image ids
(``catalog_key``, default ``id_column``). It is looked up when the workflow is parsed, so a
write-back that could not find its rows stops the run before any download, and its type is what
the warehouse key takes (an integer key stays an integer there).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from thumbfeat import layout, storage
from thumbfeat.lazy import lazy_module

# Loaded on first use (see thumbfeat.lazy): every parse reads file catalogs without it.
duckdb = lazy_module("duckdb")

SUFFIXES = frozenset({".duckdb", ".ddb", ".db", ".sqlite", ".sqlite3"})
FLAG_COLUMN = "thumb_downloaded"
DEFAULT_TABLE = "dim_image"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_DUCKDB_MAGIC = b"DUCK"  # at byte 8 of every DuckDB file


class DatabaseError(ValueError):
    """A database catalog cannot be read or updated; the message names the file (and query)."""


def is_database(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def quote(name: str) -> str:
    """An SQL identifier, quoted so any table or column name is taken literally."""
    return '"' + name.replace('"', '""') + '"'


def default_query(table: str) -> str:
    return f"SELECT * FROM {quote(table)}"


def database_kind(path: Path) -> str:
    """``sqlite`` or ``duckdb``, told by the file's first bytes (``.db`` is used for both)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except FileNotFoundError:
        raise DatabaseError(f"{path}: catalog database not found") from None
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot read the catalog database: {exc}") from exc
    if head.startswith(_SQLITE_MAGIC):
        return "sqlite"
    if head[8:12] == _DUCKDB_MAGIC:
        return "duckdb"
    raise DatabaseError(f"{path}: neither a SQLite nor a DuckDB database file")


@contextlib.contextmanager
def _sqlite(path: Path, *, read_only: bool) -> Iterator[sqlite3.Connection]:
    uri = path.resolve().as_uri() + ("?mode=ro" if read_only else "?mode=rw")
    con = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
    try:
        yield con
    finally:
        con.close()


@contextlib.contextmanager
def _duckdb(path: Path, *, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        hint = (" (is another program writing to it?)" if "lock" in str(exc).lower() else "")
        raise DatabaseError(f"{path}: cannot open the catalog database{hint}: {exc}") from exc
    try:
        yield con
    finally:
        con.close()


def _as_text(table: pa.Table) -> pa.Table:
    """Every column as text, as catalog files are read, so ids like ``007`` stay what they are."""
    columns = []
    for column in table.columns:
        try:
            columns.append(column.cast(pa.string()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            columns.append(pa.array([None if v is None else str(v) for v in column.to_pylist()],
                                    type=pa.string()))
    return pa.table(columns, names=table.column_names)


def _text(value: object) -> str | None:
    """A SQLite value as text, floats written as Arrow writes DuckDB's (2.0 is ``2``)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float):
        return pa.array([value], type=pa.float64()).cast(pa.string())[0].as_py()
    return str(value)


def _read_sqlite(path: Path, query: str) -> pa.Table:
    with _sqlite(path, read_only=True) as con:
        cursor = con.execute(query)
        if cursor.description is None:
            raise DatabaseError(f"{path}: the catalog query returns no rows\n  query: {query}")
        names = [entry[0] for entry in cursor.description]
        rows = cursor.fetchall()
    columns = [pa.array([_text(row[i]) for row in rows], type=pa.string())
               for i in range(len(names))]
    return pa.table(columns, names=names)


def _read_duckdb(path: Path, query: str) -> pa.Table:
    with _duckdb(path, read_only=True) as con:
        relation = con.sql(query)
        if relation is None:
            raise DatabaseError(f"{path}: the catalog query returns no rows\n  query: {query}")
        to_arrow = getattr(relation, "to_arrow_table", None) or relation.arrow
        return _as_text(to_arrow())


def read_query(path: Path, query: str) -> pa.Table:
    """The query's result with every column as text; errors name the database and the query."""
    kind = database_kind(path)
    try:
        table = _read_sqlite(path, query) if kind == "sqlite" else _read_duckdb(path, query)
    except (sqlite3.Error, duckdb.Error) as exc:
        raise DatabaseError(f"{path}: the catalog query failed: {exc}\n  query: {query}") from exc
    repeated = sorted({n for n in table.column_names if table.column_names.count(n) > 1})
    if repeated:
        raise DatabaseError(f"{path}: the catalog query returns the column(s) "
                            f"{', '.join(repeated)} more than once; name them apart with AS\n"
                            f"  query: {query}")
    return table


# --- the catalog key ----------------------------------------------------------------------------

# Key types the warehouse keeps as they are; any other type is kept as text there.
_KEY_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT",
                        "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT", "VARCHAR", "UUID"})


@dataclass(frozen=True)
class CatalogKey:
    """The column of the catalog table holding the image ids, and its type in DuckDB terms."""

    column: str
    sql_type: str


def warehouse_type(declared: str, kind: str) -> str:
    """The DuckDB type a catalog key column keeps in the warehouse.

    SQLite declares types loosely (its INTEGER affinity covers ``INT``, ``BIGINT`` ...), so any
    declared integer is a BIGINT; types that do not name an id faithfully are kept as text.
    """
    upper = declared.strip().upper()
    if kind == "sqlite":
        return "BIGINT" if "INT" in upper else "VARCHAR"
    return upper if upper in _KEY_TYPES else "VARCHAR"


def _column_types(path: Path, table: str) -> dict[str, str]:
    """Name to DuckDB type of each column of ``table`` (empty when there is no such table)."""
    kind = database_kind(path)
    try:
        if kind == "sqlite":
            with _sqlite(path, read_only=True) as con:
                found = [(row[1], row[2] or "") for row in
                         con.execute(f"PRAGMA table_info({quote(table)})").fetchall()]
        else:
            with _duckdb(path, read_only=True) as con:
                found = con.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = ? AND table_schema = current_schema() "
                    "ORDER BY ordinal_position", [table]).fetchall()
    except (sqlite3.Error, duckdb.Error) as exc:
        raise DatabaseError(f"{path}: cannot read the columns of table {table!r}: {exc}") from exc
    return {name: warehouse_type(declared, kind) for name, declared in found}


def find_catalog_key(path: Path, table: str, id_column: str, catalog_key: str | None, *,
                     write_back: bool) -> CatalogKey | None:
    """The catalog key, checked against the table before any work is done.

    ``catalog_key`` names the column when the catalog query renames it (``SELECT source_id AS
    image_id``); otherwise ``id_column`` is looked for in ``table``. None when neither is asked
    for and the table does not hold the ids (a query reading another table or a view): the
    warehouse then keys rows by text ids. A write-back without a key cannot land, so it is refused
    here rather than after every image was fetched.
    """
    column = catalog_key or id_column
    columns = _column_types(path, table)
    if column in columns:
        return CatalogKey(column, columns[column])
    if not catalog_key and not write_back:
        return None
    if not columns:
        setting = "catalog_key" if catalog_key else "catalog_write_back"
        raise DatabaseError(f"{path}: config key {setting!r} needs the table {table!r}, which "
                            "does not exist; set catalog_table to the table holding the images")
    listed = ", ".join(columns)
    if catalog_key:
        raise DatabaseError(f"{path}: config key 'catalog_key': table {table!r} has no column "
                            f"{catalog_key!r}; its columns are {listed}")
    raise DatabaseError(
        f"{path}: config key 'catalog_write_back': table {table!r} has no column {id_column!r} "
        f"(the id_column) to match images by; when catalog_query renames the id column "
        f"(... AS {id_column}), set catalog_key to the column of {table!r} it comes from. "
        f"Its columns are {listed}")


# --- writing back ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteBack:
    """What a write-back changed, for the log and the rule's receipt."""

    database: str
    table: str
    selected: int
    downloaded: int
    matched: int
    changed: int
    column_added: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def thumbnail_flags(results: str | Path, image_ids: Sequence[str],
                    tag: str) -> dict[str, bool]:
    """For each image: is its thumbnail (of the settings ``tag``) on disk and non-empty.

    In a bucket: one LIST per shard prefix gives every object's size, never a look per image.
    """
    if storage.is_remote(results):
        return _remote_thumbnail_flags(str(results), image_ids, tag)
    flags = {}
    for image_id in image_ids:
        try:
            flags[image_id] = os.stat(layout.thumb_path(results, image_id, tag)).st_size > 0
        except FileNotFoundError:
            flags[image_id] = False
    return flags


def _remote_thumbnail_flags(results: str, image_ids: Sequence[str],
                            tag: str) -> dict[str, bool]:
    root = f"{results}/{layout.stage_dir(layout.THUMBS, tag)}"
    sizes: dict[str, int] = {}
    for shard in sorted({layout.shard_of(i) for i in image_ids}):
        sizes.update(storage.sizes(f"{root}/{shard}"))
    return {i: sizes.get(f"{i}{layout.THUMB_SUFFIX}", 0) > 0 for i in image_ids}


def _columns_sqlite(con: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in con.execute(f"PRAGMA table_info({quote(table)})").fetchall()]


def _columns_duckdb(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [row[0] for row in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
        "AND table_schema = current_schema() ORDER BY ordinal_position", [table]).fetchall()]


def _check_columns(path: Path, table: str, columns: list[str], id_column: str) -> None:
    if not columns:
        raise DatabaseError(f"{path}: no table {table!r} to write {FLAG_COLUMN} to "
                            "(set catalog_table)")
    if id_column not in columns:
        raise DatabaseError(f"{path}: table {table!r} has no column {id_column!r} to match "
                            f"images by; its columns are {', '.join(columns)}")


def _write_sqlite(path: Path, table: str, id_column: str,
                  flags: Mapping[str, bool]) -> tuple[int, int, bool]:
    key = f"trim(CAST(t.{quote(id_column)} AS TEXT))"
    with _sqlite(path, read_only=False) as con:
        con.execute("BEGIN IMMEDIATE")
        try:
            columns = _columns_sqlite(con, table)
            _check_columns(path, table, columns, id_column)
            added = FLAG_COLUMN not in columns
            if added:
                con.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {FLAG_COLUMN} BOOLEAN")
            con.execute("CREATE TEMP TABLE thumbfeat_flags "
                        "(image_id TEXT PRIMARY KEY, downloaded INTEGER NOT NULL)")
            con.executemany("INSERT INTO temp.thumbfeat_flags VALUES (?, ?)",
                            [(i, int(flag)) for i, flag in flags.items()])
            matched = con.execute(
                f"SELECT count(DISTINCT f.image_id) FROM {quote(table)} AS t "
                f"JOIN temp.thumbfeat_flags AS f ON f.image_id = {key}").fetchone()[0]
            changed = con.execute(
                f"UPDATE {quote(table)} AS t SET {FLAG_COLUMN} = f.downloaded "
                f"FROM temp.thumbfeat_flags AS f WHERE f.image_id = {key} "
                f"AND t.{FLAG_COLUMN} IS NOT f.downloaded").rowcount
            con.execute("DROP TABLE temp.thumbfeat_flags")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return matched, changed, added


def _write_duckdb(path: Path, table: str, id_column: str,
                  flags: Mapping[str, bool]) -> tuple[int, int, bool]:
    key = f"trim(CAST(t.{quote(id_column)} AS VARCHAR))"
    incoming = pa.table({"image_id": list(flags), "downloaded": list(flags.values())})
    with _duckdb(path, read_only=False) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            columns = _columns_duckdb(con, table)
            _check_columns(path, table, columns, id_column)
            added = FLAG_COLUMN not in columns
            if added:
                con.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {FLAG_COLUMN} BOOLEAN")
            con.register("thumbfeat_flags", incoming)
            row = con.execute(
                f"SELECT count(DISTINCT f.image_id) FROM {quote(table)} AS t "
                f"JOIN thumbfeat_flags AS f ON f.image_id = {key}").fetchone()
            matched = int(row[0]) if row else 0
            row = con.execute(
                f"UPDATE {quote(table)} AS t SET {FLAG_COLUMN} = f.downloaded "
                f"FROM thumbfeat_flags AS f WHERE f.image_id = {key} "
                f"AND t.{FLAG_COLUMN} IS DISTINCT FROM f.downloaded").fetchone()
            changed = int(row[0]) if row else 0
            con.unregister("thumbfeat_flags")
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
    return matched, changed, added


def write_back(path: Path, table: str, id_column: str, flags: Mapping[str, bool]) -> WriteBack:
    """Set ``thumb_downloaded`` in ``table`` from ``flags`` (image id to downloaded or not)."""
    kind = database_kind(path)
    try:
        if kind == "sqlite":
            matched, changed, added = _write_sqlite(path, table, id_column, flags)
        else:
            matched, changed, added = _write_duckdb(path, table, id_column, flags)
    except (sqlite3.Error, duckdb.Error) as exc:
        raise DatabaseError(f"{path}: writing {FLAG_COLUMN} to table {table!r} failed: "
                            f"{exc}") from exc
    return WriteBack(database=str(path), table=table, selected=len(flags),
                     downloaded=sum(flags.values()), matched=matched, changed=changed,
                     column_added=added)


def write_back_and_log(path: Path, table: str, id_column: str, image_ids: Sequence[str],
                       results: str | Path, *, tag: str, logger: logging.Logger) -> WriteBack:
    """Flag the selected images by their thumbnails on disk, and log what changed."""
    result = write_back(path, table, id_column, thumbnail_flags(results, image_ids, tag))
    logger.info("%s, table %s: %s set for %d selected images (%d downloaded); %d rows changed%s",
                path, table, FLAG_COLUMN, result.selected, result.downloaded, result.changed,
                f" (column {FLAG_COLUMN} added)" if result.column_added else "")
    if result.matched < result.selected:
        logger.warning("%d selected image ids have no row in table %s (column %s): the catalog "
                       "query does not read its ids from this table?",
                       result.selected - result.matched, table, id_column)
    return result
