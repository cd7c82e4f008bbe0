# Pictures and tables for `snakemake --report`: contact sheets ranked by features, near-duplicate
# groups, a histogram per feature, failures by kind and run statistics. Not part of the default
# target: build them with `snakemake report_figures`, then render the report (see README). They
# are drawn on the machine that renders the report, also when the results are in a bucket.


rule report_figures:
    input:
        table=RUN.feature_table,
    output:
        sheets=report(
            directory(f"{RUN.local_results}/{layout.REPORT_OUTPUTS['sheets']}"),
            patterns=["{sheet}.png"],
            category="Contact sheets",
            caption="../report/sheets.rst",
        ),
        histograms=report(
            directory(f"{RUN.local_results}/{layout.REPORT_OUTPUTS['histograms']}"),
            patterns=["{feature}.png"],
            category="Histograms",
            caption="../report/histograms.rst",
        ),
        duplicates=report(
            f"{RUN.local_results}/{layout.REPORT_OUTPUTS['duplicates']}",
            category="Near duplicates",
            caption="../report/near_duplicates.rst",
        ),
        failures=report(
            f"{RUN.local_results}/{layout.REPORT_OUTPUTS['failures']}",
            category="Failures",
            caption="../report/failures.rst",
        ),
        statistics=report(
            f"{RUN.local_results}/{layout.REPORT_OUTPUTS['statistics']}",
            category="Run statistics",
            caption="../report/run_statistics.rst",
        ),
    log:
        RUN.log("report_figures"),
    conda:
        "../../envs/thumbfeat.yaml"
    params:
        rank_by=config["report"]["rank_by"],
        sheet_images=config["report"]["sheet_images"],
        duplicate_groups=config["report"]["duplicate_groups"],
        max_pixels=config["max_pixels"],
    script:
        "../scripts/report_figures.py"
