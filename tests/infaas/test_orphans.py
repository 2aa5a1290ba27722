"""The orphan sweep (``infaas.orphans``): what it removes, what it marks, and what it must leave alone.

The sweep takes ``now`` as an argument, so "older than the grace period" is set by the test rather than
waited for; the files and rows are real (SQLite catalog, local store).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from infaas import orphans
from infaas.db.models import Job, ModelStatus
from infaas.model_store.local import TEMP_PREFIX, LocalModelStore
from infaas.services import Services
from tests.factories import TASK, add_model_row, mlp_model, profiles, seed_model

GRACE_S = 60.0
MODEL = mlp_model().SerializeToString()


def later() -> datetime:
    """A moment past the grace period of everything written so far."""
    return datetime.now(UTC) + timedelta(seconds=GRACE_S + 1)


def test_files_without_a_row_go_after_the_grace_period_and_the_log_says_so(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    seed_model(services, "kept", MODEL, task=TASK)
    services.store.put_bytes("models/ghost/model.onnx", MODEL)
    services.store.put_bytes("models/ghost/variants/cpu-fp32.onnx", MODEL)
    services.store.put_bytes("jobs/no-such-job/input.npy", b"x")
    services.metadata.add_job(Job(id="job-1", owner="local", model_name="kept", input_key="jobs/job-1/input.npy"))
    services.store.put_bytes("jobs/job-1/input.npy", b"x")

    assert orphans.sweep(services.metadata, services.store, GRACE_S).empty  # all younger than the grace
    with caplog.at_level(logging.WARNING, logger="infaas.orphans"):
        report = orphans.sweep(services.metadata, services.store, GRACE_S, now=later())
    assert report.orphan_prefixes == ["models/ghost/", "jobs/no-such-job/"]
    assert services.store.list("models/") == ["models/kept/model.onnx"]
    assert services.store.list("jobs/") == ["jobs/job-1/input.npy"]
    assert "removed 2 orphan file(s) under models/ghost/ (no model row" in caplog.text
    assert orphans.sweep(services.metadata, services.store, GRACE_S, now=later()).empty  # nothing left to do


def test_a_registration_that_stopped_before_its_commit_is_removed_after_the_grace_period(services: Services) -> None:
    add_model_row(services, "half", MODEL, task=TASK, status=ModelStatus.REGISTERING)
    services.store.put_bytes("models/half/model.onnx", MODEL)
    assert orphans.sweep(services.metadata, services.store, GRACE_S).empty  # may still be running
    assert services.metadata.model_exists("half")
    report = orphans.sweep(services.metadata, services.store, GRACE_S, now=later())
    assert report.abandoned_registrations == ["half"]
    assert not services.metadata.model_exists("half") and services.store.list("models/") == []


def test_a_deletion_that_stopped_half_way_is_finished_at_once(services: Services) -> None:
    seed_model(services, "going", MODEL, task=TASK)
    services.store.put_bytes("models/going/variants/cpu-fp32.onnx", MODEL)
    assert services.metadata.mark_model_deleting("going")
    services.store.delete_prefix("models/going/variants/")  # part of the files went, then the process died
    report = orphans.sweep(services.metadata, services.store, GRACE_S)  # no grace: the deletion was decided
    assert report.finished_deletions == ["going"]
    assert not services.metadata.model_exists("going") and services.store.list("models/") == []


def test_a_write_cut_short_leaves_a_temporary_file_that_goes_after_the_grace_period(services: Services) -> None:
    store = services.store
    assert isinstance(store, LocalModelStore)
    seed_model(services, "kept", MODEL, task=TASK)
    partial = store.root / "models" / "kept" / f"{TEMP_PREFIX}abc"
    partial.write_bytes(b"half a model")
    assert store.list("models/") == ["models/kept/model.onnx"]  # never shown
    assert orphans.sweep(services.metadata, store, GRACE_S).partial_writes == []
    assert orphans.sweep(services.metadata, store, GRACE_S, now=later()).partial_writes == [
        f"models/kept/{TEMP_PREFIX}abc"
    ]
    assert not partial.exists() and store.exists("models/kept/model.onnx")


def test_a_registered_model_whose_file_is_missing_is_failed_with_the_reason(services: Services) -> None:
    seed_model(services, "lost", MODEL, task=TASK)
    services.store.delete_prefix("models/lost/")
    assert orphans.sweep(services.metadata, services.store, GRACE_S).empty  # a young row may be mid-write
    report = orphans.sweep(services.metadata, services.store, GRACE_S, now=later())
    assert report.missing_files == ["lost"]
    model = services.metadata.get_model("lost")
    assert model is not None and model.status == ModelStatus.FAILED
    assert model.status_reason == (
        "its stored model file models/lost/model.onnx is missing; delete the model and register it again"
    )
    assert orphans.sweep(services.metadata, services.store, GRACE_S, now=later()).empty  # marked once


def test_models_being_registered_or_deleted_are_not_served(services: Services) -> None:
    seed_model(services, "m", MODEL, task=TASK, variants={"cpu-fp32-1t": profiles({1: 0.25})})
    assert [m.name for m, _ in services.metadata.ready_variants()] == ["m"]
    services.metadata.mark_model_deleting("m")
    assert services.metadata.ready_variants() == []


def test_the_store_lists_when_each_object_was_written(tmp_path: Path) -> None:
    store = LocalModelStore(tmp_path / "store")
    before = datetime.now(UTC) - timedelta(seconds=1)
    store.put_bytes("models/a/model.onnx", b"a")
    (modified,) = store.list_modified("models/").items()
    assert modified[0] == "models/a/model.onnx" and before < modified[1] <= datetime.now(UTC)


def test_a_job_recorded_but_never_queued_is_failed_with_the_reason(services: Services) -> None:
    assert services.jobs is not None
    for job_id in ("orphan", "queued"):
        services.metadata.add_job(Job(id=job_id, owner="local", model_name="m", input_key="uploads/local/x.npy"))
    services.metadata.add_work_item(services.jobs.new_item("offline_job", job_id="queued"))  # "orphan": died first
    assert orphans.sweep(services.metadata, services.store, GRACE_S).empty
    report = orphans.sweep(services.metadata, services.store, GRACE_S, now=later())
    assert report.unqueued_jobs == ["orphan"]
    orphan, queued = services.metadata.get_job("orphan"), services.metadata.get_job("queued")
    assert orphan is not None and orphan.status == "failed" and orphan.error == orphans.UNQUEUED_REASON
    assert queued is not None and queued.status == "queued"  # its work item will run it
