"""Snakemake job: fetch and measure one batch of images (see thumbfeat.batch)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from thumbfeat import layout
from thumbfeat.batch import process_batch
from thumbfeat.fetch import FetchSettings
from thumbfeat.joblog import job_logger
from thumbfeat.layout import results_root
from thumbfeat.thumbnail import ThumbnailSettings

smk = snakemake  # noqa: F821
RESULTS = results_root(smk.config)
process_batch(
    smk.params.sources,
    smk.params.measure,
    RESULTS,
    FetchSettings(**smk.params.settings),
    thumbnails=ThumbnailSettings(**smk.params.thumbnails),
    threads=smk.threads,
    max_pixels=smk.config["max_pixels"],
    manifest_path=smk.output.manifest,
    partial_path=smk.output.partial,
    batch_key=smk.params.batch_key,
    logger=job_logger(smk.log[0], "batch", echo=True),
    progress_interval=smk.config["progress_interval"],
    progress_path=layout.progress_path(RESULTS, smk.params.batch_key),
    owner_pid=smk.params.owner_pid,
    source_urls=smk.params.source_urls,
    failure_records=smk.params.failure_records,
)
