"""Cascade construction: tune/report rows disjoint, the bootstrap rule, the 10% rule, decisions and the kept variant."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from infaas.cascade_session import CASCADE, KIND, read_spec
from infaas.catalog import ProfileInfo
from infaas.config import Settings
from infaas.db.models import ModelStatus, VariantStatus, WorkState
from infaas.metadata import NewWorkItem
from infaas.services import Services, build_services
from tests.cascade_models import cheap_model, expensive_model, validation
from tests.factories import seed_model, variant_info
from variant_generator.accuracy import ValidationSet
from variant_generator.build import _submit_cascades_once
from variant_generator.cascades import sweep
from variant_generator.cascades.construct import build_task_cascades
from variant_generator.cascades.cost import CostModel

TASK = "digits"


def profiles(p50_ms: float, accuracy: float | None = None) -> tuple[ProfileInfo, ...]:
    """Batch 1..8 profiles whose per-row cost falls with the batch, as measured ones do."""
    return tuple(
        ProfileInfo(
            batch_size=b,
            threads=1,
            load_ms=1.0,
            latency_p50_ms=p50_ms * b**0.7,
            latency_p99_ms=p50_ms * b**0.7 * 1.2,
            throughput_per_s=b / (p50_ms * b**0.7) * 1000.0,
            memory_mb=10.0,
            accuracy=accuracy,
        )
        for b in (1, 2, 4, 8)
    )


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(home=tmp_path, profile_runs=3, profile_max_seconds=0.1, worker_cores=2)
    services = build_services(settings, with_jobs=False)
    yield services
    services.close()


def seed_pair(services: Services, cheap_ms: float, big_ms: float = 0.5) -> None:
    for name, model, ms in (("cheap", cheap_model(), cheap_ms), ("big", expensive_model(), big_ms)):
        seed_model(
            services, name, model, task=TASK, validation=validation(), variants={"cpu-fp32": profiles(ms)}, max_batch=8
        )
        services.metadata.set_model_status(name, ModelStatus.READY)


def test_tune_report_and_calibration_rows_are_disjoint() -> None:
    ids = np.arange(719, dtype=np.float32)[:, None]  # each row carries its own id
    calibration, scoring = ValidationSet({"x": ids}, labels=np.zeros(719, np.int64)).split()
    assert calibration is not None
    tune, report = sweep.tune_report(scoring.rows)
    used = [set(calibration.inputs["x"][:, 0]), set(scoring.inputs["x"][tune, 0]), set(scoring.inputs["x"][report, 0])]
    assert not (used[0] & used[1]) and not (used[0] & used[2]) and not (used[1] & used[2])
    assert sum(len(u) for u in used) == 719
    again = sweep.tune_report(scoring.rows)  # the same split on every build
    assert all(np.array_equal(a, b) for a, b in zip((tune, report), again, strict=True))


def test_bootstrap_rule_accepts_only_within_the_tolerance_in_95_of_100() -> None:
    same = np.zeros(169)
    assert sweep.bootstrap_within(same, 0.005) == 100
    one_worse = same.copy()
    one_worse[3] = -1.0  # one net extra error in 169 rows: -0.59 points
    assert sweep.bootstrap_within(one_worse, 0.005) < sweep.REQUIRED
    assert sweep.bootstrap_within(one_worse, 0.03) >= sweep.REQUIRED
    # The sweep: a cheap stage wrong on its confident rows is never accepted; right on them, the cheapest wins.
    confident = np.array([[9.0, 0.0]] * 100 + [[0.1, 0.0]] * 100)
    right = np.ones(200, bool)
    wrong_when_confident = np.r_[np.zeros(100, bool), np.ones(100, bool)]
    choice, tried = sweep.sweep(confident, wrong_when_confident, right, lambda f: 1.0 - 0.5 * f, 0.005)
    assert tried > 0 and (choice is None or choice.answered == 0.0)
    choice, _ = sweep.sweep(confident, np.r_[right[:100], np.zeros(100, bool)], right, lambda f: 1.0 - 0.5 * f, 0.005)
    assert choice is not None and choice.answered == pytest.approx(0.5) and choice.within >= sweep.REQUIRED


def test_a_threshold_significantly_less_accurate_on_the_report_rows_fails_confirmation() -> None:
    scores = np.array([[9.0, 0.0]] * 100 + [[0.1, 0.0]] * 100)
    right, half = np.ones(200, bool), np.r_[np.ones(100, bool), np.zeros(100, bool)]
    choice, _ = sweep.sweep(scores, half, right, lambda f: 1.0 - 0.5 * f, 0.005)
    assert choice is not None and choice.answered == pytest.approx(0.5)
    conf = sweep.confidence(scores, choice.rule, choice.scores)
    assert sweep.confirmed(conf, choice, half, right)  # rows like the tune rows: kept
    two_lost = half.copy()
    two_lost[:2] = False  # two confident misses of 200 rows (-1 point): past the tolerance, but not significant
    assert sweep.bootstrap_within(sweep.difference(conf >= choice.threshold, two_lost, right), 0.005) < sweep.REQUIRED
    assert sweep.confirmed(conf, choice, two_lost, right)
    flattered = half.copy()
    flattered[:10] = False  # on held-out rows the cheap stage misses 10 of its 100 confident rows: -5 points
    assert not sweep.confirmed(conf, choice, flattered, right)
    diff = sweep.difference(conf >= choice.threshold, flattered, right)
    assert diff.mean() == pytest.approx(-0.05) and sweep.interval(diff)[1] < 0


def test_cost_model_counts_the_smaller_escalated_batch() -> None:
    cheap = variant_info("cheap", "cpu-fp32", profiles(0.01))
    big = variant_info("big", "cpu-fp32", profiles(1.0))
    cost = CostModel(cheap, big, cores=2, prices={"cpu-core": 0.048})
    assert cost.relative(1.0) == pytest.approx(0.01)
    assert cost.relative(0.0) > 1.0  # escalating everything costs more than the expensive member alone
    # Half escalated at batch 8 run as a batch of 4, dearer per row than at 8: more than half the cost.
    assert cost.savings(0.5)[8] < 1.0 - 0.5 - cost.cheap(8) / cost.expensive(8)


@pytest.mark.timeout(900)
def test_kept_cascade_is_a_profiled_virtual_variant_measured_on_report_rows(services: Services) -> None:
    seed_pair(services, cheap_ms=0.01)
    build_task_cascades(services, TASK, "local")
    decisions = services.metadata.list_cascade_decisions(TASK)
    kept = [d for d in decisions if d.kept]
    assert len(kept) == 1, [(d.cheap, d.expensive, d.reason) for d in decisions]
    decision = kept[0]
    assert (decision.cheap, decision.expensive, decision.variant) == (
        "cheap/cpu-fp32",
        "big/cpu-fp32",
        "big/cascade-cpu-fp32",
    )
    numbers = decision.numbers
    assert numbers["bootstrap_within"] >= sweep.REQUIRED and numbers["saving"] >= 0.10
    assert numbers["tune_rows"] + numbers["report_rows"] == 591  # 719 rows less 128 calibration rows
    low, high = numbers["accuracy_difference_interval"]
    assert low <= numbers["accuracy"] - numbers["expensive_accuracy"] <= high
    model = services.metadata.get_model("big")
    assert model is not None
    variant = next(v for v in model.variants if v.kind == KIND)
    assert variant.status == VariantStatus.READY and variant.providers == (CASCADE,)
    assert [p.batch_size for p in variant.profiles] == [1, 2, 4, 8]
    assert variant.profiles[0].accuracy == pytest.approx(numbers["accuracy"], abs=1e-4)  # on the report rows
    spec = read_spec(services.store.local_path(variant.artifact_key or ""))
    assert spec.threshold == pytest.approx(numbers["threshold"], abs=1e-6) and spec.cheap.key == "cheap/cpu-fp32"
    # The reverse pair (the expensive model as cheap stage) is not a candidate; the pair is decided once.
    assert {(d.cheap, d.expensive) for d in decisions} == {("cheap/cpu-fp32", "big/cpu-fp32")}


@pytest.mark.timeout(900)  # two constructions (sandboxed runs, profiling): over 300 s on the loaded 2-core host
def test_a_cascade_saving_under_10_percent_is_not_kept_and_an_old_one_is_retired(services: Services) -> None:
    seed_pair(services, cheap_ms=0.01)
    build_task_cascades(services, TASK, "local")
    services.metadata.replace_profiles("cheap", "cpu-fp32", profiles(0.47))  # now 94% of the expensive one
    build_task_cascades(services, TASK, "local")
    (decision,) = services.metadata.list_cascade_decisions(TASK)
    assert not decision.kept and "cannot save 10%" in decision.reason
    model = services.metadata.get_model("big")
    assert model is not None
    old = next(v for v in model.variants if v.kind == KIND)
    assert old.status == VariantStatus.SKIPPED and "no longer kept" in (old.reason or "")
    assert not services.store.exists(f"models/big/variants/{old.name}.zip")


def test_no_labels_no_cascade(services: Services) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, inputs=np.zeros((40, 64), np.float32))
    for name, model in (("cheap", cheap_model()), ("big", expensive_model())):
        seed_model(services, name, model, task=TASK, validation=buffer.getvalue(), variants={"cpu-fp32": profiles(0.1)})
        services.metadata.set_model_status(name, ModelStatus.READY)
    build_task_cascades(services, TASK, "local")
    decisions = services.metadata.list_cascade_decisions(TASK)
    assert decisions and not any(d.kept for d in decisions)
    assert all("no labelled validation set" in d.reason for d in decisions)


def test_a_task_gaining_many_models_queues_one_waiting_cascade_decision(services: Services) -> None:
    """A waiting build_cascades reads the catalog when it runs: a second one for the same task would redo it."""
    submitted: list[dict[str, str]] = []

    class Recording:
        def submit(self, task_name: str, **kwargs: str) -> None:
            submitted.append(kwargs)
            services.metadata.add_work_item(
                NewWorkItem(str(uuid.uuid4()), task_name, kwargs, None, datetime.now(UTC) + timedelta(seconds=60))
            )

        def shutdown(self) -> None:
            """Nothing runs: the test only counts submissions."""

    services.jobs = Recording()  # type: ignore[assignment]
    seed_pair(services, cheap_ms=0.05)
    cheap, big = services.metadata.get_model("cheap"), services.metadata.get_model("big")
    assert cheap is not None and big is not None
    for model in (cheap, big, cheap):
        _submit_cascades_once(services, model)
    assert submitted == [{"task": TASK, "owner": cheap.owner}]
    (item,) = services.metadata.list_work_items(task="build_cascades")
    services.metadata.claim_work_item(item.id, "me", datetime.now(UTC) + timedelta(seconds=60), datetime.now(UTC), 3)
    _submit_cascades_once(services, big)  # the first one is running: it may have read the catalog already
    assert len(submitted) == 2
    services.settings = services.settings.model_copy(update={"cascades": False})
    services.metadata.claim_work_item(
        services.metadata.list_work_items(WorkState.PENDING)[0].id, "me", datetime.now(UTC), datetime.now(UTC), 3
    )
    _submit_cascades_once(services, big)  # turned off: nothing queued
    assert len(submitted) == 2
