"""The workflow's work with the same functions and no Snakemake: the benchmark's yardstick.

Fetches and measures every image of the catalog as one batch (``download.concurrency``
downloads in flight, ``--cores`` measuring processes, overlapped as in a workflow job), then
assembles the table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))

from thumbfeat import layout
from thumbfeat.batch import process_batch
from thumbfeat.catalog import CatalogSpec, load_catalog
from thumbfeat.fetch import FetchSettings
from thumbfeat.imaging import DEFAULT_MAX_PIXELS
from thumbfeat.table import assemble_table
from thumbfeat.thumbnail import ThumbnailSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("catalog", type=Path)
    parser.add_argument("--results", default="results")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-side", type=int, default=512)
    args = parser.parse_args()
    logger = logging.getLogger("plain")
    catalog = load_catalog(CatalogSpec(path=args.catalog))
    results = args.results
    thumbnails = ThumbnailSettings(args.max_side, "jpeg", 85, only_if_larger=True)
    process_batch(list(zip(catalog.ids, catalog.urls, strict=True)), catalog.ids, results,
                  FetchSettings(concurrency=args.concurrency), threads=args.cores,
                  thumbnails=thumbnails,
                  max_pixels=DEFAULT_MAX_PIXELS,
                  manifest_path=f"{results}/{layout.BATCHES}/plain.json",
                  partial_path=f"{results}/{layout.BATCHES}/plain.parquet", batch_key="plain",
                  logger=logger)
    assemble_table(catalog.ids, results, f"{results}/feature_table.parquet", tag=thumbnails.tag)


if __name__ == "__main__":
    main()
