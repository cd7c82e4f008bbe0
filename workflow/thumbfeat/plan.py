"""What is left to do, rebuilt every time from what is on disk.

The workflow never keeps a queue: each run lists the shard folders once (one directory read per
shard, no per-file stat) and compares them with the catalog. An image needs fetching when its
thumbnail file is missing, and measuring when its feature row (a Parquet file) is missing. A
recorded failure is redone when it was transient, or when the user asks for every failure to be
retried.

A batch job is known to Snakemake by its manifest (``batches/<key>.json``), so a batch's key must
name work that has not been done yet, or Snakemake finds the manifest and skips the job. The key
has two parts. The work part is the batch number and a hash of its fetch and measure lists;
the attempt part counts the manifests already on disk for that same work (the same images went
missing again after a run had rebuilt them, or a transient failure is retried once more). The
first attempt is keyed ``<number>-<hash>``, later ones ``<number>-<hash>-<attempt>``, one past
the highest attempt on disk. So a situation that repeats gets a new manifest name every time,
however often it repeats. The attempt is read from disk like the rest of the plan: a dry run
writes nothing and computes the same keys as the real run after it, and cluster jobs are handed
the keys of the run that submitted them (see thumbfeat.handover). Manifests of earlier attempts
are kept: they are the record of what each run did (`thumbfeat status`, run statistics).

Like Make, an image is also built again when what its files were built from changed (see
thumbfeat.rowinputs): a row of another feature version is measured again from its thumbnail, and
an image whose catalog URL differs from the one it was fetched from is fetched again. A per-image
file found damaged (thumbfeat.integrity) is built again too; the run moves it to the quarantine
folder before its first job (a dry run moves nothing).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from thumbfeat import layout
from thumbfeat.catalog import Catalog
from thumbfeat.failures import FailureRecord, read_failure_records
from thumbfeat.integrity import Damage, cheap_damage
from thumbfeat.rowinputs import RowInputs
from thumbfeat.urls import recorded_from


@dataclass(frozen=True)
class Batch:
    """Images handled by one job; its key (naming its manifest) is new for every attempt at it."""

    number: int
    fetch_ids: tuple[str, ...]
    measure_ids: tuple[str, ...]
    # 1 for the first job doing this work; one more for each finished job that did it before.
    attempt: int = 1
    # The thumbnail settings it works under: the same images under other settings are other work.
    tag: str = ""
    # The URLs of fetch_ids, in order: fetching an image from a new URL is new work.
    fetch_urls: tuple[str, ...] = ()
    # Set by a forced run (see Rebuilds.force_salt): forcing again is new work too.
    salt: str = ""

    @cached_property
    def work_key(self) -> str:
        """The batch number and a hash of its work: equal for batches doing the same work."""
        hasher = hashlib.sha1()
        for group in (self.fetch_ids, self.measure_ids, (self.tag,)):
            hasher.update("\n".join(group).encode("utf-8"))
            hasher.update(b"\x00")
        if self.fetch_urls:
            hasher.update("\n".join(self.fetch_urls).encode("utf-8"))
        if self.salt:
            hasher.update(b"\x00" + self.salt.encode("utf-8"))
        return f"{self.number:05d}-{hasher.hexdigest()[:12]}"

    @cached_property
    def key(self) -> str:
        """The name of this attempt's manifest and partial table."""
        return attempt_key(self.work_key, self.attempt)


def attempt_key(work_key: str, attempt: int) -> str:
    """The key of one attempt at some work (the first attempt keeps the bare work key)."""
    return work_key if attempt == 1 else f"{work_key}-{attempt}"


def attempts_on_disk(manifest_keys: Iterable[str]) -> dict[str, int]:
    """The highest finished attempt of each work key, from the keys of the manifests on disk."""
    highest: dict[str, int] = {}
    for key in manifest_keys:
        number, _, rest = key.partition("-")
        work_hash, _, attempt = rest.partition("-")
        if not number.isdigit() or not work_hash or (attempt and not attempt.isdigit()):
            continue
        work_key = f"{number}-{work_hash}"
        highest[work_key] = max(highest.get(work_key, 0), int(attempt) if attempt else 1)
    return highest


def next_attempts(batches: Sequence[Batch], manifest_keys: Iterable[str]) -> list[Batch]:
    """The batches keyed one attempt past the manifests of the same work already on disk."""
    done = attempts_on_disk(manifest_keys)
    return [replace(b, attempt=done.get(b.work_key, 0) + 1) for b in batches]


