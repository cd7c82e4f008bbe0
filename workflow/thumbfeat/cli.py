"""The ``thumbfeat`` command: questions answered from what is on disk, without running any job."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from thumbfeat import integrity, layout, storage
from thumbfeat.catalog import (
    SAFE_ID,
    CatalogError,
    CatalogSpec,
    read_snapshot_ids,
    selected_ids,
)
from thumbfeat.failures import read_failures
from thumbfeat.layout import present_ids
from thumbfeat.plan import PLAN_JSON_VAR, plan_line
from thumbfeat.progress import FETCH, MEASURE, RECORD_KEYS
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
                 if name.endswith(".parquet") and not layout.is_temporary_name(name)}
        return f"{folder}/{max(times, key=lambda n: (times[n], n))}" if times else None
    snapshots = sorted((Path(results) / "catalog").glob("*.parquet"),
                       key=lambda p: p.stat().st_mtime)
    return snapshots[-1] if snapshots else None


def latest_tag(results: str | Path) -> str:
    """The thumbnail settings most recently written to (those of the latest run), else the
    default settings'.

    A bucket has no folder times: there the settings of the newest table's settings marker
    (its name ends with the settings) are taken, else the only settings folder.
    """
    if storage.is_remote(results):
        return _latest_remote_tag(str(results))
    root = Path(results) / layout.THUMBS
    try:
        folders = [e for e in os.scandir(root) if e.is_dir() and e.name not in layout.SHARD_SET]
    except FileNotFoundError:
        folders = []
    if folders:
        return max(folders, key=lambda e: e.stat().st_mtime).name
    from thumbfeat.thumbnail import default_settings  # numpy and Pillow: only when needed

    return default_settings().tag


def _latest_remote_tag(results: str) -> str:
    markers = storage.listing(f"{results}/{layout.TABLE_SETTINGS}")
    for name in sorted(markers, key=lambda n: (markers[n], n), reverse=True):
        if layout.TAG_MARK in name and name.endswith(".json"):
            return name[name.index(layout.TAG_MARK) + len(layout.TAG_MARK):-len(".json")]
    folders = [n for n in storage.subfolders(f"{results}/{layout.THUMBS}")
               if n not in layout.SHARD_SET]
    if len(folders) == 1:
        return folders[0]
    from thumbfeat.thumbnail import default_settings  # numpy and Pillow: only when needed

    return default_settings().tag


def status_report(results: str | Path, catalog: CatalogSpec | None = None,
                  tag: str | None = None) -> str:
    """Done, failed by kind and pending images of a catalog, and what the batch jobs did.

    The catalog is the one given (its selected ids: URLs are not needed to count), else the
    snapshot the last table was built for; the thumbnail settings those given, else those of the
    latest run.
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
    tag = tag or latest_tag(results)
    rows = present_ids(results, layout.stage_dir(layout.FEATURES, tag),
                       layout.FEATURE_SUFFIX) & wanted
    thumbs = present_ids(results, layout.stage_dir(layout.THUMBS, tag),
                         layout.THUMB_SUFFIX) & wanted
    # A record counts only beside its (empty) thumbnail: without one the image is pending again.
    failures = {i: r for i, r in read_failures(results, wanted).items() if i in thumbs}
    kinds = Counter(record.kind for record in failures.values())
    retry = sum(record.retryable for record in failures.values())
    lines = [
        f"catalog: {len(ids)} images ({source})",
        f"thumbnails: {tag}",
        f"fetched: {len(thumbs) - len(failures)} ok, {len(failures)} failed, "
        f"{len(wanted) - len(thumbs)} pending",
        f"measured: {len(rows)} done, {len(wanted) - len(rows)} pending",
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
    manifests = [json.loads(storage.get(f"{folder}/{name}")) for name in storage.names(folder)
                 if name.endswith(layout.MANIFEST_SUFFIX) and not layout.is_temporary_name(name)]
    if not manifests:
        return None
    fetched = sum(m[RECORD_KEYS[FETCH]]["images"] for m in manifests)
    measured = sum(m[RECORD_KEYS[MEASURE]]["images"] for m in manifests)
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


def path_report(results: str, image_id: str, tag: str | None = None) -> str:
    """An image's three paths; an unsafe id, or one the last run's catalog lacks, is an error.

    Without any recorded catalog (before a first run's table) the paths are where the files
    will be.
    """
    if not SAFE_ID.fullmatch(image_id):
        raise CatalogError(f"image id {image_id!r} is not a safe file name, so no image has it "
                           "(allowed: letters, digits, '.', '_', '-', starting with a letter, "
                           "digit or '_', at most 200 characters)")
    tag = tag or latest_tag(results)
    paths = [layout.thumb_path(results, image_id, tag), layout.feature_path(results, image_id, tag),
             layout.failure_path(results, image_id)]
    snapshot = latest_snapshot(results)
    on_disk = any(storage.exists(path) for path in paths)
    if snapshot is not None and not on_disk and image_id not in set(read_snapshot_ids(snapshot)):
        raise CatalogError(f"image {image_id!r} is not in the catalog of the last table "
                           f"({snapshot}) and has no files under {results}")
    return "\n".join(paths)


def verify(results: str | Path, *, fast: bool, repair: bool, workers: int,
           progress_every: float = 2.0) -> tuple[str, int]:
    """Check every per-image file; the report and the exit status (1: damage left in place).

    Progress goes to stderr at most every ``progress_every`` seconds.
    """
    paths = list(integrity.per_image_files(results))
    kinds = Counter(_stage_of(p) for p in paths)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= progress_every or done == total:
            last[0] = now
            print(f"thumbfeat verify: {done}/{total} files checked", file=sys.stderr, flush=True)

    started = time.monotonic()
    damaged = integrity.check_files(paths, fast=fast, workers=workers, on_progress=progress)
    seconds = time.monotonic() - started
    depth = "sizes and magic bytes" if fast else "read in full"
    lines = [f"checked {len(paths)} files ({depth}) in {seconds:.1f} s: "
             + counts_text(kinds),
             f"damaged: {len(damaged)}"
             + (f" ({counts_text(Counter(_stage_of(d.path) for d in damaged))})" if damaged
                else "")]
    lines += [f"  {d.path}: {d.reason}" for d in damaged]
    if damaged and repair:
        moved = integrity.quarantine_all(results, damaged)
        lines.append(f"moved {len(moved)} to {results}/{integrity.QUARANTINE}; the next run "
                     "builds them again")
        return "\n".join(lines), 0
    if damaged:
        lines.append("run `thumbfeat verify --repair` to move them to quarantine, so the next "
                     "run builds them again")
    return "\n".join(lines), 1 if damaged else 0


# The workflow this package belongs to: the repository holding it.
SNAKEFILE = Path(__file__).resolve().parents[2] / "Snakefile"


def dry_run_plan(snakemake_args: Sequence[str]) -> tuple[dict[str, object] | None, str]:
    """The plan a run with these Snakemake options would follow, and Snakemake's output.

    The plan comes from the workflow itself, parsed by ``snakemake --dry-run`` with the options
    given (config, profile, cores, targets): the same code and config handling as the run, so the
    two cannot differ. None when Snakemake refuses (its output then says why).
    """
    with tempfile.TemporaryDirectory(prefix="thumbfeat-plan-") as folder:
        document_path = Path(folder, "plan.json")
        given_snakefile = any(a in ("-s", "--snakefile") or a.startswith("--snakefile=")
                              for a in snakemake_args)
        command = [sys.executable, "-m", "snakemake",
                   *([] if given_snakefile else ["--snakefile", str(SNAKEFILE)]),
                   "--dry-run", *snakemake_args]
        result = subprocess.run(command, capture_output=True, text=True,
                                env={**os.environ, PLAN_JSON_VAR: str(document_path)})
        output = result.stdout + result.stderr
        if result.returncode != 0 or not document_path.exists():
            return None, output
        return json.loads(document_path.read_text()), output


STAGE_NAMES = {layout.THUMBS: "thumbnails", layout.FEATURES: "feature rows",
               layout.FAILED: "failure records"}


def _stage_of(path: str) -> str:
    """The kind of a per-image file, as the verify report counts them.

    Thumbnails and rows sit one folder deeper than failure records (in their settings folder).
    """
    parents = Path(path).parents
    for folder in (parents[1].name, parents[2].name):
        if folder in STAGE_NAMES:
            return STAGE_NAMES[folder]
    return parents[1].name


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
    for command in (status, where):
        command.add_argument("--thumbnails", metavar="SETTINGS",
                             help="the thumbnail settings folder to look at (default: the one "
                                  "written last, e.g. 512px-jpeg-q85)")
    check = commands.add_parser(
        "verify", help="check that every per-image file is whole (thumbnails decode, rows read, "
                       "failure records parse)")
    check.add_argument("--results", default=layout.RESULTS,
                       help="the results folder, or s3://BUCKET/PREFIX (each object is read: "
                            "a GET per file)")
    check.add_argument("--fast", action="store_true",
                       help="check only sizes and magic bytes (no decoding, no Parquet read)")
    check.add_argument("--repair", action="store_true",
                       help="move damaged files to results/quarantine/ so the next run "
                            "builds them again")
    check.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="processes checking files (default: one per core)")
    preview = commands.add_parser(
        "plan", allow_abbrev=False, usage="thumbfeat plan [--json] [SNAKEMAKE OPTION ...]",
        help="print what a run would do (a dry run of the workflow)",
        description="Print the plan a run with these Snakemake options would follow: every "
                    "option but --json is passed to snakemake, e.g. thumbfeat plan --json "
                    "--cores 4 --config catalog=x.csv")
    preview.add_argument("--json", action="store_true",
                         help="print the plan as JSON (see README \"The plan as JSON\")")
    commands.add_parser("warm", help="compile the feature kernels now (done once per machine; "
                                     "batch jobs then load them)")
    args, snakemake_args = parser.parse_known_args(argv)
    if args.command == "plan":
        document, output = dry_run_plan(snakemake_args)
        if document is None:
            sys.stderr.write(output)
            return 1
        if args.json:
            print(json.dumps(document, indent=1))
        else:
            print(plan_line(document))
            for warning in document["warnings"]:
                print(f"warning: {warning}", file=sys.stderr)
        return 0
    if snakemake_args:
        parser.error(f"unrecognized arguments: {' '.join(snakemake_args)}")
    if args.command == "status" and args.catalog is None and (args.filter or args.catalog_query):
        parser.error("--filter and --catalog-query apply to --catalog FILE")
    if args.command == "warm":
        from thumbfeat.features import warm_kernels

        print(f"feature kernels ready in {warm_kernels():.1f} s")
        return 0
    if args.command == "verify":
        report, code = verify(args.results, fast=args.fast, repair=args.repair,
                              workers=max(1, args.workers))
        print(report)
        return code
    try:
        if args.command == "status":
            spec = (CatalogSpec(args.catalog, args.id_column,
                                row_filter=filter_arguments(args.filter),
                                table=args.catalog_table, query=args.catalog_query)
                    if args.catalog is not None else None)
            print(status_report(args.results, spec, args.thumbnails))
        else:
            print(path_report(args.results, args.image_id, args.thumbnails))
    except CatalogError as error:
        parser.exit(2, f"thumbfeat {args.command}: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
