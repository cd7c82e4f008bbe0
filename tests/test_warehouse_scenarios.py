"""End-to-end scenarios for the warehouse and database catalogs: real snakemake, real DuckDB and
SQLite files, images from a loopback server."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml
from thumbfeat.warehouse import Target, file_digest

from tests.support import ImageServer, image_rows, run_snakemake, write_catalog

FAST = {"batch_size": "100", "local_file_roots": "[]"}
TABLE = "feature_image_visual"


def warehouse_rows(workdir: Path) -> list[tuple[object, ...]]:
    with duckdb.connect(str(workdir / "results" / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(f"SELECT image_id, status FROM {TABLE} ORDER BY image_id").fetchall()


def disagreements(workdir: Path) -> tuple[int, int]:
    """Rows only in feature_table.parquet, and only in the warehouse table, all columns compared."""
    table = workdir / "results" / "feature_table.parquet"
    columns = ", ".join(f'"{c}"' for c in pq.read_schema(table).names)
    parquet = f"(SELECT {columns} FROM read_parquet('{table}'))"
    loaded = f"(SELECT {columns} FROM {TABLE})"
    with duckdb.connect(str(workdir / "results" / "warehouse.duckdb"), read_only=True) as con:
        counts = [con.execute(f"SELECT count(*) FROM ({a} EXCEPT ALL {b})").fetchone()
                  for a, b in ((parquet, loaded), (loaded, parquet))]
        assert con.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == con.execute(
            f"SELECT count(*) FROM read_parquet('{table}')").fetchone()
    return counts[0][0], counts[1][0]  # type: ignore[index]


def missing_from_warehouse(workdir: Path) -> int:
    """Rows of feature_table.parquet the warehouse does not hold as they are (all columns)."""
    table = workdir / "results" / "feature_table.parquet"
    columns = ", ".join(f'"{c}"' for c in pq.read_schema(table).names)
    with duckdb.connect(str(workdir / "results" / "warehouse.duckdb"), read_only=True) as con:
        row = con.execute(f"SELECT count(*) FROM (SELECT {columns} FROM read_parquet('{table}') "
                          f"EXCEPT ALL SELECT {columns} FROM {TABLE})").fetchone()
    assert row is not None
    return int(row[0])


def loads(workdir: Path) -> list[tuple[object, ...]]:
    with duckdb.connect(str(workdir / "results" / "warehouse.duckdb"), read_only=True) as con:
        return con.execute("SELECT rows, inserted, updated, deleted, unchanged "
                           "FROM thumbfeat_loads ORDER BY loaded_at").fetchall()


def test_warehouse_follows_reruns_and_catalog_changes(tmp_path: Path,
                                                      server: ImageServer) -> None:
    names = [f"w{i:03d}" for i in range(40)]
    rows = [*image_rows(server, names[:30]), ("lost", f"{server.base}/missing/lost.jpg")]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    config = {**FAST, "catalog": str(catalog)}

    run_snakemake(tmp_path, config=config)
    got = warehouse_rows(tmp_path)
    assert [r[0] for r in got] == sorted([*names[:30], "lost"])
    assert dict(got)["lost"] == "failed"
    assert disagreements(tmp_path) == (0, 0)

    # Running again does nothing; forcing the load again keeps one row per image.
    again = run_snakemake(tmp_path, config=config)
    assert "Nothing to be done" in again.stdout + again.stderr
    run_snakemake(tmp_path, "--forcerun", "warehouse", config=config)
    assert warehouse_rows(tmp_path) == got
    assert loads(tmp_path) == [(31, 31, 0, 0, 0), (31, 0, 0, 0, 31)]

    # A table of the user's own in the warehouse survives every load.
    with duckdb.connect(str(tmp_path / "results" / "warehouse.duckdb")) as con:
        con.execute("CREATE TABLE my_notes AS SELECT 'w001' AS image_id, 'nice' AS note")

    # The catalog changes: five images leave, ten arrive, and the failed image gets a URL that
    # works (retried on request): its row is replaced. The five that left stay in the warehouse.
    rows = [*image_rows(server, names[5:]), ("lost", f"{server.base}/img/lost.jpg")]
    write_catalog(catalog, rows)
    run_snakemake(tmp_path, config={**config, "retry_failed": "true"})
    got = warehouse_rows(tmp_path)
    assert [r[0] for r in got] == sorted([*names, "lost"])
    assert {status for _, status in got} == {"ok"}
    assert missing_from_warehouse(tmp_path) == 0
    assert loads(tmp_path)[-1] == (36, 10, 1, 0, 25)
    with duckdb.connect(str(tmp_path / "results" / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT note FROM my_notes").fetchall() == [("nice",)]

    # Pruning mirrors the table: a run with prune set loads again (another receipt) and deletes
    # the five; switching back to accumulating brings them back from their files on disk.
    pruning = {**config, "warehouse": "{prune: true}"}
    run_snakemake(tmp_path, config=pruning)
    assert [r[0] for r in warehouse_rows(tmp_path)] == sorted([*names[5:], "lost"])
    assert disagreements(tmp_path) == (0, 0)
    assert loads(tmp_path)[-1] == (36, 0, 0, 5, 36)
    run_snakemake(tmp_path, config=config)
    assert warehouse_rows(tmp_path) == got

    # A deleted warehouse is built again by a plain run, from the table and the rows on disk;
    # pruning, from the table alone. Three times over.
    for settings, expected in ((config, got), (pruning, got[:1] + got[6:]),
                               (config, got)):
        (tmp_path / "results" / "warehouse.duckdb").unlink()
        run_snakemake(tmp_path, config=settings)
        assert warehouse_rows(tmp_path) == expected
        assert missing_from_warehouse(tmp_path) == 0


def dim_image(kind: str, path: Path, server: ImageServer) -> Path:
    """A dimension table as a data team keeps it: integer ids, a pool flag, other columns."""
    rows = [(i, f"{server.base}/img/d{i}.jpg", i % 4 != 0, f"note {i}") for i in range(1, 13)]
    rows.append((99, f"{server.base}/missing/d99.jpg", True, "broken"))
    schema = ("CREATE TABLE dim_image (image_id INTEGER PRIMARY KEY, url TEXT, "
              "vote_pool_flag BOOLEAN, note TEXT)")
    if kind == "sqlite":
        with contextlib.closing(sqlite3.connect(path)) as con, con:
            con.execute(schema)
            con.executemany("INSERT INTO dim_image VALUES (?, ?, ?, ?)", rows)
    else:
        with duckdb.connect(str(path)) as con:
            con.execute(schema)
            con.executemany("INSERT INTO dim_image VALUES (?, ?, ?, ?)", rows)
    return path


def execute(path: Path, sql: str) -> list[tuple[object, ...]]:
    if path.suffix == ".sqlite":
        with contextlib.closing(sqlite3.connect(path)) as con, con:
            return con.execute(sql).fetchall()
    with duckdb.connect(str(path)) as con:
        return con.execute(sql).fetchall()


@pytest.mark.parametrize("kind", ["sqlite", "duckdb"])
def test_database_catalog_with_query_and_write_back(tmp_path: Path, server: ImageServer,
                                                    kind: str) -> None:
    database = dim_image(kind, tmp_path / f"catalog.{kind}", server)
    settings = tmp_path / "db.yaml"
    settings.write_text(yaml.safe_dump({
        "catalog": str(database),
        "catalog_query": "SELECT image_id, url FROM dim_image WHERE vote_pool_flag",
        "catalog_write_back": True,
        "download": {"max_attempts": 1},
    }))
    options = ["--configfile", str(settings)]

    run_snakemake(tmp_path, *options, config=FAST)
    # The warehouse key keeps the catalog key's integer type.
    pool = sorted([*(i for i in range(1, 13) if i % 4 != 0), 99])
    assert [r[0] for r in warehouse_rows(tmp_path)] == pool
    assert disagreements(tmp_path) == (0, 0)
    flags = dict(execute(database, "SELECT image_id, thumb_downloaded FROM dim_image"))
    expected = {i: (None if i % 4 == 0 else True) for i in range(1, 13)}
    assert {i: None if v is None else bool(v) for i, v in flags.items()} == {**expected, 99: False}
    assert execute(database, "SELECT note FROM dim_image WHERE image_id = 5") == [("note 5",)]

    again = run_snakemake(tmp_path, *options, config=FAST)
    assert "Nothing to be done" in again.stdout + again.stderr

    # Image 4 joins the pool in the database: the next run fetches it, loads it, flags it.
    execute(database, "UPDATE dim_image SET vote_pool_flag = TRUE WHERE image_id = 4")
    before = server.total()
    run_snakemake(tmp_path, *options, config=FAST)
    assert server.total() - before == 1
    assert 4 in {r[0] for r in warehouse_rows(tmp_path)}
    assert disagreements(tmp_path) == (0, 0)
    assert execute(database, "SELECT thumb_downloaded FROM dim_image WHERE image_id = 4") in (
        [(True,)], [(1,)])


def test_warehouse_can_be_turned_off(tmp_path: Path, server: ImageServer) -> None:
    catalog = write_catalog(tmp_path / "catalog.csv", image_rows(server, ["a", "b"]))
    run_snakemake(tmp_path, config={**FAST, "catalog": str(catalog),
                                    "warehouse": "{enabled: false}"})
    assert (tmp_path / "results" / "feature_table.parquet").exists()
    assert not (tmp_path / "results" / "warehouse.duckdb").exists()


def test_write_back_needs_a_database_catalog(tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "catalog.csv", [("a", "http://127.0.0.1:9/a.jpg")])
    result = run_snakemake(tmp_path, config={**FAST, "catalog": str(catalog),
                                             "catalog_write_back": "true"}, check=False)
    assert result.returncode != 0
    assert "'catalog_write_back' applies to database catalogs" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def table_equals_warehouse(workdir: Path, database: Path, table: str = TABLE) -> bool:
    """The warehouse table holds exactly the rows of feature_table.parquet, every column."""
    parquet = workdir / "results" / "feature_table.parquet"
    columns = ", ".join(f'"{c}"' for c in pq.read_schema(parquet).names)
    with duckdb.connect(str(database), read_only=True) as con:
        source = f"SELECT {columns} FROM read_parquet('{parquet}')"
        loaded = f"SELECT {columns} FROM {table}"
        one = con.execute(f"SELECT count(*) FROM ({source} EXCEPT ALL {loaded})").fetchone()
        two = con.execute(f"SELECT count(*) FROM ({loaded} EXCEPT ALL {source})").fetchone()
    return one == two == (0,)


def test_switching_warehouses_never_leaves_one_stale(tmp_path: Path, server: ImageServer) -> None:
    names = [f"s{i:03d}" for i in range(32)]
    first = write_catalog(tmp_path / "first.csv", image_rows(server, names[:26]))
    # The second catalog is smaller, and 6 of its images are new.
    second = write_catalog(tmp_path / "second.csv", image_rows(server, names[12:]))
    default = tmp_path / "results" / "warehouse.duckdb"
    elsewhere = tmp_path / "elsewhere.duckdb"

    def run(catalog: Path, **warehouse: object) -> None:
        settings = tmp_path / "switch.yaml"
        settings.write_text(yaml.safe_dump({"catalog": str(catalog),
                                            "warehouse": {"prune": True, **warehouse}}))
        run_snakemake(tmp_path, "--configfile", str(settings), config=FAST)

    # Mirroring warehouses: each switch back leaves the default one equal to the table. Twice
    # over, the second time with the catalogs the other way round.
    for catalog, other in ((first, second), (second, first)):
        run(catalog)
        assert table_equals_warehouse(tmp_path, default)
        run(other, path=str(elsewhere))
        assert table_equals_warehouse(tmp_path, elsewhere)
        run(other)
        assert table_equals_warehouse(tmp_path, default)

    # The receipt names the warehouse it describes and the table it loaded.
    receipt_path = tmp_path / Target(str(default), prune=True).receipt_path("results")
    receipt = json.loads(receipt_path.read_text())
    assert receipt["database"] == str(default.resolve())
    assert (receipt["table"], receipt["key"], receipt["prune"]) == (TABLE, "image_id", True)
    assert receipt["source_digest"] == file_digest(tmp_path / "results" / "feature_table.parquet")

    # A new table name creates that table, equal to the feature table, and leaves the other;
    # back to the first name, that table is loaded again.
    run(second, table="features_v2")
    assert table_equals_warehouse(tmp_path, default, "features_v2")
    assert table_equals_warehouse(tmp_path, default) is False
    run(second)
    assert table_equals_warehouse(tmp_path, default)

    # Accumulating again: the default warehouse holds every image measured, the table's rows
    # among them as they are.
    run(second, prune=False)
    assert missing_from_warehouse(tmp_path) == 0
    assert [r[0] for r in warehouse_rows(tmp_path)] == names
