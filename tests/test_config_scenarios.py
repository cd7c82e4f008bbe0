"""End-to-end: settings and catalogs passed the ways users pass them, through real snakemake runs.

A setting means the same whether it comes from a --configfile or from --config, and every bad
catalog or config value ends in one message, never a Python traceback.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support import ImageServer, file_times, run_planned, run_snakemake, write_catalog

FAST = {"batch_size": "100", "local_file_roots": "[]"}
# flag and code cells: booleans spelled several ways, a blank, and codes with leading zeros.
CELLS = [("a", "true", "010"), ("b", "false", "8"), ("c", "", "10"), ("d", "yes", "010"),
         ("e", "1", "x"), ("f", "No", "8")]


def table_ids(workdir: Path) -> list[str]:
    table = pq.read_table(workdir / "results" / "feature_table.parquet", columns=["image_id"])
    return table.column("image_id").to_pylist()


def output_of(result: object) -> str:
    text = result.stdout + result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in text, text
    return text


def configfile(workdir: Path, name: str, text: str) -> str:
    path = workdir / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("written", "expected"), [
    ("{flag: true}", ["a", "d", "e"]),
    ("{flag: false}", ["b", "f"]),
    ("{flag: ''}", ["c"]),
    ("{code: 010}", ["a", "d"]),
    ("{code: [010, 8], flag: [yes, '']}", ["a", "d"]),
])
def test_a_filter_selects_the_same_rows_from_a_file_and_from_the_command_line(
        tmp_path: Path, server: ImageServer, written: str, expected: list[str]) -> None:
    catalog = write_catalog(tmp_path / "catalog.csv",
                            [(i, f"{server.base}/img/{i}.jpg", f, c) for i, f, c in CELLS],
                            header=("image_id", "url", "flag", "code"))
    settings = configfile(tmp_path, "my.yaml", f"catalog: {catalog}\nfilter: {written}\n")
    output_of(run_snakemake(tmp_path, "--configfile", settings, config=FAST))
    assert table_ids(tmp_path) == expected
    times = file_times(tmp_path / "results", "**/*")
    # The same words on the command line select the same rows: the table is up to date.
    again = run_snakemake(tmp_path, config={**FAST, "catalog": str(catalog), "filter": written})
    assert "Nothing to be done" in output_of(again)
    assert file_times(tmp_path / "results", "**/*") == times
    assert table_ids(tmp_path) == expected


def test_readme_filter_example_on_a_sqlite_catalog(tmp_path: Path, server: ImageServer) -> None:
    database = tmp_path / "catalog.sqlite"
    with contextlib.closing(sqlite3.connect(database)) as con, con:
        con.execute("CREATE TABLE dim_image (image_id INTEGER, url TEXT, vote_pool_flag BOOLEAN)")
        con.executemany("INSERT INTO dim_image VALUES (?, ?, ?)", [
            (7, f"{server.base}/img/7.jpg", True), (8, f"{server.base}/img/8.jpg", False),
            (9, f"{server.base}/img/9.jpg", True), (10, f"{server.base}/img/10.jpg", None)])
    for flag, expected in (("true", ["7", "9"]), ("false", ["8"])):
        command_line = {**FAST, "catalog": str(database),
                        "filter": f"{{vote_pool_flag: {flag}}}"}
        output_of(run_snakemake(tmp_path, config=command_line))
        assert table_ids(tmp_path) == expected
        settings = configfile(tmp_path, "my.yaml", f"catalog: {database}\n"
                                                   f"filter: {{vote_pool_flag: {flag}}}\n")
        again = run_snakemake(tmp_path, "--configfile", settings, config=FAST)
        assert "Nothing to be done" in output_of(again)
        assert table_ids(tmp_path) == expected


def test_whole_floats_are_integers_and_others_stop_before_any_work(
        tmp_path: Path, server: ImageServer) -> None:
    catalog = write_catalog(tmp_path / "catalog.csv",
                            [(f"i{n}", f"{server.base}/img/i{n}.jpg") for n in range(6)])
    config = {**FAST, "catalog": str(catalog)}
    output_of(run_snakemake(tmp_path, config=config))
    table = tmp_path / "results" / "feature_table.parquet"
    times = file_times(tmp_path / "results", "**/*")
    # 6.0 is the default 6: nothing to redo, nothing deleted.
    same = run_snakemake(tmp_path, config={**config, "near_duplicate_distance": "6.0"})
    assert "Nothing to be done" in output_of(same)
    settings = configfile(tmp_path, "floats.yaml", f"catalog: {catalog}\n"
                                                   "near_duplicate_distance: 6.0\n"
                                                   "download: {max_attempts: 3.0}\n")
    same = run_snakemake(tmp_path, "--configfile", settings, config=FAST)
    assert "Nothing to be done" in output_of(same)
    assert file_times(tmp_path / "results", "**/*") == times
    # A fractional value stops the run at parse time, every time, and the table stays.
    for _ in range(3):
        for value in ("6.5", "2.0e-1"):
            refused = run_snakemake(tmp_path, config={**config, "near_duplicate_distance": value},
                                    check=False)
            assert refused.returncode != 0
            assert "config key 'near_duplicate_distance': value" in output_of(refused)
            assert "thumbfeat plan" not in refused.stdout + refused.stderr
        assert file_times(tmp_path / "results", "**/*") == times
    assert len(table_ids(tmp_path)) == 6
    assert table.exists()
    # A whole batch_size given as a float plans batches of that size.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _, plan = run_planned(fresh, "-n", config={**config, "batch_size": "2.0"})
    assert [b["fetch"] for b in plan["batches"]] == [2, 2, 2]


def parquet_with_nested_columns(path: Path, server: ImageServer) -> Path:
    pq.write_table(pa.table({
        "image_id": ["p1", "p2"],
        "url": [f"{server.base}/img/p1.jpg", f"{server.base}/img/p2.jpg"],
        "tags": pa.array([["x"], []], type=pa.list_(pa.string())),
        "size": pa.array([{"w": 1, "h": 2}, {"w": 3, "h": 4}]),
        "raw": pa.array([b"\x00", b"\xff"], type=pa.binary()),
    }), path)
    return path


def test_a_parquet_catalog_with_list_struct_and_binary_columns_is_read(
        tmp_path: Path, server: ImageServer) -> None:
    catalog = parquet_with_nested_columns(tmp_path / "catalog.parquet", server)
    output_of(run_snakemake(tmp_path, config={**FAST, "catalog": str(catalog)}))
    assert table_ids(tmp_path) == ["p1", "p2"]


@pytest.mark.parametrize(("text", "message"), [
    ("image_id,url,url\na,http://x/a.jpg,http://x/b.jpg\n",
     "line 1: the column 'url' appears 2 times (columns 2, 3)"),
    ("image_id,url,size\na,http://x/a.jpg,1\n\nb,http://x/b.jpg\n",
     "line 4 has 2 fields, the header has 3"),
    ("image_id,url\na,http://x/a.jpg\n\n\n../b,http://x/b.jpg\n",
     "line 5: image id '../b' is not a safe file name"),
    ('image_id,url,note\na,http://x/a.jpg,"two\nlines"\n-b,http://x/b.jpg,x\n',
     "line 4: image id '-b' is not a safe file name"),
    ("image_id,url,flag\na,http://x/a.jpg,\n", "the row filter names column 'keep'"),
    ("image_id,url,flag\na,http://x/a.jpg,\n", "selects no images after the row filter"),
])
def test_bad_catalogs_get_one_message_naming_file_and_line(tmp_path: Path, text: str,
                                                           message: str) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(text)
    row_filter = ("{keep: true}" if "'keep'" in message
                  else "{flag: false}" if "row filter" in message else "{}")
    result = run_snakemake(tmp_path, config={**FAST, "catalog": str(catalog),
                                             "filter": row_filter}, check=False)
    output = output_of(result)
    assert result.returncode != 0
    assert message in output and str(catalog) in output, output
    assert not (tmp_path / "results").exists()


def test_config_by_section_as_readme_shows(tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "catalog.csv", [("a", "http://127.0.0.1:9/a.jpg")])
    base = {**FAST, "catalog": str(catalog)}
    # A section on the command line: a YAML mapping, merged into the defaults key by key.
    refused = run_snakemake(tmp_path, "-n", config={**base, "download": "{max_attempts: 0}"},
                            check=False)
    assert "config key 'download.max_attempts': value 0 is not allowed" in output_of(refused)
    planned, plan = run_planned(tmp_path, "-n", config={
        **base, "download": "{max_attempts: 3, read_timeout: 2}",
        "warehouse": "{enabled: false}", "report": "{sheet_images: 10}"})
    output = output_of(planned)
    assert plan["catalog_images"] == 1
    assert "Job stats:" in output
    assert "rule warehouse" not in output and "warehouse.load.json" not in output
    enabled = output_of(run_snakemake(tmp_path, "-n", config=base))
    assert "rule warehouse" in enabled


def test_file_urls_outside_the_roots_are_warned_about_before_the_run(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "elsewhere.jpg").write_bytes(b"x")
    catalog = write_catalog(tmp_path / "catalog.csv", [
        ("inside", (images / "a.jpg").as_uri()),
        ("outside", (tmp_path / "elsewhere.jpg").as_uri())])
    result = run_snakemake(tmp_path, "-n", config={
        "catalog": str(catalog), "local_file_roots": f"[{images}]"})
    output = output_of(result)
    assert "image 'outside': file is outside the allowed local_file_roots" in output
    assert "image 'inside'" not in output
