# One job per batch fetches the batch's missing thumbnails and measures its images, overlapping
# the two. Only files missing when the workflow was parsed are declared, so a batch never redoes
# finished work. Output order matters twice: the manifest comes first because Snakemake finds a
# rule's producer by scanning its outputs in order and the manifest is the file other rules ask
# for; the partial table comes last because Snakemake touches outputs in order after a job, and
# the table trusts a partial's rows only for files no newer than the partial.


for batch in PLAN.batches:

    rule:
        name:
            f"batch_{batch.number}"
        output:
            manifest=batch_manifest(batch),
            thumbs=[layout.thumb_path(RESULTS, i) for i in batch.download_ids],
            rows=[layout.feature_path(RESULTS, i) for i in batch.feature_ids],
            partial=batch_partial(batch),
        log:
            f"{RESULTS}/{layout.LOGS}/batches/{batch.key}.log",
        conda:
            "../../envs/thumbfeat.yaml"
        threads: config["batch_threads"]
        resources:
            # Read by cluster executors (e.g. sbatch --mem, --time); see profiles/slurm.
            mem_mb=config["batch_mem_mb"],
            runtime=config["batch_runtime"],
        params:
            sources=[(i, PLAN.urls[i]) for i in batch.download_ids],
            measure=list(batch.feature_ids),
            batch_key=batch.key,
            settings=FETCH_SETTINGS,
        script:
            "../scripts/process_batch.py"
