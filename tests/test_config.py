"""Tests for thumbfeat.config: config mistakes end with a message naming key, value and rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from thumbfeat.config import (
    ConfigError,
    check_against_schema,
    coerce_to_schema,
    describe,
    fetch_settings,
)

from tests.support import REPO, run_snakemake, write_catalog

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
DEFAULTS = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def problem(**changes: Any) -> str:
    """The message for the defaults with ``changes`` (values as they come from --config)."""
    config = {**DEFAULTS, **changes}
    with pytest.raises(ConfigError) as caught:
        check_against_schema(coerce_to_schema(config, SCHEMA), SCHEMA)
    return str(caught.value)


def test_defaults_pass() -> None:
    check_against_schema(coerce_to_schema(DEFAULTS, SCHEMA), SCHEMA)


def test_describe_says_what_is_allowed() -> None:
    props = SCHEMA["properties"]
    assert describe(props["download"]["properties"]["max_attempts"]) == (
        "an integer from 1 to 20")
    assert describe(props["progress_interval"]) == "a number > 0"
    assert describe(props["batch_size"]) == "an integer from 1 to 100000 or one of 'auto'"
    assert describe(props["retry_failed"]) == "true or false"
    assert describe(props["local_file_roots"]) == "a list of strings"
    assert describe({"type": "integer", "minimum": 0}) == "an integer >= 0"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"download": {"max_attempts": "x"}},
         "config key 'download.max_attempts': value 'x' is not allowed: "
         "expected an integer from 1 to 20"),
        ({"download": {"max_attempts": 0}},
         "config key 'download.max_attempts': value 0 is not allowed: "
         "expected an integer from 1 to 20"),
        ({"batch_size": "huge"},
         "config key 'batch_size': value 'huge' is not allowed: "
         "expected an integer from 1 to 100000 or one of 'auto'"),
        ({"progress_interval": "-2"},
         "config key 'progress_interval': value -2 is not allowed: expected a number > 0"),
        ({"retry_failed": "maybe"},
         "config key 'retry_failed': value 'maybe' is not allowed: expected true or false"),
        ({"url_template": "http://h/x.jpg"},
         "config key 'url_template': value 'http://h/x.jpg' is not allowed: expected a string "
         "matching the pattern \\{image_id\\} or null"),
        ({"local_file_roots": [3]},
         "config key 'local_file_roots[0]': value 3 is not allowed: expected a string"),
        ({"batch_sise": 10},
         "config key 'batch_sise' is not known (allowed: batch_mem_mb, batch_runtime, batch_size,"),
        ({"download": {"retries": 3}},
         "config key 'download.retries' is not known under 'download' (allowed: backoff_base,"),
    ],
)
def test_mistakes_are_named(changes: dict[str, Any], message: str) -> None:
    assert message in problem(**changes)


def test_a_missing_required_key_is_named() -> None:
    config = {k: v for k, v in DEFAULTS.items() if k != "catalog"}
    with pytest.raises(ConfigError, match="config key 'catalog' is required"):
        check_against_schema(config, SCHEMA)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "catalog={catalog}", "download={{max_attempts: x}}"],
         "config key 'download.max_attempts': value 'x' is not allowed: "
         "expected an integer from 1 to 20"),
        (["--config", "catalog={catalog}", "batch_threads=-1"],
         "config key 'batch_threads': value -1 is not allowed: expected an integer >= 1"),
        (["--config", "catalog={catalog}", "batch_size=many"],
         "config key 'batch_size': value 'many' is not allowed: expected an integer from 1 "
         "to 100000 or one of 'auto'"),
        (["--config", "catalog={catalog}", "colour=red"],
         "config key 'colour' is not known (allowed: "),
        (["--configfile", "{bad}"],
         "config key 'report.sheet_images': value 'lots' is not allowed: "
         "expected an integer from 1 to 200"),
    ],
)
def test_snakemake_stops_before_any_work(tmp_path: Path, args: list[str], message: str) -> None:
    catalog = write_catalog(tmp_path / "catalog.csv", [("a", "http://127.0.0.1:9/a.jpg")])
    (tmp_path / "bad.yaml").write_text(f"catalog: {catalog}\nreport: {{sheet_images: lots}}\n")
    args = [a.format(catalog=catalog, bad=tmp_path / "bad.yaml") for a in args]
    result = run_snakemake(tmp_path, *args, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output
    assert "thumbfeat plan" not in output
    assert not (tmp_path / "results").exists()


# --- download settings ----------------------------------------------------------------------


def test_download_settings_reach_the_fetcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CONFIG_TEST_KEY", "s3cr3t-config-value")
    download = {**DEFAULTS["download"], "host_rate_limit": 12, "host_max_connections": 4,
                "host_limits": {"slow.example": {"rate": 1}},
                "headers": {"X-Team": "vision"}, "header_env": {"X-Api-Key": "TF_CONFIG_TEST_KEY"}}
    config = {**DEFAULTS, "download": download, "local_file_roots": []}
    check_against_schema(coerce_to_schema(config, SCHEMA), SCHEMA)
    settings = fetch_settings(config, REPO)
    assert (settings.host_rate_limit, settings.host_max_connections) == (12, 4)
    assert settings.host_limits == {"slow.example": {"rate": 1}}
    assert settings.header_env == {"X-Api-Key": "TF_CONFIG_TEST_KEY"}
    assert settings.rate_share == 1.0  # set by the workflow from its job slots
    # The secret's value is read by the jobs, never kept in the settings.
    assert "s3cr3t-config-value" not in repr(settings)


def test_a_missing_secret_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG_TEST_KEY", raising=False)
    config = {**DEFAULTS, "local_file_roots": [],
              "download": {"header_env": {"Authorization": "TF_CONFIG_TEST_KEY"}}}
    with pytest.raises(ConfigError, match="'TF_CONFIG_TEST_KEY' for the 'Authorization' header"):
        fetch_settings(config, REPO)


@pytest.mark.parametrize(
    ("download", "message"),
    [
        ({"host_limits": {"a.example": {"rate": "fast"}}}, "download.host_limits.a.example.rate"),
        ({"header_env": {"X-Key": "not a name"}}, "download.header_env.X-Key"),
        ({"host_max_connections": -1}, "download.host_max_connections"),
    ],
)
def test_download_mistakes_are_named(download: dict[str, Any], message: str) -> None:
    assert message in problem(download={**DEFAULTS["download"], **download})
