from thumbfeat.warehouse import TEXT_KEY, Target  # noqa: E402

# The feature table loaded into a DuckDB warehouse (upserted by image key), and for database
# catalogs the optional thumb_downloaded flag written back to the catalog table.
#
# Snakemake deletes a job's existing outputs before running it, which would throw away the very
# database an upsert is meant to update (and every table a user added to it). So the database is
# declared as an output only while it does not exist: then there is nothing to delete, and the
# first load builds it under a temporary name and renames it into place. Once it exists it is
# updated in place, in one transaction, and the job's declared output is a small receipt of the
# load, written last. Deleting the database makes the next run build it again from the table.
# (Flagging the database update() would keep it too, but Snakemake would copy the whole file to a
# backup before every load and copy that back over it after a failed job, racing DuckDB's own
# transaction log; the transaction already leaves a failed load without effect.)
# The receipt is named by the warehouse it describes (file, table, key, pruning): pointing the
# warehouse elsewhere and back, or at another table, asks for a receipt that is missing or older
# than the table, so the load runs again.
WAREHOUSE = RUN.warehouse
WAREHOUSE_TARGET = Target(
    WAREHOUSE.path, WAREHOUSE.table, RUN.catalog_key or TEXT_KEY, WAREHOUSE.prune
)
WAREHOUSE_RECEIPT = RUN.path(WAREHOUSE_TARGET.receipt_path(RESULTS))
WAREHOUSE_CREATED = [] if os.path.exists(WAREHOUSE.path) else [WAREHOUSE.path]
WRITE_BACK_RECEIPT = RUN.path(layout.write_back_receipt_path(RESULTS))
WAREHOUSE_TARGETS = []
if WAREHOUSE.enabled:
    WAREHOUSE_TARGETS += [WAREHOUSE_RECEIPT, *WAREHOUSE_CREATED]
if config["catalog_write_back"]:
    WAREHOUSE_TARGETS.append(WRITE_BACK_RECEIPT)


# On a cluster both run on the submitting machine: short, and DuckDB files are best written by one
# machine (file locks on network file systems are unreliable).
localrules:
    warehouse,
    catalog_write_back,


rule warehouse:
    input:
        table=RUN.feature_table,
    output:
        receipt=WAREHOUSE_RECEIPT,
        created=WAREHOUSE_CREATED,
    log:
        RUN.log("warehouse"),
    conda:
        "../../envs/thumbfeat.yaml"
    params:
        target=WAREHOUSE_TARGET.as_dict(),
        near_duplicate_distance=config["near_duplicate_distance"],
        tag=RUN.tag,
    script:
        "../scripts/load_warehouse.py"


# Runs after the table, so every batch has finished, and after the warehouse load, so the two
# never hold the same database file at once when one file serves as both.
rule catalog_write_back:
    input:
        table=RUN.feature_table,
        snapshot=RUN.catalog_snapshot,
        warehouse=[WAREHOUSE_RECEIPT] if WAREHOUSE.enabled else [],
    output:
        WRITE_BACK_RECEIPT,
    log:
        RUN.log("catalog_write_back"),
    conda:
        "../../envs/thumbfeat.yaml"
    params:
        database=str(RUN.catalog_spec.path),
        table=RUN.catalog_spec.table,
        id_column=(
            RUN.catalog_key.column if RUN.catalog_key else RUN.catalog_spec.id_column
        ),
        tag=RUN.tag,
    script:
        "../scripts/write_back.py"
