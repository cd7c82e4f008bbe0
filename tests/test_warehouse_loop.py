"""The loop a data team runs against its own database: select what is left to do, fetch it, flag it
done, accumulate the features. Real snakemake, real DuckDB and SQLite files, a loopback server
that counts requests, kill -9 in the middle of a run."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import duckdb
import pytest
import yaml
from thumbfeat import layout
from thumbfeat.batch import images_held

from tests.support import TAG, ImageServer, run_snakemake, snakemake_command

FAST = {"batch_size": "100", "local_file_roots": "[]"}
TABLE = "feature_image_visual"
LOOP_QUERY = "SELECT * FROM dim_image WHERE vote_pool_flag AND NOT thumb_downloaded"
ALIASED_QUERY = ("SELECT source_image_id AS image_id, thumb_url AS url FROM dim_image "
                 "WHERE vote_pool_flag AND NOT thumb_downloaded")


def dim_rows(server: ImageServer, first: int, count: int, *,
             broken_below: int = 10) -> list[tuple[object, ...]]:
    """Rows of dim_image: 3 in 5 in the pool; pool rows numbered below ``broken_below`` answer
    404 (6 of the first 100 rows)."""
    rows = []
    for number in range(first, first + count):
        pool = number % 5 < 3
        broken = pool and number < broken_below
        kind = "missing" if broken else "img"
        rows.append((10_000 + number, f"{server.base}/{kind}/s{number}.jpg", pool, False))
    return rows


def add_rows(path: Path, rows: list[tuple[object, ...]]) -> None:
    schema = ("CREATE TABLE IF NOT EXISTS dim_image (source_image_id BIGINT PRIMARY KEY, "
              "thumb_url TEXT, vote_pool_flag BOOLEAN, thumb_downloaded BOOLEAN)")
    insert = "INSERT INTO dim_image VALUES (?, ?, ?, ?)"
    if path.suffix == ".sqlite":
        with contextlib.closing(sqlite3.connect(path)) as con, con:
            con.execute(schema)
            con.executemany(insert, rows)
    else:
        with duckdb.connect(str(path)) as con:
            con.execute(schema)
            con.executemany(insert, rows)


def execute(path: Path, sql: str) -> list[tuple[object, ...]]:
    if path.suffix == ".sqlite":
        with contextlib.closing(sqlite3.connect(path)) as con:
            return con.execute(sql).fetchall()
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql).fetchall()


def flagged(path: Path) -> set[int]:
    return {row[0] for row in execute(
        path, "SELECT source_image_id FROM dim_image WHERE thumb_downloaded")}


def pool(path: Path) -> set[int]:
    return {row[0] for row in execute(
        path, "SELECT source_image_id FROM dim_image WHERE vote_pool_flag")}


def warehouse_of(workdir: Path, database: Path) -> Path:
    """The seed keeps both tables in one DuckDB file; a SQLite catalog has its own warehouse."""
    return database if database.suffix == ".duckdb" else workdir / "results" / "warehouse.duckdb"


def statuses(warehouse: Path) -> dict[object, str]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute(f"SELECT source_image_id, status FROM {TABLE}").fetchall()
        distinct = con.execute(f"SELECT count(DISTINCT source_image_id) FROM {TABLE}").fetchone()
    assert distinct == (len(rows),), "a row is doubled"
    return dict(rows)


def loop_config(workdir: Path, database: Path, *, concurrency: int = 8) -> list[str]:
    settings: dict[str, object] = {
        "catalog": str(database),
        "id_column": "source_image_id",
        "url_column": "thumb_url",
        "catalog_query": LOOP_QUERY,
        "catalog_write_back": True,
        "download": {"max_attempts": 1, "concurrency": concurrency},
    }
    if database.suffix == ".duckdb":
        settings["warehouse"] = {"path": str(database)}
    path = workdir / "loop.yaml"
    path.write_text(yaml.safe_dump(settings))
    return ["--configfile", str(path)]


def new_thumbs(results: Path, ids: list[int]) -> int:
    return sum(os.path.exists(layout.thumb_path(results, str(i), TAG)) for i in ids)


def killed_run(workdir: Path, options: list[str], results: Path, ids: list[int],
               at_least: int) -> None:
    """Start a run, kill -9 its whole process group once ``at_least`` of ``ids`` are fetched."""
    command = snakemake_command(workdir, *options, config=FAST)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while new_thumbs(results, ids) < at_least:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    time.sleep(0.5)  # nothing reaps the job processes' children after SIGKILL
    run_snakemake(workdir, "--unlock", *options, config=FAST)


def same_rows(left: Path, right: Path) -> tuple[int, int]:
    """Rows only in one warehouse table or only in the other, every column compared."""
    with duckdb.connect(str(left), read_only=True) as con:
        con.execute(f"ATTACH '{right}' AS other (READ_ONLY)")
        counts = [con.execute(f"SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL "
                              f"SELECT * FROM {b})").fetchone()
                  for a, b in ((f"main.{TABLE}", f"other.{TABLE}"),
                               (f"other.{TABLE}", f"main.{TABLE}"))]
    return counts[0][0], counts[1][0]  # type: ignore[index]


@pytest.mark.parametrize("kind", ["duckdb", "sqlite"])
def test_the_seed_loop_accumulates(tmp_path: Path, kind: str) -> None:
    server = ImageServer().start()
    try:
        run_loop(tmp_path, server, kind)
    finally:
        server.stop()


def run_loop(tmp_path: Path, server: ImageServer, kind: str) -> None:
    work = tmp_path / "loop"
    work.mkdir()
    database = work / f"catalog.{kind}"
    results = work / "results"
    add_rows(database, dim_rows(server, 0, 100))
    options = loop_config(work, database)
    assert len(pool(database)) == 60

    # Run 1: the 60 pool images are fetched, 6 of them answer 404.
    run_snakemake(work, *options, config=FAST)
    assert server.total() == 60
    warehouse = warehouse_of(work, database)
    got = statuses(warehouse)
    assert len(got) == 60 and sorted(got.values()).count("ok") == 54
    assert len(flagged(database)) == 54 and flagged(database) <= pool(database)
    if kind == "duckdb":
        # One database holds both tables; the integer key joins without a cast.
        assert execute(database, f"SELECT count(*) FROM dim_image JOIN {TABLE} "
                                 "USING (source_image_id) WHERE status = 'ok'") == [(54,)]
        assert execute(database, "SELECT data_type FROM information_schema.columns WHERE "
                                 f"table_name = '{TABLE}' AND column_name = 'source_image_id'"
                       ) == [("BIGINT",)]

    # Run 2, nothing changed: the query returns the 6 failed images; nothing is fetched and
    # nothing finished leaves the warehouse.
    before = server.total()
    run_snakemake(work, *options, config=FAST)
    assert server.total() == before
    assert statuses(warehouse) == got
    assert len(flagged(database)) == 54

    # Run 3: 20 new pool rows (every one of them works).
    added = [row for row in dim_rows(server, 100, 40) if row[2]][:20]
    add_rows(database, added)
    before = server.total()
    run_snakemake(work, *options, config=FAST)
    assert server.total() - before == 20
    got = statuses(warehouse)
    assert sorted(got.values()).count("ok") == 74 and len(got) == 80
    assert len(flagged(database)) == 74 and flagged(database) <= pool(database)

    # Run 4: 20 more pool rows, fetched slowly; the run is killed with kill -9 three times,
    # then completes.
    more = [row for row in dim_rows(server, 200, 40) if row[2]][:20]
    add_rows(database, more)
    ids = [int(str(row[0])) for row in more]
    slow = loop_config(work, database, concurrency=2)
    server.delay = 0.25
    before = server.snapshot()
    for at_least in (3, 8, 13):
        killed_run(work, slow, results, ids, at_least)
    server.delay = 0.0
    run_snakemake(work, *slow, config=FAST)
    fetched = server.snapshot() - before
    assert {path.rsplit("/", 1)[-1] for path in fetched} == {f"s{i - 10_000}.jpg" for i in ids}
    # Only images the killed job held unstored are fetched again: the downloads in flight and
    # those fetched but still waiting for its measuring process (one job of one process).
    assert sum(fetched.values()) <= 20 + 3 * images_held(2, 1)
    got = statuses(warehouse)
    assert sorted(got.values()).count("ok") == 94 and len(got) == 100
    assert len(flagged(database)) == 94 and flagged(database) <= pool(database)
    again = server.total()
    run_snakemake(work, *options, config=FAST)
    assert server.total() == again and statuses(warehouse) == got

    # The same rows, fetched in one run of the same query, give the same warehouse.
    once = tmp_path / "once"
    once.mkdir()
    single = once / f"catalog.{kind}"
    add_rows(single, [(*row[:3], False) for row in execute(
        database, "SELECT source_image_id, thumb_url, vote_pool_flag FROM dim_image")])
    run_snakemake(once, *loop_config(once, single), config=FAST)
    assert same_rows(warehouse, warehouse_of(once, single)) == (0, 0)
    assert flagged(single) == flagged(database)


@pytest.mark.parametrize("kind", ["duckdb", "sqlite"])
def test_an_aliased_id_column_needs_catalog_key(tmp_path: Path, server: ImageServer,
                                                kind: str) -> None:
    database = tmp_path / f"catalog.{kind}"
    add_rows(database, dim_rows(server, 0, 20, broken_below=1))
    settings = {"catalog": str(database), "catalog_query": ALIASED_QUERY,
                "catalog_write_back": True, "download": {"max_attempts": 1}}
    path = tmp_path / "aliased.yaml"
    path.write_text(yaml.safe_dump(settings))

    # Without catalog_key the write-back could not find its rows: refused before any request.
    refused = run_snakemake(tmp_path, "--configfile", str(path), config=FAST, check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "set catalog_key to the column of 'dim_image'" in output
    assert "Traceback" not in output
    assert server.total() == 0 and not (tmp_path / "results" / layout.THUMBS).exists()

    # With it, the run completes and the flags land; the next run has nothing left to fetch.
    path.write_text(yaml.safe_dump({**settings, "catalog_key": "source_image_id"}))
    run_snakemake(tmp_path, "--configfile", str(path), config=FAST)
    assert server.total() == 12
    assert len(flagged(database)) == 11 and flagged(database) <= pool(database)
    with duckdb.connect(str(tmp_path / "results" / "warehouse.duckdb"), read_only=True) as con:
        keys = con.execute(f"SELECT source_image_id FROM {TABLE}").fetchall()
    assert {k for (k,) in keys} == pool(database)
    run_snakemake(tmp_path, "--configfile", str(path), config=FAST)
    assert server.total() == 12
