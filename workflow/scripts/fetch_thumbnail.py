"""Snakemake job: fetch and validate one requested thumbnail (see thumbfeat.batch)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from thumbfeat.batch import download_one
from thumbfeat.fetch import FetchSettings, host_limiter, make_session, secret_values
from thumbfeat.joblog import job_logger
from thumbfeat.layout import results_root

smk = snakemake  # noqa: F821
RESULTS = results_root(smk.config)
settings = FetchSettings(**smk.params.settings)
session = make_session(settings)
try:
    outcome = download_one(session, smk.wildcards.image_id, smk.params.url, RESULTS, settings,
                           smk.config["max_pixels"], host_limiter(settings),
                           secret_values(session, settings))
finally:
    session.close()
job_logger(smk.log[0], "thumbnail").info(
    "%s: %s", outcome.image_id, "ok" if outcome.ok else f"failed ({outcome.kind}: {outcome.error})"
)
