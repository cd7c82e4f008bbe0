"""Tests for thumbfeat.integrity: which per-image files are whole, and the quarantine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from thumbfeat import integrity, layout, storage
from thumbfeat.cli import main
from thumbfeat.integrity import Damage
from thumbfeat.rows import failed_row, write_row

from tests.s3server import BUCKET, SeaweedServer
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


def test_verify_and_quarantine_in_a_bucket(s3: SeaweedServer, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`thumbfeat verify` reads every per-image object under an S3 prefix; --repair moves the
    damaged ones under the prefix's quarantine/ with a note of why, keeping earlier copies."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    storage.forget_clients()
    results = f"s3://{BUCKET}/verify"
    good_row = layout.feature_path(results, "good", TAG)
    write_row(good_row, failed_row("good", "timeout", "slow", retryable=True,
                                   feature_version="3"))
    storage.put(layout.thumb_path(results, "good", TAG), JPEG)
    storage.put(layout.thumb_path(results, "gone", TAG), b"")  # a failed download: empty
    storage.put(layout.failure_path(results, "gone"), json.dumps(
        {"image_id": "gone", "kind": "http_404", "error": "404", "retryable": False}).encode())
    for round_number in range(1, 4):
        bad_row = layout.feature_path(results, "cut", TAG)
        bad_thumb = layout.thumb_path(results, "html", TAG)
        storage.put(bad_row, b"PAR1 cut short")
        storage.put(bad_thumb, b"<html>not an image</html>")
        assert main(["verify", "--results", results, "--workers", "2"]) == 1
        assert main(["verify", "--results", results, "--fast", "--repair"]) == 0
        report = capsys.readouterr().out
        assert "checked 6 files" in report and "damaged: 2" in report, report
        suffix = "" if round_number == 1 else f".{round_number}"
        for path in (bad_row, bad_thumb):
            moved = integrity.quarantine_path(results, path)
            assert not storage.exists(path)
            assert str(moved).startswith(f"{results}/{integrity.QUARANTINE}/")
            assert storage.exists(f"{moved}{suffix}")
            assert storage.get(f"{moved}{suffix}{integrity.WHY_SUFFIX}").strip()
        assert storage.get(good_row)[:4] == b"PAR1"
        assert storage.get(layout.thumb_path(results, "good", TAG)) == JPEG
        assert main(["verify", "--results", results]) == 0
    storage.forget_clients()
