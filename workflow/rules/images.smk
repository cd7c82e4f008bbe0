# Every per-image file is a target of its own: `snakemake results/features/<shard>/<id>.parquet`
# builds that image alone (downloading its thumbnail first if it is missing). Full runs never ask
# for these rules; the batches write the same files.
# With results in a bucket (results=s3://...) only whole runs are offered: these rules write
# local files.


if not RUN.remote:

    rule thumbnail:
        output:
            f"{RESULTS}/{layout.THUMBS}/{{shard}}/{{image_id}}{layout.THUMB_SUFFIX}",
        log:
            RUN.log("images/{shard}/{image_id}.thumbnail"),
        wildcard_constraints:
            shard=layout.SHARD_PATTERN,
            image_id=layout.IMAGE_ID_PATTERN,
        conda:
            "../../envs/thumbfeat.yaml"
        params:
            url=url_of_image,
            settings=RUN.fetch_settings,
        script:
            "../scripts/fetch_thumbnail.py"

    rule image_features:
        input:
            f"{RESULTS}/{layout.THUMBS}/{{shard}}/{{image_id}}{layout.THUMB_SUFFIX}",
        output:
            f"{RESULTS}/{layout.FEATURES}/{{shard}}/{{image_id}}{layout.FEATURE_SUFFIX}",
        log:
            RUN.log("images/{shard}/{image_id}.features"),
        wildcard_constraints:
            shard=layout.SHARD_PATTERN,
            image_id=layout.IMAGE_ID_PATTERN,
        conda:
            "../../envs/thumbfeat.yaml"
        script:
            "../scripts/measure_image.py"
