"""Turning the validated workflow config into the settings objects of each module.

Relative paths in the config are looked up in the working directory first, then next to the
workflow (the repository), so the bundled demo works from any directory while a user's own relative
paths mean what they expect.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thumbfeat import layout, storage
from thumbfeat.catalog import CatalogSpec, local_copy
from thumbfeat.dbcatalog import DEFAULT_TABLE, SUFFIXES, CatalogKey, DatabaseError, find_catalog_key
from thumbfeat.fetch import FetchSettings


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


def catalog_path(value: str, basedir: str | Path) -> Path:
    """The catalog file to read: a local file, or a local copy of an ``s3://`` object."""
    if storage.is_remote(value):
        return local_copy(value)
    return resolve_path(value, basedir, "catalog")


def catalog_spec(config: Mapping[str, Any], basedir: str | Path) -> CatalogSpec:
    if not config.get("catalog"):
        raise ConfigError("config key 'catalog' is not set: pass --config catalog=PATH "
                          "(a .csv, .tsv or .parquet file, or a DuckDB or SQLite database)")
    spec = CatalogSpec(
        path=catalog_path(str(config["catalog"]), basedir),
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
    path: str = f"{layout.RESULTS}/warehouse.duckdb"
    table: str = "feature_image_visual"
    # Mirror the table (delete rows of images it does not hold) instead of accumulating.
    prune: bool = False


def warehouse_settings(config: Mapping[str, Any]) -> WarehouseSettings:
    return WarehouseSettings(**dict(config.get("warehouse") or {}))


def fetch_settings(config: Mapping[str, Any], basedir: str | Path,
                   environ: Mapping[str, str] = os.environ) -> FetchSettings:
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
        if not environ.get(variable):
            raise ConfigError(f"config key 'download.header_env': the environment variable "
                              f"{variable!r} for the {header!r} header is not set")
    return FetchSettings(local_file_roots=roots, **download)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value: Any, schema: Mapping[str, Any], key: str) -> Any:
    """Convert one command-line string to the type the schema asks for."""
    types = schema.get("type")
    allowed = set(types) if isinstance(types, list) else {types}
    if isinstance(value, dict) and "properties" in schema:
        return coerce_to_schema(value, schema, prefix=f"{key}.")
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), Mapping):
        inner = schema["additionalProperties"]
        if "properties" in inner:
            return {name: _coerce(item, inner, f"{key}.{name}") for name, item in value.items()}
    if isinstance(value, float) and "integer" in allowed and "number" not in allowed:
        # JSON Schema counts 6.0 as an integer, but Python code given 6.0 fails where it needs
        # an int: a whole float becomes the int, any other is left for the schema to refuse.
        return int(value) if value.is_integer() else value
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
    if "integer" in allowed and "number" not in allowed:
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None and number.is_integer():
            return int(number)
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


def written_filter(path: str | Path) -> object:
    """The ``filter`` of a config file with every value as the text written there.

    YAML turns ``010`` into 8 and ``1.50`` into 1.5, while ``--config`` hands the same words over
    as text; reading the file again without typing lets both ways mean the same thing. None when
    the file has no filter or cannot be read this way (its typed values are used then).
    """
    import yaml

    try:
        content = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return content.get("filter") if isinstance(content, dict) else None


def _filter_text(value: object) -> object:
    """A filter value as text: booleans as true/false, numbers as Python writes them."""
    if isinstance(value, list):
        return [_filter_text(item) for item in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return str(value)
    return value


def filter_as_written(effective: object, written: Sequence[object]) -> object:
    """The row filter with each value as its text was written, whichever way it came.

    ``effective`` is the filter Snakemake merged; ``written`` are the same filters read as text,
    in Snakemake's merge order (the workflow's config file, each --configfile, then --config),
    merged the same way: key by key. A value found in no written layer (set some other way) is
    turned into text from its type. Anything that is not a mapping is left for the schema check.
    """
    if not isinstance(effective, Mapping):
        return effective
    merged: dict[str, object] = {}
    for layer in written:
        if isinstance(layer, Mapping):
            merged.update(layer)
        elif layer is not None:
            merged = {}
    return {key: _filter_text(merged.get(key, value)) for key, value in effective.items()}


def config_files_in_merge_order(all_files: Sequence[str | Path], cli_files: Sequence[Path],
                                replace_workflow_config: bool) -> list[Path]:
    """The workflow's own config files (unless replaced), then those of --configfile, in order.

    Snakemake lists the --configfile files first and appends the workflow's own as it reads
    them, but applies the command line on top of the workflow's file.
    """
    cli = [Path(f).absolute() for f in cli_files]
    own = [] if replace_workflow_config else [
        Path(f) for f in all_files if Path(f).absolute() not in cli]
    return own + cli


REPEATABLE_OPTIONS = {"--config": ("--config", "-C"), "--configfile": ("--configfile",
                                                                       "--configfiles")}


def repeated_options(argv: Sequence[str]) -> list[str]:
    """Messages for --config or --configfile given more than once on the command line.

    Snakemake keeps only the values after the last occurrence, so ``--config catalog=X
    --config batch_size=50`` would quietly forget the catalog.
    """
    messages = []
    for name, spellings in REPEATABLE_OPTIONS.items():
        groups: list[list[str]] = []
        current: list[str] | None = None
        for arg in argv:
            flag, _, inline = arg.partition("=")
            if flag in spellings:
                current = [inline] if inline else []
                groups.append(current)
            elif arg.startswith("-"):
                current = None
            elif current is not None:
                current.append(arg)
        if len(groups) > 1:
            lost = shlex.join(v for group in groups[:-1] for v in group) or "(nothing)"
            messages.append(
                f"{name} is given {len(groups)} times, but Snakemake keeps only the last one "
                f"(it would ignore: {lost}); give every value after a single {name}, e.g. "
                f"{name} {shlex.join(v for group in groups for v in group)}")
    return messages


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


@dataclass(frozen=True)
class ConfigSources:
    """Where Snakemake took the config from: its files in merge order, --config, the command line.

    ``argv`` is empty in a job process: only the command a person typed is checked for options
    Snakemake would quietly drop.
    """

    files: Sequence[Path] = ()
    command_line: Mapping[str, Any] = field(default_factory=dict)
    argv: Sequence[str] = ()

    @classmethod
    def of_snakemake(cls, workflow: Any, argv: Sequence[str]) -> ConfigSources:
        """The sources of a Snakemake workflow object's config (read at parse time)."""
        settings = workflow.config_settings
        return cls(
            files=config_files_in_merge_order(workflow.configfiles, settings.configfiles,
                                              settings.replace_workflow_config),
            command_line=dict(settings.config or {}),
            argv=list(argv[1:]) if workflow.is_main_process else [],
        )


def validated_config(config: Mapping[str, Any], schema: Mapping[str, Any],
                     sources: ConfigSources | None = None) -> dict[str, Any]:
    """The config with command-line strings given their schema types, checked against the schema.

    With ``sources``, a repeated --config or --configfile is refused (Snakemake would keep only
    the last one), and filter values are taken as the text written, however they were passed.
    Raises ConfigError naming the first key whose value the schema refuses.
    """
    resolved = dict(config)
    if sources is not None:
        repeated = repeated_options(sources.argv)
        if repeated:
            raise ConfigError("\n".join(repeated))
        if "filter" in resolved:
            written = [written_filter(path) for path in sources.files]
            written.append(sources.command_line.get("filter"))
            resolved["filter"] = filter_as_written(resolved["filter"], written)
    coerced = coerce_to_schema(resolved, schema)
    check_against_schema(coerced, schema)
    return coerced


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
