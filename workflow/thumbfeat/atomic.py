"""Atomic file writes: a file that exists under its final name is a file that is whole.

Every artifact is written to a temporary name in the same folder (so the rename never crosses a file
system) and renamed into place only when complete. A process killed mid-write leaves at most a
dot-named temporary file, which no stage ever reads as finished work.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path


def temporary_sibling(path: str | Path) -> Path:
    """A unique dot-named temporary path in the folder of ``path``."""
    target = Path(path)
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it onto ``path``, else remove it.

    ``durable`` also fsyncs the file and its folder, which protects against a machine crash (not
    needed against a killed process, whose written pages the kernel still flushes).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target)
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.filename is not None or exc.errno is None:
                raise
            # A failed write() names no file; say which artifact could not be written.
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
        if durable:
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(path: str | Path, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def write_with(path: str | Path, writer: Callable[[Path], None], *, durable: bool = False) -> None:
    """Let ``writer`` fill a temporary file, then move it onto ``path`` atomically."""
    with atomic_path(path, durable=durable) as tmp:
        writer(tmp)
