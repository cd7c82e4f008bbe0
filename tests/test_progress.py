"""Progress lines of a real run: at the configured interval, in the terminal and the job log."""

from __future__ import annotations

import itertools
import logging
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from thumbfeat.cli import status_report
from thumbfeat.progress import Outcome, Progress, StageCount

from tests.support import ImageServer, image_rows, snakemake_command, write_catalog

LINE = re.compile(
    r"progress (?P<batch>\S+) (?P<stage>fetch|measure) (?P<done>\d+)/(?P<total>\d+) "
    r"\(\d+%\), (?P<rate>[\d.]+) images/s, ETA (?P<eta>.+?), failed: (?P<failed>.+?) "
    r"\| (?P<elapsed>[\d.]+) s elapsed")


def failures_of(text: str) -> Counter[str]:
    if text == "none":
        return Counter()
    return Counter({kind: int(n) for kind, n in (part.rsplit(" ", 1)
                                                  for part in text.split(", "))})


def test_stage_line_has_rate_eta_and_failures() -> None:
    stage = StageCount("fetch", 10)
    assert stage.line(1.0) == ("fetch 0/10 (0%), 0.0 images/s, ETA unknown, failed: none")
    for n in range(4):
        stage.add(Outcome(f"i{n}", ok=n != 3, kind=None if n != 3 else "timeout"))
    assert stage.line(2.0) == ("fetch 4/10 (40%), 2.0 images/s, ETA 3.0 s, "
                               "failed: timeout 1")


@pytest.fixture
def slow_server() -> Iterator[ImageServer]:
    server = ImageServer(delay=0.25).start()
    yield server
    server.stop()


def test_progress_lines_at_the_interval_and_adding_up(tmp_path: Path,
                                                      slow_server: ImageServer) -> None:
    server = slow_server
    rows = [*image_rows(server, [f"s{i:02d}" for i in range(36)]),
            *((f"m{i}", f"{server.base}/missing/m{i}.jpg") for i in range(3)),
            ("h0", f"{server.base}/html/h0.jpg")]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    # 40 requests of 0.25 s, two at a time: about 5 s of downloading in one batch job.
    command = snakemake_command(tmp_path, config={
        "catalog": str(catalog), "batch_size": "100", "local_file_roots": "[]",
        "progress_interval": "1", "download": "{concurrency: 2}"})
    results = tmp_path / "results"
    with open(tmp_path / "stderr.txt", "w") as stderr:
        run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        # Meanwhile `thumbfeat status` sums the running job's counts.
        running = []
        while run.poll() is None:
            out = status_report(results) if (results / "logs").exists() else ""
            running += [line for line in out.splitlines() if line.startswith("running now:")]
            time.sleep(0.3)
    assert run.returncode == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    counts = [re.search(r"1 batch job, fetch (\d+)/40, measure (\d+)/40", line)
              for line in running]
    assert running and all(counts), running
    assert len({m[1] for m in counts if m}) >= 2, "the counts did not move"
    assert "running now" not in status_report(results)
    assert list((results / "logs" / "progress").iterdir()) == []

    logs = list((results / "logs" / "batches").glob("*.log"))
    assert len(logs) == 1
    logged = [m.groupdict() for m in map(LINE.search, logs[0].read_text().splitlines()) if m]
    terminal = (tmp_path / "stderr.txt").read_text()
    shown = [m.groupdict() for m in map(LINE.search, terminal.splitlines()) if m]
    # The terminal shows the same lines as the log.
    assert shown == logged

    table = pq.read_table(tmp_path / "results" / "feature_table.parquet").to_pylist()
    failed_rows = Counter(r["error_kind"] for r in table if r["status"] == "failed")
    assert failed_rows == {"http_status": 3, "not_image": 1}
    for stage in ("fetch", "measure"):
        lines = [line for line in logged if line["stage"] == stage]
        elapsed = [float(line["elapsed"]) for line in lines]
        done = [int(line["done"]) for line in lines]
        assert {int(line["total"]) for line in lines} == {40}
        assert done == sorted(done), "done went backwards"
        assert done[-1] == 40
        assert lines[-1]["eta"] == "0:00"
        assert failures_of(lines[-1]["failed"]) == failed_rows
        # Failures so far never shrink and never exceed what was done.
        for before, after in itertools.pairwise(lines):
            assert failures_of(before["failed"]) <= failures_of(after["failed"])
        for line in lines:
            assert sum(failures_of(line["failed"]).values()) <= int(line["done"])
        # The periodic lines (all but the closing one) come about one interval apart: a loose
        # band, since the machine may be busy; not one line per image.
        periodic = elapsed[:-1]
        # Elapsed times are printed to a tenth of a second: their differences are rounded again.
        gaps = [round(b - a, 1) for a, b in itertools.pairwise(periodic)]
        assert len(periodic) >= 3, lines
        assert all(0.5 <= gap <= 3.0 for gap in gaps), gaps
        assert 0.9 <= periodic[0] <= 3.0
        assert len(lines) <= elapsed[-1] / 1.0 + 3


def test_lines_keep_their_pace_and_never_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("thumbfeat.progress.time.monotonic", lambda: clock[0])
    logger = logging.getLogger("tests.progress.pace")
    logger.propagate = False
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    progress = Progress(logger, 1.0, fetch_total=10, measure_total=0, label="b1")
    when = []
    # Work completes every 0.25 s, with a 2.5 s stall after 2.0 s.
    for t in (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 4.5, 4.75, 5.0, 5.25, 6.0):
        clock[0] = 100.0 + t
        before = len(lines)
        progress.tick()
        if len(lines) > before:
            when.append(t)
    assert when == [1.0, 2.0, 4.5, 5.0, 6.0]
    assert all(line.startswith("progress b1 fetch 0/10") for line in lines)
    assert progress.due_in() == 1.0
