"""Loading the feature table into a DuckDB warehouse, upserted by image key.

By default the warehouse accumulates: after a load it holds every row of the table and every row
it held before, one per image. Rows whose content is unchanged are left alone, changed and new rows
are written with ``INSERT OR REPLACE`` (so a rerun never duplicates a row), and nothing is deleted:
an image that leaves the catalog's selection (the typical "select what is left to do" query) keeps
its features. Rows measured on disk that the warehouse has never seen (a results folder whose
warehouse was deleted, a run stopped before its table) are read from their per-image files, so the
warehouse holds every image measured in the results folder. With ``prune`` the warehouse mirrors
the table instead: rows of images that are not in it are deleted.

The duplicate group columns are recomputed over the whole warehouse table after each load, the
way the table computes them over its own rows (labels are the smallest image id of each group), so
loading the images in ten runs gives the same rows as loading them in one.

The key column takes the name and type of the catalog key for database catalogs (an integer
``image_sk`` stays an integer, so ``dim_image JOIN feature_image_visual USING (image_sk)`` works),
and is the text ``image_id`` otherwise. When the table's columns change (a new feature version
adds or retypes columns, or the key changes) the warehouse table is rebuilt with the new columns,
keeping the rows the table does not hold unless pruning.

Everything happens in one transaction: a load that fails or is killed leaves the previous warehouse
as it was. A warehouse file that does not exist yet is built under a temporary name and renamed into
place when whole, so a first load that is interrupted leaves no half-made file behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from thumbfeat import atomic, layout
from thumbfeat.dbcatalog import CatalogKey, quote
from thumbfeat.duplicates import (
    DEFAULT_MAX_DISTANCE,
    exact_duplicate_groups,
    extend_near_duplicate_groups,
    near_duplicate_groups,
)
from thumbfeat.grouping import DISTANCE_KEY
from thumbfeat.lazy import lazy_module
from thumbfeat.rows import GROUP_COLUMNS
from thumbfeat.rowscan import read_rows

# Loaded on first use (see thumbfeat.lazy): every parse reads file catalogs without it.
duckdb = lazy_module("duckdb")

TABLE = "feature_image_visual"
LOADS = "thumbfeat_loads"
KEY = "image_id"
# The key of a warehouse fed from a file catalog, or from a query that names no key column.
TEXT_KEY = CatalogKey(KEY, "VARCHAR")


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
    from_files: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """Where and how the table is loaded: the database file, its table, key and pruning.

    A load receipt is named by a digest of these, so changing any of them (pointing the warehouse
    elsewhere and back, a new table name) asks for a receipt that is missing or older than the
    table, and the load runs again.
    """

    path: str
    table: str = TABLE
    key: CatalogKey = TEXT_KEY
    prune: bool = False

    def as_dict(self) -> dict[str, object]:
        """Plain values, as a rule hands the target to its job (see from_dict)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> Target:
        """The target from its ``as_dict`` form (how a rule hands it to its job)."""
        key = values["key"]
        return cls(**{**values, "key": key if isinstance(key, CatalogKey)
                      else CatalogKey(**key)})  # type: ignore[arg-type]

    def describe(self) -> dict[str, object]:
        return {"database": str(Path(self.path).resolve()), "table": self.table,
                "key": self.key.column, "key_type": self.key.sql_type, "prune": self.prune}

    def receipt_path(self, results: str) -> str:
        digest = hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode())
        return layout.warehouse_receipt_path(results, digest.hexdigest()[:16])


def receipt(target: Target, result: LoadResult) -> dict[str, object]:
    """What a receipt holds: the warehouse it describes (file, table, key) and the load."""
    return {**target.describe(), **result.as_dict()}


