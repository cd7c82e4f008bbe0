"""Tests for thumbfeat.lineage: a job stops when the Snakemake process that started it ends.

The processes are real: a stand-in for Snakemake starts a shell that starts the job, as Snakemake
does, and the stand-in alone is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from thumbfeat import lineage

from tests.support import start_owner

# The job: watches its ancestors up to the pid given, reports them, then sleeps; a SIGTERM (what
# the watch sends) is recorded as "stopped", a sleep to its end as "finished".
JOB = """
import logging, signal, sys, time
from thumbfeat import lineage

owner, out, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])

def stopped(signum, frame):
    open(out, "w").write("stopped")
    sys.exit(0)

signal.signal(signal.SIGTERM, stopped)
with lineage.stop_when_orphaned(owner, logging.getLogger("job"), interval=0.1):
    chain = " ".join(str(p.pid) for p in lineage.ancestors(owner))
    open(out + ".ready", "w").write(chain)
    time.sleep(seconds)
open(out, "w").write("finished")
"""

def start_job(tmp_path: Path, seconds: float) -> tuple[subprocess.Popen[bytes], Path]:
    job = tmp_path / "job.py"
    job.write_text(JOB)
    out = tmp_path / "out"
    owner = start_owner([sys.executable, str(job), "{owner}", str(out), str(seconds)])
    ready = Path(f"{out}.ready")
    deadline = time.monotonic() + 60
    while not ready.exists() or not ready.read_text():
        assert time.monotonic() < deadline and owner.poll() is None
        time.sleep(0.05)
    return owner, out


def wait_for(path: Path, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return path.read_text()


def test_read_process_tells_alive_from_ended() -> None:
    me = lineage.read_process(os.getpid())
    assert me is not None and me.parent == os.getppid() and me.started > 0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 60
    # Exited but not yet reaped: a zombie counts as ended.
    while (state := Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
           ) != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert lineage.read_process(child.pid) is None
    child.wait()
    assert state == "Z" and lineage.read_process(child.pid) is None


def test_ancestors_stop_at_the_owner() -> None:
    parent = lineage.read_process(os.getppid())
    assert parent is not None
    assert lineage.ancestors(None) == [parent]
    assert lineage.ancestors(parent.parent) == [parent, lineage.read_process(parent.parent)]
    # An owner that is no ancestor: only the parent is watched.
    assert lineage.ancestors(os.getpid()) == [parent]


def test_job_keeps_running_while_its_owner_lives(tmp_path: Path) -> None:
    owner, out = start_job(tmp_path, seconds=1.5)
    assert owner.wait(timeout=60) == 0
    assert out.read_text() == "finished"


def test_job_stops_when_its_owner_is_killed_alone(tmp_path: Path) -> None:
    for round_ in range(3):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        owner, out = start_job(folder, seconds=600)
        chain = Path(f"{out}.ready").read_text().split()
        # The job watches the shell between them and the owner itself.
        assert len(chain) == 2 and chain[-1] == str(owner.pid)
        os.kill(owner.pid, signal.SIGKILL)
        # The owner stays a zombie (unreaped) until the job has stopped: that counts as ended.
        assert wait_for(out) == "stopped"
        owner.wait(timeout=60)
