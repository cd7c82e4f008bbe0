"""Runs with results in a bucket (results=s3://...): real snakemake, a real S3 server (SeaweedFS)
and a loopback image server that counts requests."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from thumbfeat import layout
from thumbfeat.batch import images_held
from thumbfeat.thumbnail import default_settings

from tests.s3server import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedServer
from tests.support import (
    REPO,
    ImageServer,
    image_rows,
    preview,
    run_planned,
    run_snakemake,
    snakemake_command,
    write_catalog,
)
from tests.test_warehouse_loop import (
    FAST,
    add_rows,
    dim_rows,
    flagged,
    loop_config,
    pool,
    statuses,
)

PROFILE = str(REPO / "profiles" / "s3")
EMPTY_MD5 = hashlib.md5(b"").hexdigest()  # the ETag of an empty object
TAG = default_settings().tag
CONCURRENCY = 8
CORES = 2
# Download jobs take one core each, so at most CORES batches download at once; each holds its
# downloads in flight and the fetched images its measuring process has not stored yet (a task
# ends only once its objects are stored), as on disk (tests/test_interrupts.py).
MOST_IN_FLIGHT = CORES * images_held(CONCURRENCY, 1)


def s3_run(workdir: Path, s3: SeaweedServer, config: dict[str, str],
           *args: str) -> subprocess.CompletedProcess[str]:
    return s3_run_planned(workdir, s3, config, *args)[0]


def s3_run_planned(workdir: Path, s3: SeaweedServer, config: dict[str, str],
                   *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """A run into the bucket, with the plan it announced (its JSON document)."""
    return run_planned(workdir, "--profile", PROFILE, *args, config=config, env=s3.env,
                       cores=CORES)


def upload_catalog(s3: SeaweedServer, tmp_path: Path, key: str,
                   rows: list[tuple[str, str]]) -> str:
    """Write a CSV catalog and put it in the bucket; its s3:// URL."""
    local = write_catalog(tmp_path / Path(key).name, rows)
    s3.put(key, local.read_bytes())
    local.unlink()
    return f"s3://{BUCKET}/{key}"


def image_keys(prefix: str, stage: str, suffix: str, names: list[str]) -> list[str]:
    """The object keys of the images' per-image files: the local layout under the prefix."""
    return [f"{prefix}/{stage}/{TAG}/{layout.shard_of(n)}/{n}{suffix}" for n in names]


def read_table(s3: SeaweedServer, prefix: str) -> list[dict[str, object]]:
    return pq.read_table(io.BytesIO(s3.read(f"{prefix}/feature_table.parquet"))).to_pylist()


def assert_no_credential(s3: SeaweedServer, prefix: str, workdir: Path, *outputs: str) -> None:
    """Neither key appears in any object under the prefix, any local file of the run, or
    anything the runs printed."""
    secrets = (ACCESS_KEY.encode(), SECRET_KEY.encode())
    for key in s3.objects(f"{prefix}/"):
        data = s3.read(key)
        assert not any(secret in data for secret in secrets), key
    for path in workdir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret in data for secret in secrets), path
    for output in outputs:
        assert ACCESS_KEY not in output and SECRET_KEY not in output


def test_a_run_into_a_bucket_resumes_as_on_disk(tmp_path: Path, s3: SeaweedServer,
                                                server: ImageServer) -> None:
    names = [f"b{i:04d}" for i in range(300)]
    catalog = upload_catalog(s3, tmp_path, "catalogs/run1.csv", image_rows(server, names))
    prefix = "run1"
    config = {"catalog": catalog, "results": f"s3://{BUCKET}/{prefix}", "batch_size": "100"}
    workdir = tmp_path / "work"
    workdir.mkdir()

    first = s3_run(workdir, s3, config)
    assert server.total() == 300
    assert set(server.counts) == {f"/img/{n}.jpg" for n in names}
    table = read_table(s3, prefix)
    assert [row["image_id"] for row in table] == names
    assert [row for row in table if row["status"] != "ok"] == []
    objects = s3.objects(f"{prefix}/")
    for keys in (image_keys(prefix, layout.THUMBS, layout.THUMB_SUFFIX, names),
                 image_keys(prefix, layout.FEATURES, layout.FEATURE_SUFFIX, names)):
        assert set(keys) <= set(objects)
    # Per-image files live in the bucket only; the warehouse stays a local DuckDB file.
    assert not (workdir / "results" / layout.THUMBS).exists()
    with duckdb.connect(str(workdir / "results" / "warehouse.duckdb"), read_only=True) as db:
        assert db.execute("SELECT count(*) FROM feature_image_visual").fetchone() == (300,)

    # A rerun: no download, no object written, replaced or deleted.
    puts_before = s3.requests()
    rerun, plan = s3_run_planned(workdir, s3, config)
    assert preview(plan)["fetch"] == 0
    assert preview(plan)["table"] == "up to date"
    assert server.total() == 300
    requests = s3.requests() - puts_before
    assert requests["PUT"] == 0 and requests["DELETE"] == 0, requests
    assert s3.objects(f"{prefix}/") == objects

    # Deleted thumbnail objects are fetched again, exactly they, three times over.
    outputs = [first.stdout + first.stderr, rerun.stdout + rerun.stderr]
    features = {k: v for k, v in objects.items() if f"/{layout.FEATURES}/" in k}
    for round_number in range(3):
        deleted = names[round_number * 7 + 5 : round_number * 7 + 12]
        s3.delete(image_keys(prefix, layout.THUMBS, layout.THUMB_SUFFIX, deleted))
        before = server.snapshot()
        again, plan = s3_run_planned(workdir, s3, config)
        outputs.append(again.stdout + again.stderr)
        assert preview(plan)["fetch"] == 7
        assert server.snapshot() - before == Counter({f"/img/{n}.jpg": 1 for n in deleted})
        assert set(image_keys(prefix, layout.THUMBS, layout.THUMB_SUFFIX, deleted)) <= set(
            s3.objects(f"{prefix}/{layout.THUMBS}/"))
        # Only the deleted objects were rebuilt: every row object is as it was.
        now = s3.objects(f"{prefix}/{layout.FEATURES}/")
        assert now == features
        table = read_table(s3, prefix)
        assert [row["image_id"] for row in table] == names
        assert [row for row in table if row["status"] != "ok"] == []

    # `thumbfeat status` and the report read the bucket.
    status = subprocess.run([sys.executable, "-m", "thumbfeat.cli", "status", "--results",
                             config["results"]], capture_output=True, text=True, check=True,
                            env={**os.environ, **s3.env, "PYTHONPATH": str(REPO / "workflow")})
    outputs.append(status.stdout + status.stderr)
    assert "fetched: 300 ok, 0 failed, 0 pending" in status.stdout, status.stdout
    assert "measured: 300 done, 0 pending" in status.stdout
    assert "batches: 6 recorded, 321 images fetched" in status.stdout
    assert f"table: s3://{BUCKET}/{prefix}/feature_table.parquet\n" in status.stdout + "\n"
    report = s3_run(workdir, s3, config, "report_figures")
    outputs.append(report.stdout + report.stderr)
    assert (workdir / "results" / "report" / "run_statistics.html").is_file()
    log = s3.read(f"{prefix}/logs/report_figures.log").decode()
    assert "6 batch manifests" in log, log
    assert_no_credential(s3, prefix, workdir, *outputs)


