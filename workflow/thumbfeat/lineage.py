"""A batch job stops by itself when the Snakemake process that started it is gone.

Killing only the main ``snakemake`` process (``kill -9 PID``, as a process viewer does) leaves its
jobs running: Snakemake starts each job through a shell, and that shell lives on, so the job keeps
its parent, and a parent-death signal (``PR_SET_PDEATHSIG``) never fires. A job left running races
the next run for the same images. So a job records, when it starts, its chain of ancestors up to
the Snakemake process that parsed its workflow, each by process id and start time (a process id
can be reused; the pair cannot), and a thread checks them twice a second. When one of them has
ended (or is a zombie nobody has reaped yet), the job is told to stop the way a cancelled job is
(see thumbfeat.batch.sigterm_as_interrupt).

Where ``/proc`` is missing (not Linux), only a change of the job's parent can be seen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# How often the ancestors are checked: an orphan stops within about this long.
POLL_INTERVAL_S = 0.5
# No job sits deeper than this under its Snakemake process; the walk up stops here regardless.
MAX_DEPTH = 16


@dataclass(frozen=True)
class Process:
    """One running process, told apart from a later one that reuses its id."""

    pid: int
    started: int  # clock ticks after boot, from /proc/<pid>/stat
    parent: int


def read_process(pid: int) -> Process | None:
    """The process ``pid`` as it is now, or None when it has ended or cannot be read.

    A zombie (state Z or X) has ended: it only waits for its parent to collect its exit status.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return Process(pid=pid, started=int(fields[19]), parent=int(fields[1]))


def ancestors(owner_pid: int | None, start_pid: int | None = None) -> list[Process]:
    """The chain of processes from the parent of ``start_pid`` up to ``owner_pid`` included.

    When ``owner_pid`` is not among the ancestors (or None), only the parent is watched.
    """
    me = read_process(os.getpid() if start_pid is None else start_pid)
    chain: list[Process] = []
    pid = me.parent if me is not None else 0
    while pid > 1 and len(chain) < MAX_DEPTH:
        process = read_process(pid)
        if process is None:
            break
        chain.append(process)
        if pid == owner_pid:
            return chain
        pid = process.parent
    return chain[:1]


def first_gone(watched: list[Process], parent_at_start: int) -> str | None:
    """What ended among the watched processes (a sentence), or None while all are alive."""
    if os.getppid() != parent_at_start:
        return f"its parent process {parent_at_start} ended"
    for process in watched:
        if read_process(process.pid) != process:
            return f"process {process.pid} that started it ended"
    return None


def stop_self() -> None:
    """Ask this process to stop as if it had been cancelled (SIGTERM)."""
    os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def stop_when_orphaned(owner_pid: int | None, logger: logging.Logger,
                       on_orphaned: Callable[[], None] = stop_self,
                       interval: float = POLL_INTERVAL_S) -> Iterator[None]:
    """Say why and call ``on_orphaned`` once if a watched ancestor ends inside the block."""
    watched = ancestors(owner_pid)
    parent_at_start = os.getppid()
    finished = threading.Event()

    def watch() -> None:
        while not finished.wait(interval):
            reason = first_gone(watched, parent_at_start)
            if reason is not None:
                logger.warning("the snakemake run of this job is gone (%s): stopping; images "
                               "finished so far are kept", reason)
                on_orphaned()
                return

    thread = threading.Thread(target=watch, name="orphan-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        finished.set()
        thread.join()
