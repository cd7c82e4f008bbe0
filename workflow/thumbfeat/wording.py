"""How numbers are written for people, the same way in progress lines, status, logs and reports."""

from __future__ import annotations

from collections.abc import Mapping


def counts_text(counts: Mapping[str, int]) -> str:
    """``http_status 2, timeout 1`` (sorted by name), or ``none``: failures by kind and the like."""
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "none"


def format_duration(seconds: float) -> str:
    """``4.2 s`` under a minute, else ``M:SS`` or ``H:MM:SS``: how people read a time."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
