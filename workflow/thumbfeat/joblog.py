"""The log of a Snakemake job: timestamped lines in the job's log file, echoed when asked."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def job_logger(log_path: str, name: str, *, echo: bool = False) -> logging.Logger:
    """A logger writing timestamped lines to a job's log file, and to stderr when ``echo``.

    Snakemake passes a job's stderr through to the terminal, so echoed lines (progress) are seen
    while the job runs, and the log file keeps them for later.
    """
    logger = logging.getLogger(f"thumbfeat.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    if echo:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(handler.formatter)
        logger.addHandler(stream)
    return logger
