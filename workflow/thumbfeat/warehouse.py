"""Loading the feature table into a DuckDB warehouse, upserted by image id.

The warehouse table mirrors the current feature table: after a load it holds exactly the table's
rows, one per ``image_id``. Rows whose content is unchanged are left alone, changed and new rows are
written with ``INSERT OR REPLACE`` (so a rerun never duplicates a row), and rows of images that are
no longer in the table (dropped from the catalog or its selection) are deleted, so a query against
the warehouse answers for the same images as the Parquet table. When the table's columns change (a
new feature version adds or retypes columns) the warehouse table is rebuilt with the new columns.

Everything happens in one transaction: a load that fails or is killed leaves the previous warehouse
as it was. A warehouse file that does not exist yet is built under a temporary name and renamed into
place when whole, so a first load that is interrupted leaves no half-made file behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from thumbfeat import atomic
from thumbfeat.dbcatalog import quote

TABLE = "feature_image_visual"
LOADS = "thumbfeat_loads"
KEY = "image_id"


class WarehouseError(RuntimeError):
    """The warehouse cannot be loaded; the message names the file and what to do."""


@dataclass(frozen=True)
class LoadResult:
    """What one load changed, also recorded as a row of the ``thumbfeat_loads`` table."""

    loaded_at: str
    source: str
    source_digest: str
    rows: int
    inserted: int
    updated: int
    deleted: int
    unchanged: int
    rebuilt: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def file_digest(path: str | Path) -> str:
    """A content hash of the loaded file, recorded with each load to tell which table it was."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()[:20]


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]] | None:
    """(name, type) of each column of a main-schema table in order, or None when it is absent."""
    found = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
        [table],
    ).fetchall()
    return [(name, kind) for name, kind in found] or None


def _stage(con: duckdb.DuckDBPyConnection, source: Path) -> list[tuple[str, str]]:
    """Read the Parquet table into a temporary table and check its keys; return its columns."""
    con.execute("CREATE OR REPLACE TEMP TABLE incoming AS SELECT * FROM read_parquet(?)",
                [str(source)])
    columns = [(name, kind) for name, kind, *_ in con.execute("DESCRIBE incoming").fetchall()]
    if KEY not in {name for name, _ in columns}:
        raise WarehouseError(f"{source}: the table has no {KEY!r} column to load by")
    nulls = con.execute(f"SELECT count(*) FROM incoming WHERE {quote(KEY)} IS NULL").fetchone()
    if nulls and nulls[0]:
        raise WarehouseError(f"{source}: {nulls[0]} rows have no {KEY}")
    repeated = con.execute(
        f"SELECT {quote(KEY)} FROM incoming GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 LIMIT 5"
    ).fetchall()
    if repeated:
        raise WarehouseError(f"{source}: {KEY} values are repeated, e.g. "
                             f"{', '.join(repr(r[0]) for r in repeated)}; one row per image is "
                             "required")
    return columns


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchone()
    return int(row[0]) if row else 0


def _rebuild(con: duckdb.DuckDBPyConnection, table: str, columns: list[tuple[str, str]],
             existed: bool) -> tuple[int, int, int]:
    """Replace the table by one with the incoming columns; return (inserted, updated, deleted)."""
    if existed:
        inserted = _count(con, f"SELECT count(*) FROM incoming WHERE {quote(KEY)} NOT IN "
                               f"(SELECT {quote(KEY)} FROM {quote(table)})")
        deleted = _count(con, f"SELECT count(*) FROM {quote(table)} WHERE {quote(KEY)} NOT IN "
                              f"(SELECT {quote(KEY)} FROM incoming)")
        updated = _count(con, "SELECT count(*) FROM incoming") - inserted
    else:
        inserted, updated, deleted = _count(con, "SELECT count(*) FROM incoming"), 0, 0
    staging = f"{table}__rebuild"
    definition = ", ".join(f"{quote(name)} {kind}" for name, kind in columns)
    con.execute(f"DROP TABLE IF EXISTS {quote(staging)}")
    con.execute(f"CREATE TABLE {quote(staging)} ({definition}, PRIMARY KEY ({quote(KEY)}))")
    con.execute(f"INSERT INTO {quote(staging)} SELECT * FROM incoming")
    con.execute(f"DROP TABLE IF EXISTS {quote(table)}")
    con.execute(f"ALTER TABLE {quote(staging)} RENAME TO {quote(table)}")
    return inserted, updated, deleted