@dataclass
class WorkPlan:
    """The remaining work of a run, in images, with the batches that will do it."""

    catalog_size: int
    fetch: list[str] = field(default_factory=list)
    measure: list[str] = field(default_factory=list)
    failed_kept: dict[str, FailureRecord] = field(default_factory=dict)
    failed_retried: dict[str, FailureRecord] = field(default_factory=dict)
    # Images to fetch whose thumbnails exist, made with other thumbnail settings.
    other_settings: list[str] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)
    # URLs of the images to fetch or measure, and only those: a finished catalog costs no
    # lookup table.
    urls: dict[str, str] = field(default_factory=dict)
    # Why the feature table will be rebuilt ("" when it is up to date, None when not asked for);
    # set by the workflow with table_rebuild_reason, which knows the table's paths.
    table_reason: str | None = None
    # Images measured again because their row is of another feature version (id -> that version),
    # and the version they are measured at.
    other_version: dict[str, str] = field(default_factory=dict)
    feature_version: str = ""
    # Images fetched again because their catalog URL changed since they were fetched.
    changed_urls: list[str] = field(default_factory=list)
    # Per-image files found damaged: moved to quarantine when the run starts, then built again.
    damaged: list[Damage] = field(default_factory=list)
    # The force switch in effect ("refetch" or "remeasure"), "" for none.
    forced: str = ""
    # Images of the batches that have a failure record: a batch removes only those records once
    # their images have a thumbnail (in a bucket, removing a record that is not there would
    # still cost a request per image).
    failure_ids: set[str] = field(default_factory=set)

    def describe(self) -> tuple[dict[str, Any], str]:
        """The plan as a JSON document for tools, and the line a person reads, from one source.

        The line is written from the document alone, so the two can never tell different numbers.
        """
        document = self.document()
        return document, plan_line(document)

    def document(self) -> dict[str, Any]:
        """Every count of the plan under stable keys (README "The plan as JSON" lists them)."""
        return {
            "format": PLAN_FORMAT,
            "catalog_images": self.catalog_size,
            "fetch": {
                "images": len(self.fetch),
                "changed_url": len(self.changed_urls),
                "other_settings": len(self.other_settings),
                "forced": self.forced == "refetch",
            },
            "measure": {
                "images": len(self.measure),
                "other_version": len(self.other_version),
                "other_versions": sorted(set(self.other_version.values())),
                "feature_version": self.feature_version,
                "forced": self.forced == "remeasure",
            },
            "failures": {"kept": len(self.failed_kept), "retried": len(self.failed_retried)},
            "quarantine": len(self.damaged),
            "batches": [{"key": b.key, "fetch": len(b.fetch_ids),
                         "measure": len(b.measure_ids)} for b in self.batches],
            "table": None if self.table_reason is None else {
                "rebuild": bool(self.table_reason), "reason": self.table_reason},
        }


# Raised when a key of the plan document changes meaning or goes; new keys keep it.
PLAN_FORMAT = 1
# The environment variable naming a file where the main process of a parse writes the plan
# document: an environment variable because Snakemake passes no other option through to a parse
# (every config key is the workflow's, and checked against its schema).
PLAN_JSON_VAR = "THUMBFEAT_PLAN_JSON"


def plan_line(document: Mapping[str, Any]) -> str:
    """One line a person reads before a run (and in a dry run) to know what is left."""
    fetch, measure, failures = document["fetch"], document["measure"], document["failures"]
    fetch_notes, measure_notes = [], []
    if fetch["forced"]:
        fetch_notes.append("all of them again: refetch=true")
    if fetch["changed_url"]:
        fetch_notes.append(f"{fetch['changed_url']} with a changed URL")
    if fetch["other_settings"]:
        fetch_notes.append(f"{fetch['other_settings']} made with other thumbnail settings")
    if measure["forced"]:
        measure_notes.append("all of them again: remeasure=true")
    if measure["other_version"]:
        measure_notes.append(f"{measure['other_version']} measured at version "
                             f"{', '.join(measure['other_versions'])}, now "
                             f"{measure['feature_version']}")
    parts = [
        f"{document['catalog_images']} images in the catalog",
        f"fetch: {fetch['images']} images" + _notes(fetch_notes),
        f"measure: {measure['images']} images" + _notes(measure_notes),
        f"failures: {failures['kept']} kept"
        + (f", {failures['retried']} to retry" if failures["retried"] else ""),
        _batches(len(document["batches"])),
    ]
    if document["quarantine"]:
        parts.append(f"quarantine: {document['quarantine']} damaged files, then build again")
    table = document["table"]
    if table is not None:
        parts.append(f"table: will be rebuilt ({table['reason']})" if table["rebuild"]
                     else "table: up to date")
    return "thumbfeat plan: " + "; ".join(parts)


def _batches(count: int) -> str:
    return f"{count} batch{'es' if count != 1 else ''}"


def _notes(notes: Sequence[str]) -> str:
    return f" ({'; '.join(notes)})" if notes else ""