def write_receipt(path: str | Path, target: Target, result: LoadResult) -> None:
    """Write the load's receipt, and withdraw the receipts of other settings (another key or
    pruning) for the same database table: this load changed that table, so a run with those
    settings must load it again rather than find its receipt up to date."""
    out = Path(path)
    atomic.write_bytes(out, json.dumps(receipt(target, result), indent=2).encode())
    described = target.describe()
    for other in out.parent.glob("*.json"):
        if other == out:
            continue
        try:
            earlier = json.loads(other.read_text())
        except (OSError, ValueError):
            continue
        if (earlier.get("database"), earlier.get("table")) == (described["database"],
                                                               described["table"]):
            other.unlink(missing_ok=True)


def grouped_distance(source: Path) -> int | None:
    """The near-duplicate distance the feature table's groups were made with (its metadata)."""
    metadata = pq.read_schema(source).metadata or {}
    try:
        return int(metadata[DISTANCE_KEY])
    except (KeyError, ValueError):
        return None


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


def _count(con: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None) -> int:
    # fetchall, not fetchone: an unfinished result blocks registering Arrow tables afterwards.
    rows = con.execute(sql, params or []).fetchall()
    return int(rows[0][0]) if rows else 0


def _stage(con: duckdb.DuckDBPyConnection, source: Path, key: CatalogKey) -> None:
    """Read the Parquet table into the temporary table ``incoming``, its ids cast to the key."""
    con.read_parquet(str(source)).create_view("source_rows", replace=True)
    names = [row[0] for row in con.execute("DESCRIBE source_rows").fetchall()]
    if KEY not in names:
        raise WarehouseError(f"{source}: the table has no {KEY!r} column to load by")
    if key.column != KEY and key.column in names:
        raise WarehouseError(f"{source}: the catalog key {key.column!r} is also a feature column; "
                             "set catalog_key to another column, or rename it in catalog_query")
    uncastable = con.execute(
        f"SELECT {quote(KEY)} FROM source_rows WHERE {quote(KEY)} IS NOT NULL AND "
        f"TRY_CAST({quote(KEY)} AS {key.sql_type}) IS NULL LIMIT 1").fetchall()
    if uncastable:
        raise WarehouseError(
            f"{source}: image id {uncastable[0][0]!r} is not a {key.sql_type} value like the "
            f"catalog key {key.column!r}; set catalog_key to the column the catalog query reads "
            "its ids from")
    con.execute(f"CREATE OR REPLACE TEMP TABLE incoming AS SELECT CAST({quote(KEY)} AS "
                f"{key.sql_type}) AS {quote(key.column)}, * EXCLUDE ({quote(KEY)}) "
                "FROM source_rows")
    con.execute("DROP VIEW source_rows")
    nulls = _count(con, f"SELECT count(*) FROM incoming WHERE {quote(key.column)} IS NULL")
    if nulls:
        raise WarehouseError(f"{source}: {nulls} rows have no {KEY}")
    repeated = con.execute(
        f"SELECT {quote(key.column)} FROM incoming GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 "
        "LIMIT 5").fetchall()
    if repeated:
        raise WarehouseError(f"{source}: {KEY} values are repeated, e.g. "
                             f"{', '.join(repr(str(r[0])) for r in repeated)}; one row per image "
                             "is required")


