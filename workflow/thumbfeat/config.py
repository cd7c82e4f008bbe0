"""Turning the validated workflow config into the settings objects of each module.

Relative paths in the config are looked up in the working directory first, then next to the
workflow (the repository), so the bundled demo works from any directory while a user's own relative
paths mean what they expect.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thumbfeat.catalog import CatalogSpec
from thumbfeat.dbcatalog import DEFAULT_TABLE, SUFFIXES, CatalogKey, DatabaseError, find_catalog_key
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
                          "(a .csv, .tsv or .parquet file, or a DuckDB or SQLite database)")
    spec = CatalogSpec(
        path=resolve_path(str(config["catalog"]), basedir, "catalog"),
        id_column=config.get("id_column", "image_id"),
        url_column=config.get("url_column", "url"),
        url_template=config.get("url_template"),
        row_filter=dict(config.get("filter") or {}),
        table=config.get("catalog_table") or DEFAULT_TABLE,
        query=config.get("catalog_query") or None,
    )
    if not spec.is_database:
        for key in ("catalog_query", "catalog_write_back", "catalog_key"):
            if config.get(key):
                raise ConfigError(f"config key {key!r} applies to database catalogs "
                                  f"({', '.join(sorted(SUFFIXES))}), not to {spec.path}")
    return spec


def catalog_key(config: Mapping[str, Any], spec: CatalogSpec) -> CatalogKey | None:
    """The column of a database catalog's table holding the ids (see dbcatalog.find_catalog_key)."""
    if not spec.is_database:
        return None
    try:
        return find_catalog_key(spec.path, spec.table, spec.id_column,
                                config.get("catalog_key") or None,
                                write_back=bool(config.get("catalog_write_back")))
    except DatabaseError as exc:
        raise ConfigError(str(exc)) from exc


@dataclass(frozen=True)
class WarehouseSettings:
    """Where the feature table is loaded (the ``warehouse`` part of the config)."""

    enabled: bool = True
    path: str = f"{RESULTS}/warehouse.duckdb"
    table: str = "feature_image_visual"
    # Mirror the table (delete rows of images it does not hold) instead of accumulating.
    prune: bool = False


def warehouse_settings(config: Mapping[str, Any]) -> WarehouseSettings:
    return WarehouseSettings(**dict(config.get("warehouse") or {}))


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


def job_logger(log_path: str, name: str, *, echo: bool = False) -> logging.Logger:
    """A logger writing timestamped lines to a job's log file, and to stderr when ``echo``.

    Snakemake passes a job's stderr through to the terminal, so echoed lines (progress) are seen
    while the job runs, and the log file keeps them for later.
    """
    logger = logging.getLogger(f"thumbfeat.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    if echo:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(handler.formatter)
        logger.addHandler(stream)
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
    if "integer" in allowed or "number" in allowed:  # a whole number is a number too
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
    raise ConfigError(f"config key {key!r}: value {value!r} is not allowed: "
                      f"expected {describe(schema)}")


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


_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string",
               "boolean": "true or false", "array": "a list", "object": "a mapping",
               "null": "null"}


def _bounds(schema: Mapping[str, Any]) -> str:
    """The numeric limits of a schema, as a person writes them."""
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        return f" from {low} to {high}"
    parts = []
    if low is not None:
        parts.append(f">= {low}")
    if schema.get("exclusiveMinimum") is not None:
        parts.append(f"> {schema['exclusiveMinimum']}")
    if high is not None:
        parts.append(f"<= {high}")
    if schema.get("exclusiveMaximum") is not None:
        parts.append(f"< {schema['exclusiveMaximum']}")
    return (" " + " and ".join(parts)) if parts else ""


def describe(schema: Mapping[str, Any]) -> str:
    """What a schema allows, in words: "an integer >= 1", "one of 'auto'", "a list of strings"."""
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(describe(option) for option in schema["anyOf"])
    types = schema.get("type")
    names = types if isinstance(types, list) else [types] if types else []
    words = []
    for name in names:
        word = _TYPE_NAMES.get(name, str(name))
        if name in ("integer", "number"):
            word += _bounds(schema)
        elif name == "string":
            if schema.get("minLength"):
                word = "a non-empty string"
            if "pattern" in schema:
                word += f" matching the pattern {schema['pattern']}"
        elif name == "array" and isinstance(schema.get("items"), Mapping):
            item = describe(schema["items"])
            simple = item.count(" ") <= 2 and " or " not in item
            word += (f" of {item.split(' ', 1)[1]}s" if simple and item.startswith("a")
                     else f" whose items are each {item}")
        words.append(word)
    return " or ".join(words) or "a value matching the schema"


def key_path(parts: Iterable[str | int]) -> str:
    """``download.max_attempts``, ``local_file_roots[0]``: a config key as a person writes it."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def check_against_schema(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Raise ConfigError for the first config value the schema refuses, naming key and value.

    jsonschema's own messages name a schema path, not the key a user typed; this turns the
    error into "config key 'download.max_attempts': value 0 is not allowed: expected ...".
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(dict(config)))
    if error is None:
        return
    # An anyOf error's best match is one branch; name what the whole property allows.
    while error.parent is not None and error.parent.validator == "anyOf":
        error = error.parent
    key = key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        where = f"under {key!r} " if key else ""
        raise ConfigError(f"config key {'.'.join(filter(None, [key, str(unknown[0])]))!r} "
                          f"is not known {where}(allowed: {', '.join(allowed)})")
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        name = ".".join(filter(None, [key, missing[0]]))
        raise ConfigError(f"config key {name!r} is required: expected "
                          f"{describe(error.schema['properties'][missing[0]])}")
    raise ConfigError(f"config key {key!r}: value {error.instance!r} is not allowed: "
                      f"expected {describe(error.schema)}")
