"""The run's context: what one parse of the workflow knows, built in one place.

Snakemake parses the workflow in every process of a run: the main process that plans and
schedules, and, on a cluster, each job again. ``build_run`` turns the validated config and the
facts Snakemake gives (cores, nodes, whether this process is a job) into one ``RunContext``: the
catalog, the plan of remaining work, the download settings with their per-host rate share, and the
run-level paths. The results root is a local folder or an S3 prefix (``--config
results=s3://BUCKET/PREFIX``); with a prefix, the workflow hands the run-level paths to
Snakemake's S3 storage plugin through ``declare`` (see thumbfeat.storage). A cluster job does
not plan: it follows the plan its main process handed over (see ``thumbfeat.handover``).
``workflow/rules/common.smk`` only validates the config and calls ``build_run``; the rules read
the context.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from thumbfeat import atomic, handover, integrity, layout, storage
from thumbfeat.catalog import Catalog, CatalogError, CatalogSpec, load_catalog, url_warnings
from thumbfeat.config import (
    ConfigError,
    WarehouseSettings,
    catalog_key,
    catalog_spec,
    fetch_settings,
    warehouse_settings,
)
from thumbfeat.dbcatalog import CatalogKey
from thumbfeat.features import FEATURE_VERSION
from thumbfeat.plan import (
    PLAN_JSON_VAR,
    Batch,
    Rebuilds,
    WorkPlan,
    plan_work,
    report_warning,
    requested_image_ids,
    table_rebuild_reason,
)
from thumbfeat.ratelimit import rate_share
from thumbfeat.rowinputs import read_row_inputs
from thumbfeat.thumbnail import ThumbnailSettings, thumbnail_settings


class PlanOutputError(OSError):
    """The plan document cannot be written where the environment asked for it."""


# Everything build_run raises for a user's input: the workflow turns these into one clear message.
RUN_ERRORS = (ConfigError, CatalogError, handover.HandoverError, PlanOutputError)


class UnknownImageError(LookupError):
    """A per-image file was asked for that the run's catalog (or handed plan) does not hold."""


@dataclass(frozen=True)
class SnakemakeFacts:
    """What Snakemake tells a parse about the run it belongs to."""

    cores: int | None
    nodes: int | None
    is_job: bool
    argv: Sequence[str] = ()

    @classmethod
    def of_workflow(cls, workflow: Any, argv: Sequence[str]) -> SnakemakeFacts:
        """Read from Snakemake's workflow object while it parses (its public attributes only)."""
        from snakemake.exceptions import WorkflowError

        try:
            cores = workflow.cores
        except WorkflowError:  # no --cores given (a cluster run may give only --jobs)
            cores = None
        return cls(cores, workflow.nodes, not workflow.is_main_process, tuple(argv))


