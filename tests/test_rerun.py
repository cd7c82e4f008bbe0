"""Repeated situations run again: files lost again are rebuilt, transient failures retried again.

Every run here is a real snakemake run against a loopback server that counts requests, and every
run is checked against the plan line it printed: the batches, downloads and measurements it
announced are the ones its jobs did (read from the manifests the run wrote), a batch announced is
never skipped ("Nothing to be done"), and the table is rebuilt exactly when the plan says so.
"""

from __future__ import annotations

import functools
import json
import socket
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image
from thumbfeat import layout
from thumbfeat.cli import status_report

from tests.support import (
    TAG,
    ImageServer,
    image_rows,
    preview,
    run_planned,
    write_catalog,
)

FAST = {"batch_size": "100", "local_file_roots": "[]"}


def run_as_planned(workdir: Path, *args: str, config: dict[str, str]) -> dict[str, object]:
    """Run the workflow; check that what it did is what its plan announced."""
    results = workdir / "results"
    before = set(layout.manifest_keys(results))
    table = results / "feature_table.parquet"
    table_before = table.stat().st_mtime_ns if table.exists() else None
    result, document = run_planned(workdir, *args, config=config)
    output = result.stdout + result.stderr
    plan = preview(document)
    made = [json.loads((results / layout.BATCHES / f"{key}.json").read_text())
            for key in set(layout.manifest_keys(results)) - before]
    assert plan["batches"] == len(made), output
    assert plan["fetch"] == sum(m["download"]["images"] for m in made), output
    assert plan["measure"] == sum(m["features"]["images"] for m in made), output
    rebuilt = table.stat().st_mtime_ns != table_before
    assert rebuilt == (plan["table"] != "up to date"), output
    assert ("Nothing to be done" in output) == (not made and not rebuilt), output
    return {**plan, "manifests": made}


def status_lines(results: Path) -> dict[str, str]:
    """`thumbfeat status`, one entry per line, keyed by what the line counts."""
    return dict(line.split(": ", 1) for line in status_report(results).splitlines())