def _arrow(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """A query's result as an Arrow table, whichever DuckDB release names the method."""
    relation = con.sql(sql)
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    return fetch()


def _text_keys(con: duckdb.DuckDBPyConnection, table: str, column: str) -> set[str]:
    found = _arrow(con, f"SELECT CAST({quote(column)} AS VARCHAR) FROM {quote(table)}")
    return set(found.column(0).to_pylist())


def _stage_files(con: duckdb.DuckDBPyConnection, results: str | Path, tag: str, key: CatalogKey,
                 existing: list[tuple[str, str]] | None, table: str) -> int:
    """Add to ``incoming`` the rows on disk that neither the table nor the warehouse holds.

    Ids that cannot be keys of this warehouse (text ids of another catalog under an integer key)
    are left out. Returns how many rows were added.
    """
    known = _text_keys(con, "incoming", key.column)
    if existing is not None:
        known |= _text_keys(con, table, existing[0][0])
    on_disk = layout.present_ids(results, layout.stage_dir(layout.FEATURES, tag),
                                 layout.FEATURE_SUFFIX)
    missing = sorted(on_disk - known)
    if not missing:
        return 0
    rows = read_rows([layout.feature_path(results, image_id, tag) for image_id in missing])
    before = _count(con, "SELECT count(*) FROM incoming")
    con.register("file_rows", rows)
    try:
        con.execute(f"INSERT INTO incoming BY NAME SELECT CAST({quote(KEY)} AS {key.sql_type}) "
                    f"AS {quote(key.column)}, * EXCLUDE ({quote(KEY)}) FROM file_rows "
                    f"WHERE TRY_CAST({quote(KEY)} AS {key.sql_type}) IS NOT NULL")
    finally:
        con.unregister("file_rows")
    return _count(con, "SELECT count(*) FROM incoming") - before


def _carried_over(old: list[tuple[str, str]], new: list[tuple[str, str]]) -> str:
    """SELECT list moving the old table's rows to the new columns, matched by name.

    The key column is the first of both; its values must convert (a row the new key cannot hold
    would be lost), other values that cannot take a new type become null, and new columns are
    null for old rows.
    """
    old_types = dict(old)
    items = [f"CAST({quote(old[0][0])} AS {new[0][1]}) AS {quote(new[0][0])}"]
    for name, kind in new[1:]:
        value = f"TRY_CAST({quote(name)} AS {kind})" if name in old_types else f"NULL::{kind}"
        items.append(f"{value} AS {quote(name)}")
    return ", ".join(items)


def _rebuild(con: duckdb.DuckDBPyConnection, table: str, columns: list[tuple[str, str]],
             existing: list[tuple[str, str]] | None, prune: bool) -> tuple[int, int, int]:
    """Replace the table by one with the incoming columns; return (inserted, updated, deleted).

    Unless pruning, the rows of images the table does not hold are carried over.
    """
    key = quote(columns[0][0])
    staging = f"{table}__rebuild"
    definition = ", ".join(f"{quote(name)} {kind}" for name, kind in columns)
    con.execute(f"DROP TABLE IF EXISTS {quote(staging)}")
    con.execute(f"CREATE TABLE {quote(staging)} ({definition}, PRIMARY KEY ({key}))")
    con.execute(f"INSERT INTO {quote(staging)} SELECT * FROM incoming")
    total = _count(con, "SELECT count(*) FROM incoming")
    if existing is None:
        con.execute(f"ALTER TABLE {quote(staging)} RENAME TO {quote(table)}")
        return total, 0, 0
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE old_rows AS SELECT "
                    f"{_carried_over(existing, columns)} FROM {quote(table)}")
    except duckdb.ConversionException as exc:
        raise WarehouseError(
            f"table {table!r} holds {existing[0][0]!r} values that the new key {columns[0][0]!r} "
            f"({columns[0][1]}) cannot hold ({str(exc).splitlines()[0]}). Load into a new "
            "table (warehouse.table), or set warehouse.prune to drop the rows the feature "
            "table does not hold") from exc
    kept = f"SELECT * FROM old_rows WHERE {key} NOT IN (SELECT {key} FROM incoming)"
    existed = _count(con, "SELECT count(*) FROM old_rows")
    left_out = _count(con, f"SELECT count(*) FROM ({kept})")
    if not prune:
        con.execute(f"INSERT INTO {quote(staging)} {kept}")
    con.execute("DROP TABLE old_rows")
    con.execute(f"DROP TABLE IF EXISTS {quote(table)}")
    con.execute(f"ALTER TABLE {quote(staging)} RENAME TO {quote(table)}")
    inserted = total - (existed - left_out)
    return inserted, total - inserted, left_out if prune else 0


HASH_COLUMNS = ("pixels_sha256", "phash")


