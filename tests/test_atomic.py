"""Tests for thumbfeat.atomic: whole files or nothing, and no stray temporary files."""

from __future__ import annotations

from pathlib import Path

import pytest
from thumbfeat import atomic


def test_write_bytes_creates_file_and_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.img"
    atomic.write_bytes(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert [p.name for p in target.parent.iterdir()] == ["x.img"]


def test_write_bytes_replaces_and_allows_empty(tmp_path: Path) -> None:
    target = tmp_path / "x.img"
    atomic.write_bytes(target, b"first")
    atomic.write_bytes(str(target), b"")
    assert target.read_bytes() == b""
    atomic.write_bytes(target, b"third", durable=True)
    assert target.read_bytes() == b"third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.img"]


def test_exception_inside_atomic_path_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "x.parquet"
    target.write_bytes(b"old")
    seen: list[Path] = []
    with pytest.raises(RuntimeError, match="writer died"), atomic.atomic_path(target) as tmp:
        seen.append(tmp)
        tmp.write_bytes(b"half of the ne")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert not seen[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.parquet"]


def test_failing_writer_leaves_nothing_new(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "new.json"

    def writer(tmp: Path) -> None:
        tmp.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_with(target, writer)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_exception_before_writing_anything(tmp_path: Path) -> None:
    target = tmp_path / "x.img"
    with pytest.raises(KeyError), atomic.atomic_path(target):
        raise KeyError("nothing written")
    assert list(tmp_path.iterdir()) == []


def test_write_with_passes_a_temporary_sibling(tmp_path: Path) -> None:
    target = tmp_path / "x.img"
    seen: list[Path] = []

    def writer(tmp: Path) -> None:
        seen.append(tmp)
        assert not target.exists()  # nothing under the final name until complete
        tmp.write_bytes(b"data")

    atomic.write_with(target, writer)
    assert target.read_bytes() == b"data"
    assert seen[0].parent == target.parent
    assert seen[0].name.startswith(".")
    assert not seen[0].exists()


def test_temporary_names_are_dot_named_unique_siblings(tmp_path: Path) -> None:
    target = tmp_path / "shard" / "img1.img"
    names = {atomic.temporary_sibling(target) for _ in range(50)}
    assert len(names) == 50
    for tmp in names:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(".img1.img.")
        assert tmp.name.endswith(".tmp")
        assert not tmp.name.endswith(".img")
