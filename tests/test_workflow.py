"""End-to-end scenarios: the real workflow run by real snakemake against a loopback server."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from PIL import Image
from thumbfeat import layout

from tests.support import (
    TAG,
    ImageServer,
    file_times,
    image_rows,
    plan_of,
    preview,
    run_planned,
    run_snakemake,
    write_catalog,
)

# Fewer connections than the default: the loopback server is one Python process.
FAST = {"batch_size": "100", "local_file_roots": "[]", "download": "{concurrency: 16}"}


def read_table(workdir: Path) -> list[dict[str, object]]:
    return pq.read_table(workdir / "results" / "feature_table.parquet").to_pylist()


def plan_counts(document: dict[str, Any]) -> dict[str, int]:
    return {"fetch": document["fetch"]["images"], "measure": document["measure"]["images"],
            "failed": document["failures"]["kept"]}


def test_fresh_rerun_repair_and_append(tmp_path: Path, server: ImageServer) -> None:
    names = [f"img{i:04d}" for i in range(350)]
    catalog = write_catalog(tmp_path / "catalog.csv", image_rows(server, names[:300]))
    config = {**FAST, "catalog": str(catalog)}

    run_snakemake(tmp_path, config=config)
    assert server.total() <= 300
    rows = read_table(tmp_path)
    assert [r["image_id"] for r in rows] == names[:300]
    assert {r["status"] for r in rows} == {"ok"}

    # A second run fetches nothing and rewrites nothing.
    before = server.total()
    times = file_times(tmp_path / "results", "**/*")
    result = run_snakemake(tmp_path, config=config)
    assert server.total() == before
    assert file_times(tmp_path / "results", "**/*") == times
    assert "Nothing to be done" in result.stdout + result.stderr

    # Lost files are rebuilt by a plain run, even though the table exists: only thumbnails cost
    # a request; feature files are recomputed from the thumbnails on disk.
    results = tmp_path / "results"
    for name in names[10:17]:
        Path(layout.thumb_path(results, name, TAG)).unlink()
    for name in names[100:105]:
        Path(layout.feature_path(results, name, TAG)).unlink()
    before = server.snapshot()
    run_snakemake(tmp_path, config=config)
    delta = server.snapshot() - before
    assert sum(delta.values()) == 7
    assert set(delta) == {f"/img/{n}.jpg" for n in names[10:17]}
    for name in names[10:17] + names[100:105]:
        assert Path(layout.thumb_path(results, name, TAG)).stat().st_size > 0
        assert Path(layout.feature_path(results, name, TAG)).exists()

    # Appending rows fetches exactly the new images.
    write_catalog(tmp_path / "catalog.csv", image_rows(server, names))
    before = server.total()
    run_snakemake(tmp_path, config=config)
    assert server.total() - before == 50
    rows = read_table(tmp_path)
    assert len(rows) == 350
    assert {r["status"] for r in rows} == {"ok"}

    # Dropping rows fetches nothing and the table follows the catalog.
    write_catalog(tmp_path / "catalog.csv", image_rows(server, names[::2]))
    before = server.total()
    run_snakemake(tmp_path, config=config)
    assert server.total() == before
    assert [r["image_id"] for r in read_table(tmp_path)] == names[::2]


def test_failures_recorded_not_retried_unless_asked(tmp_path: Path, server: ImageServer) -> None:
    rows = [*image_rows(server, ["a1", "a2"]),
            ("lost", f"{server.base}/missing/lost.jpg"),
            ("page", f"{server.base}/html/page.jpg"),
            ("down", f"{server.base}/error/down.jpg")]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    settings = tmp_path / "fast-retries.yaml"
    settings.write_text("download: {max_attempts: 2, backoff_base: 0.01}\n")
    config = {**FAST, "catalog": str(catalog)}
    run = functools.partial(run_planned, tmp_path, "--configfile", str(settings))

    run(config=config)
    table = {r["image_id"]: r for r in read_table(tmp_path)}
    assert table["a1"]["status"] == table["a2"]["status"] == "ok"
    assert table["lost"]["status"] == "failed"
    assert table["lost"]["error_kind"] == "http_status" and "404" in table["lost"]["error"]
    assert table["page"]["error_kind"] == "not_image"
    assert table["down"]["error_kind"] == "http_status" and table["down"]["retryable"]
    assert server.counts["/missing/lost.jpg"] == 1
    assert server.counts["/error/down.jpg"] == 2

    # Permanent failures stay failed; the transient one is tried again.
    _, plan = run(config=config)
    assert plan_counts(plan) == {"fetch": 1, "measure": 1, "failed": 2}
    assert server.counts["/missing/lost.jpg"] == 1
    assert server.counts["/html/page.jpg"] == 1
    assert server.counts["/error/down.jpg"] == 4

    run(config={**config, "retry_failed": "true"})
    assert server.counts["/missing/lost.jpg"] == 2
    assert server.counts["/html/page.jpg"] == 2
    assert len(read_table(tmp_path)) == 5


def written(before: dict[str, int], after: dict[str, int]) -> set[str]:
    """Image ids whose file is new or was rewritten."""
    return {Path(p).name.split(".")[0] for p, t in after.items() if before.get(p) != t}


def test_dry_run_reports_exact_remaining_work(tmp_path: Path, server: ImageServer) -> None:
    names = [f"p{i:03d}" for i in range(120)]
    lost = [f"lost{i}" for i in range(3)]
    flaky = [f"flaky{i}" for i in range(2)]
    rows = [*image_rows(server, names),
            *((n, f"{server.base}/missing/{n}.jpg") for n in lost),
            *((n, f"{server.base}/flaky/1/{n}.jpg") for n in flaky)]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    config = {**FAST, "catalog": str(catalog), "download": "{max_attempts: 1}"}
    assert preview(plan_of(tmp_path, config=config)) == {
        "catalog": 125, "fetch": 125, "measure": 125, "kept": 0, "retry": 0, "batches": 2,
        "table": "no table yet"}
    run_snakemake(tmp_path, config=config)
    results = tmp_path / "results"
    table = results / "feature_table.parquet"
    # Half done: 30 images lost both files, 15 their feature file; the flaky ones failed for now.
    for name in names[:30]:
        Path(layout.thumb_path(results, name, TAG)).unlink()
        Path(layout.feature_path(results, name, TAG)).unlink()
    for name in names[30:45]:
        Path(layout.feature_path(results, name, TAG)).unlink()

    before = server.snapshot()
    files_before = file_times(tmp_path, "**/*")
    plan = plan_of(tmp_path, config=config)
    assert server.snapshot() == before
    changed = {p for p, t in file_times(tmp_path, "**/*").items()
               if files_before.get(p) != t and not p.startswith(".snakemake")}
    assert changed == set(), "a dry run wrote files"
    assert preview(plan) == {
        "catalog": 125, "fetch": 32, "measure": 47, "kept": 3, "retry": 2, "batches": 1,
        "table": "1 batch to run"}

    # The next run does exactly that: one request per image to fetch, those thumbnails and
    # feature files written and no others, the kept failures untouched, the table rewritten.
    thumbs_before = file_times(results, "thumbs/*/*/*")
    rows_before = file_times(results, "features/*/*/*")
    table_before = table.stat().st_mtime_ns
    run_snakemake(tmp_path, config=config)
    delta = server.snapshot() - before
    expected_fetch = set(names[:30]) | set(flaky)
    assert sum(delta.values()) == 32
    assert {p.rsplit("/", 1)[-1].removesuffix(".jpg") for p in delta} == expected_fetch
    assert written(thumbs_before, file_times(results, "thumbs/*/*/*")) == expected_fetch
    assert written(rows_before, file_times(results, "features/*/*/*")) == (
        expected_fetch | set(names[30:45]))
    assert table.stat().st_mtime_ns != table_before

    # Finished: the preview says so, and the run touches nothing.
    def preview_then_run() -> tuple[dict[str, object], bool]:
        shown = preview(plan_of(tmp_path, config=config))
        table_time, requests = table.stat().st_mtime_ns, server.total()
        run_snakemake(tmp_path, config=config)
        assert server.total() == requests
        return shown, table.stat().st_mtime_ns != table_time

    assert preview_then_run() == ({"catalog": 125, "fetch": 0, "measure": 0, "kept": 3,
                                   "retry": 0, "batches": 0, "table": "up to date"}, False)
    # A feature shard folder changed (say a file of an image outside the catalog was removed).
    shard = Path(layout.feature_path(results, names[50], TAG)).parent
    os.utime(shard, ns=(table.stat().st_mtime_ns + 10**9,) * 2)
    shown, rebuilt = preview_then_run()
    assert shown["table"] == "feature files changed since it was written"
    assert (shown["fetch"], shown["measure"], rebuilt) == (0, 0, True)
    # A new selection: fewer rows, nothing to fetch, a new table.
    write_catalog(catalog, rows[:100])
    shown, rebuilt = preview_then_run()
    assert shown == {"catalog": 100, "fetch": 0, "measure": 0, "kept": 0, "retry": 0,
                     "batches": 0, "table": "the catalog selection changed"}
    assert rebuilt
    assert len(read_table(tmp_path)) == 100


def test_one_requested_file_builds_just_it(tmp_path: Path, server: ImageServer) -> None:
    names = [f"q{i:03d}" for i in range(50)]
    catalog = write_catalog(tmp_path / "catalog.csv", image_rows(server, names))
    target = layout.feature_path("results", "q007", TAG)
    run_snakemake(tmp_path, target, config={**FAST, "catalog": str(catalog)})
    assert server.total() == 1
    assert (tmp_path / target).exists()
    built = list((tmp_path / "results" / "features").glob("*/*/*.parquet"))
    assert [p.name for p in built] == ["q007.parquet"]
    # One download made its thumbnail and its row: one decode, no second job.
    thumbs = list((tmp_path / "results" / "thumbs").glob("*/*/*.img"))
    assert [p.name for p in thumbs] == ["q007.img"]
    assert not (tmp_path / "results" / "feature_table.parquet").exists()


@pytest.mark.parametrize(
    ("catalog_text", "message"),
    [
        ("image_id,url\n../etc,http://x/a.jpg\n", "line 2"),
        ("image_id,url\na,http://x/a.jpg\na,http://x/b.jpg\n", "repeated with a different URL"),
        ("name,url\na,http://x/a.jpg\n", "no column 'image_id'"),
        ("image_id,url\n", "selects no images"),
    ],
)
def test_bad_catalog_stops_before_any_work(tmp_path: Path, catalog_text: str,
                                           message: str) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(catalog_text)
    result = run_snakemake(tmp_path, config={**FAST, "catalog": str(catalog)}, check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert str(catalog) in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_bundled_demo_runs_from_any_directory(tmp_path: Path) -> None:
    run_snakemake(tmp_path)
    rows = {r["image_id"]: r for r in read_table(tmp_path)}
    assert len(rows) == 16
    failed = {i: r["error_kind"] for i, r in rows.items() if r["status"] == "failed"}
    assert failed == {"missing_photo": "not_found", "broken_text": "not_image",
                      "cut_photo": "truncated"}
    # A real PNG served under a .jpg name is accepted: the bytes decide.
    assert rows["clock_blur"]["format"] == "PNG"
    log = (tmp_path / "results" / "logs" / "feature_table.log").read_text()
    assert "16 rows (failed 3, ok 13)" in log
    # The large photo is kept as a thumbnail of 512 px; the small ones as served.
    large = rows["coffee_large"]
    assert (large["width"], large["height"], large["format"]) == (512, 341, "JPEG")
    assert (large["source_width"], large["source_height"]) == (3000, 2000)
    assert large["file_bytes"] < large["source_bytes"] // 10
    assert rows["coffee"]["sha256"] == rows["coffee"]["source_sha256"]

    filtered = run_snakemake(tmp_path, config={"filter": "{vote_pool_flag: true}"})
    assert "15 images in the catalog" in filtered.stdout + filtered.stderr
    assert "brick" not in {r["image_id"] for r in read_table(tmp_path)}


def test_duplicate_groups_and_regrouping_without_remeasuring(tmp_path: Path) -> None:
    demo = Path(__file__).resolve().parent.parent / "config" / "demo" / "images"
    images = tmp_path / "images"
    images.mkdir()
    astronaut = Image.open(demo / "astronaut.jpg")
    shutil.copy(demo / "astronaut.jpg", images / "astronaut.jpg")
    astronaut.save(images / "astronaut-lossless.png")  # same pixels, other file
    # Trimmed by 4 px, shrunk and recompressed: a near copy (its pHash differs in a few bits).
    astronaut.crop((4, 4, 316, 316)).resize((200, 200), Image.Resampling.LANCZOS).save(
        images / "astronaut-small.jpg", quality=50)
    for name in ("coffee", "rocket"):
        shutil.copy(demo / f"{name}.jpg", images / f"{name}.jpg")
    names = ["coffee", "astronaut-small", "astronaut", "rocket", "astronaut-lossless"]
    files = {n: next(images.glob(f"{n}.*")).name for n in names}
    catalog = write_catalog(tmp_path / "catalog.csv",
                            [(n, f"file:images/{files[n]}") for n in names])
    config = {**FAST, "catalog": str(catalog), "local_file_roots": f"[{images}]"}

    run_snakemake(tmp_path, config=config)
    table = pq.read_table(tmp_path / "results" / "feature_table.parquet")
    rows = {r["image_id"]: r for r in table.to_pylist()}
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert rows["astronaut"]["feature_version"] == "3"
    exact = {n: r["exact_duplicate_group"] for n, r in rows.items()}
    near = {n: r["near_duplicate_group"] for n, r in rows.items()}
    assert exact == {"coffee": None, "astronaut-small": None, "astronaut": "astronaut",
                     "rocket": None, "astronaut-lossless": "astronaut"}
    assert near == {"coffee": None, "astronaut-small": "astronaut", "astronaut": "astronaut",
                    "rocket": None, "astronaut-lossless": "astronaut"}
    assert table.schema.metadata[b"thumbfeat.near_duplicate_distance"] == b"6"

    # A new distance regroups the table; nothing is fetched or measured again.
    features = file_times(tmp_path / "results", "features/**/*.parquet")
    _, plan = run_planned(tmp_path, config={**config, "near_duplicate_distance": "0"})
    assert plan_counts(plan) == {"fetch": 0, "measure": 0, "failed": 0}
    assert file_times(tmp_path / "results", "features/**/*.parquet") == features
    table = pq.read_table(tmp_path / "results" / "feature_table.parquet")
    assert table.schema.metadata[b"thumbfeat.near_duplicate_distance"] == b"0"
    near = dict(zip(table.column("image_id").to_pylist(),
                    table.column("near_duplicate_group").to_pylist(), strict=True))
    assert near["astronaut-lossless"] == "astronaut"  # identical pixels, identical hash
    assert near["astronaut-small"] is None
    markers = sorted(p.name for p in (tmp_path / "results" / "table-settings").iterdir())
    assert markers == [f"near-duplicate-distance-0-thumbnails-{TAG}.json"]
