"""The conda environment of the rules stays in step with pyproject.toml.

Users who run ``--software-deployment-method conda`` get the rules' software from envs/*.yaml;
everyone else from pyproject.toml. Conda itself is not run here: the files are compared.
"""

from __future__ import annotations

import re
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.support import REPO

# The workflow engine runs outside the rules' environments (it creates them).
NOT_IN_ENVS = {"snakemake"}
# Extras whose packages the jobs themselves import (results in a bucket: boto3).
JOB_EXTRAS = ("s3",)
# Conda package names that differ from the PyPI ones.
CONDA_NAMES = {"duckdb": "python-duckdb"}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def env_specs(path) -> dict[str, str]:
    """Package name -> version constraint (conda match spec, spaces removed) of an env file."""
    document = yaml.safe_load(path.read_text())
    specs = {}
    for entry in document["dependencies"]:
        assert isinstance(entry, str), f"{path.name}: unexpected entry {entry!r}"
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", entry.strip())
        assert match, f"{path.name}: cannot read {entry!r}"
        specs[match[1].lower()] = match[2].replace(" ", "")
    return specs


def runtime_requirements() -> dict[str, Requirement]:
    """What the rules' jobs import: the core dependencies and, of the extras the jobs use, what
    is not a Snakemake plugin (plugins run in Snakemake's own process)."""
    project = pyproject()["project"]
    listed = [*project["dependencies"],
              *(r for extra in JOB_EXTRAS for r in project["optional-dependencies"][extra])]
    requirements = (Requirement(r) for r in listed)
    return {r.name.lower(): r for r in requirements
            if r.name.lower() not in NOT_IN_ENVS and not r.name.lower().startswith("snakemake-")}


def rule_env_files() -> set[str]:
    names = set()
    for rules in [REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]:
        names.update(re.findall(r'conda:\s*\n\s*"\.\./\.\./envs/([^"]+)"', rules.read_text()))
    return names


def test_every_rule_env_exists_and_every_env_is_used() -> None:
    used = rule_env_files()
    assert used, "no rule declares a conda environment"
    assert used == {p.name for p in (REPO / "envs").glob("*.yaml")}


def test_envs_pin_what_pyproject_pins() -> None:
    wanted = runtime_requirements()
    for env in (REPO / "envs").glob("*.yaml"):
        specs = env_specs(env)
        for name, requirement in wanted.items():
            conda_name = CONDA_NAMES.get(name, name)
            assert conda_name in specs, f"{env.name} lacks {conda_name} (pyproject: {requirement})"
            assert SpecifierSet(specs[conda_name]) == requirement.specifier, (
                f"{env.name}: {conda_name} {specs[conda_name]!r} differs from pyproject's "
                f"{str(requirement.specifier)!r}")
        extra = set(specs) - {CONDA_NAMES.get(n, n) for n in wanted} - {"python"}
        assert not extra, f"{env.name} has packages pyproject does not: {sorted(extra)}"


def test_envs_python_satisfies_requires_python() -> None:
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    for env in (REPO / "envs").glob("*.yaml"):
        spec = env_specs(env).get("python")
        assert spec, f"{env.name} does not pin python"
        match = re.fullmatch(r"=?=?(\d+\.\d+)(\.\*)?", spec)
        assert match, f"{env.name}: pin python to one minor version, e.g. '=3.11', not {spec!r}"
        assert Version(match[1]) in requires, f"{env.name}: python {spec} vs {requires}"


def test_envs_use_conda_forge_only() -> None:
    for env in (REPO / "envs").glob("*.yaml"):
        channels = yaml.safe_load(env.read_text())["channels"]
        assert channels[0] == "conda-forge" and "defaults" not in channels, env.name
