"""The cluster profiles plan for the run's job slots; checked by dry runs, no cluster needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import REPO, run_snakemake, write_catalog


def planned_batches(output: str) -> int:
    match = re.search(r"thumbfeat plan: .*; (\d+) batches", output)
    assert match, output
    return int(match[1])


@pytest.mark.parametrize(("profile", "jobs", "batches"), [
    (None, None, 4),  # locally: 2 cores, one per batch job, two jobs per core
    ("slurm", 6, 12),  # on a cluster: --jobs 6 slots, two jobs each
    ("cluster-generic", 3, 6),
])
def test_automatic_batches_follow_the_job_slots(tmp_path: Path, profile: str | None,
                                                jobs: int | None, batches: int) -> None:
    rows = [(f"p{i:04d}", f"http://127.0.0.1:9/{i}.jpg") for i in range(1500)]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    args = ["-n"]
    if profile:
        args += ["--profile", str(REPO / "profiles" / profile), "--jobs", str(jobs)]
    result = run_snakemake(tmp_path, *args, config={"catalog": str(catalog)})
    assert planned_batches(result.stdout + result.stderr) == batches
    # A dry run hands nothing over to jobs.
    assert not (tmp_path / ".snakemake" / "thumbfeat").exists()
