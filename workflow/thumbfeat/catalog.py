"""Reading and validating the image catalog: which images exist and where to fetch each.

A catalog is a CSV, TSV or Parquet file, or a query's result from a DuckDB or SQLite database
(thumbfeat.dbcatalog), with an id column and either a URL column or a URL template. Every mistake
that would otherwise surface hours into a run (a missing column, an unsafe or duplicated id, an
empty selection) is reported here, before any download, naming the file (and query) and row.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import itertools
import logging
import os
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from thumbfeat import atomic, dbcatalog, layout, storage
from thumbfeat.urls import display_url, local_file_problem, url_problem

SAFE_ID = re.compile(layout.IMAGE_ID_PATTERN)
# Cells that spell a boolean, as CSV exports, DuckDB (true/false) and SQLite (1/0) write them.
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "on", "1"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "off", "0"})
# Filter values that mean a boolean: the words YAML reads as true or false.
FILTER_BOOLEANS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


class CatalogError(ValueError):
    """The catalog cannot be used; the message names the file, the row and the problem."""


@dataclass(frozen=True)
class CatalogSpec:
    """How to read a catalog (the ``catalog`` part of the workflow config)."""

    path: Path
    id_column: str = "image_id"
    url_column: str = "url"
    url_template: str | None = None
    row_filter: Mapping[str, object] = field(default_factory=dict)
    # Database catalogs only: the table (read by the default query, updated by write-back) and
    # the query whose result is the catalog (default: every row of the table).
    table: str = dbcatalog.DEFAULT_TABLE
    query: str | None = None

    @property
    def is_database(self) -> bool:
        return dbcatalog.is_database(self.path)

    def database_query(self) -> str:
        return self.query or dbcatalog.default_query(self.table)


@dataclass(frozen=True)
class Origin:
    """Where catalog rows come from, as error messages name it: the file, and the query if any.

    ``columns`` lists every column of the source, also those that were not read, so a message
    about a missing column can show what there is.
    """

    path: Path
    query: str | None = None
    columns: tuple[str, ...] = ()

    def __str__(self) -> str:
        return str(self.path) if self.query is None else f"{self.path} (query: {self.query})"

    def row(self, index: int) -> str:
        """Name a data row the way a user finds it: the physical line number for text files."""
        if self.query is not None or _format_of(self.path) == "parquet":
            return f"row {index + 1}"
        try:
            lines = record_lines(self.path, _DELIMITERS[_format_of(self.path)])
        except (OSError, csv.Error, UnicodeDecodeError):
            lines = ()  # the message still names the row, if not its line
        return f"line {lines[index]}" if index < len(lines) else f"row {index + 1}"


@dataclass(frozen=True)
class Catalog:
    """The selected images in catalog order; relative ``file:`` URLs made absolute."""

    source: Path
    ids: tuple[str, ...]
    urls: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def digest(self) -> str:
        """A content hash of the (id, URL) list: changes exactly when the selection changes."""
        content = "".join(f"{image_id}\x00{url}\x01"
                          for image_id, url in zip(self.ids, self.urls, strict=True))
        return hashlib.sha256(content.encode("utf-8")).hexdigest()[:20]


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in {".csv", ".txt"}:
        return "csv"
    if suffix in {".tsv", ".tab"}:
        return "tsv"
    if suffix in {".parquet", ".pq"}:
        return "parquet"
    raise CatalogError(
        f"{path}: unknown catalog format {suffix!r}; use .csv, .tsv or .parquet, or a "
        f"database ({', '.join(sorted(dbcatalog.SUFFIXES))})"
    )


_DELIMITERS = {"csv": ",", "tsv": "\t"}


def _records(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Each non-empty record of a text catalog with the physical line it starts on.

    Blank lines are skipped and a quoted field may span lines, as the Arrow reader does, so the
    n-th record here is the n-th row Arrow reads (the header being record 0).
    """
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        ended = 0
        for fields in reader:
            start, ended = ended + 1, reader.line_num
            if fields:
                yield start, fields


