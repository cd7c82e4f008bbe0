"""Snakemake job: keep a copy of the selected catalog, named by its content digest."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from thumbfeat.catalog import CatalogSpec, write_snapshot
from thumbfeat.config import job_logger

smk = snakemake  # noqa: F821
write_snapshot(
    CatalogSpec(**smk.params.spec),
    smk.output[0],
    expected_digest=smk.params.digest,
    logger=job_logger(smk.log[0], "catalog"),
)
