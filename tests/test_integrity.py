"""Tests for thumbfeat.integrity: which per-image files are whole, and the quarantine."""

from __future__ import annotations

import json
from pathlib import Path

from thumbfeat import integrity, layout
from thumbfeat.integrity import Damage
from thumbfeat.rows import failed_row, write_row

from tests.support import TAG, make_jpeg

JPEG = make_jpeg("whole", (40, 30))


def row_file(results: Path, image_id: str) -> Path:
    path = Path(layout.feature_path(results, image_id, TAG))
    write_row(path, failed_row(image_id, "timeout", "slow", retryable=True,
                               feature_version="3"))
    return path


def put(path: str | Path, data: bytes) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    return Path(path)


def test_row_checks(tmp_path: Path) -> None:
    whole = row_file(tmp_path, "a")
    assert integrity.cheap_row_problem(whole) is None
    assert integrity.full_row_problem(whole) is None
    cut = row_file(tmp_path, "b")
    cut.write_bytes(cut.read_bytes()[:100])
    assert "magic" in str(integrity.cheap_row_problem(cut))
    assert integrity.full_row_problem(cut) is not None
    tiny = put(layout.feature_path(tmp_path, "c", TAG), b"PAR1")
    assert "too short" in str(integrity.cheap_row_problem(tiny))
    # Magic bytes at both ends but nothing readable between: only the full check sees it.
    faked = put(layout.feature_path(tmp_path, "d", TAG), b"PAR1" + b"\x00" * 40 + b"PAR1")
    assert integrity.cheap_row_problem(faked) is None
    assert "does not read" in str(integrity.full_row_problem(faked))
    assert integrity.cheap_row_problem(tmp_path / "missing.parquet") is None


def test_thumbnail_checks(tmp_path: Path) -> None:
    whole = put(layout.thumb_path(tmp_path, "a", TAG), JPEG)
    assert integrity.cheap_thumb_problem(whole) is None
    assert integrity.full_thumb_problem(whole) is None
    # An empty thumbnail marks a failed download: whole.
    empty = put(layout.thumb_path(tmp_path, "b", TAG), b"")
    assert integrity.full_thumb_problem(empty) is None
    text = put(layout.thumb_path(tmp_path, "c", TAG), b"this is not an image\n")
    assert "not an image" in str(integrity.cheap_thumb_problem(text))
    half = put(layout.thumb_path(tmp_path, "d", TAG), JPEG[: len(JPEG) // 2])
    assert integrity.cheap_thumb_problem(half) is None
    assert "does not decode" in str(integrity.full_thumb_problem(half))
    webp = b"RIFF\x10\x00\x00\x00WEBPVP8 "
    assert integrity.image_signature_ok(webp)
    assert not integrity.image_signature_ok(b"<html><body>")


def test_failure_record_checks(tmp_path: Path) -> None:
    good = {"image_id": "a", "kind": "timeout", "error": "slow", "retryable": True}
    assert integrity.failure_problem(put(tmp_path / "a.json", json.dumps(good).encode())) is None
    assert "not a JSON" in str(integrity.failure_problem(put(tmp_path / "b.json", b"{cut")))
    assert "missing" in str(integrity.failure_problem(put(tmp_path / "c.json", b"[1, 2]")))


def test_check_files_in_workers_finds_exactly_the_damaged(tmp_path: Path) -> None:
    results = tmp_path / "results"
    damaged = set()
    for number in range(60):
        image_id = f"i{number:02d}"
        put(layout.thumb_path(results, image_id, TAG), JPEG)
        row_file(results, image_id)
        if number % 17 == 3:
            damaged.add(str(put(layout.thumb_path(results, image_id, TAG), b"GIF8")))
        if number % 23 == 5:
            path = layout.feature_path(results, image_id, TAG)
            damaged.add(str(put(path, Path(path).read_bytes()[:-1])))
    paths = list(integrity.per_image_files(results))
    assert len(paths) == 120
    seen: list[int] = []
    for workers, fast in ((1, True), (2, True), (2, False)):
        found = integrity.check_files(paths, fast=fast, workers=workers, chunk=7,
                                      on_progress=lambda done, total: seen.append(done))
        assert {d.path for d in found} == damaged
        assert seen[-1] == 120
        seen.clear()


def test_quarantine_moves_keeps_earlier_copies_and_notes_why(tmp_path: Path) -> None:
    results = tmp_path / "results"
    path = layout.thumb_path(results, "x", TAG)
    for attempt in range(3):
        put(path, f"text {attempt}".encode())
        moved = integrity.quarantine(results, Damage(path, f"reason {attempt}"))
        assert moved is not None and not Path(path).exists()
        assert moved.read_bytes() == f"text {attempt}".encode()
        assert Path(f"{moved}.why").read_text() == f"reason {attempt}\n"
    kept = sorted(p.name for p in moved.parent.iterdir())
    assert kept == ["x.img", "x.img.2", "x.img.2.why", "x.img.3", "x.img.3.why", "x.img.why"]
    assert integrity.quarantine(results, Damage(path, "gone")) is None


def test_cheap_damage_of_given_images(tmp_path: Path) -> None:
    put(layout.thumb_path(tmp_path, "a", TAG), JPEG)
    put(layout.thumb_path(tmp_path, "b", TAG), b"oops")
    row_file(tmp_path, "a")
    put(layout.feature_path(tmp_path, "b", TAG), b"x" * 100)
    found = integrity.cheap_damage(tmp_path, ["a", "b"], ["a", "b"], TAG)
    assert [d.path for d in found] == [layout.thumb_path(tmp_path, "b", TAG),
                                       layout.feature_path(tmp_path, "b", TAG)]