def _rehashed(con: duckdb.DuckDBPyConnection, table: str, key: str,
              names: set[str]) -> int:
    """How many changed rows have other hashes than the warehouse's: only they (and removed
    rows) can split or move duplicate groups; new rows only join them."""
    if not set(HASH_COLUMNS) <= names:
        return 0
    differs = " OR ".join(f"c.{quote(n)} IS DISTINCT FROM t.{quote(n)}" for n in HASH_COLUMNS)
    return _count(con, f"SELECT count(*) FROM changed AS c JOIN {quote(table)} AS t "
                       f"ON c.{key} = t.{key} WHERE {differs}")


def _upsert(con: duckdb.DuckDBPyConnection, table: str, columns: list[tuple[str, str]],
            prune: bool) -> tuple[int, int, int, int]:
    """Write only new and changed rows (group labels aside: they are settled after), and
    delete rows the table does not hold when pruning; same columns both sides.

    Returns (inserted, updated, deleted, updated rows whose hashes changed).
    """
    target, key = quote(table), quote(columns[0][0])
    compared = ", ".join(quote(name) for name, _ in columns if name not in GROUP_COLUMNS)
    con.execute("CREATE OR REPLACE TEMP TABLE changed AS SELECT * FROM incoming WHERE "
                f"{key} IN (SELECT {key} FROM (SELECT {compared} FROM incoming EXCEPT "
                f"SELECT {compared} FROM {target}))")
    inserted = _count(con, f"SELECT count(*) FROM changed WHERE {key} NOT IN "
                           f"(SELECT {key} FROM {target})")
    updated = _count(con, "SELECT count(*) FROM changed") - inserted
    rehashed = _rehashed(con, table, key, {name for name, _ in columns})
    con.execute(f"INSERT OR REPLACE INTO {target} SELECT * FROM changed")
    deleted = 0
    if prune:
        deleted = _count(con, f"DELETE FROM {target} WHERE {key} NOT IN "
                              f"(SELECT {key} FROM incoming)")
    # ``changed`` is kept until the groups are settled: it says which rows are new or moved.
    return inserted, updated, deleted, rehashed


GROUPINGS = "thumbfeat_groupings"


def _grouped_with(con: duckdb.DuckDBPyConnection, table: str) -> int | None:
    """The near-duplicate distance the table's groups were last computed with, if recorded."""
    con.execute(f"CREATE TABLE IF NOT EXISTS {quote(GROUPINGS)} "
                "(table_name VARCHAR PRIMARY KEY, near_duplicate_distance INTEGER)")
    found = con.execute(f"SELECT near_duplicate_distance FROM {quote(GROUPINGS)} "
                        "WHERE table_name = ?", [table]).fetchall()
    return int(found[0][0]) if found else None


def _record_grouping(con: duckdb.DuckDBPyConnection, table: str, distance: int) -> None:
    con.execute(f"INSERT OR REPLACE INTO {quote(GROUPINGS)} VALUES (?, ?)", [table, distance])


def _copy_groups(con: duckdb.DuckDBPyConnection, table: str, key: str) -> None:
    """Take the table's own group labels, where they differ from the warehouse's."""
    exact, near = (quote(name) for name in GROUP_COLUMNS)
    con.execute(f"UPDATE {quote(table)} AS t SET {exact} = i.{exact}, {near} = i.{near} "
                f"FROM incoming AS i WHERE t.{key} = i.{key} AND "
                f"(t.{exact} IS DISTINCT FROM i.{exact} OR t.{near} IS DISTINCT FROM i.{near})")


