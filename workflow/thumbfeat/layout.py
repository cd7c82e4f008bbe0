"""Where every artifact lives under the results folder: per-image files and run-level files.

Every path the workflow, its jobs and the command line use is built here, so a file has one name
everywhere. Per-image files are spread over 256 shard folders named by the first two hex digits
of the SHA-1 of the image id. Hashing (rather than using a prefix of the id) keeps the shards even
when ids are sequential numbers, and the shard of an id never changes when the catalog grows, so
appending rows never moves a finished file. At a million images a shard holds about 4,000 files.

Thumbnails and the feature rows measured from them live in a folder per thumbnail settings (the
settings' tag, e.g. ``thumbs/512px-jpeg-q85/``): files made under other settings are never
overwritten nor mixed with them, and going back to earlier settings finds its files again.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from thumbfeat import storage

# The results folder, relative to the folder the workflow runs in.
RESULTS = "results"

THUMBS = "thumbs"
FEATURES = "features"
FAILED = "failed"
BATCHES = "batches"
LOGS = "logs"
PROGRESS = "logs/progress"

REPORT = "report"
# What rule report_figures writes under the results folder, by output name.
REPORT_OUTPUTS = {
    "sheets": f"{REPORT}/sheets",
    "histograms": f"{REPORT}/histograms",
    "duplicates": f"{REPORT}/near_duplicates.png",
    "failures": f"{REPORT}/failures.html",
    "statistics": f"{REPORT}/run_statistics.html",
}

ORIGINALS_TAG = "original"
"""The settings folder of images kept as served (``max_side: null`` or ``format: source``)."""

# The last table, kept under BATCHES as the starting point of the next assembly.
TABLE_CACHE = "table-cache.parquet"

THUMB_SUFFIX = ".img"
FEATURE_SUFFIX = ".parquet"
FAILURE_SUFFIX = ".json"
MANIFEST_SUFFIX = ".json"

SHARD_DIGITS = 2
SHARDS = tuple(f"{i:0{SHARD_DIGITS}x}" for i in range(16**SHARD_DIGITS))
SHARD_SET = frozenset(SHARDS)

# Image ids are names that are safe as file names everywhere (the catalog enforces this).
IMAGE_ID_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}"
SHARD_PATTERN = f"[0-9a-f]{{{SHARD_DIGITS}}}"

TAG_PATTERN = r"[a-z0-9][a-z0-9-]*"

_PER_IMAGE_TARGET = re.compile(
    rf"(?:^|/)(?P<stage>thumbs|features)/{TAG_PATTERN}/(?P<shard>{SHARD_PATTERN})/"
    r"(?P<image_id>[A-Za-z0-9_][A-Za-z0-9._-]*?)(?P<suffix>\.img|\.parquet)$"
)
_SUFFIX_OF_STAGE = {THUMBS: THUMB_SUFFIX, FEATURES: FEATURE_SUFFIX}


def results_root(config: Mapping[str, Any]) -> str:
    """The results root a config names: a folder, or ``s3://bucket/prefix`` (no trailing /)."""
    return str(config.get("results") or RESULTS).rstrip("/") or RESULTS


def shard_of(image_id: str) -> str:
    """The shard folder of an image: stable, evenly spread, independent of catalog order."""
    return hashlib.sha1(image_id.encode("utf-8")).hexdigest()[:SHARD_DIGITS]


def stage_dir(stage: str, tag: str) -> str:
    """The folder of a stage's files made with the settings ``tag``, e.g. ``thumbs/<tag>``."""
    return f"{stage}/{tag}"


def thumb_path(results: str | Path, image_id: str, tag: str) -> str:
    """An image's thumbnail made with the settings ``tag`` (empty: its download failed)."""
    return f"{results}/{THUMBS}/{tag}/{shard_of(image_id)}/{image_id}{THUMB_SUFFIX}"


def feature_path(results: str | Path, image_id: str, tag: str) -> str:
    """The one-row Parquet file holding an image's outcome and features (from that thumbnail)."""
    return f"{results}/{FEATURES}/{tag}/{shard_of(image_id)}/{image_id}{FEATURE_SUFFIX}"


def failure_path(results: str | Path, image_id: str) -> str:
    """The JSON record of why an image's download failed, and whether a later run retries it."""
    return f"{results}/{FAILED}/{shard_of(image_id)}/{image_id}{FAILURE_SUFFIX}"


def progress_path(results: str | Path, batch_key: str) -> str:
    """The counts of a running batch job, rewritten at every progress line."""
    return f"{results}/{PROGRESS}/{batch_key}.json"


def feature_table_path(results: str | Path) -> str:
    """The assembled feature table: one row per image of the catalog selection."""
    return f"{results}/feature_table.parquet"


def catalog_snapshot_path(results: str | Path, digest: str) -> str:
    """The ids and URLs a table was built for, named by their digest (new selection, new name)."""
    return f"{results}/catalog/{digest}.parquet"


def catalog_snapshot_dir(results: str | Path) -> str:
    return f"{results}/catalog"


TABLE_SETTINGS = "table-settings"
# What precedes the thumbnail settings' tag in a settings marker's name.
TAG_MARK = "-thumbnails-"


def table_settings_path(results: str | Path, near_duplicate_distance: int, tag: str) -> str:
    """The file recording the settings the table was grouped and its rows measured with.

    Its name carries the settings, so changing one makes the workflow ask for a file that does
    not exist, which rebuilds the table (Snakemake's own parameter tracking is off: metadata is
    dropped for speed).
    """
    return (f"{results}/{TABLE_SETTINGS}/near-duplicate-distance-{near_duplicate_distance}"
            f"{TAG_MARK}{tag}.json")


