"""Tests for thumbfeat.plan: the remaining work, rebuilt from what is on disk."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from thumbfeat import layout
from thumbfeat.catalog import Catalog
from thumbfeat.failures import FailureRecord, read_failure, record_failure
from thumbfeat.integrity import Damage
from thumbfeat.layout import present_ids
from thumbfeat.plan import (
    Batch,
    Rebuilds,
    WorkPlan,
    attempts_on_disk,
    make_batches,
    plan_line,
    plan_work,
    report_warning,
    requested_image_ids,
    table_rebuild_reason,
)
from thumbfeat.rowinputs import RowInputs
from thumbfeat.urls import recorded_url

from tests.support import TAG

IDS = ("a", "b", "c", "d", "e", "f")


def catalog(ids: tuple[str, ...] = IDS) -> Catalog:
    return Catalog(source=Path("cat.csv"), ids=ids, urls=tuple(f"http://h/{i}.jpg" for i in ids))


def members(batch: Batch, order: Sequence[str] = IDS) -> tuple[str, ...]:
    """The images of a batch (fetched, measured or both), in catalog order."""
    mine = {*batch.fetch_ids, *batch.measure_ids}
    return tuple(i for i in order if i in mine)


def touch(path: str, data: bytes = b"") -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)


def write_failure(results: Path, image_id: str, kind: str, retryable: bool) -> None:
    """A failure record as thumbfeat.failures.record_failure writes it, with its empty thumbnail."""
    record = {"image_id": image_id, "kind": kind, "error": f"{kind} happened",
              "retryable": retryable, "recorded_at": "2024-01-01T00:00:00+0000"}
    touch(layout.failure_path(results, image_id), json.dumps(record).encode())
    touch(layout.thumb_path(results, image_id, TAG))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """a: done; b: downloaded only; c: failed for good; d: failed for now; e: temp files; f: new."""
    out = tmp_path / "results"
    touch(layout.thumb_path(out, "a", TAG), b"jpeg")
    touch(layout.feature_path(out, "a", TAG), b"row")
    touch(layout.thumb_path(out, "b", TAG), b"jpeg")
    write_failure(out, "c", "http_status", retryable=False)
    touch(layout.feature_path(out, "c", TAG), b"row")
    write_failure(out, "d", "timeout", retryable=True)
    touch(layout.feature_path(out, "d", TAG), b"row")
    touch(str(Path(layout.thumb_path(out, "e", TAG)).with_name(".e.img")), b"jpeg")
    touch(str(Path(layout.thumb_path(out, "e", TAG)).with_name(".e.img.123.abcd1234.tmp")), b"jp")
    touch(str(Path(layout.feature_path(out, "e", TAG)).with_name(".e.parquet")), b"row")
    write_failure(out, "zzz", "http_status", retryable=True)  # not in the catalog
    return out


def test_empty_results_means_everything_to_do(tmp_path: Path) -> None:
    plan = plan_work(catalog(), tmp_path / "results", tag=TAG, batch_size=4)
    assert plan.catalog_size == 6
    assert plan.fetch == list(IDS)
    assert plan.measure == list(IDS)
    assert plan.failed_kept == {} and plan.failed_retried == {}
    assert [members(b) for b in plan.batches] == [("a", "b", "c", "d"), ("e", "f")]
    assert [b.number for b in plan.batches] == [1, 2]


def test_files_on_disk_are_skipped(results: Path) -> None:
    plan = plan_work(catalog(), results, tag=TAG, batch_size=2)
    assert plan.fetch == ["d", "e", "f"]
    assert plan.measure == ["b", "d", "e", "f"]
    assert set(plan.failed_kept) == {"c"}
    assert plan.failed_kept["c"] == FailureRecord("c", "http_status", "http_status happened",
                                                  False)
    assert set(plan.failed_retried) == {"d"}
    assert [members(b) for b in plan.batches] == [("b", "d"), ("e", "f")]
    first = plan.batches[0]
    assert first.fetch_ids == ("d",)
    assert first.measure_ids == ("b", "d")


def test_empty_files_count_as_present(tmp_path: Path) -> None:
    results = tmp_path / "results"
    touch(layout.thumb_path(results, "a", TAG))
    touch(layout.feature_path(results, "a", TAG))
    plan = plan_work(catalog(("a",)), results, tag=TAG, batch_size=10)
    assert plan.fetch == [] and plan.measure == [] and plan.batches == []


def test_temporary_files_are_ignored(results: Path) -> None:
    thumbs = layout.stage_dir(layout.THUMBS, TAG)
    assert "e" not in present_ids(results, thumbs, layout.THUMB_SUFFIX)
    assert "e" not in present_ids(results, layout.stage_dir(layout.FEATURES, TAG),
                                  layout.FEATURE_SUFFIX)
    assert present_ids(results, thumbs, layout.THUMB_SUFFIX) == {"a", "b", "c", "d", "zzz"}


def test_retry_failed_redoes_permanent_failures(results: Path) -> None:
    plan = plan_work(catalog(), results, tag=TAG, batch_size=10, retry_failed=True)
    assert plan.fetch == ["c", "d", "e", "f"]
    assert plan.measure == ["b", "c", "d", "e", "f"]
    assert plan.failed_kept == {}
    assert set(plan.failed_retried) == {"c", "d"}


def test_failure_record_written_by_the_batch_is_understood(tmp_path: Path) -> None:
    results = tmp_path / "results"
    record_failure(str(results), "a", "not_image", "bytes are HTML", False, TAG)
    record_failure(str(results), "b", "connection", "refused", True, TAG)
    assert read_failure(layout.failure_path(results, "a")) == FailureRecord(
        "a", "not_image", "bytes are HTML", False)
    plan = plan_work(catalog(("a", "b")), results, tag=TAG, batch_size=10)
    assert plan.fetch == ["b"]
    assert plan.measure == ["a", "b"]
    assert set(plan.failed_kept) == {"a"}


def test_unreadable_failure_record_is_ignored(tmp_path: Path) -> None:
    results = tmp_path / "results"
    touch(layout.failure_path(results, "a"), b"{not json")
    touch(layout.failure_path(results, "b"), json.dumps({"image_id": "b"}).encode())
    assert read_failure(layout.failure_path(results, "a")) is None
    assert read_failure(layout.failure_path(results, "b")) is None
    assert read_failure(layout.failure_path(results, "missing")) is None
    plan = plan_work(catalog(("a", "b")), results, tag=TAG, batch_size=10)
    assert plan.failed_kept == {} and plan.failed_retried == {}
    assert plan.fetch == ["a", "b"]


def test_only_restricts_the_work(results: Path) -> None:
    plan = plan_work(catalog(), results, tag=TAG, batch_size=10, only={"f", "b", "not-in-catalog"})
    assert plan.catalog_size == 6
    assert plan.fetch == ["f"]
    assert plan.measure == ["b", "f"]
    assert [members(b) for b in plan.batches] == [("b", "f")]
    assert plan.failed_retried == {}

    kept = plan_work(catalog(), results, tag=TAG, batch_size=10, only={"c"})
    assert kept.fetch == [] and kept.measure == [] and kept.batches == []
    assert set(kept.failed_kept) == {"c"}

    retried = plan_work(catalog(), results, tag=TAG, batch_size=10, only={"d"})
    assert retried.fetch == ["d"] and retried.measure == ["d"]


def test_make_batches_keeps_catalog_order_and_sizes() -> None:
    order = [f"i{n:02d}" for n in range(10)]
    download = {"i07", "i01", "i03", "i09"}
    features = {"i05", "i03", "i00"}
    batches = make_batches(order, download, features, batch_size=2)
    assert [members(b, order) for b in batches] == [("i00", "i01"), ("i03", "i05"), ("i07", "i09")]
    assert [b.number for b in batches] == [1, 2, 3]
    assert batches[1].fetch_ids == ("i03",)
    assert batches[1].measure_ids == ("i03", "i05")
    assert make_batches(order, set(), set(), batch_size=2) == []
    one = make_batches(order, set(order), set(order), batch_size=100)
    assert len(one) == 1 and members(one[0], order) == tuple(order)


def test_batch_keys_follow_members() -> None:
    order = ["a", "b", "c", "d"]
    first = make_batches(order, {"a", "b"}, {"a", "b"}, batch_size=2)[0]
    again = make_batches(order, {"b", "a"}, {"a", "b"}, batch_size=2)[0]
    other_members = make_batches(order, {"a", "c"}, {"a", "c"}, batch_size=2)[0]
    other_stage = make_batches(order, {"a", "b"}, {"a"}, batch_size=2)[0]
    assert first.key == again.key
    assert first.key.startswith("00001-")
    assert len({first.key, other_members.key, other_stage.key}) == 3
    moved = Batch(number=2, fetch_ids=("a",), measure_ids=())
    swapped = Batch(number=2, fetch_ids=(), measure_ids=("a",))
    assert moved.key != swapped.key
    assert moved.key.startswith("00002-")


def test_attempts_on_disk_reads_the_highest_attempt_of_each_work() -> None:
    keys = ["00001-abc", "00001-abc-2", "00001-abc-3", "00002-def", "00003-fed-7",
            "not-a-key-x", "table", "00004"]
    assert attempts_on_disk(keys) == {"00001-abc": 3, "00002-def": 1, "00003-fed": 7}
    # A gap (a manifest removed by hand) never brings back a key that exists.
    assert attempts_on_disk(["00001-abc", "00001-abc-3"]) == {"00001-abc": 3}


def test_repeated_work_gets_a_new_key_each_time(tmp_path: Path) -> None:
    """The same images missing again make the same work; its key moves past every manifest."""
    results = tmp_path / "results"
    seen = []
    for _ in range(4):
        plan = plan_work(catalog(), results, tag=TAG, batch_size=4)
        keys = [b.key for b in plan.batches]
        assert [b.work_key for b in plan.batches] == [k[:18] for k in keys]
        assert not set(keys) & set(seen)
        seen += keys
        for key in keys:
            touch(f"{results}/{layout.BATCHES}/{key}.json", b"{}")
            touch(f"{results}/{layout.BATCHES}/{key}.parquet", b"")
    assert [b.attempt for b in plan.batches] == [4, 4]
    assert plan.batches[0].key == plan.batches[0].work_key + "-4"
    assert sorted(layout.manifest_keys(results)) == sorted(seen)


def test_a_batch_without_its_manifest_keeps_its_key(tmp_path: Path) -> None:
    """A killed job wrote no manifest: the next plan of the same work reuses its key."""
    results = tmp_path / "results"
    first = plan_work(catalog(), results, tag=TAG, batch_size=6).batches[0]
    touch(f"{results}/{layout.BATCHES}/{first.key}.parquet", b"")
    touch(f"{results}/{layout.BATCHES}/.{first.key}.json.123.tmp", b"{")
    again = plan_work(catalog(), results, tag=TAG, batch_size=6).batches[0]
    assert again.key == first.key and again.attempt == 1


def test_a_manifest_of_other_work_changes_no_key(tmp_path: Path) -> None:
    results = tmp_path / "results"
    first = plan_work(catalog(), results, tag=TAG, batch_size=6).batches[0]
    touch(f"{results}/{layout.BATCHES}/00001-000000000000.json", b"{}")
    touch(f"{results}/{layout.BATCHES}/00002-{first.key[6:]}.json", b"{}")
    assert plan_work(catalog(), results, tag=TAG, batch_size=6).batches[0].key == first.key


def test_requested_image_ids_from_argv() -> None:
    ids = {"x1", "x2", "x3"}
    x1 = layout.feature_path("results", "x1", TAG)
    argv = ["snakemake", "--cores", "2", x1,
            layout.thumb_path("elsewhere", "x2", TAG).removeprefix("elsewhere/"),
            layout.feature_path("results", "unknown", TAG),
            "results/feature_table.parquet", "all", "--config", "catalog=x3.csv"]
    assert requested_image_ids(argv, ids) == {"x1", "x2"}
    assert requested_image_ids(["snakemake", "--cores", "2"], ids) is None
    assert requested_image_ids(["snakemake", layout.feature_path("results", "nope", TAG)],
                               ids) is None
    # The first token is the program itself.
    assert requested_image_ids([x1], ids) is None


def test_the_plan_document_counts_each_stage(results: Path) -> None:
    plan = plan_work(catalog(), results, tag=TAG, batch_size=2)
    document = plan.document()
    assert (document["catalog_images"], document["fetch"]["images"],
            document["measure"]["images"]) == (6, 3, 4)
    assert document["failures"] == {"kept": 1, "retried": 1}
    assert document["batches"] == [{"key": b.key, "fetch": len(b.fetch_ids),
                                    "measure": len(b.measure_ids)} for b in plan.batches]
    assert len(document["batches"]) == 2
    assert json.loads(json.dumps(document)) == document
    empty = plan_work(catalog(), results, tag=TAG, batch_size=2, only={"a"}).document()
    assert empty["failures"]["retried"] == 0
    assert empty["batches"] == []


def full_plan() -> WorkPlan:
    """A plan with every count of the document set, each to a number of its own."""
    ids = [f"i{n:02d}" for n in range(40)]
    return WorkPlan(
        catalog_size=40, fetch=ids[:9], measure=ids[:11],
        failed_kept={i: FailureRecord(i, "http_status", "HTTP 404", False) for i in ids[30:32]},
        failed_retried={i: FailureRecord(i, "timeout", "slow", True) for i in ids[32:35]},
        other_settings=ids[:4], changed_urls=ids[4:9],
        other_version=dict.fromkeys(ids[9:11], "2") | {ids[11]: "1"}, feature_version="3",
        damaged=[Damage(f"results/thumbs/{i}.jpg", "cut") for i in ids[20:26]],
        batches=make_batches(ids, set(ids[:9]), set(ids[:11]), 7), table_reason="no table yet")


def test_the_plan_line_wording() -> None:
    _, line = full_plan().describe()
    assert line == (
        "thumbfeat plan: 40 images in the catalog; fetch: 9 images (5 with a changed URL; "
        "4 made with other thumbnail settings); measure: 11 images (3 measured at version 1, 2, "
        "now 3); failures: 2 kept, 3 to retry; 2 batches; quarantine: 6 damaged files, then "
        "build again; table: will be rebuilt (no table yet)")
    forced = dataclasses.replace(full_plan(), forced="refetch", changed_urls=[], other_settings=[],
                     other_version={}, failed_retried={}, damaged=[], table_reason="",
                     batches=full_plan().batches[:1])
    assert forced.describe()[1] == (
        "thumbfeat plan: 40 images in the catalog; fetch: 9 images (all of them again: "
        "refetch=true); measure: 11 images; failures: 2 kept; 1 batch; table: up to date")


def count_paths(document: dict[str, Any], path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Where a plan document holds a count (a whole number)."""
    found = set()
    for key, value in document.items():
        if isinstance(value, dict):
            found |= count_paths(value, (*path, key))
        elif isinstance(value, int) and not isinstance(value, bool):
            found.add((*path, key))
    return found


