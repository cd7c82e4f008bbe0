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
