"""Progress of a batch job: counts per stage, steady progress lines, the running state file and
the manifest a finished batch leaves.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from thumbfeat import storage
from thumbfeat.wording import counts_text, format_duration

# The two per-image stages, as code and messages name them (README "How it is built").
FETCH, MEASURE = "fetch", "measure"
# The keys under which manifests and running-state files record each stage: those of the first
# manifests, kept so that the records of every earlier run still read.
RECORD_KEYS = {FETCH: "download", MEASURE: "features"}


@dataclass(frozen=True)
class Outcome:
    """How one image ended in one stage."""

    image_id: str
    ok: bool
    kind: str | None = None
    error: str | None = None
    retryable: bool = False
    attempts: int = 0
    size: int = 0


class StageCount:
    """Finished images of one stage, with failures by kind."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total = name, total
        self.done = 0
        self.failed: Counter[str] = Counter()
        self.outcomes: list[Outcome] = []

    def add(self, outcome: Outcome) -> None:
        self.done += 1
        self.outcomes.append(outcome)
        if not outcome.ok:
            self.failed[outcome.kind or "unknown"] += 1

    def line(self, elapsed: float) -> str:
        """Done of total, rate, time left and failures so far, e.g. for a progress line."""
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done
        eta = "0:00" if left <= 0 else (format_duration(left / rate) if rate > 0 else "unknown")
        failures = counts_text(self.failed)
        percent = 100 * self.done // self.total if self.total else 100
        return (f"{self.name} {self.done}/{self.total} ({percent}%), {rate:.1f} images/s, "
                f"ETA {eta}, failed: {failures}")

    def summary(self) -> dict[str, object]:
        return {
            "images": self.done,
            "ok": self.done - sum(self.failed.values()),
            "failed_by_kind": dict(sorted(self.failed.items())),
            "failed": [{"image_id": o.image_id, "kind": o.kind, "error": o.error,
                        "retryable": o.retryable} for o in self.outcomes if not o.ok],
            "bytes": sum(o.size for o in self.outcomes),
        }


class Progress:
    """One line per stage with work, at a steady interval (never one line per image).

    Lines are due at whole multiples of the interval from the start, so they keep their pace
    however work completes; each names the batch and its elapsed time, so lines of batch jobs
    running side by side (in one terminal or in their logs) can be told apart and timed.
    """

    def __init__(self, logger: logging.Logger, interval: float, fetch_total: int,
                 measure_total: int, label: str = "batch",
                 state_path: str | Path | None = None) -> None:
        self.logger, self.interval, self.label = logger, interval, label
        # Where the counts are also kept, for `thumbfeat status` to sum over running jobs.
        self.state_path = state_path
        self.fetch = StageCount(FETCH, fetch_total)
        self.measure = StageCount(MEASURE, measure_total)
        self.started = time.monotonic()
        self.started_epoch = time.time()
        self.next_due = self.started + interval

    def due_in(self) -> float:
        """Seconds until the next line is due (how long a wait for work may block)."""
        return max(0.0, self.next_due - time.monotonic())

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self.next_due:
            # Keep the pace, but after a late line (a busy machine) leave at least half an
            # interval before the next one rather than bursting to catch up.
            self.next_due = max(self.next_due + self.interval, now + self.interval / 2)
            self.report()

    def report(self) -> None:
        elapsed = time.monotonic() - self.started
        for stage in (self.fetch, self.measure):
            if stage.total:
                self.logger.info("progress %s %s | %.1f s elapsed", self.label,
                                 stage.line(elapsed), elapsed)
        self.save()

    def save(self) -> None:
        """Keep the counts where `thumbfeat status` finds them (one small atomic write)."""
        if self.state_path is not None:
            elapsed = time.monotonic() - self.started
            state = {"batch": self.label, "updated_at": time.time(), "interval": self.interval,
                     "elapsed": round(elapsed, 3),
                     **{RECORD_KEYS[s.name]: {"done": s.done, "total": s.total,
                                              "failed_by_kind": dict(s.failed)}
                        for s in (self.fetch, self.measure)}}
            storage.put(self.state_path, json.dumps(state).encode())

    def finish(self) -> None:
        """The batch's manifest now tells what it did: its running state goes."""
        if self.state_path is not None:
            storage.delete(self.state_path)

    def manifest(self, batch_key: str) -> dict[str, object]:
        return {
            "batch": batch_key,
            "seconds": round(time.monotonic() - self.started, 3),
            "started": round(self.started_epoch, 3),
            "finished": round(time.time(), 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            RECORD_KEYS[FETCH]: self.fetch.summary(),
            RECORD_KEYS[MEASURE]: self.measure.summary(),
        }