def test_the_line_is_written_from_the_document_alone() -> None:
    plan = full_plan()
    document, line = plan.describe()
    assert document == plan.document()
    assert line == plan_line(document)
    counts = count_paths(document) - {("format",)}
    assert len(counts) == 9
    # Any count changed in the document shows in the line: the line has no other source.
    for path in counts:
        changed = copy.deepcopy(document)
        *parents, last = path
        holder = changed
        for key in parents:
            holder = holder[key]
        holder[last] = 987
        assert "987" in plan_line(changed), path
    assert "987" not in line
    changed = copy.deepcopy(document)
    changed["batches"] *= 7
    changed["measure"].update(other_versions=["0.5"], feature_version="9")
    assert "; 14 batches;" in plan_line(changed)
    assert "measured at version 0.5, now 9" in plan_line(changed)


def test_table_rebuild_reason_follows_snakemake_rules(tmp_path: Path) -> None:
    table, snapshot = tmp_path / "table.parquet", tmp_path / "snap.parquet"
    shard = tmp_path / "features" / "ab"
    shard.mkdir(parents=True)
    batch = make_batches(["a"], {"a"}, {"a"}, 10)
    assert table_rebuild_reason(table, snapshot, [], [shard]) == "no table yet"
    table.write_bytes(b"t")
    assert table_rebuild_reason(table, snapshot, [], [shard]) == "the catalog selection changed"
    snapshot.write_bytes(b"s")
    os.utime(shard, (1, 1))
    assert table_rebuild_reason(table, snapshot, [], [shard]) == ""
    assert table_rebuild_reason(table, snapshot, batch, [shard]) == "1 batch to run"
    assert table_rebuild_reason(table, snapshot, batch * 2, [shard]) == "2 batches to run"
    # The oldest output counts: a shard newer than the snapshot but older than the table.
    os.utime(snapshot, (100, 100))
    os.utime(shard, (200, 200))
    assert (table_rebuild_reason(table, snapshot, [], [shard])
            == "feature files changed since it was written")
    plan = plan_work(catalog(), tmp_path / "results", tag=TAG, batch_size=2)
    assert plan.document()["table"] is None
    plan.table_reason = ""
    assert plan.document()["table"] == {"rebuild": False, "reason": ""}
    plan.table_reason = "no table yet"
    assert plan.document()["table"] == {"rebuild": True, "reason": "no table yet"}


