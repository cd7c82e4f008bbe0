"""Tests for thumbfeat.handover: the plan a run hands to its cluster jobs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from thumbfeat import handover, layout
from thumbfeat.catalog import Catalog
from thumbfeat.plan import WorkPlan, plan_work

from tests.support import TAG

IDS = tuple(f"img{i:02d}" for i in range(10))


def planned(results: Path) -> WorkPlan:
    catalog = Catalog(source=Path("cat.csv"), ids=IDS, urls=tuple(f"http://h/{i}.jpg" for i in IDS))
    done = Path(layout.thumb_path(results, "img03", TAG))
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_bytes(b"jpeg")
    return plan_work(catalog, results, tag=TAG, batch_size=4)


def test_round_trip_keeps_batches_keys_urls_and_slots(tmp_path: Path) -> None:
    plan = planned(tmp_path / "results")
    handed = handover.decode(handover.encode(plan, "digest123", slots=7))
    assert handed.slots == 7
    assert handed.catalog_digest == "digest123"
    assert handed.plan.batches == plan.batches
    assert [b.key for b in handed.plan.batches] == [b.key for b in plan.batches]
    assert handed.plan.urls == plan.urls
    # img03 is only measured: its URL is handed over as the source its row records.
    assert set(handed.plan.urls) == set(plan.fetch) | {"img03"}
    assert handed.plan.fetch == plan.fetch
    assert handed.plan.measure == plan.measure
    assert handed.plan.catalog_size == 10


def test_jobs_keep_their_plan_while_the_disk_changes(tmp_path: Path) -> None:
    """Planning again after a batch finished renumbers and rekeys; the handed plan does not."""
    results = tmp_path / "results"
    plan = planned(results)
    path = handover.save(tmp_path / "handover", plan, "d", slots=2)
    for image_id in {*plan.batches[0].fetch_ids, *plan.batches[0].measure_ids}:
        for target in (layout.thumb_path(results, image_id, TAG),
                       layout.feature_path(results, image_id, TAG)):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).write_bytes(b"x")
    replanned = planned(results)
    assert [b.key for b in replanned.batches] != [b.key for b in plan.batches]
    assert handover.load(path).plan.batches == plan.batches


def test_jobs_keep_the_attempt_of_the_run_that_submitted_them(tmp_path: Path) -> None:
    """A job of a repeated batch names the manifest its run waits for, not the next one."""
    results = tmp_path / "results"
    first = planned(results)
    for batch in first.batches:
        (results / layout.BATCHES).mkdir(parents=True, exist_ok=True)
        (results / layout.BATCHES / f"{batch.key}.json").write_text("{}")
    repeated = planned(results)
    assert [b.attempt for b in repeated.batches] == [2] * len(first.batches)
    path = handover.save(tmp_path / "handover", repeated, "d", slots=2)
    for batch in repeated.batches:
        (results / layout.BATCHES / f"{batch.key}.json").write_text("{}")
    assert [b.attempt for b in planned(results).batches] == [3] * len(first.batches)
    assert ([b.key for b in handover.load(path).plan.batches]
            == [b.key for b in repeated.batches])


def test_save_names_by_content_and_writes_atomically(tmp_path: Path) -> None:
    plan = planned(tmp_path / "results")
    first = handover.save(tmp_path / "h", plan, "d", slots=2)
    assert first.is_absolute() and first.name.startswith("plan-")
    assert handover.save(tmp_path / "h", plan, "d", slots=2) == first
    assert handover.save(tmp_path / "h", plan, "d", slots=3) != first
    assert sorted(p.name.startswith(".") for p in (tmp_path / "h").iterdir()) == [False, False]


def test_save_prunes_stale_files_of_killed_runs(tmp_path: Path) -> None:
    folder = tmp_path / "h"
    folder.mkdir()
    stale, recent = folder / "plan-old.json", folder / "plan-new.json"
    stale.write_text("{}")
    recent.write_text("{}")
    week_ago = time.time() - handover.STALE_AFTER_S - 60
    os.utime(stale, (week_ago, week_ago))
    handover.save(folder, planned(tmp_path / "results"), "d", slots=1)
    assert not stale.exists()
    assert recent.exists()


def test_missing_or_broken_plan_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(handover.HandoverError, match="is gone"):
        handover.load(tmp_path / "plan-nothing.json")
    broken = tmp_path / "plan-broken.json"
    broken.write_text('{"format": 1, "batches": [')
    with pytest.raises(handover.HandoverError, match="cannot be read"):
        handover.load(broken)
    other = tmp_path / "plan-other.json"
    other.write_text('{"format": 99}')
    with pytest.raises(handover.HandoverError, match="unknown format"):
        handover.load(other)


def test_only_jobs_follow_a_handed_plan() -> None:
    environ = {handover.ENV_VAR: "/somewhere/plan-x.json"}
    assert handover.handed_plan_path(environ, is_job=True) == "/somewhere/plan-x.json"
    # A user's shell may still carry the variable; a main process plans afresh.
    assert handover.handed_plan_path(environ, is_job=False) is None
    assert handover.handed_plan_path({}, is_job=True) is None


def test_publish_and_withdraw(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    path = handover.save(tmp_path, planned(tmp_path / "results"), "d", slots=1)
    handover.publish(path, environ)
    assert environ[handover.ENV_VAR] == str(path)
    handover.withdraw(str(path), environ)
    assert not path.exists()
    assert handover.ENV_VAR not in environ
    handover.withdraw(None, environ)
