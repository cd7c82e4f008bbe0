"""Tests for the thumbfeat command: status and path, answered from the results folder."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from thumbfeat import layout
from thumbfeat.cli import main
from thumbfeat.failures import record_failure
from thumbfeat.plan import plan_line
from thumbfeat.rows import failed_row, write_row

from tests.support import TAG, make_jpeg, run_planned, write_catalog

IDS = ["a", "b", "c", "d", "e", "f"]


def touch(path: str, data: bytes = b"") -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)


def fail(results: Path, image_id: str, kind: str, retryable: bool) -> None:
    record = {"image_id": image_id, "kind": kind, "error": "x", "retryable": retryable,
              "recorded_at": "2024-01-01T00:00:00+0000"}
    touch(layout.failure_path(results, image_id), json.dumps(record).encode())
    touch(layout.thumb_path(results, image_id, TAG))


def status(results: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["status", "--results", str(results)]) == 0
    return capsys.readouterr().out


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """a, b, c downloaded; d failed for good; e failed for now; f pending. a, b, d measured."""
    out = tmp_path / "results"
    snapshot = out / "catalog" / "0123abcd.parquet"
    snapshot.parent.mkdir(parents=True)
    pq.write_table(pa.table({"image_id": IDS, "url": [f"http://h/{i}" for i in IDS]}), snapshot)
    for image_id in ("a", "b", "c"):
        touch(layout.thumb_path(out, image_id, TAG), b"jpeg")
    fail(out, "d", "http_status", retryable=False)
    fail(out, "e", "timeout", retryable=True)
    for image_id in ("a", "b", "d"):
        touch(layout.feature_path(out, image_id, TAG), b"row")
    # Files of images outside the catalog, and temporary files, are not counted.
    touch(layout.thumb_path(out, "old", TAG), b"jpeg")
    touch(layout.feature_path(out, "old", TAG), b"row")
    fail(out, "old2", "http_status", retryable=True)
    touch(str(Path(layout.thumb_path(out, "f", TAG)).with_name(".f.img")), b"jp")
    touch(str(Path(layout.feature_path(out, "c", TAG)).with_name(".c.parquet.1.ab.tmp")), b"r")
    return out


def test_status_of_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = status(tmp_path, capsys)
    assert "no run has recorded a catalog yet" in out
    assert str(tmp_path) in out


def test_status_counts(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = status(results, capsys)
    assert "catalog: 6 images (snapshot 0123abcd.parquet)" in out
    assert "fetched: 3 ok, 2 failed, 1 pending" in out
    assert "measured: 3 done, 3 pending" in out
    assert "failed by kind: http_status 1, timeout 1 (1 will be retried by the next run)" in out
    assert "batches" not in out
    assert f"table: {results / 'feature_table.parquet'} (not built yet)" in out


def test_status_with_manifests_and_table(results: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    manifests = results / layout.BATCHES
    manifests.mkdir(parents=True)
    for n, (images, seconds) in enumerate(((40, 2.0), (20, 1.0))):
        (manifests / f"0000{n}-k.json").write_text(json.dumps(
            {"download": {"images": images}, "features": {"images": images - 10},
             "seconds": seconds}))
    (results / "feature_table.parquet").write_bytes(b"table")
    out = status(results, capsys)
    assert "batches: 2 recorded, 60 images fetched, 40 measured, 20.0 images/s per job" in out
    assert "not built yet" not in out


def at(clock: str) -> float:
    return datetime.fromisoformat(f"2026-02-03T{clock}+00:00").timestamp()


def test_status_shows_the_last_run(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifests = results / layout.BATCHES
    manifests.mkdir(parents=True)
    for key, start, end, images in (("00001-a", "09:00:00", "09:00:30", 300),
                                    ("00001-b", "10:00:00", "10:00:04", 20),
                                    ("00002-b", "10:00:01", "10:00:05", 20)):
        (manifests / f"{key}.json").write_text(json.dumps({
            "batch": key, "started": at(start), "finished": at(end),
            "finished_at": f"2026-02-03T{end}+0000", "seconds": 4.0,
            "download": {"images": images, "failed_by_kind": {"timeout": 1}},
            "features": {"images": images, "failed_by_kind": {"timeout": 1}}}))
    out = status(results, capsys)
    shown_end = datetime.fromtimestamp(at("10:00:05")).strftime("%Y-%m-%d %H:%M:%S")
    assert ("last run: 2 batches, 40 images in 5.0 s (8.0 images/s), failed: timeout 2; "
            f"finished {shown_end}") in out


def test_status_against_a_catalog_file(results: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    # Before a first run's table exists there is no snapshot; the catalog file says what is due.
    for snapshot in (results / "catalog").glob("*.parquet"):
        snapshot.unlink()
    assert "no run has recorded a catalog yet" in status(results, capsys)
    catalog = tmp_path / "cat.csv"
    catalog.write_text("name,link\n" + "".join(f"{i},http://h/{i}\n" for i in [*IDS, "g"]))
    argv = ["status", "--results", str(results), "--catalog", str(catalog),
            "--id-column", "name"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"catalog: 7 images ({catalog})" in out
    assert "fetched: 3 ok, 2 failed, 2 pending" in out
    assert "measured: 3 done, 4 pending" in out
    with pytest.raises(SystemExit) as caught:
        main(["status", "--results", str(results), "--catalog", str(catalog)])
    assert caught.value.code == 2
    assert "no column 'image_id'" in capsys.readouterr().err


def test_status_counts_what_the_filter_selects_without_needing_urls(
        results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A url_template catalog has no URL column; counting needs only the ids.
    catalog = tmp_path / "cat.csv"
    catalog.write_text("image_id,split\n" + "".join(
        f"{i},{'train' if i in 'abcd' else 'test'}\n" for i in [*IDS, "g"]))
    base = ["status", "--results", str(results), "--catalog", str(catalog)]
    assert main(base) == 0
    assert "catalog: 7 images" in capsys.readouterr().out
    # Rows the workflow's filter leaves out are not pending: the same rule selects them.
    assert main([*base, "--filter", "split=TRAIN"]) == 0
    out = capsys.readouterr().out
    assert "catalog: 4 images" in out
    assert "fetched: 3 ok, 1 failed, 0 pending" in out
    assert main([*base, "--filter", "split=train", "--filter", "split=test"]) == 0
    assert "catalog: 7 images" in capsys.readouterr().out
    for bad, message in ((["--filter", "split"], "expected COLUMN=VALUE"),
                         (["--filter", "kind=x"], "names column 'kind'")):
        with pytest.raises(SystemExit) as caught:
            main([*base, *bad])
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    with pytest.raises(SystemExit) as caught:
        main(["status", "--results", str(results), "--filter", "split=train"])
    assert caught.value.code == 2
    assert "apply to --catalog" in capsys.readouterr().err


def test_status_after_thumbnails_were_deleted(results: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # Thumbnails are intermediates a user may delete to save space; failure records remain.
    for path in (results / layout.THUMBS).rglob("*.img"):
        path.unlink()
    out = status(results, capsys)
    assert "fetched: 0 ok, 0 failed, 6 pending" in out
    assert "measured: 3 done, 3 pending" in out
    assert "failed by kind: none" in out


def test_status_without_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    snapshot = results / "catalog" / "d.parquet"
    snapshot.parent.mkdir(parents=True)
    pq.write_table(pa.table({"image_id": ["a", "b"], "url": ["u", "v"]}), snapshot)
    touch(layout.thumb_path(results, "a", TAG), b"jpeg")
    out = status(results, capsys)
    assert "fetched: 1 ok, 0 failed, 1 pending" in out
    assert "measured: 0 done, 2 pending" in out
    assert "failed by kind: none" in out
    assert "retried" not in out


def test_path_prints_three_paths(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["path", "img7", "--results", "out"]) == 0  # no results: default settings
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        layout.thumb_path("out", "img7", TAG),
        layout.feature_path("out", "img7", TAG),
        layout.failure_path("out", "img7"),
    ]
    shard = layout.shard_of("img7")
    assert lines[0] == f"out/thumbs/{TAG}/{shard}/img7.img"
    assert main(["path", "img7", "--results", "out", "--thumbnails", "original"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"out/thumbs/original/{shard}/img7.img"


def test_path_defaults_to_results(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["path", "x"]) == 0
    assert all(line.startswith("results/") for line in capsys.readouterr().out.splitlines())


@pytest.mark.parametrize("image_id", ["../../etc/x", ".hidden", "-x", "a/b", "x" * 201, ""])
def test_path_refuses_unsafe_ids(image_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["path", "--", image_id])
    assert caught.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "is not a safe file name" in captured.err


def test_path_refuses_ids_the_last_catalog_lacks(results: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["path", "zz", "--results", str(results)])
    assert caught.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "'zz' is not in the catalog of the last table" in captured.err
    # Ids of the catalog, and ids that still have files (an older catalog's), are shown.
    for image_id in ("f", "old"):
        assert main(["path", image_id, "--results", str(results)]) == 0
        assert capsys.readouterr().out.splitlines()[0] == layout.thumb_path(results, image_id, TAG)


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    # Options of their own only: only `plan` passes the others on to snakemake.
    with pytest.raises(SystemExit) as caught:
        main(["status", "--cores", "2"])
    assert caught.value.code == 2
    assert "unrecognized arguments: --cores 2" in capsys.readouterr().err


def test_plan_prints_the_plan_the_run_announces(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rows = [(f"p{i:03d}", f"http://127.0.0.1:9/p{i:03d}.jpg") for i in range(150)]
    rows[-1] = ("p149", "ftp://127.0.0.1/p149.jpg")  # cannot be fetched: the run warns
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    config = {"catalog": str(catalog), "batch_size": "100"}
    options = ["--directory", str(tmp_path), "--cores", "2", "--config",
               *(f"{k}={v}" for k, v in config.items())]
    # Ten images already have their thumbnail: the plan only measures them.
    for image_id, _ in rows[:10]:
        touch(layout.thumb_path(tmp_path / "results", image_id, TAG), make_jpeg(image_id))
    assert main(["plan", "--json", *options]) == 0
    document = json.loads(capsys.readouterr().out)
    dry, announced = run_planned(tmp_path, "-n", config=config)
    assert document == announced
    assert (document["fetch"]["images"], document["measure"]["images"]) == (140, 150)
    assert [(b["fetch"], b["measure"]) for b in document["batches"]] == [(90, 100), (50, 50)]
    assert len(document["warnings"]) == 1 and "'ftp'" in document["warnings"][0]
    # Without --json: the very line the run prints, and its warnings.
    assert main(["plan", *options]) == 0
    shown = capsys.readouterr()
    line = shown.out.strip()
    assert line == plan_line(announced)
    assert line in dry.stdout + dry.stderr
    assert shown.err == f"warning: {document['warnings'][0]}\n"
    # A config Snakemake refuses: its message, no plan, no traceback.
    assert main(["plan", "--json", *options, "batch_size=0"]) == 1
    refused = capsys.readouterr()
    assert refused.out == ""
    assert "config key 'batch_size': value 0 is not allowed" in refused.err
    assert "Traceback" not in refused.err
    assert not (tmp_path / ".snakemake" / "thumbfeat").exists()


def whole_results(results: Path, count: int) -> list[str]:
    """``count`` images, each with a real thumbnail and a real feature row; every 50th failed."""
    jpeg = make_jpeg("verify", (24, 16))
    ids = [f"v{n:05d}" for n in range(count)]
    for n, image_id in enumerate(ids):
        if n % 50 == 7:
            record_failure(str(results), image_id, "http_status", "HTTP 404", False, TAG,
                           "http://h/x")
            row = failed_row(image_id, "http_status", "HTTP 404", retryable=False,
                             feature_version="3")
        else:
            touch(layout.thumb_path(results, image_id, TAG), jpeg)
            row = failed_row(image_id, "none", "a stand-in row", retryable=False,
                             feature_version="3")
        write_row(layout.feature_path(results, image_id, TAG), row)
    return ids


def test_verify_finds_exactly_the_damaged_files_of_ten_thousand_images(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    ids = whole_results(results, 10_000)
    assert main(["verify", "--results", str(results), "--workers", "2"]) == 0
    out = capsys.readouterr()
    assert "damaged: 0" in out.out
    # A failed download leaves an empty thumbnail beside its record: whole.
    assert "thumbnails 10000" in out.out and "feature rows 10000" in out.out
    assert "failure records 200" in out.out
    assert "files checked" in out.err  # progress
    damaged = {
        # cut, overwritten, emptied, half a JPEG, a record that does not parse
        layout.feature_path(results, ids[1], TAG): lambda p: p.write_bytes(p.read_bytes()[:100]),
        layout.thumb_path(results, ids[2], TAG): lambda p: p.write_text("not an image"),
        layout.feature_path(results, ids[3], TAG): lambda p: p.write_bytes(b""),
        layout.thumb_path(results, ids[4], TAG): lambda p: p.write_bytes(p.read_bytes()[:200]),
        layout.failure_path(results, ids[7]): lambda p: p.write_text("{cut"),
    }
    for path, damage in damaged.items():
        damage(Path(path))
    assert main(["verify", "--results", str(results), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    listed = {line.strip().split(": ")[0] for line in out.splitlines() if line.startswith("  ")}
    assert listed == set(damaged), out
    assert "damaged: 5 (failure records 1, feature rows 2, thumbnails 2)" in out
    # The fast check sees all but the half JPEG (its first bytes are whole).
    assert main(["verify", "--results", str(results), "--fast"]) == 1
    out = capsys.readouterr().out
    listed = {line.strip().split(": ")[0] for line in out.splitlines() if line.startswith("  ")}
    assert listed == set(damaged) - {layout.thumb_path(results, ids[4], TAG)}
    assert main(["verify", "--results", str(results), "--repair"]) == 0
    assert "moved 5 to" in capsys.readouterr().out
    for path in damaged:
        assert not Path(path).exists()
        assert (results / "quarantine" / Path(path).relative_to(results)).exists()
    assert main(["verify", "--results", str(results)]) == 0
    assert "damaged: 0" in capsys.readouterr().out