@functools.lru_cache(maxsize=4)
def _record_lines(path: Path, delimiter: str, stamp: tuple[int, int]) -> tuple[int, ...]:
    del stamp  # part of the cache key only: a rewritten file is scanned again
    return tuple(line for line, _ in _records(path, delimiter))[1:]


def record_lines(path: Path, delimiter: str) -> tuple[int, ...]:
    """The physical line each data row starts on; scanned only when a message needs it."""
    info = path.stat()
    return _record_lines(path, delimiter, (info.st_size, info.st_mtime_ns))


def _read_header(path: Path, delimiter: str) -> list[str]:
    try:
        first = next(_records(path, delimiter), None)
    except csv.Error as exc:
        raise CatalogError(f"{path}, line 1: cannot read the header: {exc}") from exc
    if first is None:
        raise CatalogError(f"{path}: the file is empty (no header line)")
    line, fields = first
    if line != 1:
        raise CatalogError(f"{path}, line 1: the header must be the first line, not line {line}")
    return [name.strip() for name in fields]


def _ragged_row(path: Path, delimiter: str, width: int) -> str | None:
    """The first data row whose field count differs from the header's, named by its line."""
    for line, fields in itertools.islice(_records(path, delimiter), 1, None):
        if len(fields) != width:
            return f"line {line} has {len(fields)} fields, the header has {width}"
    return None


def _refuse_repeated(where: str, names: Sequence[str], wanted: Collection[str] | None) -> None:
    """A used column whose name repeats cannot be told apart from its twin: say which."""
    for name in wanted if wanted is not None else names:
        positions = [i + 1 for i, candidate in enumerate(names) if candidate == name]
        if len(positions) > 1:
            raise CatalogError(f"{where}: the column {name!r} appears {len(positions)} times "
                               f"(columns {', '.join(map(str, positions))}); rename all but one")


def _read_text_file(path: Path, delimiter: str, wanted: Collection[str] | None) -> pa.Table:
    """Read the wanted columns of a CSV or TSV file as text.

    The names come from our own reading of the header (trimmed), so a repeated name among
    columns that are not needed does not stop the reading; a repeated needed column does, since
    which one is meant cannot be told.
    """
    names = _read_header(path, delimiter)
    _refuse_repeated(f"{path}, line 1", names, wanted)
    unique = [name if names.index(name) == i else f"{name}\x00{i}" for i, name in enumerate(names)]
    keep = [name for name in unique if wanted is None or name in wanted]
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=unique, skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in keep},
                include_columns=keep,
                strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        if "columns" in str(exc) and (ragged := _ragged_row(path, delimiter, len(names))):
            raise CatalogError(f"{path}: cannot read the catalog: {ragged}") from exc
        raise


def _read_parquet(path: Path, wanted: Collection[str] | None) -> pa.Table:
    """Read the wanted columns of a Parquet file as text; the others, of any type, stay unread."""
    names = pq.read_schema(path).names
    _refuse_repeated(str(path), names, wanted)
    table = pq.read_table(path, columns=[n for n in names if wanted is None or n in wanted])
    return table.cast(pa.schema([pa.field(f.name, pa.string()) for f in table.schema]))


