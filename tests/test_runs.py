"""Tests for thumbfeat.runs: runs and their rates, rebuilt from batch manifests."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from thumbfeat import layout
from thumbfeat.runs import (
    describe_run,
    describe_running,
    group_runs,
    parse_manifest,
    read_batch_records,
    running_batches,
)


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def local(text: str) -> str:
    """How a run's end is shown: in the machine's time zone."""
    return datetime.fromtimestamp(epoch(text)).strftime("%Y-%m-%d %H:%M:%S")


def manifest(key: str, started: str, finished: str, seconds: float, downloaded: int,
             measured: int, failed: dict[str, int] | None = None) -> dict[str, object]:
    """A manifest as a batch job writes it (start and end in epoch seconds)."""
    return {"batch": key, "started": epoch(started), "finished": epoch(finished),
            "finished_at": finished, "seconds": seconds,
            "download": {"images": downloaded, "failed_by_kind": failed or {}},
            "features": {"images": measured, "failed_by_kind": failed or {}}}


def write(results: Path, data: dict[str, object]) -> None:
    folder = results / layout.BATCHES
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{data['batch']}.json").write_text(json.dumps(data))


def test_runs_split_at_pauses_and_rate_counts_parallel_jobs_once(tmp_path: Path) -> None:
    results = tmp_path / "results"
    # Run 1: one job. Run 2 (an hour later): two jobs side by side, then a third right after.
    write(results, manifest("00001-a", "2026-01-01T10:00:00+0000", "2026-01-01T10:00:20+0000",
                            20.0, 100, 100, {"timeout": 2}))
    write(results, manifest("00001-b", "2026-01-01T11:00:00+0000", "2026-01-01T11:00:10+0000",
                            10.0, 50, 50, {"http_status": 1}))
    write(results, manifest("00002-b", "2026-01-01T11:00:00+0000", "2026-01-01T11:00:08+0000",
                            8.0, 30, 40))
    write(results, manifest("00003-b", "2026-01-01T11:00:09+0000", "2026-01-01T11:00:20+0000",
                            11.0, 10, 10, {"http_status": 2}))
    (results / layout.BATCHES / "broken.json").write_text("{not json")
    runs = group_runs(read_batch_records(results))
    assert [len(r.batches) for r in runs] == [1, 3]
    last = runs[-1]
    assert last.images == 50 + 40 + 10
    assert last.wall_seconds == 20.0
    assert last.rate == 5.0
    assert last.failed_by_kind == {"http_status": 3}
    assert describe_run(last) == ("3 batches, 100 images in 20.0 s (5.0 images/s), "
                                  "failed: http_status 3; finished "
                                  + local("2026-01-01T11:00:20+00:00"))


def test_old_manifests_without_a_start_time() -> None:
    data = manifest("k", "2026-01-01T10:00:00+0000", "2026-01-01T10:00:20+0000", 20.0, 5, 5)
    del data["started"], data["finished"]
    record = parse_manifest(data)
    assert record is not None
    assert record.started.strftime("%H:%M:%S") == "10:00:00"
    assert parse_manifest({"batch": "x"}) is None


def test_running_jobs_are_summed_and_stale_ones_left_out(tmp_path: Path) -> None:
    results = tmp_path / "results"
    folder = results / layout.PROGRESS
    folder.mkdir(parents=True)

    def state(key: str, updated: float, done: int, failed: dict[str, int]) -> None:
        (folder / f"{key}.json").write_text(json.dumps({
            "batch": key, "updated_at": updated, "interval": 10, "elapsed": 5,
            "download": {"done": done, "total": 100, "failed_by_kind": failed},
            "features": {"done": done - 5, "total": 100, "failed_by_kind": failed}}))

    state("00001-a", 1000.0, 50, {"timeout": 1})
    state("00002-a", 990.0, 20, {"timeout": 2, "http_status": 1})
    state("00003-old", 900.0, 70, {})  # a stopped job: not rewritten for 100 s
    (folder / "00004-bad.json").write_text("{")
    running = running_batches(results, now=1000.0)
    assert sorted(s["batch"] for s in running) == ["00001-a", "00002-a"]
    assert describe_running(running) == ("2 batch jobs, fetch 70/200, measure 60/200, "
                                         "failed: http_status 1, timeout 3")
    assert describe_running([]) is None
    assert running_batches(tmp_path / "nothing", now=0.0) == []
