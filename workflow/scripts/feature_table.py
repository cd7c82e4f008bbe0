"""Snakemake job: assemble the feature table from the per-image row files."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from thumbfeat.config import RESULTS, job_logger
from thumbfeat.table import assemble_from_snapshot

smk = snakemake  # noqa: F821
assemble_from_snapshot(
    smk.input.catalog,
    RESULTS,
    smk.output[0],
    threads=max(2, smk.threads * 4),
    logger=job_logger(smk.log[0], "table"),
)
