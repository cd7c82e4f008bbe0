"""Local runs never load the cluster executor plugins, so SLURM's state cannot slow them down.

Snakemake imports every installed executor plugin at each start, and the SLURM plugin asks
``scontrol show config`` while it is imported: on a machine with SLURM's tools but no controller
answering, every start waited about 9 s. The plugins live in their own environment (.venv-cluster,
``make cluster-env``); these tests put recording stand-ins for SLURM's tools first on PATH and
check which environment calls them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import CLUSTER_SNAKEMAKE, REPO, SNAKEMAKE, run_planned, run_snakemake

SLURM_TOOLS = ("scontrol", "sinfo", "squeue", "sacct", "sbatch")


@pytest.fixture
def recording_slurm_tools(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """SLURM's client tools as stand-ins that record each call and fail like a dead controller."""
    tools = tmp_path / "fake-slurm"
    tools.mkdir()
    calls = tmp_path / "slurm-calls.txt"
    for name in SLURM_TOOLS:
        script = tools / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n'
                          'echo "slurm_load_ctl_conf error: Unable to contact slurm controller" >&2'
                          "\nexit 1\n")
        script.chmod(0o755)
    return {"PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}, calls


def test_a_local_run_asks_nothing_of_slurm(tmp_path: Path,
                                           recording_slurm_tools: tuple[dict[str, str], Path]
                                           ) -> None:
    env, calls = recording_slurm_tools
    _, plan = run_planned(tmp_path, "-n", env=env)
    assert plan["catalog_images"] > 0
    assert Path(SNAKEMAKE).parent.name == "bin"
    assert not calls.exists(), calls.read_text()


def test_the_cluster_environment_does_load_the_slurm_plugin(
        tmp_path: Path, recording_slurm_tools: tuple[dict[str, str], Path]) -> None:
    """The probe above can see a call: the cluster environment's snakemake makes one at start."""
    env, calls = recording_slurm_tools
    assert Path(CLUSTER_SNAKEMAKE).exists(), "run `make cluster-env` first"
    run_snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "slurm"), env=env,
                  check=False)
    assert calls.exists()
    assert any(line.startswith("scontrol") or line.startswith("sinfo")
               for line in calls.read_text().splitlines())
