"""End-to-end: Make-style rebuilds when an image's inputs change, with real snakemake against a
loopback server that counts requests. Each dry run's numbers are compared with the work done."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from thumbfeat import atomic, layout
from thumbfeat.features import FEATURE_VERSION
from thumbfeat.rows import ROW_SCHEMA
from thumbfeat.urls import recorded_url

from tests.support import (
    TAG,
    ImageServer,
    file_times,
    image_rows,
    plan_of,
    run_planned,
    run_snakemake,
    write_catalog,
)

FAST = {"batch_size": "100", "local_file_roots": "[]"}
NAMES = [f"r{i:03d}" for i in range(300)]
# The per-image files of the default thumbnail settings (glob patterns under results/).
THUMBS = f"{layout.THUMBS}/{TAG}/*/*"
ROWS = f"{layout.FEATURES}/{TAG}/*/*"
SCORES = ("dark_score", "light_score", "blurriness_score", "low_information_score",
          "odd_aspect_score")


def preview(document: dict[str, Any]) -> dict[str, object]:
    """The counts of a plan document, with what the fetch and measure counts include."""
    fetch, measure = document["fetch"], document["measure"]
    return {"fetch": fetch["images"], "changed_url": fetch["changed_url"],
            "refetch": fetch["forced"], "measure": measure["images"],
            "other_version": (measure["other_version"], measure["other_versions"],
                              measure["feature_version"]),
            "remeasure": measure["forced"], "kept": document["failures"]["kept"],
            "retry": document["failures"]["retried"], "quarantine": document["quarantine"]}


def written(before: dict[str, int], after: dict[str, int]) -> set[str]:
    """Ids whose per-image file is new or rewritten."""
    return {Path(p).name.split(".")[0] for p, t in after.items() if before.get(p) != t}


@pytest.fixture
def workdir(tmp_path: Path, server: ImageServer) -> Path:
    """A finished 300-image run."""
    write_catalog(tmp_path / "catalog.csv", image_rows(server, NAMES))
    run_snakemake(tmp_path, config=config_of(tmp_path))
    # At least one request per image (a loaded machine can drop a connection, which is retried).
    assert server.total() >= 300
    return tmp_path


def config_of(workdir: Path, **extra: str) -> dict[str, str]:
    return {**FAST, "catalog": str(workdir / "catalog.csv"), **extra}


def results_of(workdir: Path) -> Path:
    return workdir / "results"


def rewrite_as_older_version(results: Path, names: list[str]) -> None:
    """Rewrite rows as an older thumbfeat wrote them (version 2, without the version-3 columns),
    atomically as thumbfeat writes every file."""
    for name in names:
        path = layout.feature_path(results, name, TAG)
        table = pq.read_table(path, schema=ROW_SCHEMA).drop_columns(list(SCORES))
        older = table.set_column(table.schema.get_field_index("feature_version"),
                                 "feature_version", pa.array(["2"], pa.string()))
        atomic.write_with(path, lambda tmp, rows=older: pq.write_table(rows, tmp))


def repoint(workdir: Path, server: ImageServer, moved: dict[str, str]) -> None:
    """Point some images at other URLs (other names on the same server)."""
    rows = [(n, f"{server.base}/img/{moved.get(n, n)}.jpg") for n in NAMES]
    write_catalog(workdir / "catalog.csv", rows)


def test_older_feature_versions_are_measured_again_without_a_request(
        workdir: Path, server: ImageServer) -> None:
    results = results_of(workdir)
    config = config_of(workdir)
    for round_number in range(3):
        stale = NAMES[round_number * 25 : round_number * 25 + 25]
        rewrite_as_older_version(results, stale)
        rows_before = file_times(results, ROWS)
        requests = server.total()
        shown = preview(plan_of(workdir, config=config))
        assert shown["fetch"] == 0
        assert shown["measure"] == 25
        assert shown["other_version"] == (25, ["2"], FEATURE_VERSION)
        run_snakemake(workdir, config=config)
        assert server.total() == requests
        assert written(rows_before, file_times(results, ROWS)) == set(stale)
        table = pq.read_table(results / "feature_table.parquet").to_pylist()
        assert [r["image_id"] for r in table] == NAMES
        assert {r["feature_version"] for r in table} == {FEATURE_VERSION}
        assert all(r[score] is not None for r in table for score in SCORES)
        with duckdb.connect(str(results / "warehouse.duckdb"), read_only=True) as con:
            nulls = con.execute("SELECT count(*) FROM feature_image_visual WHERE "
                                + " OR ".join(f"{s} IS NULL" for s in SCORES)).fetchone()
            count = con.execute("SELECT count(*) FROM feature_image_visual").fetchone()
        assert (nulls, count) == ((0,), (300,))


def test_changed_urls_are_fetched_again(workdir: Path, server: ImageServer) -> None:
    results = results_of(workdir)
    config = config_of(workdir)
    moved: dict[str, str] = {}
    for round_number in range(3):
        changed = NAMES[10 + round_number * 3 : 13 + round_number * 3]
        moved.update({n: f"moved{round_number}-{n}" for n in changed})
        repoint(workdir, server, moved)
        shown = preview(plan_of(workdir, config=config))
        assert (shown["fetch"], shown["measure"]) == (3, 3)
        assert (shown["changed_url"], shown["refetch"]) == (3, False)
        before = server.snapshot()
        thumbs_before = file_times(results, THUMBS)
        run_snakemake(workdir, config=config)
        delta = server.snapshot() - before
        assert delta == {f"/img/{moved[n]}.jpg": 1 for n in changed}
        assert written(thumbs_before, file_times(results, THUMBS)) == set(changed)
        table = {r["image_id"]: r for r in
                 pq.read_table(results / "feature_table.parquet").to_pylist()}
        assert {table[n]["source_url"] for n in changed} == {
            recorded_url(f"{server.base}/img/{moved[n]}.jpg") for n in changed}
        # Nothing is left: the next run fetches nothing.
        assert preview(plan_of(workdir, config=config))["fetch"] == 0


def test_a_changed_url_retries_a_failed_image(workdir: Path, server: ImageServer) -> None:
    config = config_of(workdir)
    for round_number in range(3):
        name = NAMES[100 + round_number]
        rows = [(n, f"{server.base}/img/{n}.jpg") for n in NAMES]
        rows[100 + round_number] = (name, f"{server.base}/missing/{name}.jpg")
        write_catalog(workdir / "catalog.csv", rows)
        run_snakemake(workdir, config=config)
        assert pq.read_table(results_of(workdir) / "feature_table.parquet").to_pylist()[
            100 + round_number]["status"] == "failed"
        # Failed for good (404) and kept as failed, until its URL is fixed.
        write_catalog(workdir / "catalog.csv", image_rows(server, NAMES))
        shown = preview(plan_of(workdir, config=config))
        assert (shown["fetch"], shown["retry"]) == (1, 1)
        before = server.snapshot()
        run_snakemake(workdir, config=config)
        assert server.snapshot() - before == {f"/img/{name}.jpg": 1}
        table = pq.read_table(results_of(workdir) / "feature_table.parquet").to_pylist()
        assert table[100 + round_number]["status"] == "ok"


def test_damaged_files_are_quarantined_and_built_again(workdir: Path,
                                                       server: ImageServer) -> None:
    results = results_of(workdir)
    config = config_of(workdir)
    for round_number in range(3):
        cut, overwritten = NAMES[200 + round_number], NAMES[250 + round_number]
        row_path = Path(layout.feature_path(results, cut, TAG))
        with open(row_path, "r+b") as handle:
            handle.truncate(100)
        thumb_path = Path(layout.thumb_path(results, overwritten, TAG))
        thumb_path.write_text("this is not an image\n")
        (results / "feature_table.parquet").unlink()

        before = server.snapshot()
        files_before = file_times(workdir, "**/*")
        dry, plan = run_planned(workdir, "-n", config=config)
        shown = preview(plan)
        # The thumbnail is fetched again (its row stays: it was measured before the damage);
        # the row is measured again from its thumbnail.
        assert (shown["fetch"], shown["measure"], shown["quarantine"]) == (1, 1, 2)
        assert str(row_path.relative_to(workdir)) in dry.stdout + dry.stderr
        changed = {p for p, t in file_times(workdir, "**/*").items()
                   if files_before.get(p) != t and not p.startswith(".snakemake")}
        assert changed == set(), "a dry run moved or wrote files"

        thumbs_before = file_times(results, THUMBS)
        rows_before = file_times(results, ROWS)
        result = run_snakemake(workdir, config=config)
        assert result.returncode == 0
        assert server.snapshot() - before == {f"/img/{overwritten}.jpg": 1}
        # Exactly the previewed work: one thumbnail fetched, one row measured again.
        assert written(thumbs_before, file_times(results, THUMBS)) == {overwritten}
        assert written(rows_before, file_times(results, ROWS)) == {cut}
        assert pq.read_table(row_path).num_rows == 1
        assert thumb_path.read_bytes()[:3] == b"\xff\xd8\xff"
        quarantine = results / "quarantine"
        kept_row = quarantine / row_path.relative_to(results)
        kept_thumb = quarantine / thumb_path.relative_to(results)
        assert kept_row.stat().st_size == 100
        assert kept_thumb.read_text() == "this is not an image\n"
        assert "PAR1" in Path(f"{kept_row}.why").read_text()
        table = pq.read_table(results / "feature_table.parquet").to_pylist()
        assert len(table) == 300 and {r["status"] for r in table} == {"ok"}


def test_force_switches_measure_or_fetch_everything_again(workdir: Path,
                                                         server: ImageServer) -> None:
    results = results_of(workdir)
    # Forcing again forces again: the second forced run is not "already done".
    for _ in range(2):
        config = config_of(workdir, remeasure="true")
        shown = preview(plan_of(workdir, config=config))
        assert (shown["measure"], shown["remeasure"]) == (300, True)
        assert shown["other_version"][0] == 0
        requests = server.total()
        rows_before = file_times(results, ROWS)
        run_snakemake(workdir, config=config)
        assert server.total() == requests
        assert written(rows_before, file_times(results, ROWS)) == set(NAMES)
    for _ in range(2):
        config = config_of(workdir, refetch="true")
        shown = preview(plan_of(workdir, config=config))
        assert (shown["fetch"], shown["measure"]) == (300, 300)
        assert shown["refetch"] is True
        before = server.snapshot()
        run_snakemake(workdir, config=config)
        assert server.snapshot() - before == {f"/img/{n}.jpg": 1 for n in NAMES}