def job_slots(facts: SnakemakeFacts, threads_per_job: int) -> int:
    """How many batch jobs can run at once: --jobs on a cluster, else local cores over threads.

    Snakemake knows the executor only after parsing, but a cluster run always has --jobs (nodes)
    set; locally nodes is only set next to --cores, and then it caps the jobs too. Counting
    nodes can only overestimate the slots, which keeps per-host rate shares on the safe side.
    """
    if facts.nodes is not None:
        return max(1, int(facts.nodes))
    return max(1, (facts.cores or 1) // max(1, threads_per_job))


@dataclass
class RunContext:
    """The catalog, plan, settings and paths of one parse, as the rules use them."""

    config: Mapping[str, Any]
    results: str
    catalog_spec: CatalogSpec
    catalog: Catalog | None
    catalog_digest: str
    plan: WorkPlan
    slots: int
    fetch_settings: dict[str, Any]
    warehouse: WarehouseSettings
    thumbnail: ThumbnailSettings
    handed: handover.HandedPlan | None = None
    # The catalog table's column holding the ids (database catalogs): the warehouse keeps its type.
    catalog_key: CatalogKey | None = None
    # Listed once per parse: the preview and the table rule's inputs use the same folders.
    feature_shard_dirs: list[str] = field(default_factory=list)
    # Lines for the person starting the run: the plan, then warnings.
    messages: list[str] = field(default_factory=list)
    # The plan as a JSON document (see WorkPlan.describe); None in a cluster job, which does
    # not plan.
    plan_document: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    # How a rule declares a run-level path: as is for a local folder; in a bucket, the workflow
    # sets Snakemake's ``storage`` here, so its S3 plugin moves the declared files.
    declare: Callable[[str], Any] = str

    @property
    def remote(self) -> bool:
        """Whether the results live in an object store (``s3://``)."""
        return storage.is_remote(self.results)

    @property
    def local_results(self) -> str:
        """The local folder of what stays on the machine running Snakemake (report figures)."""
        return layout.RESULTS if self.remote else self.results

    @property
    def tag(self) -> str:
        """The thumbnail settings' folder name: their thumbnails and rows live under it."""
        return self.thumbnail.tag

    @property
    def thumbnail_params(self) -> dict[str, Any]:
        """The thumbnail settings as plain values, for the jobs that make thumbnails."""
        return asdict(self.thumbnail)

    @property
    def feature_table(self) -> Any:
        return self.declare(layout.feature_table_path(self.results))

    @property
    def catalog_snapshot(self) -> Any:
        return self.declare(layout.catalog_snapshot_path(self.results, self.catalog_digest))

    @property
    def table_settings(self) -> Any:
        return self.declare(layout.table_settings_path(
            self.results, self.config["near_duplicate_distance"], self.tag))

    @property
    def catalog_params(self) -> dict[str, Any]:
        """The catalog spec as plain values, for the job that snapshots the catalog."""
        return asdict(self.catalog_spec)

    def batch_manifest(self, batch: Batch) -> Any:
        return self.declare(layout.batch_manifest_path(self.results, batch.key))

    def batch_partial(self, batch: Batch) -> Any:
        return self.declare(layout.batch_partial_path(self.results, batch.key))

    def log(self, name: str) -> Any:
        return self.declare(layout.log_path(self.results, name))

    def path(self, run_path: str) -> Any:
        """Any other run-level path under the results root, declared as the rules need it."""
        return self.declare(run_path)

    def failure_records(self, batch: Batch) -> list[str]:
        """The batch's images that had a failure record when the run was planned."""
        return [i for i in dict.fromkeys((*batch.fetch_ids, *batch.measure_ids))
                if i in self.plan.failure_ids]

    def url_of_image(self, image_id: str, shard: str) -> str:
        """The catalog URL of one requested per-image file's image."""
        if shard != layout.shard_of(image_id):
            raise UnknownImageError(f"image {image_id!r} lives in shard "
                                    f"{layout.shard_of(image_id)!r}, not {shard!r}")
        if self.catalog is None:
            # A cluster job knows the URLs of the run's planned downloads, not the catalog.
            if image_id in self.plan.urls:
                return self.plan.urls[image_id]
            raise UnknownImageError(f"image {image_id!r} is not among the run's planned downloads")
        try:
            return self.catalog.urls[self.catalog.ids.index(image_id)]
        except ValueError:
            raise UnknownImageError(f"image {image_id!r} is not in the catalog") from None

    def announce(self, logger: Any) -> None:
        """Tell the person starting the run what it will do (the plan), then its warnings."""
        for message in self.messages:
            logger.info(message)
        for warning in self.warnings:
            logger.warning(warning)

    def on_start(self, non_local_exec: bool, environ: MutableMapping[str, str],
                  logger: Any = None) -> None:
        """Before the first job: move the damaged files the plan found to the quarantine folder
        (their images are in the plan's work), and hand cluster jobs this run's plan (see
        thumbfeat.handover). Snakemake calls this in real runs only, so a dry run moves nothing.
        """
        if self.handed is None:
            integrity.quarantine_all(self.results, self.plan.damaged, logger)
        if non_local_exec and self.handed is None:
            path = handover.save(handover.folder_of(self.results), self.plan,
                                 self.catalog_digest, self.slots)
            handover.publish(path, environ)

    def on_success(self, environ: MutableMapping[str, str]) -> None:
        """After a successful run: remove the handover file the main process published."""
        if self.handed is None:
            handover.withdraw(environ.get(handover.ENV_VAR), environ)


def build_run(config: Mapping[str, Any], basedir: str | Path, facts: SnakemakeFacts,
              environ: Mapping[str, str], *, results: str | None = None) -> RunContext:
    """Build the run's context from a validated config (schema defaults filled in).

    ``results`` defaults to the config's ``results`` (a folder, or an ``s3://`` prefix).
    Raises one of RUN_ERRORS for input that cannot work, before any work starts.
    """
    results = layout.results_root(config) if results is None else results
    with storage.listed_once():
        return _build_run(config, basedir, facts, environ, results)


def _build_run(config: Mapping[str, Any], basedir: str | Path, facts: SnakemakeFacts,
               environ: Mapping[str, str], results: str) -> RunContext:
    spec = catalog_spec(config, basedir)
    thumbnail = thumbnail_settings(config["thumbnail"])
    settings = asdict(fetch_settings(config, basedir, environ))
    handed_path = handover.handed_plan_path(environ, facts.is_job)
    if handed_path:
        handed = handover.load(handed_path)
        context = RunContext(
            config=config, results=results, catalog_spec=spec, catalog=None,
            catalog_digest=handed.catalog_digest, plan=handed.plan, slots=handed.slots,
            fetch_settings=settings, warehouse=warehouse_settings(config), handed=handed,
            thumbnail=thumbnail,
        )
    else:
        # Checked before any work, as a write-back needs it.
        key = catalog_key(config, spec)
        catalog = load_catalog(spec)
        slots = job_slots(facts, config["batch_threads"])
        context = RunContext(
            config=config, results=results, catalog_spec=spec, catalog=catalog,
            catalog_digest=catalog.digest(), plan=WorkPlan(catalog_size=len(catalog)),
            slots=slots, fetch_settings=settings, warehouse=warehouse_settings(config),
            catalog_key=key, thumbnail=thumbnail,
        )
        context.feature_shard_dirs = layout.existing_shard_dirs(
            results, layout.stage_dir(layout.FEATURES, thumbnail.tag))
        context.plan = _plan(context, catalog, facts)
        context.plan_document, line = context.plan.describe()
        context.messages.append(line)
        context.warnings.extend(url_warnings(
            spec.path, {i: context.plan.urls[i] for i in context.plan.fetch},
            settings["local_file_roots"]))
        if warning := report_warning(facts.argv[1:], context.local_results,
                                     layout.feature_table_path(context.local_results)):
            context.warnings.append(f"snakemake --report: {warning}")
        context.warnings.extend(f"damaged file {d.path}: {d.reason}; it will be moved to "
                                f"{integrity.quarantine_path(results, d.path)} and built again"
                                for d in context.plan.damaged)
        context.warnings.extend(_thread_cap_warnings(config, facts))
        if path := environ.get(PLAN_JSON_VAR):
            write_plan_document(path, {**context.plan_document, "warnings": context.warnings})
    # Per-host limits hold for the whole run: each batch job gets its share of them.
    settings["rate_share"] = rate_share(context.slots, len(context.plan.batches))
    return context


def write_plan_document(path: str, document: Mapping[str, Any]) -> None:
    """Write the plan where a caller asked for it (``thumbfeat plan --json`` reads it there)."""
    try:
        atomic.write_bytes(path, json.dumps(document, indent=1).encode())
    except OSError as error:
        raise PlanOutputError(f"{PLAN_JSON_VAR}={path}: cannot write the plan there "
                              f"({error.strerror or error})") from None


def _plan(context: RunContext, catalog: Catalog, facts: SnakemakeFacts) -> WorkPlan:
    config = context.config
    layout.list_ahead(context.results, [layout.stage_dir(layout.THUMBS, context.tag),
                                        layout.stage_dir(layout.FEATURES, context.tag),
                                        layout.FAILED])
    requested = requested_image_ids(facts.argv, catalog.ids)
    table = layout.feature_table_path(context.results)
    snapshot = layout.catalog_snapshot_path(context.results, context.catalog_digest)
    table_missing = not storage.exists(table)
    rebuilds = Rebuilds(
        feature_version=FEATURE_VERSION,
        row_inputs=read_row_inputs(context.results, context.feature_shard_dirs, context.tag),
        # Without a table every row is read again: check first that each file is whole. In a
        # bucket every object was written by one PUT, hence whole, and a check would cost a
        # request per image: the table job survives a row that does not read instead.
        check_files=table_missing and requested is None and not context.remote,
        remeasure=config["remeasure"],
        refetch=config["refetch"],
        force_salt=_last_table_time(context.results),
        table_of_this_catalog=_newest_snapshot(context.results) == snapshot,
    )
    plan = plan_work(
        catalog,
        context.results,
        tag=context.tag,
        batch_size=None if config["batch_size"] == "auto" else config["batch_size"],
        slots=context.slots,
        retry_failed=config["retry_failed"],
        only=requested,
        rebuilds=rebuilds,
    )
    if requested is None:
        if context.remote:
            plan.table_reason = remote_table_reason(table, snapshot, plan.batches)
        else:
            plan.table_reason = table_rebuild_reason(table, snapshot, plan.batches,
                                                     context.feature_shard_dirs)
    return plan


def remote_table_reason(table: str, snapshot: str, batches: Sequence[Batch]) -> str:
    """Why the table in a bucket will be rebuilt, or "" (as table_rebuild_reason, without the
    folder times a bucket does not have)."""
    if not storage.exists(table):
        return "no table yet"
    if not storage.exists(snapshot):
        return "the catalog selection changed"
    if batches:
        return f"{len(batches)} batch{'es' if len(batches) != 1 else ''} to run"
    return ""


def _newest_snapshot(results: str) -> str | None:
    """The catalog snapshot the last table was built with (the table job writes one each time)."""
    if storage.is_remote(results):
        folder = layout.catalog_snapshot_dir(results)
        times = {name: when for name, when in storage.listing(folder).items()
                 if name.endswith(".parquet") and not layout.is_temporary_name(name)}
        return f"{folder}/{max(times, key=lambda n: (times[n], n))}" if times else None
    try:
        entries = [e for e in os.scandir(layout.catalog_snapshot_dir(results))
                   if e.name.endswith(".parquet") and not layout.is_temporary_name(e.name)]
    except FileNotFoundError:
        return None
    if not entries:
        return None
    newest = max(entries, key=lambda e: e.stat().st_mtime_ns)
    return f"{layout.catalog_snapshot_dir(results)}/{newest.name}"


def _last_table_time(results: str) -> str:
    """When the last table was built (its cache survives Snakemake deleting the table), or ""."""
    if storage.is_remote(results):
        when = storage.listing(f"{results}/{layout.BATCHES}").get(layout.TABLE_CACHE)
        return "" if when is None else str(int(when * 1e9))
    try:
        return str(os.stat(Path(results, layout.BATCHES, layout.TABLE_CACHE)).st_mtime_ns)
    except FileNotFoundError:
        return ""


def _thread_cap_warnings(config: Mapping[str, Any], facts: SnakemakeFacts) -> list[str]:
    """Snakemake caps every job's threads at --cores, even jobs that run on other machines."""
    threads = config["batch_threads"]
    if facts.nodes is not None and facts.cores is not None and threads > facts.cores:
        return [f"batch_threads={threads} is capped at --cores {facts.cores}; on a cluster, "
                f"pass --cores {threads} or more"]
    return []
