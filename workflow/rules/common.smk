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
    coerce_to_schema,
    fetch_settings,
    rate_share,
)
from thumbfeat.plan import plan_work, requested_image_ids  # noqa: E402


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
except ConfigError as error:
    raise WorkflowError(str(error)) from None
validate(config, schema=str(CONFIG_SCHEMA))

try:
    CATALOG_SPEC = catalog_spec(config, workflow.basedir)
    CATALOG = load_catalog(CATALOG_SPEC)
    FETCH_SETTINGS = asdict(fetch_settings(config, workflow.basedir))
except (CatalogError, ConfigError) as error:
    raise WorkflowError(str(error)) from None

CATALOG_DIGEST = CATALOG.digest()
PLAN = plan_work(
    CATALOG,
    RESULTS,
    batch_size=None if config["batch_size"] == "auto" else config["batch_size"],
    slots=job_slots(workflow, config["batch_threads"]),
    retry_failed=config["retry_failed"],
    only=requested_image_ids(sys.argv, CATALOG.ids),
)
logger.info(PLAN.summary())
for warning in url_warnings(CATALOG_SPEC.path, PLAN.urls):
    logger.warning(warning)
# Per-host limits hold for the whole run: each batch job gets its share of them.
FETCH_SETTINGS["rate_share"] = rate_share(
    job_slots(workflow, config["batch_threads"]), len(PLAN.batches)
)

CATALOG_SNAPSHOT = f"{RESULTS}/catalog/{CATALOG_DIGEST}.parquet"
FEATURE_TABLE = f"{RESULTS}/feature_table.parquet"


def batch_manifest(batch):
    return f"{RESULTS}/{layout.BATCHES}/{batch.key}.json"


def batch_partial(batch):
    return f"{RESULTS}/{layout.BATCHES}/{batch.key}.parquet"
