"""The cluster profiles plan for the run's job slots; checked by dry runs, no cluster needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import REPO, run_planned, write_catalog


@pytest.mark.parametrize(("profile", "jobs", "images", "batches"), [
    (None, None, 1500, 2),  # locally: 2 cores, one per batch job; small work, one round
    (None, None, 2500, 4),  # larger work: two jobs per core
    ("slurm", 6, 1500, 6),  # on a cluster: --jobs 6 slots
    ("slurm", 3, 9000, 6),  # two jobs each
    ("cluster-generic", 3, 1500, 3),
])
def test_automatic_batches_follow_the_job_slots(tmp_path: Path, profile: str | None,
                                                jobs: int | None, images: int,
                                                batches: int) -> None:
    rows = [(f"p{i:05d}", f"http://127.0.0.1:9/{i}.jpg") for i in range(images)]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    args = ["-n"]
    if profile:
        args += ["--profile", str(REPO / "profiles" / profile), "--jobs", str(jobs)]
    _, plan = run_planned(tmp_path, *args, config={"catalog": str(catalog)})
    assert len(plan["batches"]) == batches
    # A dry run hands nothing over to jobs.
    assert not (tmp_path / ".snakemake" / "thumbfeat").exists()
