"""Reading and validating the image catalog: which images exist and where to fetch each.

A catalog is a CSV, TSV or Parquet file, or a query's result from a DuckDB or SQLite database
(thumbfeat.dbcatalog), with an id column and either a URL column or a URL template. Every mistake
that would otherwise surface hours into a run (a missing column, an unsafe or duplicated id, an
empty selection) is reported here, before any download, naming the file (and query) and row.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from thumbfeat import atomic, dbcatalog, layout
from thumbfeat.fetch import display_url, url_problem

SAFE_ID = re.compile(layout.IMAGE_ID_PATTERN)
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0", ""})


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
    """Where catalog rows come from, as error messages name it: the file, and the query if any."""

    path: Path
    query: str | None = None

    def __str__(self) -> str:
        return str(self.path) if self.query is None else f"{self.path} (query: {self.query})"

    def row(self, index: int) -> str:
        """Name a data row the way a user finds it: the line number for text files."""
        if self.query is not None or self.path.suffix.lower() in {".parquet", ".pq"}:
            return f"row {index + 1}"
        return f"line {index + 2}"


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


def _read_header(path: Path, delimiter: str) -> list[str]:
    with open(path, encoding="utf-8-sig") as handle:
        first = handle.readline().rstrip("\r\n")
    if not first.strip():
        raise CatalogError(f"{path}: the file is empty (no header line)")
    return [name.strip().strip('"') for name in first.split(delimiter)]


def read_table(path: Path) -> pa.Table:
    """Read the catalog file with every column as text, so ids like ``007`` keep their zeros."""
    if not path.is_file():
        raise CatalogError(f"{path}: catalog file not found")
    kind = _format_of(path)
    try:
        if kind == "parquet":
            table = pq.read_table(path)
            return table.cast(pa.schema([pa.field(f.name, pa.string()) for f in table.schema]))
        delimiter = "," if kind == "csv" else "\t"
        names = _read_header(path, delimiter)
        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names},
                strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise CatalogError(f"{path}: cannot read the catalog: {exc}") from exc


def read_source(spec: CatalogSpec) -> tuple[pa.Table, Origin]:
    """The catalog's rows as text columns, and how to name where they came from."""
    if not spec.is_database:
        return read_table(spec.path), Origin(spec.path)
    query = spec.database_query()
    try:
        return dbcatalog.read_query(spec.path, query), Origin(spec.path, query)
    except dbcatalog.DatabaseError as exc:
        raise CatalogError(str(exc)) from exc


def _column(table: pa.Table, name: str, path: Origin, role: str) -> list[str]:
    if name not in table.column_names:
        raise CatalogError(
            f"{path}: no column {name!r} for the {role}; the columns are "
            f"{', '.join(table.column_names)}"
        )
    return [value if value is not None else "" for value in table.column(name).to_pylist()]


def _filter_mask(table: pa.Table, row_filter: Mapping[str, object], path: Origin) -> pa.Array:
    """Rows kept by the filter: every ``column: value`` must hold (a list means any of them)."""
    mask = pa.array([True] * table.num_rows, type=pa.bool_())
    for name, wanted in row_filter.items():
        if name not in table.column_names:
            raise CatalogError(
                f"{path}: the row filter names column {name!r}, which is not in the catalog "
                f"(columns: {', '.join(table.column_names)})"
            )
        options = wanted if isinstance(wanted, list) else [wanted]
        values = pc.utf8_lower(pc.utf8_trim_whitespace(table.column(name).fill_null("")))
        column_mask = pa.array([False] * table.num_rows, type=pa.bool_())
        for option in options:
            if isinstance(option, bool):
                words = sorted(TRUE_WORDS if option else FALSE_WORDS)
                hit = pc.is_in(values, value_set=pa.array(words))
            else:
                hit = pc.equal(values, str(option).strip().lower())
            column_mask = pc.or_(column_mask, hit)
        mask = pc.and_(mask, column_mask)
    return mask


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


def url_warnings(path: Path, urls: Mapping[str, str], shown: int = 5) -> list[str]:
    """Warnings for URLs that cannot be fetched at all (no scheme, ``javascript:``, ...).

    Such a value is a bad row, not a bad catalog: the image gets a failed row of kind
    ``bad_url`` and every other image is fetched. Saying so before the downloads start lets
    a user fix the catalog early.
    """
    problems = [(image_id, url, problem) for image_id, url in urls.items()
                if (problem := url_problem(url)) is not None]
    lines = [f"{path}: image {image_id!r}: {problem} ({display_url(url, 60)!r}); it will be "
             f"recorded as failed (bad_url)" for image_id, url, problem in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"{path}: {len(problems) - shown} more URLs cannot be fetched")
    return lines


def load_catalog(spec: CatalogSpec) -> Catalog:
    """Read, filter and validate the catalog described by ``spec``."""
    table, path = read_source(spec)
    if spec.url_template is not None and "{image_id}" not in spec.url_template:
        raise CatalogError(
            f"url_template {spec.url_template!r} must contain the placeholder {{image_id}}"
        )
    ids_all = _column(table, spec.id_column, path, "image id")
    if spec.url_template is None:
        urls_all = _column(table, spec.url_column, path, "image URL")
    else:
        urls_all = [spec.url_template.replace("{image_id}", i.strip()) for i in ids_all]
    rows = list(range(table.num_rows))
    if spec.row_filter:
        keep = _filter_mask(table, spec.row_filter, path).to_pylist()
        rows = [row for row in rows if keep[row]]
    if not rows:
        detail = f" after the row filter {dict(spec.row_filter)}" if spec.row_filter else ""
        raise CatalogError(f"{path}: the catalog selects no images{detail}")
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
    return pq.read_table(path, columns=["image_id"]).column("image_id").to_pylist()
