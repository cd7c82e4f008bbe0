"""Turning the validated workflow config into the settings objects of each module.

Relative paths in the config are looked up in the working directory first, then next to the
workflow (the repository), so the bundled demo works from any directory while a user's own relative
paths mean what they expect.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from thumbfeat.catalog import CatalogSpec
from thumbfeat.fetch import FetchSettings

RESULTS = "results"


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and what is allowed."""


def resolve_path(value: str, basedir: str | Path, key: str) -> Path:
    """Find ``value`` under the working directory, else under the workflow's own folder."""
    candidate = Path(value).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    beside_workflow = Path(basedir) / candidate
    if beside_workflow.exists():
        return beside_workflow
    raise ConfigError(
        f"config key {key!r}: {value!r} was not found (looked in {Path.cwd()} and {basedir})"
    )


def catalog_spec(config: Mapping[str, Any], basedir: str | Path) -> CatalogSpec:
    if not config.get("catalog"):
        raise ConfigError("config key 'catalog' is not set: pass --config catalog=PATH "
                          "(a .csv, .tsv or .parquet file)")
    return CatalogSpec(
        path=resolve_path(str(config["catalog"]), basedir, "catalog"),
        id_column=config.get("id_column", "image_id"),
        url_column=config.get("url_column", "url"),
        url_template=config.get("url_template"),
        row_filter=dict(config.get("filter") or {}),
    )


def fetch_settings(config: Mapping[str, Any], basedir: str | Path) -> FetchSettings:
    download = dict(config.get("download") or {})
    roots = tuple(
        str(resolve_path(str(root), basedir, "local_file_roots").resolve())
        for root in config.get("local_file_roots") or []
    )
    known = set(FetchSettings.__dataclass_fields__) - {"local_file_roots", "rate_share"}
    unknown = set(download) - known
    if unknown:
        raise ConfigError(f"config key 'download' has unknown keys {sorted(unknown)}; "
                          f"allowed: {sorted(known)}")
    for header, variable in (download.get("header_env") or {}).items():
        # Only whether it is set is checked here: the value is read by the jobs themselves.
        if not os.environ.get(variable):
            raise ConfigError(f"config key 'download.header_env': the environment variable "
                              f"{variable!r} for the {header!r} header is not set")
    return FetchSettings(local_file_roots=roots, **download)


def rate_share(slots: int, batches: int) -> float:
    """Each batch job's share of the per-host limits: one over the jobs that can run at once."""
    return 1.0 / max(1, min(slots, batches))


def job_logger(log_path: str, name: str) -> logging.Logger:
    """A logger writing timestamped lines to a job's log file (and nowhere else)."""
    logger = logging.getLogger(f"thumbfeat.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    return logger


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value: Any, schema: Mapping[str, Any], key: str) -> Any:
    """Convert one command-line string to the type the schema asks for."""
    types = schema.get("type")
    allowed = set(types) if isinstance(types, list) else {types}
    if isinstance(value, dict) and "properties" in schema:
        return coerce_to_schema(value, schema, prefix=f"{key}.")
    if not isinstance(value, str):
        return value
    text = value.strip()
    if "null" in allowed and text.lower() in {"null", "none", "~", ""}:
        return None
    if "boolean" in allowed:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
    if "integer" in allowed:
        try:
            return int(text)
        except ValueError:
            pass
    if "number" in allowed:
        try:
            return float(text)
        except ValueError:
            pass
    if "string" in allowed:
        return value
    expected = " or ".join(sorted(str(t) for t in allowed))
    raise ConfigError(f"config key {key!r}: {value!r} is not a valid {expected}")


def coerce_to_schema(config: Mapping[str, Any], schema: Mapping[str, Any],
                     prefix: str = "") -> dict[str, Any]:
    """Give command-line values their schema types before validation.

    ``snakemake --config retry_failed=true`` passes the string ``"true"`` (Snakemake only turns
    ``True``/``False`` into booleans), and values inside dicts stay strings; people expect both to
    work as written.
    """
    properties = schema.get("properties", {})
    coerced = dict(config)
    for key, value in config.items():
        if key in properties:
            coerced[key] = _coerce(value, properties[key], f"{prefix}{key}")
    return coerced
