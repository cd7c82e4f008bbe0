"""Snakemake job: write thumb_downloaded back to a database catalog (see thumbfeat.dbcatalog)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from thumbfeat import atomic
from thumbfeat.catalog import read_snapshot_ids
from thumbfeat.dbcatalog import write_back_and_log
from thumbfeat.joblog import job_logger
from thumbfeat.layout import results_root

smk = snakemake  # noqa: F821
RESULTS = results_root(smk.config)
result = write_back_and_log(
    Path(smk.params.database),
    smk.params.table,
    smk.params.id_column,
    read_snapshot_ids(smk.input.snapshot),
    RESULTS,
    tag=smk.params.tag,
    logger=job_logger(smk.log[0], "write_back"),
)
atomic.write_bytes(smk.output[0], json.dumps(result.as_dict(), indent=2).encode())
