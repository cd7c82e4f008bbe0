"""The workflow on a real SLURM cluster through profiles/slurm: jobs, resuming after scancel, rates.

These tests need the single-node cluster of ``scripts/slurm-local.sh`` (``.ci/run`` starts it).
Run as root, they install and start it themselves when it is missing; otherwise they fail and say
how to get it. Deselect them knowingly with ``-m "not slurm"``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from thumbfeat import layout

from tests.support import (
    REPO,
    TAG,
    ImageServer,
    image_rows,
    run_snakemake,
    snakemake_command,
    write_catalog,
)

SCRIPT = REPO / "scripts" / "slurm-local.sh"
PROFILE = REPO / "profiles" / "slurm"
# The profile's first status query waits 20 s, which suits a busy cluster; tests ask sooner.
FAST_STATUS = ("--slurm-init-seconds-before-status-checks", "1")


def cluster_ready() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    states = result.stdout.split()
    return result.returncode == 0 and any(s.rstrip("*~#") in {"idle", "mix", "alloc"}
                                          for s in states)


@pytest.fixture(scope="module")
def slurm() -> int:
    """The local cluster, started if need be; returns the CPUs its node offers."""
    if not cluster_ready() and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run([str(SCRIPT), "install", "start"], check=True, timeout=900)
    if not cluster_ready():
        pytest.fail(f"no SLURM cluster answers here: run `{SCRIPT.relative_to(REPO)} install` "
                    f"and `{SCRIPT.relative_to(REPO)} start` as root (or deselect: -m 'not slurm')")
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True,
                          check=True).stdout.split()[0]
    return int(cpus.rstrip("+"))


def slurm_jobs(workdir: Path) -> list[dict[str, str]]:
    """Every job SLURM still knows (MinJobAge) that ran in ``workdir``, as scontrol fields."""
    result = subprocess.run(["scontrol", "-o", "show", "jobs"], capture_output=True, text=True,
                            check=True)
    jobs = []
    for line in result.stdout.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if fields.get("WorkDir") == str(workdir):
            jobs.append(fields)
    return jobs


def cluster_args(jobs: int) -> tuple[str, ...]:
    return ("--profile", str(PROFILE), *FAST_STATUS, "--jobs", str(jobs))


def read_table(workdir: Path) -> list[dict[str, object]]:
    return pq.read_table(workdir / "results" / "feature_table.parquet").to_pylist()


def thumbs_present(results: Path, names: list[str]) -> set[str]:
    return {n for n in names if Path(layout.thumb_path(results, n, TAG)).exists()}


pytestmark = pytest.mark.slurm


def test_batches_run_as_slurm_jobs_and_a_rerun_submits_nothing(
        tmp_path: Path, server: ImageServer, slurm: int) -> None:
    names = [f"s{i:03d}" for i in range(80)]
    catalog = write_catalog(tmp_path / "catalog.csv", image_rows(server, names))
    config = {"catalog": str(catalog), "batch_size": "20", "local_file_roots": "[]",
              "batch_mem_mb": "1500", "batch_runtime": "30"}
    cluster = tmp_path / "cluster"
    cluster.mkdir()

    # Two jobs at a time for four batches: the last two start after the first two finished,
    # so their jobs must follow the plan handed over by the run, not plan afresh.
    run_snakemake(cluster, *cluster_args(2), config=config)

    jobs = slurm_jobs(cluster)
    assert sorted(j["Comment"] for j in jobs) == [f"rule_batch_{n}" for n in range(1, 5)]
    assert {j["JobState"] for j in jobs} == {"COMPLETED"}
    # Each batch job asked SLURM for what the config gives a batch.
    assert {(j["NumCPUs"], j["MinMemoryNode"], j["TimeLimit"]) for j in jobs} == {
        ("1", "1500M", "00:30:00")}
    assert server.counts == {f"/img/{n}.jpg": 1 for n in names}
    rows = read_table(cluster)
    assert [r["image_id"] for r in rows] == names
    assert {r["status"] for r in rows} == {"ok"}
    # The run's handed-over plan is removed after success.
    assert list((cluster / ".snakemake" / "thumbfeat").glob("plan-*.json")) == []

    # The same catalog run locally gives the same table, row for row.
    local = tmp_path / "local"
    local.mkdir()
    run_snakemake(local, config=config)
    assert read_table(local) == rows

    # A second cluster run finds everything done: no job, no request, no rewrite.
    requests_before = server.total()
    table_time = (cluster / "results" / "feature_table.parquet").stat().st_mtime_ns
    again = run_snakemake(cluster, *cluster_args(2), config=config)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert len(slurm_jobs(cluster)) == 4
    assert server.total() == requests_before
    assert (cluster / "results" / "feature_table.parquet").stat().st_mtime_ns == table_time


def test_one_requested_file_is_built_by_cluster_jobs(
        tmp_path: Path, server: ImageServer, slurm: int) -> None:
    names = [f"o{i:02d}" for i in range(6)]
    catalog = write_catalog(tmp_path / "catalog.csv", image_rows(server, names))
    config = {"catalog": str(catalog), "local_file_roots": "[]"}
    target = layout.feature_path("results", "o03", TAG)

    run_snakemake(tmp_path, *cluster_args(2), target, config=config)

    # One job fetches the image, makes its thumbnail and measures it (one decode).
    assert sorted(j["Comment"] for j in slurm_jobs(tmp_path)) == [
        "rule_measure_image_wildcards_" + Path(target).parent.name + "_o03",
    ]
    assert server.counts == {"/img/o03.jpg": 1}
    assert pq.read_table(tmp_path / target).to_pylist()[0]["status"] == "ok"


def test_generic_cluster_profile_submits_batches_with_sbatch(
        tmp_path: Path, server: ImageServer, slurm: int) -> None:
    names = [f"g{i:03d}" for i in range(40)]
    catalog = write_catalog(tmp_path / "catalog.csv", image_rows(server, names))
    config = {"catalog": str(catalog), "batch_size": "20", "local_file_roots": "[]"}
    profile = REPO / "profiles" / "cluster-generic"

    run_snakemake(tmp_path, "--profile", str(profile), "--jobs", "2", config=config)

    jobs = slurm_jobs(tmp_path)
    assert sorted(j["JobName"] for j in jobs) == ["thumbfeat-batch_1", "thumbfeat-batch_2"]
    assert {j["JobState"] for j in jobs} == {"COMPLETED"}
    assert {j["TimeLimit"] for j in jobs} == {"02:00:00"}  # batch_runtime: 120 minutes
    assert server.counts == {f"/img/{n}.jpg": 1 for n in names}
    assert [r["image_id"] for r in read_table(tmp_path)] == names


@pytest.fixture
def slow_server() -> Iterator[ImageServer]:
    srv = ImageServer(delay=0.3).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_scancel_midway_then_rerun_refetches_no_finished_image(
        tmp_path: Path, slow_server: ImageServer, slurm: int) -> None:
    names = [f"c{i:03d}" for i in range(90)]
    batches = {n: names[(n - 1) * 30 : n * 30] for n in (1, 2, 3)}
    catalog = write_catalog(tmp_path / "catalog.csv", image_rows(slow_server, names))
    settings = tmp_path / "settings.yaml"
    settings.write_text("download: {concurrency: 2}\n")
    config = {"catalog": str(catalog), "batch_size": "30", "local_file_roots": "[]"}
    results = tmp_path / "results"
    command = snakemake_command(tmp_path, *cluster_args(3), "--configfile", str(settings),
                                config=config)

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    victim = None
    deadline = time.monotonic() + 300
    while victim is None:
        assert process.poll() is None, "the run ended before a job could be cancelled"
        assert time.monotonic() < deadline, "no batch job got under way"
        for job in slurm_jobs(tmp_path):
            number = int(job["Comment"].removeprefix("rule_batch_"))
            done = len(thumbs_present(results, batches[number]))
            if job["JobState"] == "RUNNING" and 3 <= done <= 20:
                victim = job
                break
        else:
            time.sleep(0.1)
    subprocess.run(["scancel", victim["JobId"]], check=True)
    while next(j for j in slurm_jobs(tmp_path)
               if j["JobId"] == victim["JobId"])["JobState"] in {"RUNNING", "COMPLETING"}:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    victim_batch = batches[int(victim["Comment"].removeprefix("rule_batch_"))]
    finished_at_cancel = thumbs_present(results, victim_batch)
    output, _ = process.communicate(timeout=300)
    # The run reports the cancelled job and ends with an error; the other batches finished.
    assert process.returncode != 0, output
    assert 3 <= len(finished_at_cancel) < len(victim_batch)

    before = slow_server.snapshot()
    missing = set(names) - thumbs_present(results, names)
    assert missing, "the cancelled batch left nothing to do"
    run_snakemake(tmp_path, *cluster_args(3), "--configfile", str(settings), config=config)
    fetched = slow_server.snapshot() - before
    assert set(fetched) == {f"/img/{n}.jpg" for n in missing}
    assert all(slow_server.counts[f"/img/{n}.jpg"] == 1 for n in finished_at_cancel)

    rows = read_table(tmp_path)
    assert [r["image_id"] for r in rows] == names
    assert {r["status"] for r in rows} == {"ok"}


class TimedServer(ImageServer):
    """An image server that also records when each request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, str]] = []

    def handle(self, handler) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.arrivals.append((time.monotonic(), handler.path))
        super().handle(handler)