def test_auto_batch_size_gives_each_slot_whole_rounds() -> None:
    from thumbfeat.plan import AUTO_BATCH_MAX, AUTO_BATCH_MIN, ONE_ROUND_MAX, auto_batch_size

    assert auto_batch_size(10_000, 2) == 2500  # two rounds of two jobs
    assert auto_batch_size(1000, 2) == 500  # small work: one round, a job per slot
    assert auto_batch_size(2 * ONE_ROUND_MAX, 2) == ONE_ROUND_MAX
    assert auto_batch_size(2 * ONE_ROUND_MAX + 4, 2) == (2 * ONE_ROUND_MAX + 4) // 4
    assert auto_batch_size(10_000, 1) == 5000
    assert auto_batch_size(15, 2) == AUTO_BATCH_MIN  # tiny catalogs make one batch
    size = auto_batch_size(1_000_000, 8)
    assert size <= AUTO_BATCH_MAX
    batches = -(-1_000_000 // size)
    assert batches % 8 == 0 or batches == -(-1_000_000 // AUTO_BATCH_MAX)
    assert auto_batch_size(0, 4) == AUTO_BATCH_MIN


def test_plan_without_a_batch_size_sizes_batches_for_the_slots(tmp_path: Path) -> None:
    catalog = Catalog(source=tmp_path / "c.csv", ids=tuple(f"i{n:04d}" for n in range(1000)),
                      urls=tuple(f"http://h/{n}.jpg" for n in range(1000)))
    plan = plan_work(catalog, tmp_path / "results", tag=TAG, batch_size=None, slots=2)
    assert [len(members(b, catalog.ids)) for b in plan.batches] == [500, 500]
    plan = plan_work(catalog, tmp_path / "results", tag=TAG, batch_size=None, slots=1)
    assert [len(members(b, catalog.ids)) for b in plan.batches] == [1000]


def test_report_warning_says_when_a_report_would_hold_no_figures(tmp_path: Path) -> None:
    results = tmp_path / "results"
    table = results / "feature_table.parquet"
    table.parent.mkdir()
    table.write_bytes(b"table")
    assert report_warning(["--cores", "2"], results, table) is None
    for argv in (["--report", "r.html"], ["--report=r.html", "all"]):
        message = report_warning(argv, results, table)
        assert message is not None and "unless its target is report_figures" in message
    argv = ["report_figures", "--report", "r.html"]
    missing = report_warning(argv, results, table)
    assert missing is not None and "figures are missing" in missing
    for name in layout.REPORT_OUTPUTS.values():
        path = results / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix:
            path.write_bytes(b"x")
        else:
            path.mkdir()
    assert report_warning(argv, results, table) is None
    later = max(p.stat().st_mtime for p in results.rglob("*")) + 10
    os.utime(table, (later, later))
    stale = report_warning(argv, results, table)
    assert stale is not None and "older than" in stale


def test_thumbnails_of_other_settings_are_counted_to_fetch_again(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for image_id in ("a", "b", "c"):
        touch(layout.thumb_path(results, image_id, "256px-webp-q80"), b"webp")
        touch(layout.feature_path(results, image_id, "256px-webp-q80"), b"row")
    touch(layout.thumb_path(results, "c", TAG), b"jpeg")
    touch(layout.feature_path(results, "c", TAG), b"row")
    plan = plan_work(catalog(("a", "b", "c", "d")), results, tag=TAG, batch_size=10)
    assert plan.fetch == ["a", "b", "d"]
    assert plan.other_settings == ["a", "b"]
    assert plan.measure == ["a", "b", "d"]
    assert plan.document()["fetch"] == {"images": 3, "changed_url": 0, "other_settings": 2,
                                        "forced": False}
    # Back to the other settings: their files are all there, nothing to do.
    back = plan_work(catalog(("a", "b", "c")), results, tag="256px-webp-q80", batch_size=10)
    assert (back.fetch, back.measure, back.other_settings) == ([], [], [])
    assert back.document()["fetch"]["other_settings"] == 0


def test_plan_keeps_urls_of_the_images_it_works_on_only(results: Path) -> None:
    plan = plan_work(catalog(), results, tag=TAG, batch_size=2)
    assert set(plan.urls) == set(plan.fetch) | set(plan.measure) == {"b", "d", "e", "f"}
    assert all(url.endswith(f"{i}.jpg") for i, url in plan.urls.items())


def inputs_of(rows: dict[str, tuple[str, str, str | None]]) -> RowInputs:
    """Row inputs as the last table would give them: id -> (status, version, source URL)."""
    inputs = RowInputs(from_table=True)
    inputs.add(pa.table({"image_id": list(rows), "status": [r[0] for r in rows.values()],
                         "feature_version": [r[1] for r in rows.values()],
                         "source_url": [None if r[2] is None else recorded_url(r[2])
                                        for r in rows.values()]}))
    return inputs


def test_stale_rows_are_measured_again_and_changed_urls_fetched_again(results: Path) -> None:
    # a is done at version 2 from its catalog URL; b (thumbnail only) moved to a new URL.
    inputs = inputs_of({"a": ("ok", "2", "http://h/a.jpg"), "b": ("ok", "3", "http://old/b"),
                        "c": ("failed", "1", "http://h/c.jpg")})
    plan = plan_work(catalog(), results, tag=TAG, batch_size=10,
                     rebuilds=Rebuilds(feature_version="3", row_inputs=inputs))
    assert plan.other_version == {"a": "2"}
    assert plan.changed_urls == ["b"]
    assert plan.fetch == ["b", "d", "e", "f"]
    assert plan.measure == ["a", "b", "d", "e", "f"]
    document = plan.document()
    assert document["fetch"] == {"images": 4, "changed_url": 1, "other_settings": 0,
                                 "forced": False}
    assert document["measure"] == {"images": 5, "other_version": 1, "other_versions": ["2"],
                                   "feature_version": "3", "forced": False}
    # Measured again, the row is current: nothing more.
    inputs.add(pa.table({"image_id": ["a"], "status": ["ok"], "feature_version": ["3"]}))
    plan = plan_work(catalog(), results, tag=TAG, batch_size=10,
                     rebuilds=Rebuilds(feature_version="3", row_inputs=inputs))
    assert plan.other_version == {}


def test_a_failure_whose_url_changed_is_retried(tmp_path: Path) -> None:
    results = tmp_path / "results"
    record_failure(str(results), "a", "http_status", "HTTP 404", False, TAG, url="http://old/a.jpg")
    record_failure(str(results), "b", "http_status", "HTTP 404", False, TAG, url="http://h/b.jpg")
    record_failure(str(results), "c", "http_status", "HTTP 404", False, TAG)  # no URL recorded
    plan = plan_work(catalog(("a", "b", "c")), results, tag=TAG, batch_size=10)
    assert set(plan.failed_retried) == {"a"}
    assert set(plan.failed_kept) == {"b", "c"}
    assert plan.fetch == ["a"]


def test_force_switches(results: Path) -> None:
    plan = plan_work(catalog(), results, tag=TAG, batch_size=10, rebuilds=Rebuilds(remeasure=True))
    assert plan.measure == list(IDS)
    assert plan.fetch == ["d", "e", "f"]
    assert plan.document()["measure"] == {"images": 6, "other_version": 0, "other_versions": [],
                                          "feature_version": "", "forced": True}
    plan = plan_work(catalog(), results, tag=TAG, batch_size=10, rebuilds=Rebuilds(refetch=True),
                     only={"a", "b"})
    assert plan.fetch == plan.measure == ["a", "b"]
    assert plan.document()["fetch"] == {"images": 2, "changed_url": 0, "other_settings": 0,
                                        "forced": True}


def test_damaged_files_found_by_the_plan_are_built_again(tmp_path: Path) -> None:
    results = tmp_path / "results"
    jpeg = b"\xff\xd8\xff" + b"\x00" * 20
    for image_id in ("a", "b", "c"):
        touch(layout.thumb_path(results, image_id, TAG), jpeg)
        touch(layout.feature_path(results, image_id, TAG), b"PAR1" + b"\x00" * 20 + b"PAR1")
    touch(layout.thumb_path(results, "b", TAG), b"<html>not found</html>")
    touch(layout.feature_path(results, "c", TAG), b"PAR1" + b"\x00" * 96)
    touch(layout.failure_path(results, "a"), b"{not json")
    plan = plan_work(catalog(("a", "b", "c")), results, tag=TAG, batch_size=10,
                     rebuilds=Rebuilds(check_files=True))
    assert sorted(d.path for d in plan.damaged) == sorted([
        layout.failure_path(results, "a"), layout.thumb_path(results, "b", TAG),
        layout.feature_path(results, "c", TAG)])
    # a: its record is lost, so it is tried again; b: fetched again; c: measured again.
    assert plan.fetch == ["a", "b"]
    assert plan.measure == ["a", "c"]
    assert plan.document()["quarantine"] == 3
    # The plan moves nothing: that is for the run, when it starts.
    assert Path(layout.thumb_path(results, "b", TAG)).exists()
    # Without the check (a table exists) only the unreadable record is found.
    plan = plan_work(catalog(("a", "b", "c")), results, tag=TAG, batch_size=10)
    assert [d.path for d in plan.damaged] == [layout.failure_path(results, "a")]


def test_a_forced_run_after_another_is_new_work(results: Path) -> None:
    def keys(salt: str, **force: bool) -> list[str]:
        plan = plan_work(catalog(), results, tag=TAG, batch_size=10,
                         rebuilds=Rebuilds(force_salt=salt, **force))
        return [b.key for b in plan.batches]

    assert keys("1", remeasure=True) != keys("2", remeasure=True)
    assert keys("1", refetch=True) != keys("2", refetch=True)
    # Unforced, the same work keeps its key whatever the salt (a finished batch stays finished).
    assert keys("1") == keys("2")
