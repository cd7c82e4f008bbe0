# One job per batch fetches the batch's missing thumbnails and measures its images, overlapping
# the two. A batch declares only its manifest and its partial table: the per-image files it writes
# are found on disk by the plan at the next parse, so declaring each of them (which costs
# Snakemake a fraction of a millisecond per file, in dry runs as in real ones) buys nothing.
# Each per-image file is written atomically, so a killed batch leaves only whole files, and the
# next plan leaves those out. The partial is written before the manifest, so a batch with a
# manifest always has its partial.
# A batch's key names its work and the attempt at it (see thumbfeat.plan): no manifest exists
# for a planned batch, so Snakemake never skips one the plan announced.


for batch in RUN.plan.batches:

    rule:
        name:
            f"batch_{batch.number}"
        output:
            manifest=RUN.batch_manifest(batch),
            partial=RUN.batch_partial(batch),
        log:
            RUN.log(f"batches/{batch.key}"),
        conda:
            "../../envs/thumbfeat.yaml"
        threads: config["batch_threads"]
        resources:
            # Read by cluster executors (e.g. sbatch --mem, --time); see profiles/slurm.
            mem_mb=config["batch_mem_mb"],
            runtime=config["batch_runtime"],
        params:
            sources=[(i, RUN.plan.urls[i]) for i in batch.fetch_ids],
            measure=list(batch.measure_ids),
            source_urls={i: RUN.plan.urls[i] for i in batch.measure_ids},
            failure_records=RUN.failure_records(batch),
            batch_key=batch.key,
            settings=RUN.fetch_settings,
            thumbnails=RUN.thumbnail_params,
            # The job stops if this process ends (see thumbfeat.lineage).
            owner_pid=os.getpid(),
        script:
            "../scripts/process_batch.py"