@pytest.fixture
def timed_server() -> Iterator[TimedServer]:
    srv = TimedServer().start()
    try:
        yield srv
    finally:
        srv.stop()


def most_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_per_host_rate_holds_across_concurrent_cluster_jobs(
        tmp_path: Path, timed_server: TimedServer, slurm: int) -> None:
    jobs = min(4, slurm)
    rate = 12.0
    names = [f"r{i:03d}" for i in range(30 * jobs)]
    batch_of = {n: i // 30 for i, n in enumerate(names)}
    catalog = write_catalog(tmp_path / "catalog.csv", image_rows(timed_server, names))
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"download: {{concurrency: 8, host_rate_limit: {rate}}}\n")
    config = {"catalog": str(catalog), "batch_size": "30", "local_file_roots": "[]"}

    run_snakemake(tmp_path, *cluster_args(jobs), "--configfile", str(settings), config=config)

    assert len(slurm_jobs(tmp_path)) == jobs
    assert timed_server.counts == {f"/img/{n}.jpg": 1 for n in names}
    arrivals = sorted(timed_server.arrivals)
    times = [t for t, _ in arrivals]
    # Several jobs were downloading at the same time: within some 2 s, requests of at least
    # three batches (all of them when the node has fewer CPUs) reached the server.
    most_batches = max(
        len({batch_of[path.rsplit("/", 1)[-1].removesuffix(".jpg")]
             for t, path in arrivals if start <= t < start + 2.0})
        for start in times
    )
    assert most_batches >= min(3, jobs)
    # Each job paces its requests to rate/jobs, so any window of W seconds holds at most
    # rate*W plus one request per job. Without the shares the jobs would together go `jobs`
    # times faster (and unpaced, hundreds per second on loopback).
    for window in (1.0, 2.0):
        assert most_in_window(times, window) <= rate * window + jobs, window
    # One job's 30 requests alone need 29 gaps of jobs/rate seconds.
    assert times[-1] - times[0] >= 0.9 * 29 * jobs / rate
    rows = read_table(tmp_path)
    assert {r["status"] for r in rows} == {"ok"}
    assert len(rows) == len(names)
