"""Benchmark: how long a local no-op run takes when SLURM's tools are there but no controller is.

Snakemake imports every installed executor plugin at each start; the SLURM plugin asks `scontrol`
for the cluster's configuration while it is imported. With SLURM's client tools installed and the
controller down, that call hangs until it gives up (about 9 s measured here). This benchmark puts
stand-ins for SLURM's tools first on PATH that wait ``--controller-wait`` seconds and fail, as a
dead controller does, then times a no-op run of the demo (everything already built) with the
local environment (.venv, no cluster plugin) and the cluster environment (.venv-cluster, `make
cluster-env`), taking turns, and writes its section into BENCHMARKS.md.

    .venv/bin/python bench/startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, publish  # noqa: E402

SLURM_TOOLS = ("scontrol", "sinfo", "squeue", "sacct", "sbatch")
ENVIRONMENTS = {"local (.venv)": ROOT / ".venv" / "bin" / "snakemake",
                "cluster (.venv-cluster)": ROOT / ".venv-cluster" / "bin" / "snakemake"}


def dead_controller_tools(folder: Path, wait_s: float) -> dict[str, str]:
    """SLURM client stand-ins that hang for ``wait_s`` and fail; the environment to use them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SLURM_TOOLS:
        tool = folder / name
        tool.write_text(f"#!/bin/sh\nsleep {wait_s}\n"
                        "echo 'Unable to contact slurm controller' >&2\nexit 1\n")
        tool.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--controller-wait", type=float, default=9.0)
    args = parser.parse_args()
    missing = [str(p) for p in ENVIRONMENTS.values() if not p.exists()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run `make test` or `make cluster-env`")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        env = dead_controller_tools(work / "tools", args.controller_wait)
        base = ["-s", str(ROOT / "Snakefile"), "--directory", str(work / "run"), "--cores", "2"]
        (work / "run").mkdir()
        # Build the demo once; every timed run after that is a no-op.
        subprocess.run([str(ENVIRONMENTS["local (.venv)"]), *base], check=True,
                       capture_output=True)
        seconds: dict[str, list[float]] = {name: [] for name in ENVIRONMENTS}
        for _ in range(args.repeats):
            for name, snakemake in ENVIRONMENTS.items():
                seconds[name].append(timed([str(snakemake), *base], work, env))
    local = statistics.median(seconds["local (.venv)"])
    lines = [
        "## Start-up with SLURM's tools but no controller",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}. A no-op run of the demo "
        f"(all built), with stand-ins for SLURM's tools on PATH that wait "
        f"{args.controller_wait:g} s and fail (a dead controller); the two environments take "
        f"turns, {args.repeats} repeats. Reproduce: `.venv/bin/python bench/startup.py`.",
        "",
        "| environment | no-op run, median (min-max) | vs local |",
        "| --- | --- | --- |",
    ]
    for name, values in seconds.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.2f} s ({min(values):.2f}-{max(values):.2f}) | "
                     f"{median / local:.1f}x |")
    lines += ["", "The local environment holds no executor plugin, so it never asks SLURM "
              "anything; the cluster environment pays the wait at every start, as any "
              "environment with the SLURM plugin does (upstream behaviour)."]
    publish(ROOT / "BENCHMARKS.md", lines)


if __name__ == "__main__":
    main()
