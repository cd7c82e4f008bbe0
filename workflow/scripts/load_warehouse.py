"""Snakemake job: load the feature table into the DuckDB warehouse (see thumbfeat.warehouse)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from thumbfeat.joblog import job_logger
from thumbfeat.layout import results_root
from thumbfeat.warehouse import Target, load_and_log, write_receipt

smk = snakemake  # noqa: F821
RESULTS = results_root(smk.config)
# The database is updated in place, not a declared output (see workflow/rules/warehouse.smk).
target = Target.from_dict(smk.params.target)
result = load_and_log(smk.input.table, target, results=RESULTS, tag=smk.params.tag,
                      near_duplicate_distance=smk.params.near_duplicate_distance,
                      logger=job_logger(smk.log[0], "warehouse"))
write_receipt(smk.output.receipt, target, result)