def column_names(path: Path) -> tuple[str, ...]:
    """Every column name of a catalog file, read from its header or schema only."""
    kind = _format_of(path)
    if kind == "parquet":
        try:
            return tuple(pq.read_schema(path).names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise CatalogError(f"{path}: cannot read the catalog: {exc}") from exc
    return tuple(_read_header(path, _DELIMITERS[kind]))


def read_table(path: Path, wanted: Collection[str] | None = None) -> pa.Table:
    """Read the catalog file's ``wanted`` columns (default all) as text.

    Text keeps ids like ``007`` as written. Columns that are not wanted are never converted, so
    a list, struct or binary column elsewhere in a Parquet file does not matter.
    """
    if not path.is_file():
        raise CatalogError(f"{path}: catalog file not found")
    kind = _format_of(path)
    try:
        if kind == "parquet":
            return _read_parquet(path, wanted)
        return _read_text_file(path, _DELIMITERS[kind], wanted)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, csv.Error,
            UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read the catalog: {exc}") from exc


def wanted_columns(spec: CatalogSpec, *, urls: bool = True) -> set[str]:
    """The columns a catalog is read for: the id, the URL (unless templated), the filter's."""
    wanted = {spec.id_column, *spec.row_filter}
    if urls and spec.url_template is None:
        wanted.add(spec.url_column)
    return wanted


def read_source(spec: CatalogSpec, wanted: Collection[str] | None = None,
                ) -> tuple[pa.Table, Origin]:
    """The catalog's ``wanted`` rows as text columns, and how to name where they came from."""
    if not spec.is_database:
        table = read_table(spec.path, wanted)
        return table, Origin(spec.path, columns=column_names(spec.path))
    query = spec.database_query()
    try:
        table = dbcatalog.read_query(spec.path, query)
    except dbcatalog.DatabaseError as exc:
        raise CatalogError(str(exc)) from exc
    return table, Origin(spec.path, query, tuple(table.column_names))


def _column(table: pa.Table, name: str, path: Origin, role: str) -> list[str]:
    if name not in table.column_names:
        raise CatalogError(
            f"{path}: no column {name!r} for the {role}; the columns are "
            f"{', '.join(path.columns or table.column_names)}"
        )
    return [value if value is not None else "" for value in table.column(name).to_pylist()]


def filter_option(value: object) -> str | bool:
    """One filter value as it is compared: a boolean, or trimmed lower-case text.

    Filter values arrive as text when written on the command line and as text when re-read from
    config files (thumbfeat.config.filter_as_written), so a value means what its text says: the
    words YAML reads as booleans (true/false, yes/no, on/off) are booleans, anything else is text
    compared with the cell's text. Typed values (from code) are turned into the same text.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return FILTER_BOOLEANS.get(text, text)


def _option_mask(values: pa.Array, option: str | bool) -> pa.Array:
    """Cells equal to ``option``: a boolean matches the cells spelling it, never a blank one."""
    if isinstance(option, bool):
        words = sorted(TRUE_WORDS if option else FALSE_WORDS)
        return pc.is_in(values, value_set=pa.array(words))
    return pc.equal(values, option)


def _filter_mask(table: pa.Table, row_filter: Mapping[str, object], path: Origin) -> pa.Array:
    """Rows kept by the filter: every ``column: value`` must hold (a list means any of them)."""
    mask = pa.array([True] * table.num_rows, type=pa.bool_())
    for name, wanted in row_filter.items():
        if name not in table.column_names:
            raise CatalogError(
                f"{path}: the row filter names column {name!r}, which is not in the catalog "
                f"(columns: {', '.join(path.columns or table.column_names)})"
            )
        options = wanted if isinstance(wanted, list) else [wanted]
        values = _cells(table, name)
        column_mask = pa.array([False] * table.num_rows, type=pa.bool_())
        for option in options:
            column_mask = pc.or_(column_mask, _option_mask(values, filter_option(option)))
        mask = pc.and_(mask, column_mask)
    return mask


def _cells(table: pa.Table, name: str) -> pa.Array:
    """A column's cells as the filter compares them: trimmed lower-case text, blank for null."""
    return pc.utf8_lower(pc.utf8_trim_whitespace(table.column(name).fill_null("")))


def _filter_hint(table: pa.Table, row_filter: Mapping[str, object], shown: int = 6) -> str:
    """What each filtered column holds, so an empty selection shows what to filter on instead."""
    parts = []
    for name in row_filter:
        if name in table.column_names:
            distinct = pc.unique(_cells(table, name)).to_pylist()
            listed = ", ".join(repr(v) for v in distinct[:shown])
            more = f" and {len(distinct) - shown} more" if len(distinct) > shown else ""
            parts.append(f"column {name!r} holds {listed}{more}")
    return "; ".join(parts)


def resolve_url(url: str, catalog_dir: Path) -> str:
    """Make a relative ``file:`` reference absolute against the catalog's folder.

    Catalogs of local files (the bundled demo among them) can then move as one folder. Other URLs
    are returned unchanged; whether they are acceptable is decided when they are fetched.
    """
    if not url.startswith("file:") or url.startswith("file://"):
        return url
    relative = unquote(urlsplit(url).path)
    return (catalog_dir / relative).resolve().as_uri()


def validate_ids(ids: Sequence[str], urls: Sequence[str], path: Origin,
                 rows: Sequence[int]) -> tuple[list[str], list[str]]:
    """Check ids are safe file names and unique per URL; drop exact repeats of a row.

    A repeated id with the same URL is the same image listed twice and is kept once; with a
    different URL it is ambiguous which image the id means, so it is an error.
    """
    first_row: dict[str, int] = {}
    first_url: dict[str, str] = {}
    kept_ids: list[str] = []
    kept_urls: list[str] = []
    for image_id, url, row in zip(ids, urls, rows, strict=True):
        # Rows are named only when one is wrong: naming costs more than checking a good row.
        if not SAFE_ID.fullmatch(image_id):
            if not image_id.strip():
                raise CatalogError(f"{path}, {path.row(row)}: the image id is empty")
            raise CatalogError(
                f"{path}, {path.row(row)}: image id {image_id!r} is not a safe file name "
                "(allowed: letters, digits, '.', '_', '-', starting with a letter, digit or '_', "
                "at most 200 characters)"
            )
        if not url.strip():
            raise CatalogError(f"{path}, {path.row(row)}: image {image_id!r} has an empty URL")
        seen = first_row.get(image_id)
        if seen is not None:
            if first_url[image_id] != url:
                raise CatalogError(
                    f"{path}, {path.row(row)}: image id {image_id!r} is repeated with a "
                    f"different URL (first at {path.row(seen)})"
                )
            continue
        first_row[image_id] = row
        first_url[image_id] = url
        kept_ids.append(image_id)
        kept_urls.append(url)
    return kept_ids, kept_urls


def _fetch_problem(url: str, local_file_roots: Sequence[str]) -> str | None:
    problem = url_problem(url)
    if problem is None and url.lower().startswith("file:"):
        problem = local_file_problem(url, local_file_roots)
    return problem


def url_warnings(path: Path, urls: Mapping[str, str], local_file_roots: Sequence[str] = (),
                 shown: int = 5) -> list[str]:
    """Warnings for URLs that cannot be fetched at all (no scheme, ``javascript:``, a ``file:``
    URL outside ``local_file_roots``, ...).

    Such a value is a bad row, not a bad catalog: the image gets a failed row of kind
    ``bad_url`` and every other image is fetched. Saying so before the downloads start lets
    a user fix the catalog early.
    """
    problems = [(image_id, url, problem) for image_id, url in urls.items()
                if (problem := _fetch_problem(url, local_file_roots)) is not None]
    lines = [f"{path}: image {image_id!r}: {problem} ({display_url(url, 60)!r}); it will be "
             f"recorded as failed (bad_url)" for image_id, url, problem in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"{path}: {len(problems) - shown} more URLs cannot be fetched")
    return lines


def _selected_rows(table: pa.Table, spec: CatalogSpec, path: Origin) -> list[int]:
    """The rows the filter keeps; none is an error that shows what the columns hold."""
    rows = list(range(table.num_rows))
    if spec.row_filter:
        keep = _filter_mask(table, spec.row_filter, path).to_pylist()
        rows = [row for row in rows if keep[row]]
    if not rows:
        detail = ""
        if spec.row_filter and table.num_rows:
            detail = (f" after the row filter {dict(spec.row_filter)} "
                      f"({_filter_hint(table, spec.row_filter)})")
        raise CatalogError(f"{path}: the catalog selects no images{detail}")
    return rows


def selected_ids(spec: CatalogSpec) -> list[str]:
    """The ids a catalog selects, without reading its URLs (which counting does not need)."""
    table, path = read_source(spec, wanted_columns(spec, urls=False))
    ids_all = _column(table, spec.id_column, path, "image id")
    rows = _selected_rows(table, spec, path)
    ids = [ids_all[row].strip() for row in rows]
    return validate_ids(ids, ids, path, rows)[0]


def load_catalog(spec: CatalogSpec) -> Catalog:
    """Read, filter and validate the catalog described by ``spec``."""
    if spec.url_template is not None and "{image_id}" not in spec.url_template:
        raise CatalogError(
            f"url_template {spec.url_template!r} must contain the placeholder {{image_id}}"
        )
    table, path = read_source(spec, wanted_columns(spec))
    ids_all = _column(table, spec.id_column, path, "image id")
    if spec.url_template is None:
        urls_all = _column(table, spec.url_column, path, "image URL")
    else:
        urls_all = [spec.url_template.replace("{image_id}", i.strip()) for i in ids_all]
    rows = _selected_rows(table, spec, path)
    ids = [ids_all[row].strip() for row in rows]
    catalog_dir = spec.path.parent.resolve()
    urls = [resolve_url(urls_all[row].strip(), catalog_dir) for row in rows]
    kept_ids, kept_urls = validate_ids(ids, urls, path, rows)
    return Catalog(source=spec.path, ids=tuple(kept_ids), urls=tuple(kept_urls))


def write_snapshot(spec: CatalogSpec, out_path: str | Path, *, expected_digest: str,
                   logger: logging.Logger) -> Catalog:
    """Store the selected catalog (ids and URLs) as Parquet, and drop older snapshots.

    The snapshot's file name carries the digest of its content, so the table depends on what the
    catalog selects rather than on when the catalog file was last touched.
    """
    catalog = load_catalog(spec)
    digest = catalog.digest()
    if digest != expected_digest:
        raise CatalogError(f"{spec.path}: the catalog changed while the workflow ran "
                           f"(digest {digest}, planned {expected_digest}); run again")
    table = pa.table({"image_id": list(catalog.ids), "url": list(catalog.urls)})
    atomic.write_with(out_path, lambda tmp: pq.write_table(table, tmp))
    out = Path(out_path)
    for old in out.parent.glob("*.parquet"):
        if old.name != out.name:
            old.unlink(missing_ok=True)
    logger.info("catalog %s: %d images selected, digest %s", spec.path, len(catalog), digest)
    return catalog


def read_snapshot_ids(path: str | Path) -> list[str]:
    source = pa.BufferReader(storage.get(path)) if storage.is_remote(path) else path
    return pq.read_table(source, columns=["image_id"]).column("image_id").to_pylist()


# Where catalogs kept in a bucket are copied to be read, under the working directory.
REMOTE_COPIES = Path(".snakemake", "thumbfeat", "catalogs")


def local_copy(url: str, folder: Path = REMOTE_COPIES,
               environ: Mapping[str, str] | None = None) -> Path:
    """Copy a catalog object (``s3://bucket/key``) to ``folder/bucket/key`` and return that file.

    Read through pyarrow's S3 file system, then read like any local catalog, so every check
    and message (line numbers included) works the same; the copy is refreshed at every parse.
    """
    bucket, key = storage.split(url)
    if not bucket or not key:
        raise CatalogError(f"{url}: a catalog in a bucket is named s3://BUCKET/KEY")
    filesystem = storage.s3_filesystem(os.environ if environ is None else environ)
    try:
        with filesystem.open_input_stream(f"{bucket}/{key}") as source:
            data = source.read()
    except (OSError, pa.ArrowException) as exc:
        raise CatalogError(f"{url}: cannot read the catalog: {exc}") from None
    target = folder / bucket / key
    atomic.write_bytes(target, data)
    return target
