"""Runs, reconstructed from the batch manifests: what each ``snakemake`` invocation did, how fast.

No run keeps a record of its own: every batch job writes a manifest when it ends (its start and
end time, images, failures by kind). Batch jobs of one run follow each other without a pause, as
the scheduler starts the next job as soon as a slot frees, so a pause between the end of all
earlier jobs and the start of the next one marks a new run. The rate of a run is its images over
its wall-clock time, which counts jobs running side by side once.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from thumbfeat import layout, storage
from thumbfeat.progress import FETCH, MEASURE, RECORD_KEYS
from thumbfeat.wording import counts_text, format_duration

# Longer than a job's start-up on a busy machine, shorter than a person rerunning a command.
RUN_GAP_SECONDS = 10.0
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


@dataclass(frozen=True)
class BatchRecord:
    """One finished batch job, from its manifest."""

    key: str
    started: datetime
    finished: datetime
    seconds: float
    downloaded: int
    measured: int
    failed_by_kind: dict[str, int]

    @property
    def images(self) -> int:
        """Images the job handled (each image is downloaded, measured, or both)."""
        return max(self.downloaded, self.measured)


@dataclass
class Run:
    """Batch jobs that ran without a pause: one invocation of the workflow."""

    batches: list[BatchRecord] = field(default_factory=list)

    @property
    def started(self) -> datetime:
        return min(b.started for b in self.batches)

    @property
    def finished(self) -> datetime:
        return max(b.finished for b in self.batches)

    @property
    def wall_seconds(self) -> float:
        # Manifest times have whole seconds; a run is at least as long as its longest job.
        span = (self.finished - self.started).total_seconds()
        return max(span, max(b.seconds for b in self.batches))

    @property
    def images(self) -> int:
        return sum(b.images for b in self.batches)

    @property
    def rate(self) -> float:
        return self.images / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def failed_by_kind(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for batch in self.batches:
            total.update(batch.failed_by_kind)
        return total


def parse_manifest(data: dict[str, object]) -> BatchRecord | None:
    """A manifest as a record, or None when it lacks what a record needs."""
    try:
        download = data.get(RECORD_KEYS[FETCH]) or {}
        features = data.get(RECORD_KEYS[MEASURE]) or {}
        if not isinstance(download, dict) or not isinstance(features, dict):
            return None
        seconds = float(data["seconds"])  # type: ignore[arg-type]
        if data.get("started") is not None and data.get("finished") is not None:
            # Epoch seconds, as batch jobs record them.
            started = datetime.fromtimestamp(float(data["started"])).astimezone()  # type: ignore[arg-type]
            finished = datetime.fromtimestamp(float(data["finished"])).astimezone()  # type: ignore[arg-type]
        else:  # older manifests: the end in whole seconds, and the duration
            finished = datetime.strptime(str(data["finished_at"]), TIME_FORMAT)
            started = finished - timedelta(seconds=seconds)
        # A failed download is also a failed row: count each image once, by its row when the
        # job measured images, else by its download.
        measured = int(features.get("images", 0))
        failed = dict((features if measured else download).get("failed_by_kind") or {})
        return BatchRecord(str(data.get("batch", "")), started, finished, seconds,
                           int(download.get("images", 0)), measured, failed)
    except (KeyError, ValueError, TypeError):
        return None


def read_batch_records(results: str | Path) -> list[BatchRecord]:
    """Every readable manifest under ``results``, oldest start first."""
    records = []
    for path in storage.files(f"{results}/{layout.BATCHES}", layout.MANIFEST_SUFFIX):
        try:
            record = parse_manifest(json.loads(storage.get(path)))
        except (OSError, ValueError):
            continue
        if record is not None:
            records.append(record)
    return sorted(records, key=lambda r: (r.started, r.key))


def group_runs(records: Iterable[BatchRecord], gap: float = RUN_GAP_SECONDS) -> list[Run]:
    """Split batch records (sorted by start) into runs at every pause longer than ``gap``."""
    runs: list[Run] = []
    for record in records:
        if runs and (record.started - runs[-1].finished).total_seconds() <= gap:
            runs[-1].batches.append(record)
        else:
            runs.append(Run([record]))
    return runs


def describe_run(run: Run) -> str:
    """One line: batches, images, wall time, rate, failures, when it finished."""
    took = format_duration(run.wall_seconds)
    return (f"{len(run.batches)} batch{'es' if len(run.batches) != 1 else ''}, "
            f"{run.images} images in {took} ({run.rate:.1f} images/s), "
            f"failed: {counts_text(run.failed_by_kind)}; "
            f"finished {run.finished.strftime('%Y-%m-%d %H:%M:%S')}")


def running_batches(results: str | Path, now: float) -> list[dict[str, Any]]:
    """Counts of batch jobs running now: their progress files, rewritten at every line.

    A job removes its file when it ends; a file not rewritten for three intervals (and at least
    30 s) was left by a job that was stopped, and its images are planned again by the next run.
    """
    states = []
    for path in storage.files(f"{results}/{layout.PROGRESS}", ".json"):
        try:
            state = json.loads(storage.get(path))
            fresh = now - float(state["updated_at"]) <= max(30.0, 3 * float(state["interval"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if fresh:
            states.append(state)
    return states


def describe_running(states: Iterable[dict[str, Any]]) -> str | None:
    """One line summing the running jobs' stages, or None when none is running."""
    states = list(states)
    if not states:
        return None
    parts = [f"{len(states)} batch job{'s' if len(states) != 1 else ''}"]
    failed: Counter[str] = Counter()
    for name, key in RECORD_KEYS.items():
        done = sum(int(s.get(key, {}).get("done", 0)) for s in states)
        total = sum(int(s.get(key, {}).get("total", 0)) for s in states)
        parts.append(f"{name} {done}/{total}")
    fetched, measured = RECORD_KEYS[FETCH], RECORD_KEYS[MEASURE]
    for state in states:
        # Each image's failure shows in its row; count the measure stage, else the fetch stage.
        stage = state.get(measured) if state.get(measured, {}).get("total") else (
            state.get(fetched, {}))
        failed.update(stage.get("failed_by_kind") or {})
    return ", ".join(parts) + f", failed: {counts_text(failed)}"
