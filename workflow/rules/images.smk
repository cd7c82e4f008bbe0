# Every per-image file is a target of its own: `snakemake results/features/<settings>/<shard>/<id>.parquet`
# builds that image alone, downloading it first when its thumbnail is missing (one decode makes
# the thumbnail and its row). Full runs never ask for these rules; the batches write the same files.


rule thumbnail:
    output:
        f"{RESULTS}/{layout.THUMBS}/{TAG}/{{shard}}/{{image_id}}{layout.THUMB_SUFFIX}",
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
        thumbnails=asdict(THUMBNAIL),
        measure=False,
    script:
        "../scripts/fetch_thumbnail.py"


rule image_features:
    output:
        f"{RESULTS}/{layout.FEATURES}/{TAG}/{{shard}}/{{image_id}}{layout.FEATURE_SUFFIX}",
    log:
        f"{RESULTS}/{layout.LOGS}/images/{{shard}}/{{image_id}}.features.log",
    wildcard_constraints:
        shard=SHARD_PATTERN,
        image_id=IMAGE_ID_PATTERN,
    conda:
        "../../envs/thumbfeat.yaml"
    params:
        url=lambda wildcards: url_of_image(wildcards.image_id, wildcards.shard),
        settings=FETCH_SETTINGS,
        thumbnails=asdict(THUMBNAIL),
        measure=True,
    script:
        "../scripts/fetch_thumbnail.py"
