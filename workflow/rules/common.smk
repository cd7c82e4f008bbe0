# Config validation, the catalog and the plan of remaining work, computed once per parse.
import sys
from dataclasses import asdict
from pathlib import Path

from snakemake.common.configfile import load_configfile
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from thumbfeat import layout  # noqa: E402
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
from thumbfeat.plan import (  # noqa: E402
    plan_work,
    requested_image_ids,
    table_rebuild_reason,
)


def job_slots(workflow, threads_per_job):
    """How many batch jobs can run at once locally (1 when no core count was given)."""
    try:
        cores = int(workflow.cores)
    except (WorkflowError, TypeError, ValueError):
        cores = 1
    return max(1, cores // max(1, threads_per_job))


CONFIG_SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
try:
    config.update(coerce_to_schema(config, load_configfile(str(CONFIG_SCHEMA))))
    check_against_schema(config, load_configfile(str(CONFIG_SCHEMA)))
except ConfigError as error:
    raise WorkflowError(str(error)) from None
# Fills in the schema's defaults (the check above has already named any bad value).
validate(config, schema=str(CONFIG_SCHEMA))

try:
    CATALOG_SPEC = catalog_spec(config, workflow.basedir)
    CATALOG = load_catalog(CATALOG_SPEC)
    FETCH_SETTINGS = asdict(fetch_settings(config, workflow.basedir))
except (CatalogError, ConfigError) as error:
    raise WorkflowError(str(error)) from None

CATALOG_DIGEST = CATALOG.digest()
CATALOG_SNAPSHOT = f"{RESULTS}/catalog/{CATALOG_DIGEST}.parquet"
FEATURE_TABLE = f"{RESULTS}/feature_table.parquet"
REQUESTED_IDS = requested_image_ids(sys.argv, CATALOG.ids)
PLAN = plan_work(
    CATALOG,
    RESULTS,
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
        layout.existing_shard_dirs(RESULTS, layout.FEATURES),
    )
logger.info(PLAN.summary())
for warning in url_warnings(CATALOG_SPEC.path, PLAN.urls):
    logger.warning(warning)
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
    try:
        return CATALOG.urls[CATALOG.ids.index(image_id)]
    except ValueError:
        raise WorkflowError(f"image {image_id!r} is not in the catalog") from None


def batch_manifest(batch):
    return f"{RESULTS}/{layout.BATCHES}/{batch.key}.json"


def batch_partial(batch):
    return f"{RESULTS}/{layout.BATCHES}/{batch.key}.parquet"
