"""Tests for thumbfeat.layout: shard names, per-image paths and the target pattern."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest
from thumbfeat import layout

from tests.support import TAG


def test_shard_of_is_stable_and_two_hex_digits() -> None:
    for image_id in ("a", "000001", "IMG_0001.tif", "x" * 200):
        shard = layout.shard_of(image_id)
        assert re.fullmatch(r"[0-9a-f]{2}", shard)
        assert shard in layout.SHARD_SET
        assert layout.shard_of(image_id) == shard
        # Fixed by definition, so appending catalog rows never moves a finished file.
        assert shard == hashlib.sha1(image_id.encode("utf-8")).hexdigest()[:2]


def test_shard_of_spreads_sequential_ids() -> None:
    counts = Counter(layout.shard_of(str(n)) for n in range(10_000))
    # 10,000 sequential ids over 256 shards: about 39 each; a prefix scheme would use a handful.
    assert len(counts) == 256
    assert max(counts.values()) < 80
    zero_padded = Counter(layout.shard_of(f"{n:08d}") for n in range(2_000))
    assert len(zero_padded) > 200


def test_shard_constants() -> None:
    assert len(layout.SHARDS) == 256
    assert layout.SHARDS[0] == "00" and layout.SHARDS[-1] == "ff"
    assert set(layout.SHARDS) == layout.SHARD_SET


def test_per_image_paths() -> None:
    shard = layout.shard_of("img7")
    assert layout.thumb_path("results", "img7", "256px-png") == (
        f"results/thumbs/256px-png/{shard}/img7.img")
    assert layout.feature_path("results", "img7", "256px-png") == (
        f"results/features/256px-png/{shard}/img7.parquet")
    assert layout.failure_path("results", "img7") == f"results/failed/{shard}/img7.json"
    # A Path for the results folder gives the same strings.
    assert layout.thumb_path(Path("/data/out"), "img7", "original") == (
        f"/data/out/thumbs/original/{shard}/img7.img")


def test_image_id_of_target_reads_layout_paths() -> None:
    for image_id in ("img7", "007", "a.b-c_d", "_x", "photo.img", "v1.parquet"):
        for path in (layout.thumb_path("results", image_id, TAG),
                     layout.feature_path("results", image_id, TAG)):
            for candidate in (path, path.removeprefix("results/"), f"/abs/dir/{path}"):
                assert layout.image_id_of_target(candidate) == image_id, candidate


WRONG_SHARD = next(s for s in layout.SHARDS if s != layout.shard_of("x1"))


@pytest.mark.parametrize(
    "path",
    [
        "results/failed/ab/x1.json",
        "results/batches/00001-abc.json",
        "results/feature_table.parquet",
        "results/catalog/0123456789abcdef.parquet",
        "results/features/t/ab/x1.json",
        "results/features/t/zz/x1.parquet",
        "results/features/t/abc/x1.parquet",
        "results/features/t/x1.parquet",
        "results/features/t/ab/.x1.parquet",
        "results/features/t/ab/x1.parquet.1234.ab12cd34.tmp",
        "results/features/t/ab/sub/x1.parquet",
        "results/myfeatures/t/ab/x1.parquet",
        "results/thumbs/t/ab/.img",
        f"results/thumbs/t/{layout.shard_of('x1')}/x1.parquet",
        f"results/features/t/{layout.shard_of('x1')}/x1.img",
        f"results/features/t/{WRONG_SHARD}/x1.parquet",
        # Before thumbnail settings had folders: no such file is built any more.
        f"results/features/{layout.shard_of('x1')}/x1.parquet",
        f"results/thumbs/{layout.shard_of('x1')}/x1.img",
        "all",
        "--cores",
    ],
)
def test_image_id_of_target_rejects_other_paths(path: str) -> None:
    assert layout.image_id_of_target(path) is None


def test_is_temporary_name() -> None:
    assert layout.is_temporary_name(".x1.img.123.abcd.tmp")
    assert layout.is_temporary_name(".x1.img")
    assert not layout.is_temporary_name("x1.img")


def test_existing_shard_dirs(tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert layout.existing_shard_dirs(results, layout.THUMBS) == []
    stage = results / layout.THUMBS
    for name in ("ff", "00", "3c"):
        (stage / name).mkdir(parents=True)
    (stage / "zz").mkdir()  # not a shard name
    (stage / "abc").mkdir()  # too long
    (stage / "ab").write_text("a file, not a folder")
    assert layout.existing_shard_dirs(results, layout.THUMBS) == [
        f"{results}/thumbs/00",
        f"{results}/thumbs/3c",
        f"{results}/thumbs/ff",
    ]
    assert layout.existing_shard_dirs(str(results), layout.FEATURES) == []


def test_manifest_keys(tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert layout.manifest_keys(results) == []
    folder = results / layout.BATCHES
    folder.mkdir(parents=True)
    for name in ("00001-abc.json", "00001-abc-2.json", "00001-abc.parquet",
                 ".00002-def.json.1.x.tmp", "table.parquet"):
        (folder / name).write_text("{}")
    assert sorted(layout.manifest_keys(results)) == ["00001-abc", "00001-abc-2"]


def test_thumbs_made_elsewhere(tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert layout.thumbs_made_elsewhere(results, "512px-jpeg-q85") == set()
    for image_id, tag in (("a", "512px-jpeg-q85"), ("b", "256px-webp-q80"), ("c", "original"),
                          ("a", "original")):
        path = Path(layout.thumb_path(results, image_id, tag))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    # A thumbnail written before settings had folders, and a temporary file.
    legacy = results / layout.THUMBS / layout.shard_of("d") / "d.img"
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_bytes(b"x")
    (legacy.parent / ".e.img.1.ab.tmp").write_bytes(b"x")
    assert layout.thumbs_made_elsewhere(results, "512px-jpeg-q85") == {"a", "b", "c", "d"}
    assert layout.thumbs_made_elsewhere(results, "original") == {"a", "b", "d"}
