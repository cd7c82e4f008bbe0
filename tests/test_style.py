"""The repository stays clean under its own linters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import REPO, SNAKEMAKE

BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_clean() -> None:
    result = run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_clean() -> None:
    result = run(str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules")
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakemake_lint_clean(tmp_path: Path) -> None:
    result = run(SNAKEMAKE, "--lint", "--directory", str(tmp_path), "-s", str(REPO / "Snakefile"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr
