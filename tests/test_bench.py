"""The benchmarks stay runnable: every script in bench/ imports (its measuring needs nginx)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

SCRIPTS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "bench").glob("*.py")
                 if p.stem != "__init__")


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_script_imports(name: str) -> None:
    module = importlib.import_module(f"bench.{name}")
    if name != "common":
        assert callable(getattr(module, "main", None)), f"bench/{name}.py has no main()"


def test_store_cpus_are_read_as_a_list_with_ranges() -> None:
    from bench.bench_s3 import parse_cpus

    assert parse_cpus("1") == {1}
    assert parse_cpus("0,2-4") == {0, 2, 3, 4}


def test_store_cpus_leave_the_workflow_at_least_one() -> None:
    from bench.bench_s3 import split_cpus

    assert split_cpus({1}, {0, 1}) == {0}
    with pytest.raises(SystemExit, match="leave at least one"):
        split_cpus({0, 1}, {0, 1})
    with pytest.raises(SystemExit, match="may only use CPUs"):
        split_cpus({5}, {0, 1})
