"""Tests for thumbfeat.urls: recorded URLs keep no secret and still tell every change."""

from __future__ import annotations

from pathlib import Path

import pytest
from thumbfeat.urls import (
    display_url,
    local_file_problem,
    recorded_from,
    recorded_url,
    url_problem,
)


def test_secrets_are_left_out_and_every_change_is_noticed() -> None:
    url = "https://user:pw@images.example.org:8443/a/b.jpg?token=qt-secret&w=200"
    kept = recorded_url(url)
    assert kept.startswith("https://images.example.org:8443/a/b.jpg#sha256=")
    for secret in ("user", "pw@", "qt-secret", "w=200"):
        assert secret not in kept
    assert recorded_url(url) == kept
    assert recorded_url(url.replace("w=200", "w=400")) != kept
    assert recorded_url(url.replace("qt-secret", "qt-rotated")) != kept
    assert recorded_url("http://[bad").startswith("#sha256=")
    script = recorded_url("javascript:alert('qt-secret')")
    assert script.startswith("javascript:#sha256=") and "qt-secret" not in script
    assert recorded_url("file:///data/images/a.jpg").startswith("file:///data/images/a.jpg#")


def test_a_recorded_url_is_matched_to_its_url_by_digest_alone() -> None:
    url = "https://user:pw@images.example.org/a/b.jpg?token=qt-secret"
    assert recorded_from(recorded_url(url), url)
    # The query (or a password) alone changed: the bare part is equal, the digest is not.
    assert not recorded_from(recorded_url(url), url.replace("qt-secret", "qt-rotated"))
    assert not recorded_from(recorded_url(url), url.replace("pw", "pw2"))
    assert recorded_from(recorded_url("http://[bad"), "http://[bad")
    # A URL recorded as it was, before recorded forms carried a digest, counts as changed.
    assert not recorded_from(url, url)
@pytest.mark.parametrize("url", ["http://example.org/a b.jpg", "https://x.example/a.jpg?w=1",
                                 "file:///tmp/a.jpg", "http://127.0.0.1:8080/a"])
def test_fetchable_urls_have_no_problem(url: str) -> None:
    assert url_problem(url) is None


def test_display_url() -> None:
    assert display_url("https://user:pw@x.example/a.jpg?token=abc#f") == "https://x.example/a.jpg?..."
    assert display_url("http://x.example/" + "a" * 300).endswith("...")
    assert display_url("javascript:alert('k')") == "javascript:..."
    assert display_url("www.example.org/a.jpg?t=1") == "www.example.org/a.jpg?..."


def test_local_files_only_under_their_roots(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    assert local_file_problem(f"file://{root}/a.jpg", [str(root)]) is None
    assert "not allowed" in str(local_file_problem(f"file://{root}/a.jpg", []))
    assert "outside" in str(local_file_problem(f"file://{root}/../secret.jpg", [str(root)]))
    assert "remote host" in str(local_file_problem(f"file://other{root}/a.jpg", [str(root)]))
