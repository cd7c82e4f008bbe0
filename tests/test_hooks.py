"""Tests for thumbfeat.hooks: a finished run's process does not wait for Snakemake's timers."""

from __future__ import annotations

import threading

from thumbfeat.hooks import cancel_pending_timers


def test_pending_timers_are_cancelled_and_their_threads_end() -> None:
    fired: list[int] = []
    timer = threading.Timer(3600, lambda: fired.append(1))
    timer.start()
    other = threading.Event()
    worker = threading.Thread(target=other.wait)  # not a timer: left alone
    worker.start()
    try:
        assert cancel_pending_timers() >= 1
        timer.join(timeout=30)
        assert not timer.is_alive()
        assert fired == []
        assert worker.is_alive()
    finally:
        other.set()
        worker.join()
