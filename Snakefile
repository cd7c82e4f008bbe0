# thumbfeat: an image catalog in, a table of visual features out.
# Rules live in workflow/rules/, the logic in the thumbfeat package under workflow/thumbfeat/.

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/table.smk"


rule all:
    default_target: True
    input:
        FEATURE_TABLE,
        BATCH_MANIFESTS,
