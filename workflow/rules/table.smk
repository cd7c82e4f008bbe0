from thumbfeat.table import settings_marker as table_settings_marker  # noqa: E402

# The feature table: every per-image row, in catalog order, written with a snapshot of the catalog
# it was built for. It is rebuilt when the catalog's content changes (the snapshot is named by a
# digest of the selected ids and URLs, so a new selection is a missing file), when a batch ran, or
# when a feature shard folder changed since the table was written (a row file was added or
# removed by any means: a folder's time changes on every rename into it). The settings marker is
# named by the near-duplicate distance and the thumbnail settings, so changing either also rebuilds
# the table.
TABLE_SETTINGS = table_settings_marker(RESULTS, config["near_duplicate_distance"], TAG)


# On a cluster the table is assembled by the submitting process itself: it reads partial tables
# from the shared results folder for a few seconds, less than a queue wait and a job start cost.
localrules:
    feature_table,


rule feature_table:
    input:
        manifests=[batch_manifest(b) for b in PLAN.batches],
        shards=FEATURE_SHARD_DIRS,
    output:
        snapshot=CATALOG_SNAPSHOT,
        table=FEATURE_TABLE,
        settings=TABLE_SETTINGS,
    log:
        f"{RESULTS}/{layout.LOGS}/feature_table.log",
    conda:
        "../../envs/thumbfeat.yaml"
    threads: 2
    params:
        digest=CATALOG_DIGEST,
        spec=asdict(CATALOG_SPEC),
        near_duplicate_distance=config["near_duplicate_distance"],
        tag=TAG,
    script:
        "../scripts/feature_table.py"
