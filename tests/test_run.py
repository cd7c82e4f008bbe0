"""Tests for thumbfeat.run: the run's context of a main process and of a cluster job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from thumbfeat import handover, layout
from thumbfeat.catalog import CatalogError
from thumbfeat.config import ConfigError, validated_config
from thumbfeat.failures import record_failure
from thumbfeat.plan import PLAN_JSON_VAR, plan_line
from thumbfeat.run import (
    RUN_ERRORS,
    SnakemakeFacts,
    UnknownImageError,
    build_run,
    job_slots,
)

from tests.support import REPO, TAG, write_catalog

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
DEFAULTS = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
IDS = [f"img{i:02d}" for i in range(10)]
MAIN = SnakemakeFacts(cores=4, nodes=None, is_job=False, argv=("snakemake",))


def config_for(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    catalog = tmp_path / "catalog.csv"
    if not catalog.exists():
        write_catalog(catalog, [(i, f"http://127.0.0.1:9/{i}.jpg") for i in IDS])
    return validated_config({**DEFAULTS, "catalog": str(catalog), **changes}, SCHEMA)


def results_of(tmp_path: Path) -> str:
    return str(tmp_path / "results")


def test_a_batch_is_handed_the_failure_records_its_images_had(tmp_path: Path) -> None:
    results = results_of(tmp_path)
    record_failure(results, "img05", "http_status", "HTTP 503", True, TAG, "http://x/img05.jpg")
    run = build_run(config_for(tmp_path), REPO, MAIN, {}, results=results)
    assert [r for b in run.plan.batches for r in run.failure_records(b)] == ["img05"]


def test_main_process_plans_from_the_disk(tmp_path: Path) -> None:
    results = results_of(tmp_path)
    done = Path(layout.thumb_path(results, "img03", TAG))
    done.parent.mkdir(parents=True)
    done.write_bytes(b"\xff\xd8\xff jpeg")  # a JPEG by its first bytes
    run = build_run(config_for(tmp_path), REPO, MAIN, {}, results=results)
    assert run.handed is None
    assert run.catalog is not None and list(run.catalog.ids) == IDS
    assert run.plan.fetch == [i for i in IDS if i != "img03"]
    assert run.plan.measure == IDS
    assert run.plan_document == run.plan.document()
    assert run.messages == [plan_line(run.plan_document)]
    assert run.plan_document["table"] == {"rebuild": True, "reason": "no table yet"}
    told: list[tuple[str, str]] = []

    class Logger:
        def info(self, text: str) -> None:
            told.append(("info", text))

        def warning(self, text: str) -> None:
            told.append(("warning", text))

    run.warnings.append("a warning")
    run.announce(Logger())
    assert told == [("info", plan_line(run.plan_document)), ("warning", "a warning")]
    # 4 cores, one thread per batch job: 4 slots; ten images are one batch (batches hold at least
    # 100 images), which then has the whole of each host's limits.
    assert run.slots == 4
    assert len(run.plan.batches) == 1
    assert run.fetch_settings["rate_share"] == 1.0
    split = build_run(config_for(tmp_path, batch_size=3), REPO, MAIN, {}, results=results)
    assert len(split.plan.batches) == 4
    assert split.fetch_settings["rate_share"] == pytest.approx(1 / 4)
    assert run.feature_table == layout.feature_table_path(results)
    assert run.catalog_snapshot == layout.catalog_snapshot_path(results, run.catalog_digest)
    assert run.batch_manifest(run.plan.batches[0]).startswith(f"{results}/batches/00001-")


def test_the_plan_document_is_written_where_the_environment_asks(tmp_path: Path) -> None:
    results = results_of(tmp_path)
    wanted = tmp_path / "out" / "plan.json"
    # A failure record that does not parse: the plan quarantines it, and the run warns about it.
    unreadable = Path(layout.failure_path(results, "img01"))
    unreadable.parent.mkdir(parents=True)
    unreadable.write_text("{not json")
    run = build_run(config_for(tmp_path), REPO, MAIN, {PLAN_JSON_VAR: str(wanted)},
                    results=results)
    written = json.loads(wanted.read_text())
    assert written == {**run.plan_document, "warnings": run.warnings}
    assert (written["fetch"]["images"], written["quarantine"]) == (len(IDS), 1)
    assert len(written["warnings"]) == 1 and str(unreadable) in written["warnings"][0]
    # A place it cannot be written is one clear error naming the variable.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(RUN_ERRORS) as error:
        build_run(config_for(tmp_path), REPO, MAIN, {PLAN_JSON_VAR: str(blocker / "plan.json")},
                  results=results)
    assert str(error.value).startswith(f"{PLAN_JSON_VAR}={blocker / 'plan.json'}: ")
    # Without the variable nothing is written; Snakemake's working folder is left alone.
    wanted.unlink()
    build_run(config_for(tmp_path), REPO, MAIN, {}, results=results)
    assert not wanted.exists()


def test_per_image_targets_on_the_command_line_scope_the_plan(tmp_path: Path) -> None:
    results = results_of(tmp_path)
    target = layout.feature_path(results, "img05", TAG)
    facts = SnakemakeFacts(cores=1, nodes=None, is_job=False, argv=("snakemake", target))
    run = build_run(config_for(tmp_path), REPO, facts, {}, results=results)
    assert run.plan.measure == ["img05"]
    assert run.plan.table_reason is None


def test_cluster_job_follows_the_handed_plan_without_reading_the_catalog(tmp_path: Path) -> None:
    results = results_of(tmp_path)
    main = build_run(config_for(tmp_path), REPO,
                     SnakemakeFacts(cores=2, nodes=20, is_job=False), {}, results=results)
    environ: dict[str, str] = {}
    main.on_start(non_local_exec=True, environ=environ)
    handed_path = environ[handover.ENV_VAR]
    assert Path(handed_path).exists()
    # The job runs elsewhere: the catalog file is gone there, and the disk has moved on.
    (tmp_path / "catalog.csv").unlink()
    Path(layout.thumb_path(results, "img00", TAG)).parent.mkdir(parents=True, exist_ok=True)
    Path(layout.thumb_path(results, "img00", TAG)).write_bytes(b"done meanwhile")
    job_config = {**main.config}
    job_config["catalog"] = str(tmp_path)  # any existing path: the job never reads it
    # A job does not plan, so it writes no plan document even when the variable is passed on.
    job_plan = tmp_path / "job-plan.json"
    job = build_run(job_config, REPO, SnakemakeFacts(cores=1, nodes=None, is_job=True),
                    {**environ, PLAN_JSON_VAR: str(job_plan)}, results=results)
    assert job.plan_document is None and not job_plan.exists()
    assert job.catalog is None
    assert job.plan.batches == main.plan.batches
    assert [b.key for b in job.plan.batches] == [b.key for b in main.plan.batches]
    assert job.slots == main.slots == 20
    assert job.catalog_digest == main.catalog_digest
    assert job.fetch_settings["rate_share"] == main.fetch_settings["rate_share"]
    assert job.messages == []
    assert job.url_of_image("img00", layout.shard_of("img00")) == "http://127.0.0.1:9/img00.jpg"
    main.on_success(environ)
    assert not Path(handed_path).exists()
    assert handover.ENV_VAR not in environ


def test_a_main_process_ignores_a_stale_handover_variable(tmp_path: Path) -> None:
    environ = {handover.ENV_VAR: str(tmp_path / "plan-gone.json")}
    run = build_run(config_for(tmp_path), REPO, MAIN, environ, results=results_of(tmp_path))
    assert run.handed is None
    run.on_start(non_local_exec=False, environ=environ)  # local runs hand nothing over
    assert environ[handover.ENV_VAR].endswith("plan-gone.json")


def test_a_job_whose_handed_plan_is_gone_gets_a_clear_error(tmp_path: Path) -> None:
    environ = {handover.ENV_VAR: str(tmp_path / "plan-gone.json")}
    facts = SnakemakeFacts(cores=1, nodes=None, is_job=True)
    with pytest.raises(handover.HandoverError, match="is gone"):
        build_run(config_for(tmp_path), REPO, facts, environ, results=results_of(tmp_path))


def test_url_of_image_refuses_unknown_ids_and_wrong_shards(tmp_path: Path) -> None:
    run = build_run(config_for(tmp_path), REPO, MAIN, {}, results=results_of(tmp_path))
    assert run.url_of_image("img07", layout.shard_of("img07")) == "http://127.0.0.1:9/img07.jpg"
    with pytest.raises(UnknownImageError, match="not in the catalog"):
        run.url_of_image("nope", layout.shard_of("nope"))
    wrong = "00" if layout.shard_of("img07") != "00" else "01"
    with pytest.raises(UnknownImageError, match="lives in shard"):
        run.url_of_image("img07", wrong)


def test_input_errors_are_among_the_run_errors(tmp_path: Path) -> None:
    with pytest.raises(RUN_ERRORS) as caught:
        build_run(config_for(tmp_path, catalog=str(tmp_path / "missing.csv")), REPO, MAIN, {})
    assert "missing.csv" in str(caught.value)
    (tmp_path / "bad.csv").write_text("image_id,url\n,http://h/x.jpg\n")
    with pytest.raises(CatalogError):
        build_run(config_for(tmp_path, catalog=str(tmp_path / "bad.csv")), REPO, MAIN, {},
                  results=results_of(tmp_path))
    config = config_for(tmp_path, download={"header_env": {"Authorization": "TOKEN_VAR"}})
    with pytest.raises(ConfigError, match="TOKEN_VAR"):
        build_run(config, REPO, MAIN, {}, results=results_of(tmp_path))
    build_run(config, REPO, MAIN, {"TOKEN_VAR": "secret"}, results=results_of(tmp_path))


@pytest.mark.parametrize(("cores", "nodes", "threads", "slots"), [
    (8, None, 1, 8), (8, None, 3, 2), (1, None, 4, 1), (None, None, 1, 1), (2, 20, 1, 20),
])
def test_job_slots(cores: int | None, nodes: int | None, threads: int, slots: int) -> None:
    assert job_slots(SnakemakeFacts(cores=cores, nodes=nodes, is_job=False), threads) == slots


def test_threads_above_cores_on_a_cluster_are_warned_about(tmp_path: Path) -> None:
    facts = SnakemakeFacts(cores=2, nodes=10, is_job=False)
    run = build_run(config_for(tmp_path, batch_threads=4), REPO, facts, {},
                    results=results_of(tmp_path))
    assert run.warnings == ["batch_threads=4 is capped at --cores 2; on a cluster, pass "
                            "--cores 4 or more"]
    local = build_run(config_for(tmp_path, batch_threads=4), REPO, MAIN, {},
                      results=results_of(tmp_path))
    assert local.warnings == []


class FakeWorkflow:
    """What a parse reads of Snakemake's workflow object."""

    def __init__(self, cores: int | None, nodes: int | None, main: bool) -> None:
        self._cores, self.nodes, self.is_main_process = cores, nodes, main

    @property
    def cores(self) -> int:
        from snakemake.exceptions import WorkflowError

        if self._cores is None:
            raise WorkflowError("Workflow requires a total number of cores to be defined")
        return self._cores