def make_batches(ordered_ids: Iterable[str], fetch: Collection[str],
                 measure: Collection[str], batch_size: int, tag: str = "",
                 urls: Mapping[str, str] | None = None, salt: str = "") -> list[Batch]:
    """Group images with work left into batches in catalog order: appended rows batch together."""
    work = [i for i in ordered_ids if i in fetch or i in measure]
    batches = []
    for number, start in enumerate(range(0, len(work), batch_size), start=1):
        members = tuple(work[start : start + batch_size])
        batches.append(Batch(
            number=number,
            fetch_ids=tuple(i for i in members if i in fetch),
            measure_ids=tuple(i for i in members if i in measure),
            tag=tag,
            fetch_urls=tuple(urls[i] for i in members if i in fetch) if urls else (),
            salt=salt,
        ))
    return batches


# Bounds of automatic batch sizes: below the lower one a job's start-up costs more than its work;
# above the upper one a job holds many declared files for little gain.
AUTO_BATCH_MIN = 100
AUTO_BATCH_MAX = 5000
# Up to this many images per job slot, the work is done in one round of jobs.
ONE_ROUND_MAX = 1000


def auto_batch_size(work: int, slots: int) -> int:
    """A batch size that fills every job slot in whole rounds.

    Small work (at most ONE_ROUND_MAX images per slot, seconds of work per job) runs as one
    round, a job per slot: each job starts an interpreter and imports its libraries, about a
    second, and a second round would pay that again while adding a few images to a big catalog.
    Larger work gives each slot at least two jobs, so one job's start-up and Snakemake's
    bookkeeping overlap the work of others. Whole rounds (a multiple of the slots) avoid a last
    job running alone on an otherwise idle machine; the bounds keep jobs neither trivially small
    nor huge.
    """
    slots = max(1, slots)
    if work <= slots * ONE_ROUND_MAX:
        batches = slots
    else:
        batches = max(2 * slots, math.ceil(work / AUTO_BATCH_MAX))
        batches = math.ceil(batches / slots) * slots
    return max(AUTO_BATCH_MIN, math.ceil(work / batches))


@dataclass(frozen=True)
class Rebuilds:
    """What besides missing files makes the plan build an image again (see plan_work)."""

    # The feature version this code measures, and what the rows on disk were built from.
    feature_version: str = ""
    row_inputs: RowInputs | None = None
    # Whether the last table was built for this very catalog (ids and URLs): its rows were
    # then compared with these URLs already, and only rows written since need comparing.
    table_of_this_catalog: bool = False
    # Cheap-check every present per-image file (when the table is built from scratch).
    check_files: bool = False
    # Force switches: measure every image again, or fetch every image again.
    remeasure: bool = False
    refetch: bool = False
    # What makes a forced run's batches differ from the last forced run's (the time of the last
    # table): the same forced work again would otherwise find its manifests already there.
    force_salt: str = ""


def plan_work(catalog: Catalog, results: str | Path, *, tag: str, batch_size: int | None,
              slots: int = 1, retry_failed: bool = False,
              only: Collection[str] | None = None,
              rebuilds: Rebuilds = Rebuilds()) -> WorkPlan:
    """Compare the catalog with the disk and say what each stage still has to do.

    ``batch_size`` None sizes batches for ``slots`` jobs running at once (see auto_batch_size).
    ``only`` restricts the work to the given ids (when the user asks for particular files).
    ``tag`` names the thumbnail settings: only thumbnails and rows made with them count as done.
    """
    ids: Iterable[str] = catalog.ids
    if only is not None:
        ids = [i for i in catalog.ids if i in only]
    wanted = set(ids) if only is not None else set(catalog.ids)
    thumbs = layout.present_ids(results, layout.stage_dir(layout.THUMBS, tag), layout.THUMB_SUFFIX)
    features = layout.present_ids(results, layout.stage_dir(layout.FEATURES, tag),
                                  layout.FEATURE_SUFFIX)
    failures, unreadable = read_failure_records(results, wanted)
    plan = WorkPlan(catalog_size=len(catalog), feature_version=rebuilds.feature_version)
    catalog_urls = dict(zip(catalog.ids, catalog.urls, strict=True))
    redo: set[str] = set()
    for image_id, record in failures.items():
        if retry_failed or record.retryable or (
                record.url is not None and not recorded_from(record.url, catalog_urls[image_id])):
            plan.failed_retried[image_id] = record
            redo.add(image_id)
        else:
            plan.failed_kept[image_id] = record
    damaged = [Damage(layout.failure_path(results, i), "the failure record does not parse")
               for i in unreadable]
    redo.update(unreadable)
    if rebuilds.check_files:
        found = cheap_damage(results, sorted(wanted & thumbs), sorted(wanted & features), tag)
        damaged += found
        bad_thumbs = {layout.image_id_of_target(d.path) for d in found
                      if d.path.endswith(layout.THUMB_SUFFIX)}
        bad_rows = {layout.image_id_of_target(d.path) for d in found
                    if d.path.endswith(layout.FEATURE_SUFFIX)}
        thumbs = thumbs - bad_thumbs
        features = features - bad_rows
    plan.damaged = damaged
    refetch: set[str] = set()
    if rebuilds.refetch:
        plan.forced = "refetch"
        refetch = set(wanted)
    elif rebuilds.row_inputs is not None:
        moved = rebuilds.row_inputs.changed_urls(catalog_urls,
                                                 later_only=rebuilds.table_of_this_catalog)
        refetch = {i for i in moved if i in wanted and i in thumbs}
        plan.changed_urls = [i for i in catalog.ids if i in refetch] if refetch else []
    download = {i for i in wanted if i not in thumbs or i in redo or i in refetch}
    compute = {i for i in wanted if i not in features or i in redo or i in refetch}
    if rebuilds.remeasure:
        plan.forced = plan.forced or "remeasure"
        compute = set(wanted)
    elif rebuilds.row_inputs is not None:
        stale = rebuilds.row_inputs.stale(wanted & features - compute, rebuilds.feature_version)
        plan.other_version = stale
        compute |= stale.keys()
    ordered = [i for i in catalog.ids if i in wanted]
    plan.fetch = [i for i in ordered if i in download]
    plan.measure = [i for i in ordered if i in compute]
    if download - redo:
        elsewhere = layout.thumbs_made_elsewhere(results, tag)
        plan.other_settings = [i for i in plan.fetch
                               if i in elsewhere and i not in redo and i not in refetch]
    # The URL of every image a batch handles: fetched from, or recorded as its row's source.
    plan.urls = {i: catalog_urls[i] for i in download | compute}
    plan.failure_ids = {i for i in failures if i in plan.urls}
    work = len(download | compute)
    size = batch_size if batch_size is not None else auto_batch_size(work, slots)
    salt = rebuilds.force_salt if plan.forced else ""
    plan.batches = next_attempts(make_batches(ordered, download, compute, size, tag, plan.urls,
                                              salt),
                                 layout.manifest_keys(results))
    return plan