def batch_manifest_path(results: str | Path, batch_key: str) -> str:
    """A finished batch's manifest: counts, failures by kind, timing."""
    return f"{results}/{BATCHES}/{batch_key}{MANIFEST_SUFFIX}"


def batch_partial_path(results: str | Path, batch_key: str) -> str:
    """A finished batch's rows as one partial table, read when the table is assembled."""
    return f"{results}/{BATCHES}/{batch_key}.parquet"


def log_path(results: str | Path, name: str) -> str:
    """A job's log file, e.g. ``batches/<key>`` or ``feature_table``."""
    return f"{results}/{LOGS}/{name}.log"


WAREHOUSE_RECEIPTS = "warehouse-loads"


def warehouse_receipt_path(results: str | Path, target_digest: str) -> str:
    """What the last load into one warehouse target changed (the warehouse rule's output).

    Named by a digest of the target (file, table, key, pruning): loading elsewhere and back asks
    for a receipt that is missing or older than the table, so the load runs again.
    """
    return f"{results}/{WAREHOUSE_RECEIPTS}/{target_digest}.json"


def write_back_receipt_path(results: str | Path) -> str:
    """What the last write-back to a database catalog changed."""
    return f"{results}/catalog_write_back.json"


def manifest_keys(results: str | Path) -> list[str]:
    """The keys of the batch manifests on disk (one directory read), finished jobs' record."""
    names = storage.names(f"{results}/{BATCHES}")
    return [name[: -len(MANIFEST_SUFFIX)] for name in names
            if name.endswith(MANIFEST_SUFFIX) and not is_temporary_name(name)]


def is_temporary_name(name: str) -> bool:
    """Temporary files of atomic writes start with a dot; they are never finished artifacts."""
    return name.startswith(".")


def existing_shard_dirs(results: str | Path, stage: str) -> list[str]:
    """The shard folders of ``stage`` that exist now (one directory read).

    None in a bucket: it has no folders, hence no folder times for Snakemake to compare.
    """
    if storage.is_remote(results):
        return []
    root = Path(results) / stage
    try:
        names = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except FileNotFoundError:
        return []
    return [f"{results}/{stage}/{name}" for name in names if name in SHARD_SET]


def image_id_of_target(path: str) -> str | None:
    """The image a per-image file path names (thumbnail or feature row), else None.

    The folder, the suffix and the shard must all agree with where that image's file lives.
    """
    match = _PER_IMAGE_TARGET.search(path)
    if match is None:
        return None
    image_id = match.group("image_id")
    if _SUFFIX_OF_STAGE[match.group("stage")] != match.group("suffix"):
        return None
    if match.group("shard") != shard_of(image_id):
        return None
    return image_id


def present_ids(results: str | Path, stage: str, suffix: str) -> set[str]:
    """Ids with a finished file of ``stage``: one directory read per shard folder.

    Plain name lists (no per-entry objects): this runs at every parse, over every image.
    """
    if storage.is_remote(results):
        return _present_remote_ids(f"{results}/{stage}", suffix)
    found: set[str] = set()
    root = Path(results) / stage
    try:
        shards = [entry.path for entry in os.scandir(root) if entry.is_dir()]
    except FileNotFoundError:
        return found
    cut = len(suffix)
    for shard in shards:
        found.update([name[:-cut] for name in os.listdir(shard)
                      if name.endswith(suffix) and not is_temporary_name(name)])
    return found


def thumbs_made_elsewhere(results: str | Path, tag: str) -> set[str]:
    """Ids with a thumbnail made with settings other than ``tag``: one directory read (in a
    bucket, one LIST) per settings folder and per shard, never a look at one image.

    Shard folders right under ``thumbs/`` hold the originals of results written before thumbnails
    had settings; they count as other settings too.
    """
    root = f"{results}/{THUMBS}"
    found: set[str] = set()
    cut = len(THUMB_SUFFIX)
    for name in storage.subfolders(root):
        if name == tag:
            continue
        if name in SHARD_SET:
            found.update(entry[:-cut] for entry in storage.names(f"{root}/{name}")
                         if entry.endswith(THUMB_SUFFIX) and not is_temporary_name(entry))
        else:
            found.update(present_ids(results, stage_dir(THUMBS, name), THUMB_SUFFIX))
    return found


# Shard prefixes listed at once: each LIST waits mostly on the store.
LIST_THREADS = 16


def list_ahead(results: str, stages: list[str]) -> None:
    """List the shard prefixes of several stage folders at once, all in one pool of requests.

    Called inside a storage.listed_once block before the plan reads them stage by stage: the
    store then answers the LISTs of all stages side by side instead of one stage after another.
    Does nothing for a local folder.
    """
    if not storage.is_remote(results):
        return
    roots = [f"{results}/{stage}" for stage in stages]
    with ThreadPoolExecutor(max_workers=LIST_THREADS) as pool:
        shard_lists = list(pool.map(storage.subfolders, roots))
        shards = [f"{root}/{name}" for root, names in zip(roots, shard_lists, strict=True)
                  for name in names if name in SHARD_SET]
        list(pool.map(storage.names, shards))


def _present_remote_ids(root: str, suffix: str) -> set[str]:
    """``present_ids`` in a bucket: one LIST for the shard prefixes, then one per shard."""
    shards = [f"{root}/{name}" for name in storage.subfolders(root) if name in SHARD_SET]
    cut = len(suffix)
    found: set[str] = set()
    with ThreadPoolExecutor(max_workers=LIST_THREADS) as pool:
        for shard_names in pool.map(storage.names, shards):
            found.update([name[:-cut] for name in shard_names
                          if name.endswith(suffix) and not is_temporary_name(name)])
    return found
