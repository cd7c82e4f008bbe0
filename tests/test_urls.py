"""Tests for thumbfeat.urls: recorded URLs keep no secret and still tell every change."""

from __future__ import annotations

from thumbfeat.urls import recorded_from, recorded_url


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
