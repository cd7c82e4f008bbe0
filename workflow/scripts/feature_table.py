"""Snakemake job: snapshot the catalog and assemble the feature table from the per-image rows."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from thumbfeat import remote_table, storage
from thumbfeat.catalog import CatalogSpec, write_snapshot
from thumbfeat.joblog import job_logger
from thumbfeat.layout import results_root
from thumbfeat.table import assemble_and_log, assemble_table, write_settings_marker

smk = snakemake  # noqa: F821
RESULTS = results_root(smk.config)
logger = job_logger(smk.log[0], "table")
catalog = write_snapshot(
    CatalogSpec(**smk.params.spec),
    smk.output.snapshot,
    expected_digest=smk.params.digest,
    logger=logger,
)
assemble_and_log(
    catalog.ids,
    RESULTS,
    smk.output.table,
    tag=smk.params.tag,
    threads=max(2, smk.threads * 4),
    workers=smk.threads,
    logger=logger,
    near_duplicate_distance=smk.params.near_duplicate_distance,
    assemble=remote_table.assemble_table if storage.is_remote(RESULTS) else assemble_table,
)
write_settings_marker(smk.output.settings, smk.params.near_duplicate_distance)
