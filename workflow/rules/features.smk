# One job per batch measures the batch's images and writes one Parquet row file per image.


for batch in PLAN.batches:
    if not batch.feature_ids:
        continue

    rule:
        name:
            f"features_batch_{batch.number}"
        input:
            [download_manifest(batch)] if batch.download_ids else [],
        output:
            manifest=feature_manifest(batch),
            rows=[layout.feature_path(RESULTS, i) for i in batch.feature_ids],
        log:
            f"{RESULTS}/{layout.LOGS}/features/{batch.key}.log",
        conda:
            "../../envs/thumbfeat.yaml"
        threads: config["feature_threads"]
        params:
            image_ids=list(batch.feature_ids),
            batch_key=batch.key,
        script:
            "../scripts/feature_batch.py"
