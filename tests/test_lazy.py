"""Tests for thumbfeat.lazy: a parse loads neither numba nor DuckDB."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from thumbfeat.lazy import lazy_module

WORKFLOW = Path(__file__).resolve().parent.parent / "workflow"


def test_what_a_parse_imports_leaves_the_kernels_unloaded_until_first_used() -> None:
    script = (
        f"import sys; sys.path.insert(0, {str(WORKFLOW)!r})\n"
        "import thumbfeat.run, thumbfeat.rows, thumbfeat.features, thumbfeat.batch\n"
        "import thumbfeat.config, thumbfeat.dbcatalog, thumbfeat.warehouse\n"
        "assert 'numba' not in sys.modules, 'numba loaded at import'\n"
        "assert '_duckdb' not in sys.modules, 'duckdb loaded at import'\n"
        "from thumbfeat.features import FEATURE_VERSION, warm_kernels\n"
        "warm_kernels()\n"
        "assert 'numba' in sys.modules\n"
        "print(FEATURE_VERSION)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_a_lazy_module_is_the_loaded_one_once_imported_and_a_missing_one_is_an_error() -> None:
    import json

    assert lazy_module("json") is json
    with pytest.raises(ModuleNotFoundError, match="no_such_thumbfeat_module"):
        lazy_module("no_such_thumbfeat_module")
