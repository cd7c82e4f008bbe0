# Every per-image file is a target of its own: `snakemake results/features/<settings>/<shard>/<id>
# .parquet` builds that image alone, fetching it first when its thumbnail is missing (one decode
# makes the thumbnail and its row). Full runs never ask for these rules; the batches write the
# same files.
# With results in a bucket (results=s3://...) only whole runs are offered: these rules write
# local files.


if not RUN.remote:

    rule fetch_image:
        output:
            f"{RESULTS}/{layout.THUMBS}/{RUN.tag}/{{shard}}/{{image_id}}{layout.THUMB_SUFFIX}",
        log:
            RUN.log("images/{shard}/{image_id}.fetch"),
        wildcard_constraints:
            shard=layout.SHARD_PATTERN,
            image_id=layout.IMAGE_ID_PATTERN,
        conda:
            "../../envs/thumbfeat.yaml"
        params:
            url=url_of_image,
            settings=RUN.fetch_settings,
            thumbnails=RUN.thumbnail_params,
            measure=False,
        script:
            "../scripts/process_image.py"

    rule measure_image:
        output:
            f"{RESULTS}/{layout.FEATURES}/{RUN.tag}/{{shard}}/{{image_id}}{layout.FEATURE_SUFFIX}",
        log:
            RUN.log("images/{shard}/{image_id}.measure"),
        wildcard_constraints:
            shard=layout.SHARD_PATTERN,
            image_id=layout.IMAGE_ID_PATTERN,
        conda:
            "../../envs/thumbfeat.yaml"
        params:
            url=url_of_image,
            settings=RUN.fetch_settings,
            thumbnails=RUN.thumbnail_params,
            measure=True,
        script:
            "../scripts/process_image.py"
