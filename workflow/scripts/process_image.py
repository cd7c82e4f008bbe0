"""Snakemake job: fetch one requested image (its thumbnail), and measure it when asked (see
thumbfeat.batch)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from thumbfeat.batch import finish_one
from thumbfeat.fetch import FetchSettings
from thumbfeat.joblog import job_logger
from thumbfeat.layout import results_root
from thumbfeat.thumbnail import ThumbnailSettings

smk = snakemake  # noqa: F821
RESULTS = results_root(smk.config)
outcome = finish_one(
    smk.wildcards.image_id,
    smk.params.url,
    RESULTS,
    FetchSettings(**smk.params.settings),
    ThumbnailSettings(**smk.params.thumbnails),
    max_pixels=smk.config["max_pixels"],
    measure=smk.params.measure,
)
job_logger(smk.log[0], "measure" if smk.params.measure else "fetch").info(
    "%s: %s", outcome.image_id, "ok" if outcome.ok else f"failed ({outcome.kind}: {outcome.error})"
)
