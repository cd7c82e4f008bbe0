"""Tests for thumbfeat.hooks: a finished run's process does not wait for Snakemake's timers."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from snakemake.scheduling.job_scheduler import JobScheduler
from thumbfeat.hooks import cancel_pending_timers


def test_scheduler_timers_are_cancelled_and_other_timers_left_alone() -> None:
    released: list[int] = []
    fake_scheduler = SimpleNamespace(_open_jobs=SimpleNamespace(release=lambda: released.append(1)))
    # The scheduler's own method starts the timer, as it does after a scheduling pass.
    JobScheduler._schedule_reevalutation(fake_scheduler, 3600)  # type: ignore[arg-type]
    scheduler_timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
    fired: list[int] = []
    ours = threading.Timer(3600, lambda: fired.append(1))  # someone else's timer: left alone
    ours.start()
    other = threading.Event()
    worker = threading.Thread(target=other.wait)  # not a timer: left alone
    worker.start()
    try:
        assert cancel_pending_timers() == len(scheduler_timers) >= 1
        for timer in scheduler_timers:
            timer.join(timeout=30)
            assert not timer.is_alive()
        assert released == []
        assert ours.is_alive()
        assert worker.is_alive()
    finally:
        ours.cancel()
        other.set()
        worker.join()
