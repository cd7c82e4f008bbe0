# One job per batch downloads the batch's missing thumbnails, several at a time.
# The manifest is declared first: Snakemake finds a rule's producer by scanning its outputs in
# order, and the manifest is the file other rules ask for.


for batch in PLAN.batches:
    if not batch.download_ids:
        continue

    rule:
        name:
            f"download_batch_{batch.number}"
        output:
            manifest=download_manifest(batch),
            thumbs=[layout.thumb_path(RESULTS, i) for i in batch.download_ids],
        log:
            f"{RESULTS}/{layout.LOGS}/download/{batch.key}.log",
        conda:
            "../../envs/thumbfeat.yaml"
        threads: 1
        params:
            sources=[(i, URL_OF[i]) for i in batch.download_ids],
            batch_key=batch.key,
            settings=FETCH_SETTINGS,
        script:
            "../scripts/download_batch.py"
