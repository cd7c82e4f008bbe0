# One job per batch fetches the batch's missing thumbnails and measures its images, overlapping
# the two. Only files missing when the workflow was parsed are declared, so a batch never redoes
# finished work. The manifest is declared first: Snakemake finds a rule's producer by scanning its
# outputs in order, and the manifest is the file other rules ask for.


for batch in PLAN.batches:

    rule:
        name:
            f"batch_{batch.number}"
        output:
            manifest=batch_manifest(batch),
            partial=batch_partial(batch),
            thumbs=[layout.thumb_path(RESULTS, i) for i in batch.download_ids],
            rows=[layout.feature_path(RESULTS, i) for i in batch.feature_ids],
        log:
            f"{RESULTS}/{layout.LOGS}/batches/{batch.key}.log",
        conda:
            "../../envs/thumbfeat.yaml"
        threads: config["batch_threads"]
        params:
            sources=[(i, URL_OF[i]) for i in batch.download_ids],
            measure=list(batch.feature_ids),
            batch_key=batch.key,
            settings=FETCH_SETTINGS,
        script:
            "../scripts/process_batch.py"
