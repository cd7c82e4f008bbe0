"""Snakemake job: download one batch of thumbnails (see thumbfeat.batch)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from thumbfeat.batch import run_download_batch
from thumbfeat.config import RESULTS, job_logger
from thumbfeat.fetch import FetchSettings

smk = snakemake  # noqa: F821
run_download_batch(
    smk.params.sources,
    RESULTS,
    FetchSettings(**smk.params.settings),
    max_pixels=smk.config["max_pixels"],
    manifest_path=smk.output.manifest,
    batch_key=smk.params.batch_key,
    logger=job_logger(smk.log[0], "download"),
    progress_interval=smk.config["progress_interval"],
)