def _regroup(con: duckdb.DuckDBPyConnection, table: str, columns: list[tuple[str, str]],
             near_duplicate_distance: int, *, table_rows: int, table_distance: int | None,
             rows_changed: bool, only_joined: bool) -> None:
    """Make the duplicate groups describe every row of the warehouse table, as the feature
    table's describe its own rows; only rows whose labels change are written.

    When the warehouse holds exactly the table's images and the table was grouped with this
    distance (pruning, or a selection that never shrank), the table's labels are taken as they
    are. Otherwise the groups are recomputed over all rows, unless no row changed and they were
    made with this distance. When rows were only added, or changed without new hashes, the
    earlier near-duplicate groups are extended with those rows' edges: the same result for a
    fraction of the work, as in the table's own assembly.
    """
    names = {name for name, _ in columns}
    if not {*GROUP_COLUMNS, *HASH_COLUMNS} <= names:
        return
    key = quote(columns[0][0])
    stored = _grouped_with(con, table)
    if (table_distance == near_duplicate_distance
            and _count(con, f"SELECT count(*) FROM {quote(table)}") == table_rows):
        _copy_groups(con, table, key)
        _record_grouping(con, table, near_duplicate_distance)
        return
    same_distance = stored == near_duplicate_distance
    if same_distance and not rows_changed:
        return
    exact, near = (quote(name) for name in GROUP_COLUMNS)
    extend = same_distance and only_joined
    added = (f"{key} IN (SELECT {key} FROM changed)" if extend else "false")
    current = _arrow(con, f"SELECT CAST({key} AS VARCHAR) AS id, pixels_sha256, phash, "
                          f"{near} AS near, {added} AS added FROM {quote(table)}")
    ids = current.column("id").to_pylist()
    phashes = current.column("phash").to_pylist()
    if extend:
        near_groups = extend_near_duplicate_groups(
            ids, phashes, near_duplicate_distance, current.column("near").to_pylist(),
            current.column("added").to_pylist())
    else:
        near_groups = near_duplicate_groups(ids, phashes, near_duplicate_distance)
    groups = pa.table({
        "id": ids,
        "exact": exact_duplicate_groups(ids, current.column("pixels_sha256").to_pylist()),
        "near": near_groups,
    }, schema=pa.schema([("id", pa.string()), ("exact", pa.string()), ("near", pa.string())]))
    con.register("regrouped", groups)
    try:
        con.execute(f"UPDATE {quote(table)} AS t SET {exact} = g.exact, {near} = g.near "
                    f"FROM regrouped AS g WHERE CAST(t.{key} AS VARCHAR) = g.id "
                    f"AND (t.{exact} IS DISTINCT FROM g.exact OR t.{near} IS DISTINCT FROM g.near)")
    finally:
        con.unregister("regrouped")
    _record_grouping(con, table, near_duplicate_distance)


_LOAD_COLUMNS = ("loaded_at TIMESTAMPTZ, source VARCHAR, source_digest VARCHAR, rows BIGINT, "
                 "inserted BIGINT, updated BIGINT, deleted BIGINT, unchanged BIGINT, "
                 "rebuilt BOOLEAN")


def _record(con: duckdb.DuckDBPyConnection, result: LoadResult) -> None:
    con.execute(f"CREATE TABLE IF NOT EXISTS {quote(LOADS)} ({_LOAD_COLUMNS})")
    # Added after the first release: warehouses made before have the other columns only.
    con.execute(f"ALTER TABLE {quote(LOADS)} ADD COLUMN IF NOT EXISTS from_files BIGINT")
    values = result.as_dict()
    names = ", ".join(quote(name) for name in values)
    con.execute(f"INSERT INTO {quote(LOADS)} ({names}) VALUES "
                f"({', '.join('?' for _ in values)})", list(values.values()))


