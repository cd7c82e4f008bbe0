# thumbfeat: an image catalog in, a table of visual features out.
# Rules live in workflow/rules/, the logic in the thumbfeat package under workflow/thumbfeat/.

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/batches.smk"
include: "workflow/rules/images.smk"
include: "workflow/rules/table.smk"
include: "workflow/rules/warehouse.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        # The snapshot and the batch manifests are asked for directly: Snakemake does not rebuild
        # a missing intermediate file while the file depending on it (the table) exists.
        # The settings marker comes first: with results in a bucket, Snakemake's S3 plugin lists
        # everything under the folder of the first object it looks at (once per run), and this
        # one's folder holds one object, where the table's folder holds every per-image object.
        RUN.table_settings,
        RUN.feature_table,
        RUN.catalog_snapshot,
        [RUN.batch_manifest(b) for b in RUN.plan.batches],
        # The warehouse receipt (and the database while it does not exist) and, when asked for,
        # the write-back receipt.
        WAREHOUSE_TARGETS,
