# The feature table: every per-image row, in catalog order, written with a snapshot of the catalog
# it was built for. It is rebuilt when the catalog's content changes (the snapshot is named by a
# digest of the selected ids and URLs, so a new selection is a missing file), when a batch ran, or
# when a feature shard folder changed since the table was written (a row file was added or
# removed by any means: a folder's time changes on every rename into it). The settings marker is
# named by the near-duplicate distance and the thumbnail settings, so changing either also rebuilds
# the table.


# On a cluster the table is assembled by the submitting process itself: it reads partial tables
# from the shared results folder for a few seconds, less than a queue wait and a job start cost.
localrules:
    feature_table,


rule feature_table:
    input:
        manifests=[RUN.batch_manifest(b) for b in RUN.plan.batches],
        shards=RUN.feature_shard_dirs,
    output:
        snapshot=RUN.catalog_snapshot,
        table=RUN.feature_table,
        settings=RUN.table_settings,
    log:
        RUN.log("feature_table"),
    conda:
        "../../envs/thumbfeat.yaml"
    threads: 2
    params:
        digest=RUN.catalog_digest,
        spec=RUN.catalog_params,
        near_duplicate_distance=config["near_duplicate_distance"],
        tag=RUN.tag,
    script:
        "../scripts/feature_table.py"
