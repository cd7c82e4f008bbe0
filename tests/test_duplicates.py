"""Tests for thumbfeat.duplicates: groups equal those of an all-pairs computation."""

from __future__ import annotations

from collections import Counter
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from thumbfeat.duplicates import (
    choose_bands,
    connected_components,
    exact_duplicate_groups,
    extend_near_duplicate_groups,
    near_duplicate_groups,
)
from thumbfeat.features import compute_features
from thumbfeat.imaging import decode_image

DEMO_IMAGES = Path(__file__).resolve().parent.parent / "config" / "demo" / "images"
PHOTOS = ["astronaut", "coffee", "chelsea_cat", "rocket", "hubble", "camera", "retina",
          "grass", "china", "flower", "brick"]


def all_pairs_groups(ids: list[str], values: list[int | None], distance: int) -> list[str | None]:
    """The reference: compare every pair, union-find in plain Python."""
    parent = list(range(len(ids)))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for i, a in enumerate(values):
        for j in range(i + 1, len(values)):
            b = values[j]
            if a is not None and b is not None and bin(a ^ b).count("1") <= distance:
                parent[max(find(i), find(j))] = min(find(i), find(j))
    roots = [find(i) for i in range(len(ids))]
    sizes = Counter(r for r, v in zip(roots, values, strict=True) if v is not None)
    smallest: dict[int, str] = {}
    for root, image_id in zip(roots, ids, strict=True):
        smallest[root] = min(smallest.get(root, image_id), image_id)
    return [smallest[r] if v is not None and sizes[r] >= 2 else None
            for r, v in zip(roots, values, strict=True)]


def planted_hashes(rng: np.random.Generator, count: int) -> list[int | None]:
    """Random hashes, many of them small bit-flip edits of earlier ones, some missing."""
    values: list[int | None] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.05:
            values.append(None)
        elif roll < 0.6 and any(v is not None for v in values):
            base = next(v for v in rng.permutation(np.array(values, dtype=object))
                        if v is not None)
            for bit in rng.choice(64, size=int(rng.integers(0, 9)), replace=False):
                base ^= 1 << int(bit)
            values.append(base)
        else:
            values.append(int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2)))
    return values


@pytest.mark.parametrize("distance", [0, 1, 3, 6, 10, 20])
def test_groups_equal_the_all_pairs_reference(distance: int) -> None:
    rng = np.random.default_rng(distance)
    for trial in range(5):
        values = planted_hashes(rng, int(rng.integers(2, 250)))
        ids = [f"img{n:04d}-{trial}" for n in rng.permutation(len(values))]
        hexes = [None if v is None else f"{v:016x}" for v in values]
        assert near_duplicate_groups(ids, hexes, distance) == all_pairs_groups(ids, values,
                                                                               distance)


@pytest.mark.parametrize("distance", [0, 3, 6, 10])
def test_extending_earlier_groups_equals_grouping_everything(distance: int) -> None:
    rng = np.random.default_rng(100 + distance)
    for trial in range(6):
        values = planted_hashes(rng, int(rng.integers(2, 300)))
        ids = [f"img{n:04d}-{trial}" for n in rng.permutation(len(values))]
        hexes = [None if v is None else f"{v:016x}" for v in values]
        is_new = (rng.random(len(values)) < [0.0, 0.02, 0.3, 0.7, 1.0, 0.5][trial]).tolist()
        old_rows = [row for row, added in enumerate(is_new) if not added]
        old_groups = near_duplicate_groups([ids[r] for r in old_rows],
                                           [hexes[r] for r in old_rows], distance)
        earlier: list[str | None] = [None] * len(ids)
        for row, group in zip(old_rows, old_groups, strict=True):
            earlier[row] = group
        extended = extend_near_duplicate_groups(ids, hexes, distance, earlier, is_new)
        assert extended == all_pairs_groups(ids, values, distance)


def test_a_new_image_can_join_two_earlier_groups() -> None:
    ids = ["a", "b", "c", "d", "bridge"]
    hexes = [f"{0:016x}", f"{0b11:016x}", f"{0xFF00:016x}", f"{0xFF01:016x}", f"{0xF000:016x}"]
    earlier = ["a", "a", "c", "c", None]
    extended = extend_near_duplicate_groups(ids, hexes, 4, earlier,
                                            [False, False, False, False, True])
    assert extended == ["a"] * 5


def test_extending_needs_the_earlier_labels_in_the_table() -> None:
    with pytest.raises(ValueError, match="no longer in the table"):
        extend_near_duplicate_groups(["b", "c"], [f"{0:016x}", f"{1:016x}"], 6,
                                     ["a", None], [False, True])


def test_many_identical_and_crowded_hashes() -> None:
    # 3,000 copies of one blank-image hash plus 500 hashes sharing every band but one bit.
    ids = [f"i{n:05d}" for n in range(3500)]
    hexes = ["0" * 16] * 3000 + [f"{1 << (n % 64):016x}" for n in range(500)]
    groups = near_duplicate_groups(ids, hexes, 6)
    assert set(groups) == {"i00000"}
    # The same when the blank copies are what is added to an earlier grouping.
    earlier = [None] * 3000 + groups[3000:]
    extended = extend_near_duplicate_groups(ids, hexes, 6, earlier,
                                            [True] * 3000 + [False] * 500)
    assert extended == groups


def test_distance_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match=r"0\.\.64"):
        near_duplicate_groups(["a"], ["0" * 16], 65)


def test_band_choice_for_the_default_distance() -> None:
    assert choose_bands(100_000, 6) == 4  # 16-bit bands, one flipped bit per lookup
    assert choose_bands(100_000, 0) == 1


def test_connected_components_of_a_long_chain() -> None:
    nodes = 10_000
    left = np.arange(nodes - 1, dtype=np.int64)[::-1].copy()
    components = connected_components(nodes, left, left + 1)
    assert set(components.tolist()) == {0}


def test_exact_groups_by_pixel_digest() -> None:
    ids = ["c", "a", "b", "d", "e"]
    digests = ["x", "y", "x", None, "y"]
    assert exact_duplicate_groups(ids, digests) == ["b", "a", "b", None, "a"]


def recompressed(path: Path, scale: float, quality: int) -> bytes:
    image = Image.open(path).convert("RGB")
    size = (round(image.width * scale), round(image.height * scale))
    buffer = BytesIO()
    image.resize(size, Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def phash_of(data: bytes) -> str:
    return str(compute_features(decode_image(data), data)["phash"])


def test_resized_recompressed_copies_join_their_original_and_photos_stay_apart() -> None:
    ids, hashes = [], []
    for name in PHOTOS:
        path = DEMO_IMAGES / f"{name}.jpg"
        ids.append(name)
        hashes.append(phash_of(path.read_bytes()))
    copies = {"astronaut": (0.5, 60), "coffee": (0.7, 40), "rocket": (1.5, 75),
              "camera": (0.6, 50)}
    for name, (scale, quality) in copies.items():
        ids.append(f"{name}-copy")
        hashes.append(phash_of(recompressed(DEMO_IMAGES / f"{name}.jpg", scale, quality)))
    groups = dict(zip(ids, near_duplicate_groups(ids, hashes, 6), strict=True))
    for name in copies:
        assert groups[name] == groups[f"{name}-copy"] is not None
    grouped = {groups[name] for name in copies}
    assert len(grouped) == len(copies)  # each photo's group is its own
    for name in PHOTOS:
        if name not in copies:
            assert groups[name] is None