def table_rebuild_reason(table: str | Path, snapshot: str | Path, batches: Sequence[Batch],
                         shard_dirs: Iterable[str | Path]) -> str:
    """Why the next run rebuilds the feature table, or "" when it will not.

    Mirrors how Snakemake decides for the feature_table rule (see workflow/rules/table.smk): an
    output is missing, a batch job will run (its manifest is an input), or an input folder (a
    feature shard) is newer than the oldest output.
    """
    try:
        # Snakemake compares inputs with the oldest output, in float seconds.
        built = min(os.stat(table).st_mtime, os.stat(snapshot).st_mtime)
    except FileNotFoundError:
        if not os.path.exists(table):
            return "no table yet"
        return "the catalog selection changed"
    if batches:
        return f"{_batches(len(batches))} to run"
    for folder in shard_dirs:
        if os.stat(folder).st_mtime > built:
            return "feature files changed since it was written"
    return ""


def requested_image_ids(argv: Sequence[str], catalog_ids: Collection[str]) -> set[str] | None:
    """Ids of per-image files named on the command line, or None when none are named.

    Snakemake parses the workflow before it looks at its targets, so the command line is the only
    place to learn them in time. The per-image rules build such files; the ids only scope the plan
    printed before the run, so that it speaks of the images asked for, not of the whole catalog.
    """
    wanted: set[str] = set()
    for token in argv[1:]:
        image_id = layout.image_id_of_target(token)
        if image_id is not None and image_id in catalog_ids:
            wanted.add(image_id)
    return wanted or None


REPORT_RULE = "report_figures"


def report_warning(argv: Sequence[str], results: str | Path, table: str | Path) -> str | None:
    """Why a ``snakemake --report`` now would hold no figures, or stale ones; None when fine.

    Snakemake puts in a report only the report files of the jobs needed for its targets, and
    builds nothing while reporting: without ``report_figures`` as the target, or before that rule
    has run on the current table, it still says "Report created".
    """
    if not any(arg == "--report" or arg.startswith("--report=") for arg in argv):
        return None
    how = (f"build them with `snakemake --cores N {REPORT_RULE}`, then report with "
           f"`snakemake {REPORT_RULE} --report report.html`")
    if REPORT_RULE not in argv:
        return f"the report holds no figures unless its target is {REPORT_RULE}: {how}"
    outputs = [Path(results) / name for name in layout.REPORT_OUTPUTS.values()]
    missing = [str(path) for path in outputs if not path.exists()]
    if missing:
        return f"the report's figures are missing ({', '.join(missing)}): {how}"
    table_path = Path(table)
    if table_path.exists() and min(p.stat().st_mtime for p in outputs) < table_path.stat().st_mtime:
        return f"the report's figures are older than {table_path}: {how}"
    return None
