"""Tests for thumbfeat.wording: counts and durations as people read them."""

from __future__ import annotations

from collections import Counter

import pytest
from thumbfeat.wording import counts_text, format_duration


def test_counts_are_sorted_by_name_and_none_when_empty() -> None:
    assert counts_text(Counter({"timeout": 1, "http_status": 2})) == "http_status 2, timeout 1"
    assert counts_text({}) == "none"


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0.0 s"), (4.24, "4.2 s"), (59.94, "59.9 s"), (60, "1:00"), (125.4, "2:05"),
    (3725, "1:02:05"), (36000, "10:00:00"),
])
def test_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
