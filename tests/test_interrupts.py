"""Interrupting a real run at any moment loses nothing finished and redoes almost nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from thumbfeat import layout
from thumbfeat.batch import images_held

from tests.support import (
    TAG,
    ImageServer,
    image_rows,
    run_snakemake,
    snakemake_command,
    write_catalog,
)

CONCURRENCY = 8
CORES = 2
# Download jobs take one core each, so at most CORES batches download at once; each holds its
# downloads in flight and the fetched images its measuring process has not stored yet.
MOST_IN_FLIGHT = CORES * images_held(CONCURRENCY, 1)


@pytest.fixture
def slow_server() -> Iterator[ImageServer]:
    srv = ImageServer(delay=0.15).start()
    try:
        yield srv
    finally:
        srv.stop()


def count_thumbs(results: Path) -> int:
    return sum(1 for _ in (results / layout.THUMBS / TAG).glob("*/*.img"))


@pytest.mark.parametrize("how", ["kill-9-group", "sigterm", "sigint-group"])
def test_interrupted_run_resumes_exactly(tmp_path: Path, slow_server: ImageServer,
                                         how: str) -> None:
    names = [f"k{i:04d}" for i in range(600)]
    catalog = write_catalog(tmp_path / "catalog.csv", image_rows(slow_server, names))
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"download: {{concurrency: {CONCURRENCY}}}\n")
    config = {"catalog": str(catalog), "batch_size": "100", "local_file_roots": "[]"}
    results = tmp_path / "results"

    command = snakemake_command(tmp_path, "--configfile", str(settings), config=config,
                                cores=CORES)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while count_thumbs(results) < 150:
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    if how == "kill-9-group":
        os.killpg(process.pid, signal.SIGKILL)
    elif how == "sigterm":
        os.kill(process.pid, signal.SIGTERM)
    else:
        os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=120)
    if how == "kill-9-group":
        # Nothing reaps the job processes' children for us after SIGKILL; give them a moment.
        time.sleep(0.5)
    finished_at_stop = count_thumbs(results)
    assert 150 <= finished_at_stop < 600

    if how == "kill-9-group":
        run_snakemake(tmp_path, "--unlock", "--configfile", str(settings), config=config)
    run_snakemake(tmp_path, "--configfile", str(settings), config=config, cores=CORES)

    repeated = {path: n for path, n in slow_server.counts.items() if n > 1}
    assert sum(n - 1 for n in repeated.values()) <= MOST_IN_FLIGHT, repeated
    assert set(slow_server.counts) == {f"/img/{n}.jpg" for n in names}

    table = pq.read_table(results / "feature_table.parquet").to_pylist()
    assert [row["image_id"] for row in table] == names
    assert {row["status"] for row in table} == {"ok"}
    for name in names:
        with Image.open(layout.thumb_path(results, name, TAG)) as image:
            image.load()
        assert pq.read_table(layout.feature_path(results, name, TAG)).num_rows == 1
    leftovers = [p for p in results.rglob(".*") if p.is_file()]
    assert leftovers == [] or how == "kill-9-group", leftovers
