"""Interrupting a real run at any moment loses nothing finished and redoes almost nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from thumbfeat import layout, lineage
from thumbfeat.batch import images_held
from thumbfeat.plan import PLAN_JSON_VAR

from tests.support import (
    TAG,
    ImageServer,
    image_rows,
    preview,
    run_snakemake,
    snakemake_command,
    write_catalog,
)

CONCURRENCY = 8
CORES = 2
# Download jobs take one core each, so at most CORES batches download at once; each holds its
# downloads in flight and the fetched images its measuring process has not stored yet.
MOST_IN_FLIGHT = CORES * images_held(CONCURRENCY, 1)


@pytest.fixture
def slow_server() -> Iterator[ImageServer]:
    srv = ImageServer(delay=0.15).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def slower_server() -> Iterator[ImageServer]:
    srv = ImageServer(delay=0.3).start()
    try:
        yield srv
    finally:
        srv.stop()


def count_thumbs(results: Path) -> int:
    return sum(1 for _ in (results / layout.THUMBS / TAG).glob("*/*.img"))


@pytest.mark.parametrize("how", ["kill-9-group", "sigterm", "sigint-group"])
def test_interrupted_run_resumes_exactly(tmp_path: Path, slow_server: ImageServer,
                                         how: str) -> None:
    names = [f"k{i:04d}" for i in range(600)]
    catalog = write_catalog(tmp_path / "catalog.csv", image_rows(slow_server, names))
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"download: {{concurrency: {CONCURRENCY}}}\n")
    config = {"catalog": str(catalog), "batch_size": "100", "local_file_roots": "[]"}
    results = tmp_path / "results"

    command = snakemake_command(tmp_path, "--configfile", str(settings), config=config,
                                cores=CORES)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while count_thumbs(results) < 150:
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    if how == "kill-9-group":
        os.killpg(process.pid, signal.SIGKILL)
    elif how == "sigterm":
        os.kill(process.pid, signal.SIGTERM)
    else:
        os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=120)
    if how == "kill-9-group":
        # Nothing reaps the job processes' children for us after SIGKILL; give them a moment.
        time.sleep(0.5)
    finished_at_stop = count_thumbs(results)
    assert 150 <= finished_at_stop < 600

    if how == "kill-9-group":
        run_snakemake(tmp_path, "--unlock", "--configfile", str(settings), config=config)
    run_snakemake(tmp_path, "--configfile", str(settings), config=config, cores=CORES)

    repeated = {path: n for path, n in slow_server.counts.items() if n > 1}
    assert sum(n - 1 for n in repeated.values()) <= MOST_IN_FLIGHT, repeated
    assert set(slow_server.counts) == {f"/img/{n}.jpg" for n in names}

    table = pq.read_table(results / "feature_table.parquet").to_pylist()
    assert [row["image_id"] for row in table] == names
    assert [row for row in table if row["status"] != "ok"] == []
    for name in names:
        with Image.open(layout.thumb_path(results, name, TAG)) as image:
            image.load()
        assert pq.read_table(layout.feature_path(results, name, TAG)).num_rows == 1
    leftovers = [p for p in results.rglob(".*") if p.is_file()]
    assert leftovers == [] or how == "kill-9-group", leftovers


def descendants(root: int) -> list[lineage.Process]:
    """Every live process under ``root``: a run's job shells, jobs and their worker processes."""
    children: defaultdict[int, list[lineage.Process]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (process := lineage.read_process(int(entry))) is not None:
            children[process.parent].append(process)
    found, todo = [], [root]
    while todo:
        for child in children[todo.pop()]:
            found.append(child)
            todo.append(child.pid)
    return found


def is_batch_job(process: lineage.Process) -> bool:
    try:
        return b"process_batch" in Path(f"/proc/{process.pid}/cmdline").read_bytes()
    except OSError:
        return False


ORPHAN_CONCURRENCY = 4


def test_jobs_stop_when_the_main_process_alone_is_killed(tmp_path: Path,
                                                         slower_server: ImageServer) -> None:
    """kill -9 of the snakemake PID only (as a process viewer does), three times in one run.

    The killed run's jobs notice and stop, keeping what they finished; the rerun started right
    after `--unlock` does not race them for the same images.
    """
    names = [f"o{i:04d}" for i in range(600)]
    catalog = write_catalog(tmp_path / "catalog.csv", image_rows(slower_server, names))
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"download: {{concurrency: {ORPHAN_CONCURRENCY}}}\n")
    # Batches that outlast the 10 s allowed after a kill, were their jobs to carry on.
    config = {"catalog": str(catalog), "batch_size": "300", "local_file_roots": "[]"}
    results = tmp_path / "results"
    command = snakemake_command(tmp_path, "--configfile", str(settings), config=config,
                                cores=CORES)

    def start(log: Path) -> tuple[subprocess.Popen[bytes], float]:
        """Start a run logging to ``log``; its plan document goes beside the log."""
        env = {**os.environ, PLAN_JSON_VAR: str(log.with_suffix(".plan.json"))}
        with open(log, "wb") as out:
            return (subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True), time.time())

    process, _ = start(tmp_path / "run0.log")
    kills = 3
    for round_ in range(1, kills + 1):
        deadline = time.monotonic() + 120
        while count_thumbs(results) < 150 * round_:
            assert process.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        jobs = descendants(process.pid)
        assert any(is_batch_job(job) for job in jobs), jobs
        os.kill(process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        process.wait(timeout=60)
        assert count_thumbs(results) < 600
        run_snakemake(tmp_path, "--unlock", "--configfile", str(settings), config=config)
        # The rerun starts at once, while any job left over from the killed run would still run.
        process, started = start(tmp_path / f"run{round_}.log")
        while alive := [job for job in jobs if lineage.read_process(job.pid) == job]:
            assert time.monotonic() < killed_at + 10, f"still running after the kill: {alive}"
            time.sleep(0.1)
    assert process.wait(timeout=300) == 0, (tmp_path / f"run{kills}.log").read_text()

    # Each kill can leave only its downloads in flight to be asked again.
    repeated = {path: n for path, n in slower_server.counts.items() if n > 1}
    assert max(slower_server.counts.values()) <= 2, repeated
    assert sum(n - 1 for n in repeated.values()) <= kills * CORES * ORPHAN_CONCURRENCY, repeated
    assert set(slower_server.counts) == {f"/img/{n}.jpg" for n in names}
    # The last run did what its plan announced.
    plan = preview(json.loads((tmp_path / f"run{kills}.plan.json").read_text()))
    manifests = (json.loads(p.read_text()) for p in (results / layout.BATCHES).glob("*.json"))
    made = [m for m in manifests if m["started"] >= started]
    assert plan["batches"] == len(made) > 0
    assert plan["fetch"] == sum(m["download"]["images"] for m in made)
    assert plan["measure"] == sum(m["features"]["images"] for m in made)

    table = pq.read_table(results / "feature_table.parquet").to_pylist()
    assert [row["image_id"] for row in table] == names
    assert [row for row in table if row["status"] != "ok"] == []
    for name in names:
        with Image.open(layout.thumb_path(results, name, TAG)) as image:
            image.load()
        assert pq.read_table(layout.feature_path(results, name, TAG)).num_rows == 1
