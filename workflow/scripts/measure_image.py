"""Snakemake job: compute the feature row of one requested image (see thumbfeat.batch)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from thumbfeat.batch import measure_one
from thumbfeat.joblog import job_logger
from thumbfeat.layout import results_root

smk = snakemake  # noqa: F821
RESULTS = results_root(smk.config)
outcome, _ = measure_one(smk.wildcards.image_id, RESULTS, smk.config["max_pixels"])
job_logger(smk.log[0], "features").info(
    "%s: %s", outcome.image_id, "ok" if outcome.ok else f"failed ({outcome.kind}: {outcome.error})"
)
