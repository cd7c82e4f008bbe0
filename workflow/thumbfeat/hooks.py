"""What the workflow process does when a run has finished, besides withdrawing the plan handover."""

from __future__ import annotations

import threading

# Snakemake's scheduler starts its rate-limit timers from this module.
SCHEDULER_MODULE = "snakemake.scheduling"


def cancel_pending_timers() -> int:
    """Cancel Snakemake's scheduler timers still waiting; returns how many were cancelled.

    Snakemake's scheduler re-checks its job rate limit (``--max-jobs-per-timespan``, by default
    100 jobs per second) with a new ``threading.Timer`` after each scheduling pass, and the
    interpreter waits for such timers before it exits: a run that has finished would sit idle for
    up to a second. The workflow's ``onsuccess`` hook calls this once nothing is left to schedule.
    (A sub-second timespan cannot be configured instead: ``100ms`` is read as 100 minutes.)
    Timers that anything else started are left alone.
    """
    cancelled = 0
    for thread in threading.enumerate():
        if (isinstance(thread, threading.Timer) and thread.is_alive()
                and _started_by_scheduler(thread)):
            thread.cancel()
            cancelled += 1
    return cancelled


def _started_by_scheduler(timer: threading.Timer) -> bool:
    module = getattr(timer.function, "__module__", None) or ""
    return module == SCHEDULER_MODULE or module.startswith(SCHEDULER_MODULE + ".")
