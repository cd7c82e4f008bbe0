# Config validation, the catalog and the plan of remaining work, computed once per parse.
import sys
from dataclasses import asdict
from pathlib import Path

from snakemake.common.configfile import load_configfile
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from thumbfeat import handover, hooks, layout  # noqa: E402
from thumbfeat.catalog import CatalogError, load_catalog, url_warnings  # noqa: E402
from thumbfeat.config import (  # noqa: E402
    RESULTS,
    ConfigError,
    catalog_spec,
    check_against_schema,
    coerce_to_schema,
    fetch_settings,
    rate_share,
    warehouse_settings,
)
from thumbfeat.thumbnail import thumbnail_settings  # noqa: E402
from thumbfeat.plan import (  # noqa: E402
    plan_work,
    requested_image_ids,
    table_rebuild_reason,
)

# A cluster job follows the plan of the run that submitted it (see thumbfeat.handover).
HANDED_PLAN_PATH = handover.handed_plan_path(os.environ, not workflow.is_main_process)
try:
    HANDED = handover.load(HANDED_PLAN_PATH) if HANDED_PLAN_PATH else None
except handover.HandoverError as error:
    raise WorkflowError(str(error)) from None


def job_slots(workflow, threads_per_job):
    """How many batch jobs can run at once: --jobs on a cluster, else local cores over threads.

    Snakemake knows the executor only after parsing, but a cluster run always has --jobs (nodes)
    set; locally nodes is only set next to --cores, and then it caps the jobs too. Counting
    nodes can only overestimate the slots, which keeps per-host rate shares on the safe side.
    Jobs take the slots of the run that submitted them.
    """
    if HANDED is not None:
        return HANDED.slots
    if workflow.nodes is not None:
        return max(1, int(workflow.nodes))
    try:
        cores = int(workflow.cores)
    except (WorkflowError, TypeError, ValueError):
        cores = 1
    return max(1, cores // max(1, threads_per_job))


CONFIG_SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = load_configfile(str(CONFIG_SCHEMA))
try:
    config.update(coerce_to_schema(config, SCHEMA))
    check_against_schema(config, SCHEMA)
except ConfigError as error:
    raise WorkflowError(str(error)) from None
# Fills in the schema's defaults (the check above has already named any bad value).
validate(config, schema=str(CONFIG_SCHEMA))

try:
    CATALOG_SPEC = catalog_spec(config, workflow.basedir)
    FETCH_SETTINGS = asdict(fetch_settings(config, workflow.basedir))
    THUMBNAIL = thumbnail_settings(config["thumbnail"])
    if HANDED is None:
        CATALOG = load_catalog(CATALOG_SPEC)
except (CatalogError, ConfigError) as error:
    raise WorkflowError(str(error)) from None

CATALOG_DIGEST = CATALOG.digest() if HANDED is None else HANDED.catalog_digest
CATALOG_SNAPSHOT = f"{RESULTS}/catalog/{CATALOG_DIGEST}.parquet"
FEATURE_TABLE = f"{RESULTS}/feature_table.parquet"
# Listed once per parse: the preview and the table rule's inputs use the same folders.
# Thumbnails and rows of these thumbnail settings live in their own folders (see thumbfeat.layout).
TAG = THUMBNAIL.tag
FEATURE_SHARD_DIRS = layout.existing_shard_dirs(
    RESULTS, layout.stage_dir(layout.FEATURES, TAG)
)
if HANDED is None:
    REQUESTED_IDS = requested_image_ids(sys.argv, CATALOG.ids)
    PLAN = plan_work(
        CATALOG,
        RESULTS,
        tag=TAG,
        batch_size=None if config["batch_size"] == "auto" else config["batch_size"],
        slots=job_slots(workflow, config["batch_threads"]),
        retry_failed=config["retry_failed"],
        only=REQUESTED_IDS,
    )
    if REQUESTED_IDS is None:
        PLAN.table_reason = table_rebuild_reason(
            FEATURE_TABLE,
            CATALOG_SNAPSHOT,
            PLAN.batches,
            FEATURE_SHARD_DIRS,
        )
    logger.info(PLAN.summary())
    for warning in url_warnings(CATALOG_SPEC.path, PLAN.urls):
        logger.warning(warning)
    if workflow.nodes is not None and config["batch_threads"] > (
        workflow._cores or 10**9
    ):
        # Snakemake caps every job's threads at --cores, even jobs that run on other machines.
        logger.warning(
            f"batch_threads={config['batch_threads']} is capped at --cores "
            f"{workflow._cores}; on a cluster, pass --cores {config['batch_threads']} or more"
        )
else:
    PLAN = HANDED.plan
# Per-host limits hold for the whole run: each batch job gets its share of them.
FETCH_SETTINGS["rate_share"] = rate_share(
    job_slots(workflow, config["batch_threads"]), len(PLAN.batches)
)


SHARD_PATTERN = layout.SHARD_PATTERN
IMAGE_ID_PATTERN = layout.IMAGE_ID_PATTERN


def url_of_image(image_id, shard):
    """The catalog URL of one requested image; a path the catalog does not know is an error."""
    if shard != layout.shard_of(image_id):
        raise WorkflowError(
            f"image {image_id!r} lives in shard {layout.shard_of(image_id)!r}, not {shard!r}"
        )
    if HANDED is not None:
        # A cluster job knows the URLs of the run's planned downloads, not the catalog.
        if image_id in PLAN.urls:
            return PLAN.urls[image_id]
        raise WorkflowError(
            f"image {image_id!r} is not among the run's planned downloads"
        )
    try:
        return CATALOG.urls[CATALOG.ids.index(image_id)]
    except ValueError:
        raise WorkflowError(f"image {image_id!r} is not in the catalog") from None


def batch_name(batch):
    """The batch's key and the thumbnail settings: the same work under other settings is new."""
    return f"{batch.key}-{TAG}"


def batch_manifest(batch):
    return f"{RESULTS}/{layout.BATCHES}/{batch_name(batch)}.json"


def batch_partial(batch):
    return f"{RESULTS}/{layout.BATCHES}/{batch_name(batch)}.parquet"


onstart:
    # Cluster jobs parse the workflow again; hand them this run's plan (see thumbfeat.handover).
    if workflow.non_local_exec and HANDED is None:
        handover.publish(
            handover.save(
                Path(".snakemake", "thumbfeat"),
                PLAN,
                CATALOG_DIGEST,
                job_slots(workflow, config["batch_threads"]),
            )
        )


onsuccess:
    if HANDED is None:
        handover.withdraw(os.environ.get(handover.ENV_VAR))
    hooks.cancel_pending_timers()
