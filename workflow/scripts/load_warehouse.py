"""Snakemake job: load the feature table into the DuckDB warehouse (see thumbfeat.warehouse)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from thumbfeat import atomic
from thumbfeat.config import warehouse_settings
from thumbfeat.joblog import job_logger
from thumbfeat.warehouse import load_and_log

smk = snakemake  # noqa: F821
# The database is updated in place, not a declared output (see workflow/rules/warehouse.smk).
settings = warehouse_settings(smk.config)
result = load_and_log(smk.input.table, settings.path, table=settings.table,
                      logger=job_logger(smk.log[0], "warehouse"))
atomic.write_bytes(smk.output.receipt, json.dumps(result.as_dict(), indent=2).encode())