def free_port() -> int:
    """A loopback port where nothing listens (until a test starts a server on it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rows_by_id(workdir: Path) -> dict[str, dict[str, object]]:
    rows = pq.read_table(workdir / "results" / "feature_table.parquet").to_pylist()
    return {str(row["image_id"]): row for row in rows}


def test_thumbnails_deleted_again_are_fetched_again(tmp_path: Path, server: ImageServer) -> None:
    names = [f"t{i:03d}" for i in range(40)]
    catalog = write_catalog(tmp_path / "catalog.csv", image_rows(server, names))
    config = {**FAST, "catalog": str(catalog)}
    results = tmp_path / "results"
    run_as_planned(tmp_path, config=config)
    lost = names[5:12]
    for _ in range(3):
        for name in lost:
            Path(layout.thumb_path(results, name, TAG)).unlink()
        before = server.snapshot()
        plan = run_as_planned(tmp_path, config=config)
        assert (plan["fetch"], plan["measure"], plan["batches"]) == (7, 0, 1)
        assert server.snapshot() - before == {f"/img/{n}.jpg": 1 for n in lost}
        for name in lost:
            with Image.open(layout.thumb_path(results, name, TAG)) as image:
                image.load()
        status = status_lines(results)
        assert status["fetched"] == "40 ok, 0 failed, 0 pending", status
    # Nothing is missing now: nothing is announced, nothing runs.
    assert run_as_planned(tmp_path, config=config)["batches"] == 0


def test_feature_files_deleted_again_are_rebuilt(tmp_path: Path, server: ImageServer) -> None:
    names = [f"f{i:03d}" for i in range(40)]
    catalog = write_catalog(tmp_path / "catalog.csv", image_rows(server, names))
    config = {**FAST, "catalog": str(catalog)}
    results = tmp_path / "results"
    run_as_planned(tmp_path, config=config)
    first_rows = rows_by_id(tmp_path)
    requests = server.total()
    for _ in range(3):
        for path in (results / layout.FEATURES / TAG).glob("*/*.parquet"):
            path.unlink()
        status = status_lines(results)
        assert status["measured"] == "0 done, 40 pending", status
        plan = run_as_planned(tmp_path, config=config)
        assert (plan["fetch"], plan["measure"], plan["batches"]) == (0, 40, 1)
        assert plan["table"] not in (None, "up to date")
        assert server.total() == requests
        for name in names:
            assert pq.read_table(layout.feature_path(results, name, TAG)).num_rows == 1
        assert rows_by_id(tmp_path) == first_rows
        status = status_lines(results)
        assert status["measured"] == "40 done, 0 pending", status


def test_transient_failures_are_retried_by_every_run(tmp_path: Path, server: ImageServer) -> None:
    """An unreachable host and a 500-forever URL: each run makes one attempt series at each."""
    port = free_port()
    good = [f"g{i:02d}" for i in range(20)]
    rows = [*image_rows(server, good),
            ("down", f"{server.base}/error/down.jpg"),
            ("later", f"http://127.0.0.1:{port}/img/later.jpg")]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    settings = tmp_path / "fast-retries.yaml"
    settings.write_text("download: {max_attempts: 2, backoff_base: 0.01}\n")
    config = {**FAST, "catalog": str(catalog)}
    run = functools.partial(run_as_planned, tmp_path, "--configfile", str(settings),
                            config=config)
    results = tmp_path / "results"

    plan = run()
    assert (plan["fetch"], plan["measure"]) == (22, 22)
    assert server.counts["/error/down.jpg"] == 2
    for _ in range(3):
        before = server.snapshot()
        plan = run()
        assert (plan["retry"], plan["fetch"], plan["measure"], plan["batches"]) == (2, 2, 2, 1)
        assert server.snapshot() - before == {"/error/down.jpg": 2}
        failed = {f["image_id"]: f for m in plan["manifests"] for f in m["download"]["failed"]}
        assert failed["later"]["kind"] == "connection" and failed["later"]["retryable"]
        assert failed["down"]["kind"] == "http_status" and failed["down"]["retryable"]
        table = rows_by_id(tmp_path)
        assert table["later"]["status"] == table["down"]["status"] == "failed"
        status = status_lines(results)
        assert status["failed by kind"].endswith("(2 will be retried by the next run)"), status

    # The host comes up: the next run fetches the image, once.
    late_server = ImageServer(port=port).start()
    try:
        plan = run()
        assert (plan["retry"], plan["fetch"], plan["batches"]) == (2, 2, 1)
        assert late_server.snapshot() == {"/img/later.jpg": 1}
        assert rows_by_id(tmp_path)["later"]["status"] == "ok"
        assert not Path(layout.failure_path(results, "later")).exists()
        plan = run()
        assert (plan["retry"], plan["fetch"]) == (1, 1)
        assert late_server.total() == 1
        assert server.counts["/error/down.jpg"] == 2 * 6
    finally:
        late_server.stop()


def test_retry_failed_retries_permanent_failures_every_run(tmp_path: Path,
                                                           server: ImageServer) -> None:
    rows = [*image_rows(server, ["p1", "p2"]), ("lost", f"{server.base}/missing/lost.jpg")]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    config = {**FAST, "catalog": str(catalog)}
    run_as_planned(tmp_path, config=config)
    assert server.counts["/missing/lost.jpg"] == 1
    # A permanent failure stays failed by default.
    plan = run_as_planned(tmp_path, config=config)
    assert (plan["kept"], plan["retry"], plan["batches"]) == (1, 0, 0)
    assert server.counts["/missing/lost.jpg"] == 1
    for attempt in range(3):
        plan = run_as_planned(tmp_path, config={**config, "retry_failed": "true"})
        assert (plan["kept"], plan["retry"], plan["fetch"], plan["batches"]) == (0, 1, 1, 1)
        assert server.counts["/missing/lost.jpg"] == 2 + attempt
    assert server.total("/img/") == 2
