# The feature table: every per-image row, in catalog order.
# It is rebuilt when the catalog's content changes (the snapshot is named by its digest), when a
# batch ran, or when a shard folder changed since the table was written (a row file was
# added or removed by any means: folder times change on every rename into them).


rule catalog_snapshot:
    output:
        CATALOG_SNAPSHOT,
    log:
        f"{RESULTS}/{layout.LOGS}/catalog_snapshot.log",
    conda:
        "../../envs/thumbfeat.yaml"
    params:
        digest=CATALOG_DIGEST,
        spec=asdict(CATALOG_SPEC),
    script:
        "../scripts/catalog_snapshot.py"


rule feature_table:
    input:
        catalog=CATALOG_SNAPSHOT,
        manifests=[batch_manifest(b) for b in PLAN.batches],
        shards=layout.existing_shard_dirs(RESULTS, layout.FEATURES),
    output:
        FEATURE_TABLE,
    log:
        f"{RESULTS}/{layout.LOGS}/feature_table.log",
    conda:
        "../../envs/thumbfeat.yaml"
    threads: 2
    script:
        "../scripts/feature_table.py"
