# Every per-image file is a target of its own: `snakemake results/features/<shard>/<id>.parquet`
# builds that image alone (downloading its thumbnail first if it is missing). Full runs never ask
# for these rules; the batches write the same files.


rule thumbnail:
    output:
        f"{RESULTS}/{layout.THUMBS}/{{shard}}/{{image_id}}{layout.THUMB_SUFFIX}",
    log:
        f"{RESULTS}/{layout.LOGS}/images/{{shard}}/{{image_id}}.thumbnail.log",
    wildcard_constraints:
        shard=SHARD_PATTERN,
        image_id=IMAGE_ID_PATTERN,
    conda:
        "../../envs/thumbfeat.yaml"
    params:
        url=lambda wildcards: url_of_image(wildcards.image_id, wildcards.shard),
        settings=FETCH_SETTINGS,
    script:
        "../scripts/fetch_thumbnail.py"


rule image_features:
    input:
        f"{RESULTS}/{layout.THUMBS}/{{shard}}/{{image_id}}{layout.THUMB_SUFFIX}",
    output:
        f"{RESULTS}/{layout.FEATURES}/{{shard}}/{{image_id}}{layout.FEATURE_SUFFIX}",
    log:
        f"{RESULTS}/{layout.LOGS}/images/{{shard}}/{{image_id}}.features.log",
    wildcard_constraints:
        shard=SHARD_PATTERN,
        image_id=IMAGE_ID_PATTERN,
    conda:
        "../../envs/thumbfeat.yaml"
    script:
        "../scripts/measure_image.py"
