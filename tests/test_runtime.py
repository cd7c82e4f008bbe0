"""Tests for thumbfeat.runtime: the per-process settings take effect and are applied once."""

from __future__ import annotations

import subprocess
import sys

from thumbfeat import runtime


def test_settings_apply_on_this_platform() -> None:
    # In a fresh interpreter, so this test process keeps its own settings.
    code = ("from thumbfeat.runtime import tune_for_measuring; "
            "print(tune_for_measuring())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    # glibc's mallopt and numpy's bundled OpenBLAS are what this project runs on (Linux).
    assert out == "(True, True)"


def test_tuning_is_done_once_per_process() -> None:
    first = runtime.tune_for_measuring()
    assert runtime.tune_for_measuring() is first


def test_blas_libraries_are_found_among_loaded_objects() -> None:
    import numpy  # noqa: F401

    assert any("blas" in path.lower() for path in runtime._loaded_blas_libraries())
