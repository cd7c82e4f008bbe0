"""Snakemake job: compute the features of one batch of images (see thumbfeat.batch)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from thumbfeat.batch import run_feature_batch
from thumbfeat.config import RESULTS, job_logger

smk = snakemake  # noqa: F821
run_feature_batch(
    smk.params.image_ids,
    RESULTS,
    threads=smk.threads,
    max_pixels=smk.config["max_pixels"],
    manifest_path=smk.output.manifest,
    batch_key=smk.params.batch_key,
    logger=job_logger(smk.log[0], "features"),
    progress_interval=smk.config["progress_interval"],
)