def load_into(con: duckdb.DuckDBPyConnection, source: Path, *, table: str = TABLE,
              key: CatalogKey = TEXT_KEY, prune: bool = False,
              results: str | Path | None = None, tag: str | None = None,
              near_duplicate_distance: int = DEFAULT_MAX_DISTANCE) -> LoadResult:
    """Bring ``table`` in line with the Parquet file ``source`` in one transaction.

    With ``results`` (and without ``prune``), rows measured there from thumbnails of the settings
    ``tag`` that the warehouse lacks are loaded from their per-image files too.
    """
    if results is not None and tag is None:
        raise ValueError("rows on disk are read for one thumbnail settings tag: pass tag")
    digest = file_digest(source)
    con.execute("BEGIN TRANSACTION")
    try:
        _stage(con, source, key)
        existing = table_columns(con, table)
        from_files = 0 if prune or results is None or tag is None else _stage_files(
            con, results, tag, key, existing, table)
        columns = [(name, kind) for name, kind, *_ in con.execute("DESCRIBE incoming").fetchall()]
        rebuilt = existing != columns
        if rebuilt:
            inserted, updated, deleted = _rebuild(con, table, columns, existing, prune)
            rehashed = updated
        else:
            inserted, updated, deleted, rehashed = _upsert(con, table, columns, prune)
        _regroup(con, table, columns, near_duplicate_distance,
                 table_rows=_count(con, "SELECT count(*) FROM incoming") - from_files,
                 table_distance=grouped_distance(source),
                 rows_changed=rebuilt or bool(inserted or updated or deleted),
                 only_joined=not rebuilt and not rehashed and not deleted)
        con.execute("DROP TABLE IF EXISTS changed")
        rows = _count(con, "SELECT count(*) FROM incoming")
        result = LoadResult(
            loaded_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            source=str(source), source_digest=digest, rows=rows, inserted=inserted,
            updated=updated, deleted=deleted, unchanged=rows - inserted - updated,
            rebuilt=rebuilt and existing is not None, from_files=from_files,
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


def load_warehouse(source: str | Path, db_path: str | Path, *, table: str = TABLE,
                   key: CatalogKey = TEXT_KEY, prune: bool = False,
                   results: str | Path | None = None, tag: str | None = None,
                   near_duplicate_distance: int = DEFAULT_MAX_DISTANCE) -> LoadResult:
    """Load the feature table at ``source`` into ``db_path`` (created when missing)."""
    source, db_path = Path(source), Path(db_path)
    if not source.is_file():
        raise WarehouseError(f"{source}: the feature table to load does not exist")
    options = {"table": table, "key": key, "prune": prune, "results": results, "tag": tag,
               "near_duplicate_distance": near_duplicate_distance}
    if db_path.exists():
        con = _connect(db_path)
        try:
            return load_into(con, source, **options)  # type: ignore[arg-type]
        finally:
            con.close()
    # Leftovers of a first load that was killed: never a finished warehouse, safe to drop.
    for stale in db_path.parent.glob(f".{db_path.name}.*.tmp*"):
        stale.unlink(missing_ok=True)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(db_path, durable=True) as tmp:
        wal = Path(f"{tmp}.wal")
        try:
            con = _connect(tmp)
            try:
                result = load_into(con, source, **options)  # type: ignore[arg-type]
                con.execute("CHECKPOINT")
            finally:
                con.close()
        finally:
            # Checkpointed and closed, or failed: either way nothing in the log is needed.
            wal.unlink(missing_ok=True)
    return result


def load_and_log(source: str | Path, target: Target, *, results: str | Path, tag: str,
                 near_duplicate_distance: int, logger: logging.Logger) -> LoadResult:
    """Load the table into ``target`` and log what changed."""
    result = load_warehouse(source, target.path, table=target.table, key=target.key,
                            prune=target.prune, results=results, tag=tag,
                            near_duplicate_distance=near_duplicate_distance)
    logger.info("warehouse %s, table %s (key %s %s, %s): %d rows; %d inserted, %d updated, "
                "%d deleted, %d unchanged; %d rows read from per-image files%s", target.path,
                target.table, target.key.column, target.key.sql_type,
                "mirroring the table" if target.prune else "accumulating", result.rows,
                result.inserted, result.updated, result.deleted, result.unchanged,
                result.from_files, " (rebuilt for new columns)" if result.rebuilt else "")
    return result
