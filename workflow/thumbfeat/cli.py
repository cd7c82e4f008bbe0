"""The ``thumbfeat`` command: questions answered from what is on disk, without running anything."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from thumbfeat import layout, storage
from thumbfeat.catalog import (
    SAFE_ID,
    CatalogError,
    CatalogSpec,
    read_snapshot_ids,
    selected_ids,
)
from thumbfeat.failures import read_failures
from thumbfeat.layout import present_ids
from thumbfeat.runs import (
    describe_run,
    describe_running,
    group_runs,
    read_batch_records,
    running_batches,
)
from thumbfeat.wording import counts_text


def latest_snapshot(results: str | Path) -> str | Path | None:
    if storage.is_remote(results):
        folder = layout.catalog_snapshot_dir(results)
        times = {name: when for name, when in storage.listing(folder).items()
                 if name.endswith(".parquet")}
        return f"{folder}/{max(times, key=times.__getitem__)}" if times else None
    snapshots = sorted((Path(results) / "catalog").glob("*.parquet"),
                       key=lambda p: p.stat().st_mtime)
    return snapshots[-1] if snapshots else None


def status_report(results: str | Path, catalog: CatalogSpec | None = None) -> str:
    """Done, failed by kind and pending images of a catalog, and what the batch jobs did.

    The catalog is the one given (its selected ids: URLs are not needed to count), else the
    snapshot the last table was built for.
    """
    if catalog is not None:
        ids = selected_ids(catalog)
        source = f"{catalog.path}"
    else:
        snapshot = latest_snapshot(results)
        if snapshot is None:
            # A first run records its catalog with the table, at its end; its jobs show meanwhile.
            lines = [f"{results}: no run has recorded a catalog yet (pass --catalog FILE to "
                     "count against one)", *activity(results)]
            return "\n".join(lines)
        ids = read_snapshot_ids(snapshot)
        source = f"snapshot {Path(snapshot).name}"
    wanted = set(ids)
    rows = present_ids(results, layout.FEATURES, layout.FEATURE_SUFFIX) & wanted
    thumbs = present_ids(results, layout.THUMBS, layout.THUMB_SUFFIX) & wanted
    # A record counts only beside its (empty) thumbnail: without one the image is pending again.
    failures = {i: r for i, r in read_failures(results, wanted).items() if i in thumbs}
    kinds = Counter(record.kind for record in failures.values())
    retry = sum(record.retryable for record in failures.values())
    lines = [
        f"catalog: {len(ids)} images ({source})",
        f"downloaded: {len(thumbs) - len(failures)} ok, {len(failures)} failed, "
        f"{len(wanted) - len(thumbs)} pending",
        f"features: {len(rows)} done, {len(wanted) - len(rows)} pending",
        "failed by kind: " + counts_text(kinds)
        + (f" ({retry} will be retried by the next run)" if retry else ""),
    ]
    lines += activity(results)
    table = layout.feature_table_path(results)
    lines.append(f"table: {table}" + ("" if storage.exists(table) else " (not built yet)"))
    return "\n".join(lines)


def activity(results: str | Path) -> list[str]:
    """What the batch jobs did: all recorded ones, those running now, the last run."""
    lines = []
    rate = batch_rate(f"{results}/{layout.BATCHES}")
    if rate:
        lines.append(f"batches: {rate}")
    running = describe_running(running_batches(results, time.time()))
    if running:
        lines.append(f"running now: {running}")
    runs = group_runs(read_batch_records(results))
    if runs:
        lines.append(f"last run: {describe_run(runs[-1])}")
    return lines


def batch_rate(folder: str | Path) -> str | None:
    """What the recorded batch jobs did, and their rate (per job; jobs may run side by side)."""
    manifests = [json.loads(storage.get(p)) for p in storage.files(folder, ".json")]
    if not manifests:
        return None
    fetched = sum(m["download"]["images"] for m in manifests)
    measured = sum(m["features"]["images"] for m in manifests)
    seconds = sum(m["seconds"] for m in manifests)
    rate = max(fetched, measured) / max(seconds, 1e-9)
    return (f"{len(manifests)} recorded, {fetched} images fetched, {measured} measured, "
            f"{rate:.1f} images/s per job")


def filter_arguments(pairs: Sequence[str]) -> dict[str, str | list[str]]:
    """``--filter COLUMN=VALUE`` pairs as a row filter; a column given twice means any value."""
    row_filter: dict[str, str | list[str]] = {}
    for pair in pairs:
        column, equals, value = pair.partition("=")
        if not equals or not column.strip():
            raise CatalogError(f"--filter {pair!r}: expected COLUMN=VALUE")
        column = column.strip()
        if column in row_filter:
            previous = row_filter[column]
            row_filter[column] = [*(previous if isinstance(previous, list) else [previous]), value]
        else:
            row_filter[column] = value
    return row_filter


def path_report(results: str, image_id: str) -> str:
    """An image's three paths; an unsafe id, or one the last run's catalog lacks, is an error.

    Without any recorded catalog (before a first run's table) the paths are where the files
    will be.
    """
    if not SAFE_ID.fullmatch(image_id):
        raise CatalogError(f"image id {image_id!r} is not a safe file name, so no image has it "
                           "(allowed: letters, digits, '.', '_', '-', starting with a letter, "
                           "digit or '_', at most 200 characters)")
    paths = [layout.thumb_path(results, image_id), layout.feature_path(results, image_id),
             layout.failure_path(results, image_id)]
    snapshot = latest_snapshot(results)
    on_disk = any(storage.exists(path) for path in paths)
    if snapshot is not None and not on_disk and image_id not in set(read_snapshot_ids(snapshot)):
        raise CatalogError(f"image {image_id!r} is not in the catalog of the last table "
                           f"({snapshot}) and has no files under {results}")
    return "\n".join(paths)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="thumbfeat", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="summarise the results folder")
    status.add_argument("--results", default=layout.RESULTS,
                        help="the results folder, or s3://BUCKET/PREFIX (endpoint and "
                             "credentials from the AWS_* variables)")
    status.add_argument("--catalog", type=Path,
                        help="count against this catalog file instead of the last table's "
                             "snapshot (e.g. while a first run is under way)")
    status.add_argument("--id-column", default="image_id")
    status.add_argument("--filter", action="append", default=[], metavar="COLUMN=VALUE",
                        help="count only the rows the workflow's filter keeps (same rule; "
                             "repeat for more columns, or a column for any of its values)")
    status.add_argument("--catalog-table", default=CatalogSpec.table,
                        help="the table of a database catalog")
    status.add_argument("--catalog-query", help="the query of a database catalog")
    where = commands.add_parser("path", help="print where an image's files are")
    where.add_argument("image_id")
    where.add_argument("--results", default="results")
    args = parser.parse_args(argv)
    if args.command == "status" and args.catalog is None and (args.filter or args.catalog_query):
        parser.error("--filter and --catalog-query apply to --catalog FILE")
    try:
        if args.command == "status":
            spec = (CatalogSpec(args.catalog, args.id_column,
                                row_filter=filter_arguments(args.filter),
                                table=args.catalog_table, query=args.catalog_query)
                    if args.catalog is not None else None)
            print(status_report(args.results, spec))
        else:
            print(path_report(args.results, args.image_id))
    except CatalogError as error:
        parser.exit(2, f"thumbfeat {args.command}: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