@pytest.fixture
def slow_server() -> Iterator[ImageServer]:
    srv = ImageServer(delay=0.15).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_kill_9_mid_run_costs_only_the_downloads_in_flight(tmp_path: Path, s3: SeaweedServer,
                                                          slow_server: ImageServer) -> None:
    names = [f"k{i:04d}" for i in range(600)]
    catalog = write_catalog(tmp_path / "catalog.csv", image_rows(slow_server, names))
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"download: {{concurrency: {CONCURRENCY}}}\n")
    prefix = "killed"
    config = {"catalog": str(catalog), "results": f"s3://{BUCKET}/{prefix}",
              "batch_size": "100"}
    command = snakemake_command(tmp_path, "--profile", PROFILE, "--configfile", str(settings),
                                config=config, cores=CORES)
    env = {**os.environ, **s3.env}

    def thumbs() -> int:
        return len(s3.objects(f"{prefix}/{layout.THUMBS}/"))

    kills = 0
    for stop_at in (100, 250, 400):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True, env=env)
        deadline = time.monotonic() + 180
        while thumbs() < stop_at:
            assert process.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        kills += 1
        time.sleep(0.5)  # nothing reaps the jobs' children after SIGKILL; give them a moment
        assert stop_at <= thumbs() < 600
        # Every object is whole: none is empty (an empty thumbnail means a failed download,
        # and none of these fails).
        empty = [key for key, (etag, _) in s3.objects(f"{prefix}/").items()
                 if etag.strip('"') == EMPTY_MD5]
        assert empty == []
        run_snakemake(tmp_path, "--profile", PROFILE, "--unlock", "--configfile", str(settings),
                      config=config, env=s3.env)
    s3_run(tmp_path, s3, config, "--configfile", str(settings))

    repeated = {path: n for path, n in slow_server.counts.items() if n > 1}
    assert sum(n - 1 for n in repeated.values()) <= kills * MOST_IN_FLIGHT, repeated
    assert set(slow_server.counts) == {f"/img/{n}.jpg" for n in names}
    table = read_table(s3, prefix)
    assert [row["image_id"] for row in table] == names
    assert [row for row in table if row["status"] != "ok"] == []
    for key in image_keys(prefix, layout.THUMBS, layout.THUMB_SUFFIX, names):
        assert s3.read(key)[:2] == b"\xff\xd8"  # whole JPEGs: a PUT stores all or nothing


def test_the_seed_loop_with_results_in_a_bucket(tmp_path: Path, s3: SeaweedServer,
                                                server: ImageServer) -> None:
    """A DuckDB catalog selecting what is not flagged yet, results in the bucket, and the
    download flags written back from the thumbnail objects found there."""
    database = tmp_path / "catalog.duckdb"
    add_rows(database, dim_rows(server, 0, 100))
    options = loop_config(tmp_path, database)
    prefix = "loop"
    config = {**FAST, "results": f"s3://{BUCKET}/{prefix}"}

    def run() -> None:
        run_snakemake(tmp_path, "--profile", PROFILE, *options, config=config, env=s3.env,
                      cores=CORES)

    run()
    assert server.total() == 60
    assert len(flagged(database)) == 54 and flagged(database) <= pool(database)
    got = statuses(database)
    assert len(got) == 60 and sorted(got.values()).count("ok") == 54
    assert s3.read(f"{prefix}/catalog_write_back.json")

    # Nothing new, three times over: no request, the flags and the warehouse as they were.
    for _ in range(3):
        run()
        assert server.total() == 60
        assert len(flagged(database)) == 54
        assert statuses(database) == got

    added = [row for row in dim_rows(server, 100, 40) if row[2]][:20]
    add_rows(database, added)
    run()
    assert server.total() == 80
    assert len(flagged(database)) == 74 and flagged(database) <= pool(database)
    assert sorted(statuses(database).values()).count("ok") == 74
