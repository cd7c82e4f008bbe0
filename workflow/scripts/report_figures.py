"""Snakemake job: draw the report's contact sheets, histograms and tables (see thumbfeat.report)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from thumbfeat.joblog import job_logger
from thumbfeat.layout import results_root
from thumbfeat.report import ReportSettings, build_report

smk = snakemake  # noqa: F821
RESULTS = results_root(smk.config)
build_report(
    smk.input.table,
    RESULTS,
    sheets_dir=smk.output.sheets,
    histograms_dir=smk.output.histograms,
    duplicates_path=smk.output.duplicates,
    failures_path=smk.output.failures,
    statistics_path=smk.output.statistics,
    settings=ReportSettings(
        rank_by=tuple(smk.params.rank_by),
        sheet_images=smk.params.sheet_images,
        duplicate_groups=smk.params.duplicate_groups,
        max_pixels=smk.params.max_pixels,
    ),
    logger=job_logger(smk.log[0], "report"),
)