def test_facts_of_a_workflow_without_cores_or_in_a_job() -> None:
    facts = SnakemakeFacts.of_workflow(FakeWorkflow(None, 20, main=True), ["snakemake"])
    assert (facts.cores, facts.nodes, facts.is_job) == (None, 20, False)
    job = SnakemakeFacts.of_workflow(FakeWorkflow(1, None, main=False), ["python", "-m"])
    assert (job.cores, job.nodes, job.is_job, job.argv) == (1, None, True, ("python", "-m"))


JOB = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from thumbfeat.run import SnakemakeFacts, build_run
run = build_run(json.loads(sys.argv[2]), sys.argv[3],
                SnakemakeFacts(cores=2, nodes=4, is_job=True), os.environ)
print(json.dumps({"results": run.results, "keys": [b.key for b in run.plan.batches],
                  "urls": run.plan.urls, "slots": run.slots, "handed": run.handed is not None}))
"""


def test_a_job_sharing_no_file_system_follows_a_plan_handed_over_in_the_bucket(
        tmp_path: Path, s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With results in a bucket the plan travels as an object under the prefix: a job started in
    an empty working directory, with nothing but the AWS variables and the handover variable,
    follows it; the run removes the object when it succeeds."""
    import json
    import os
    import subprocess
    import sys

    from thumbfeat import storage

    from tests.s3server import ACCESS_KEY, BUCKET, SECRET_KEY

    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    storage.forget_clients()
    main_dir, job_dir = tmp_path / "main", tmp_path / "job"
    main_dir.mkdir()
    job_dir.mkdir()
    monkeypatch.chdir(main_dir)
    write_catalog(tmp_path / "catalog.csv", [(i, f"http://127.0.0.1:9/{i}.jpg") for i in IDS])
    s3.put("handover-test/catalog.csv", (tmp_path / "catalog.csv").read_bytes())
    prefix = "handover-test/run"
    config = config_for(tmp_path, catalog=f"s3://{BUCKET}/handover-test/catalog.csv",
                        results=f"s3://{BUCKET}/{prefix}", batch_size=3)
    facts = SnakemakeFacts(cores=2, nodes=4, is_job=False, argv=("snakemake",))
    for attempt in range(3):
        main = build_run(config, REPO, facts, os.environ)
        assert main.results == f"s3://{BUCKET}/{prefix}"
        environ: dict[str, str] = {}
        main.on_start(True, environ)
        url = environ[handover.ENV_VAR]
        assert url.startswith(f"s3://{BUCKET}/{prefix}/{handover.REMOTE_FOLDER}/plan-")
        # Nothing was handed over through the submitting machine's disk.
        assert not list(main_dir.rglob("plan-*.json"))
        handed = s3.read(url.split("/", 3)[3])
        assert ACCESS_KEY.encode() not in handed and SECRET_KEY.encode() not in handed
        job_env = {"PATH": os.environ["PATH"], handover.ENV_VAR: url,
                   **{k: v for k, v in s3.env.items()}}
        job = subprocess.run([sys.executable, "-c", JOB, str(REPO / "workflow"),
                              json.dumps(config), str(REPO)], cwd=job_dir, env=job_env,
                             capture_output=True, text=True, check=True)
        seen = json.loads(job.stdout)
        assert seen == {"results": main.results, "keys": [b.key for b in main.plan.batches],
                        "urls": main.plan.urls, "slots": main.slots, "handed": True}
        main.on_success(environ)
        assert s3.objects(f"{prefix}/{handover.REMOTE_FOLDER}/") == {}
        assert handover.ENV_VAR not in environ
        # A job finished one batch: the next attempt plans the rest, and hands that over.
        first = main.plan.batches[0]
        for image_id in dict.fromkeys(first.fetch_ids + first.measure_ids):
            s3.put(f"{prefix}/{layout.THUMBS}/{TAG}/{layout.shard_of(image_id)}/{image_id}"
                   f"{layout.THUMB_SUFFIX}", b"")
            s3.put(f"{prefix}/{layout.FEATURES}/{TAG}/{layout.shard_of(image_id)}/{image_id}"
                   f"{layout.FEATURE_SUFFIX}", b"")
        assert len(build_run(config, REPO, facts, os.environ).plan.fetch) == max(
            0, len(IDS) - 3 * (attempt + 1))
    storage.forget_clients()