def _upsert(con: duckdb.DuckDBPyConnection, table: str) -> tuple[int, int, int]:
    """Write only new and changed rows, delete rows no longer present; same columns both sides."""
    target = quote(table)
    con.execute("CREATE OR REPLACE TEMP TABLE changed AS "
                f"SELECT * FROM incoming EXCEPT SELECT * FROM {target}")
    inserted = _count(con, f"SELECT count(*) FROM changed WHERE {quote(KEY)} NOT IN "
                           f"(SELECT {quote(KEY)} FROM {target})")
    updated = _count(con, "SELECT count(*) FROM changed") - inserted
    con.execute(f"INSERT OR REPLACE INTO {target} SELECT * FROM changed")
    deleted = _count(con, f"DELETE FROM {target} WHERE {quote(KEY)} NOT IN "
                          f"(SELECT {quote(KEY)} FROM incoming)")
    con.execute("DROP TABLE changed")
    return inserted, updated, deleted


def _record(con: duckdb.DuckDBPyConnection, result: LoadResult) -> None:
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {quote(LOADS)} (loaded_at TIMESTAMPTZ, source VARCHAR, "
        "source_digest VARCHAR, rows BIGINT, inserted BIGINT, updated BIGINT, deleted BIGINT, "
        "unchanged BIGINT, rebuilt BOOLEAN)"
    )
    values = result.as_dict()
    con.execute(f"INSERT INTO {quote(LOADS)} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                list(values.values()))


def load_into(con: duckdb.DuckDBPyConnection, source: Path, *, table: str = TABLE) -> LoadResult:
    """Bring ``table`` in line with the Parquet file ``source`` in one transaction."""
    digest = file_digest(source)
    con.execute("BEGIN TRANSACTION")
    try:
        columns = _stage(con, source)
        existing = table_columns(con, table)
        rebuilt = existing != columns
        if rebuilt:
            inserted, updated, deleted = _rebuild(con, table, columns, existing is not None)
        else:
            inserted, updated, deleted = _upsert(con, table)
        rows = _count(con, "SELECT count(*) FROM incoming")
        result = LoadResult(
            loaded_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            source=str(source), source_digest=digest, rows=rows, inserted=inserted,
            updated=updated, deleted=deleted, unchanged=rows - inserted - updated,
            rebuilt=rebuilt and existing is not None,
        )
        _record(con, result)
        con.execute("DROP TABLE incoming")
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise
    return result


def _connect(path: Path) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path))
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise WarehouseError(
                f"{path}: the warehouse is open in another process (a DuckDB shell or notebook "
                f"writing to it?); close it and run again. {exc}"
            ) from exc
        raise WarehouseError(f"{path}: cannot open the warehouse: {exc}") from exc
    except duckdb.Error as exc:
        raise WarehouseError(f"{path}: cannot open the warehouse: {exc}") from exc


def load_warehouse(source: str | Path, db_path: str | Path, *, table: str = TABLE) -> LoadResult:
    """Load the feature table at ``source`` into ``db_path`` (created when missing)."""
    source, db_path = Path(source), Path(db_path)
    if not source.is_file():
        raise WarehouseError(f"{source}: the feature table to load does not exist")
    if db_path.exists():
        con = _connect(db_path)
        try:
            return load_into(con, source, table=table)
        finally:
            con.close()
    # Leftovers of a first load that was killed: never a finished warehouse, safe to drop.
    for stale in db_path.parent.glob(f".{db_path.name}.*.tmp*"):
        stale.unlink(missing_ok=True)
    with atomic.atomic_path(db_path, durable=True) as tmp:
        wal = Path(f"{tmp}.wal")
        try:
            con = _connect(tmp)
            try:
                result = load_into(con, source, table=table)
                con.execute("CHECKPOINT")
            finally:
                con.close()
        finally:
            # Checkpointed and closed, or failed: either way nothing in the log is needed.
            wal.unlink(missing_ok=True)
    return result


def load_and_log(source: str | Path, db_path: str | Path, *, table: str,
                 logger: logging.Logger) -> LoadResult:
    result = load_warehouse(source, db_path, table=table)
    logger.info("warehouse %s, table %s: %d rows; %d inserted, %d updated, %d deleted, "
                "%d unchanged%s", db_path, table, result.rows, result.inserted, result.updated,
                result.deleted, result.unchanged,
                " (rebuilt for new columns)" if result.rebuilt else "")
    return result
