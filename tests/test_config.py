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
    config_files_in_merge_order,
    describe,
    fetch_settings,
    filter_as_written,
    repeated_options,
    written_filter,
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
        (["--config", "catalog={catalog}", "near_duplicate_distance=6.5"],
         "config key 'near_duplicate_distance': value 6.5 is not allowed: "
         "expected an integer from 0 to 32"),
        (["--config", "catalog={catalog}", "download={{concurrency: 2.5}}"],
         "config key 'download.concurrency': value '2.5' is not allowed: "
         "expected an integer from 1 to 512"),
        (["--config", "catalog={catalog}", "--config", "batch_size=50"],
         "--config is given 2 times, but Snakemake keeps only the last one (it would ignore: "
         "catalog="),
        (["--configfile", "{bad}", "--configfile", "{bad}"],
         "--configfile is given 2 times"),
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
    assert "Traceback" not in output
    assert "thumbfeat plan" not in output
    assert not (tmp_path / "results").exists()


# --- whole floats ---------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "expected"), [
    ({"near_duplicate_distance": 6.0}, {"near_duplicate_distance": 6}),
    ({"batch_size": 10.0}, {"batch_size": 10}),
    ({"batch_size": "10.0"}, {"batch_size": 10}),
    ({"max_pixels": 1e6}, {"max_pixels": 1000000}),
    ({"progress_interval": 2.5}, {"progress_interval": 2.5}),
    ({"download": {"max_attempts": "3.0", "backoff_base": "0.25"}},
     {"download": {"max_attempts": 3, "backoff_base": 0.25}}),
    ({"download": {"host_limits": {"h.example": {"rate": "2", "connections": 2.0}}}},
     {"download": {"host_limits": {"h.example": {"rate": 2, "connections": 2}}}}),
])
def test_whole_floats_become_integers(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    coerced = coerce_to_schema({**DEFAULTS, **changes}, SCHEMA)
    check_against_schema(coerced, SCHEMA)
    for key, value in expected.items():
        assert coerced[key] == value
        if isinstance(value, int):
            assert type(coerced[key]) is int
    if "download" in expected and "host_limits" in expected["download"]:
        connections = coerced["download"]["host_limits"]["h.example"]["connections"]
        assert type(connections) is int


@pytest.mark.parametrize(("changes", "message"), [
    ({"near_duplicate_distance": 6.5}, "config key 'near_duplicate_distance': value 6.5"),
    ({"batch_size": "10.5"}, "config key 'batch_size': value '10.5'"),
    ({"batch_size": float("inf")}, "config key 'batch_size': value inf"),
    ({"download": {"max_attempts": 2.5}}, "config key 'download.max_attempts': value 2.5"),
])
def test_fractional_numbers_are_refused_where_integers_are_needed(
        changes: dict[str, Any], message: str) -> None:
    assert message in problem(**changes)


# --- filters as written ---------------------------------------------------------------------


def test_written_filter_keeps_the_text(tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text("catalog: c.csv\nfilter: {flag: true, code: 010, score: 1.50, "
                    "blank: '', any: [yes, 007]}\n")
    assert written_filter(path) == {"flag": "true", "code": "010", "score": "1.50",
                                    "blank": "", "any": ["yes", "007"]}
    (tmp_path / "none.yaml").write_text("catalog: c.csv\n")
    assert written_filter(tmp_path / "none.yaml") is None
    (tmp_path / "broken.yaml").write_text("filter: {flag: [\n")
    assert written_filter(tmp_path / "broken.yaml") is None
    assert written_filter(tmp_path / "missing.yaml") is None


def test_filter_as_written_follows_snakemakes_merge_order() -> None:
    # What Snakemake merged from typed YAML: 010 became 8, 1.50 became 1.5.
    effective = {"code": 8, "score": 1.5, "flag": True, "other": 3}
    written = [{"code": "999"}, {"code": "010", "score": "1.50"}, None, {"flag": "true"}]
    assert filter_as_written(effective, written) == {
        "code": "010", "score": "1.50", "flag": "true", "other": "3"}
    # Values set in no layer are turned into text from their type.
    assert filter_as_written({"a": False, "b": [1, "x"]}, []) == {"a": "false", "b": ["1", "x"]}
    # What is not a mapping is left for the schema check to name.
    assert filter_as_written("flag", [{"flag": "true"}]) == "flag"


def test_config_files_in_merge_order(tmp_path: Path) -> None:
    own, first, second = (tmp_path / n for n in ("config.yaml", "a.yaml", "b.yaml"))
    # Snakemake lists --configfile files first and appends the workflow's own.
    assert config_files_in_merge_order([first, second, own], [first, second], False) == [
        own, first, second]
    assert config_files_in_merge_order([first, own], [first], True) == [first]


@pytest.mark.parametrize(("argv", "count"), [
    (["--cores", "2", "--config", "a=1", "b=2"], 0),
    (["--config", "a=1", "--config", "b=2"], 1),
    (["-C", "a=1", "--cores", "1", "--config=b=2"], 1),
    (["--configfile", "x.yaml", "--configfiles", "y.yaml", "--config", "a=1"], 1),
    (["--config", "a=1", "-C", "b=2", "--configfile", "x", "--configfile", "y"], 2),
])
def test_repeated_options_are_named(argv: list[str], count: int) -> None:
    messages = repeated_options(argv)
    assert len(messages) == count
    if count:
        assert "keeps only the last one" in messages[0]


def test_repeated_config_message_shows_the_one_that_works() -> None:
    [message] = repeated_options(["--config", "catalog=my cat.csv", "--config", "batch_size=50"])
    assert "it would ignore: 'catalog=my cat.csv'" in message
    assert message.endswith("--config 'catalog=my cat.csv' batch_size=50")


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


def test_validated_config_with_sources_reads_filters_as_written_and_refuses_repeats(
        tmp_path: Path) -> None:
    from thumbfeat.config import ConfigSources, validated_config

    written = tmp_path / "mine.yaml"
    written.write_text("filter: {code: 010, flag: yes}\n")
    config = {**DEFAULTS, "filter": {"code": 8, "flag": True}}  # as YAML typed them
    sources = ConfigSources(files=[written], command_line={}, argv=["--cores", "1"])
    assert validated_config(config, SCHEMA, sources)["filter"] == {"code": "010", "flag": "yes"}
    repeated = ConfigSources(argv=["--config", "catalog=x.csv", "--config", "batch_size=50"])
    with pytest.raises(ConfigError, match="--config is given 2 times"):
        validated_config(config, SCHEMA, repeated)
