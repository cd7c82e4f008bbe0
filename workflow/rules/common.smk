# Config validation, then the run's context (catalog, plan, settings, paths), built once per parse
# by thumbfeat.run.build_run.
import sys
from pathlib import Path

from snakemake.common.configfile import load_configfile
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from thumbfeat import hooks, layout  # noqa: E402
from thumbfeat.config import ConfigError, ConfigSources, validated_config  # noqa: E402
from thumbfeat.run import (
    RUN_ERRORS,
    SnakemakeFacts,
    UnknownImageError,
    build_run,
)  # noqa: E402

CONFIG_SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
SOURCES = ConfigSources.of_snakemake(workflow, sys.argv)
try:
    config.update(
        validated_config(config, load_configfile(str(CONFIG_SCHEMA)), SOURCES)
    )
except ConfigError as error:
    raise WorkflowError(str(error)) from None
# Fills in the schema's defaults (the check above has already named any bad value).
validate(config, schema=str(CONFIG_SCHEMA))

FACTS = SnakemakeFacts.of_workflow(workflow, sys.argv)
try:
    RUN = build_run(config, workflow.basedir, FACTS, os.environ)
except RUN_ERRORS as error:
    raise WorkflowError(str(error)) from None
if RUN.remote:
    # Results in a bucket: the rules' run-level files go through Snakemake's S3 storage plugin.
    RUN.declare = storage
RUN.announce(logger)
RESULTS = RUN.results


def url_of_image(wildcards):
    try:
        return RUN.url_of_image(wildcards.image_id, wildcards.shard)
    except UnknownImageError as error:
        raise WorkflowError(str(error)) from None


onstart:
    RUN.on_start(workflow.non_local_exec, os.environ, logger)


onsuccess:
    RUN.on_success(os.environ)
    hooks.cancel_pending_timers()
