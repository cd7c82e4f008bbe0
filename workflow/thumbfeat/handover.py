"""The plan a run hands to its cluster jobs, so that each job works on exactly its own batch.

On a cluster each job is a new ``snakemake`` process that parses the workflow again. Planned afresh
there, the work list would already miss the images that other jobs finished meanwhile, batches
would be numbered and keyed differently, and the job would not produce the files the main process
waits for; automatic batch sizes and rate shares would follow the job's own core count instead of
the run's job slots. So the main process writes its plan once, before the first job is submitted,
to a file named by its content, and passes the file's path to its jobs in an environment variable
(cluster submissions carry the environment along, e.g. ``sbatch --export=ALL``). A job that finds
the variable reads the plan instead of planning.

With results in a bucket the jobs share no file system with the main process (cloud executors),
so the plan travels as an object under the results prefix (``handover/plan-<hash>.json``) and the
variable holds its ``s3://`` URL; the job reads it with the same AWS variables it writes results
with. Like the local file, it is removed when the run succeeds.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from thumbfeat import atomic, storage
from thumbfeat.plan import Batch, WorkPlan

ENV_VAR = "THUMBFEAT_HANDED_PLAN"
FORMAT = 6
# Where a run with results in a bucket keeps its handover objects, under the results prefix.
REMOTE_FOLDER = "handover"
# Handover files of runs that were killed before they could remove theirs are removed after this.
STALE_AFTER_S = 7 * 24 * 3600


class HandoverError(RuntimeError):
    """A handed-over plan that cannot be read; the message says which file and what to do."""


@dataclass(frozen=True)
class HandedPlan:
    """What jobs need from the main process: the batches, their URLs and the run's job slots."""

    plan: WorkPlan
    catalog_digest: str
    slots: int


def encode(plan: WorkPlan, catalog_digest: str, slots: int) -> bytes:
    batches = [
        {"number": b.number, "fetch_ids": list(b.fetch_ids), "measure_ids": list(b.measure_ids),
         "attempt": b.attempt, "tag": b.tag, "salt": b.salt}
        for b in plan.batches
    ]
    document = {"format": FORMAT, "catalog_size": plan.catalog_size,
                "catalog_digest": catalog_digest, "slots": slots,
                "batches": batches, "urls": plan.urls,
                "failure_ids": sorted(plan.failure_ids)}
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def decode(data: bytes) -> HandedPlan:
    document = json.loads(data)
    if document.get("format") != FORMAT:
        raise ValueError(f"unknown format {document.get('format')!r}")
    urls = dict(document["urls"])
    batches = [
        Batch(number=int(b["number"]), fetch_ids=tuple(b["fetch_ids"]),
              measure_ids=tuple(b["measure_ids"]), attempt=int(b["attempt"]), tag=str(b["tag"]),
              fetch_urls=tuple(urls[i] for i in b["fetch_ids"]),
              salt=str(b["salt"]))
        for b in document["batches"]
    ]
    plan = WorkPlan(
        catalog_size=int(document["catalog_size"]),
        fetch=[i for b in batches for i in b.fetch_ids],
        measure=[i for b in batches for i in b.measure_ids],
        batches=batches,
        urls=urls,
        failure_ids=set(document["failure_ids"]),
    )
    return HandedPlan(plan=plan, catalog_digest=str(document["catalog_digest"]),
                      slots=int(document["slots"]))


def folder_of(results: str) -> str | Path:
    """Where a run hands its plan over: the submitting machine's ``.snakemake/thumbfeat`` for
    local results (its jobs share its file system), else a folder under the results prefix."""
    if storage.is_remote(results):
        return f"{results}/{REMOTE_FOLDER}"
    return Path(".snakemake", "thumbfeat")


def save(folder: str | Path, plan: WorkPlan, catalog_digest: str, slots: int) -> str | Path:
    """Write the plan atomically to ``folder``, named by its content; return the absolute path
    (the object's URL in a bucket: a PUT is atomic too).

    Old handover files (of runs killed before they could remove theirs) are pruned on the way.
    """
    data = encode(plan, catalog_digest, slots)
    name = f"plan-{hashlib.sha1(data).hexdigest()[:16]}.json"
    if storage.is_remote(folder):
        prune_remote(str(folder))
        url = f"{folder}/{name}"
        storage.put(url, data)
        return url
    directory = Path(folder).resolve()
    prune(directory)
    path = directory / name
    atomic.write_bytes(path, data)
    return path


def prune_remote(folder: str, older_than_s: float = STALE_AFTER_S) -> None:
    """``prune`` for handover objects in a bucket (one LIST)."""
    cutoff = time.time() - older_than_s
    for name, when in storage.listing(folder).items():
        if name.startswith("plan-") and when < cutoff:
            storage.delete(f"{folder}/{name}")


def prune(directory: Path, older_than_s: float = STALE_AFTER_S) -> None:
    if not directory.is_dir():
        return
    cutoff = time.time() - older_than_s
    for path in directory.glob("plan-*.json"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except FileNotFoundError:
            pass


def load(path: str | Path) -> HandedPlan:
    try:
        return decode(storage.get(path))
    except FileNotFoundError:
        raise HandoverError(
            f"the plan handed over by the main snakemake process, {path}, is gone: was the run's "
            f"{'handover prefix' if storage.is_remote(path) else '.snakemake folder'} removed "
            f"while jobs were queued? Run the workflow again."
        ) from None
    except storage.StorageError as error:
        raise HandoverError(f"the handed-over plan cannot be read: {error}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise HandoverError(f"the handed-over plan {path} cannot be read ({error}); "
                            f"run the workflow again") from None


def handed_plan_path(environ: Mapping[str, str], is_job: bool) -> str | None:
    """The plan file this process must follow: only jobs (not a main process) follow one.

    A user's own shell may carry the variable from an earlier run; a main process ignores it and
    plans afresh.
    """
    if not is_job:
        return None
    return environ.get(ENV_VAR) or None


def publish(path: str | Path, environ: MutableMapping[str, str]) -> None:
    """Make the plan visible to every job this process submits from now on.

    ``environ`` is the main process's own environment (``os.environ``): Snakemake gives its jobs
    no other channel at submission, and cluster submissions carry the environment along.
    """
    environ[ENV_VAR] = str(path)


def withdraw(path: str | None, environ: MutableMapping[str, str]) -> None:
    """Remove a run's handover file once its jobs are done."""
    if path:
        storage.delete(path)
        if environ.get(ENV_VAR) == path:
            del environ[ENV_VAR]
