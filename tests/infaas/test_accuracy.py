"""Accuracy has one meaning (``infaas.accuracy``): measured on labels, else estimated from a declared accuracy and
the measured disagreement, else unknown; fidelity is a separate number and a separate hint (issue 12 point 1)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from infaas.accuracy import Accuracy, accuracy_of, fidelity_of, floor_metric
from infaas.catalog import ModelInfo, VariantInfo
from infaas.live_state.base import LiveSnapshot, WorkerState
from infaas.offline import NoVariant, choose_plan, plan_variant
from infaas.selector import AccuracyUnavailable, Candidate, FidelityUnavailable, Requirements, select
from tests.factories import model_info, profiles, variant_info

PRICES = {"cpu-core": 0.048}


def variant(
    model: str,
    name: str,
    *,
    kind: str | None = None,
    ms: float = 1.0,
    accuracy: float | None = None,
    metric: str | None = "top1",
    fidelity: float | None = None,
    fidelity_metric: str | None = "agreement",
) -> VariantInfo:
    measured = tuple(
        replace(
            p,
            accuracy_metric=metric if accuracy is not None else None,
            fidelity=fidelity,
            fidelity_metric=fidelity_metric if fidelity is not None else None,
        )
        for p in profiles({1: ms}, accuracy=accuracy)
    )
    return variant_info(model, name, measured, kind=kind or name)


def model(name: str, declared: float | None = None, task: str = "digits-classification") -> ModelInfo:
    return replace(model_info(name, task=task), declared_accuracy=declared)


def test_labels_give_a_measured_accuracy_whatever_was_declared() -> None:
    v = variant("m", "cpu-int8-static", accuracy=0.91, fidelity=0.97)
    assert accuracy_of(model("m", declared=0.99), v) == Accuracy(0.91, "top1", "measured")
    assert fidelity_of(v).value == 0.97


def test_without_labels_the_estimate_is_declared_minus_disagreement() -> None:
    declared = model("m", declared=0.60)
    original = variant("m", "cpu-fp32", fidelity=0.999)
    int8 = variant("m", "cpu-int8-dynamic", fidelity=0.95)
    assert accuracy_of(declared, original) == Accuracy(0.60, "top1", "declared")  # exactly the declared value
    unbuilt = replace(original, profiles=(), status="failed")
    assert accuracy_of(declared, unbuilt).source == "unknown" and fidelity_of(unbuilt).value is None
    assert fidelity_of(original).value == 1.0  # the original agrees with itself by definition
    estimate = accuracy_of(declared, int8)
    assert (estimate.metric, estimate.source) == ("top1", "estimated")
    assert estimate.value == pytest.approx(0.60 - 0.05)
    wild = variant("m", "cpu-int8-static", fidelity=0.3)
    assert accuracy_of(declared, wild).value == 0.0  # clipped at 0, never negative


def test_agreement_is_never_reported_as_accuracy() -> None:
    unlabelled = model("m", declared=None)
    for v in (variant("m", "cpu-fp32", fidelity=1.0), variant("m", "cpu-int8-dynamic", fidelity=0.99)):
        assert accuracy_of(unlabelled, v) == Accuracy(None, None, "unknown")


def test_embeddings_estimate_only_when_declared_in_the_owners_metric() -> None:
    embedding = variant("e", "cpu-int8-dynamic", fidelity=0.98, fidelity_metric="cosine")
    estimate = accuracy_of(model("e", declared=0.8, task="sentence-embedding"), embedding)
    assert estimate.value == pytest.approx(0.78) and (estimate.metric, estimate.source) == ("declared", "estimated")
    assert accuracy_of(model("e", task="sentence-embedding"), embedding).source == "unknown"


def test_floor_metric_counts_models_and_prefers_top1_on_a_tie() -> None:
    top1, rel = Accuracy(0.9, "top1", "measured"), Accuracy(0.9, "1-rel-error", "measured")
    assert floor_metric([("a", top1), ("a", top1), ("b", rel), ("c", rel)]) == "1-rel-error"
    assert floor_metric([("a", rel), ("b", top1)]) == "top1"
    assert floor_metric([("a", Accuracy(None, None, "unknown"))]) is None


def live() -> LiveSnapshot:
    worker = WorkerState(id="w1", address="local", cores=4, memory_budget_mb=4096)
    return LiveSnapshot(workers=(worker,), instances={})


def test_a_declared_060_model_no_longer_beats_a_labelled_092_one() -> None:
    labelled = Candidate.of(model("labelled"), variant("labelled", "cpu-fp32", ms=5.0, accuracy=0.92, fidelity=1.0))
    declared_m = model("declared", declared=0.60)
    declared = Candidate.of(declared_m, variant("declared", "cpu-fp32", ms=1.0, fidelity=1.0))
    both = [labelled, declared]
    assert select(Requirements(task="t", min_accuracy=0.9), both, live(), PRICES).candidate.model.name == "labelled"
    assert select(Requirements(task="t", min_accuracy=0.5), both, live(), PRICES).candidate.model.name == "declared"
    with pytest.raises(AccuracyUnavailable, match=r"best available is 0.92 \(top1, measured\)"):
        select(Requirements(task="t", min_accuracy=0.95), both, live(), PRICES)


def test_a_floor_compares_only_like_with_like() -> None:
    classifier = Candidate.of(model("clf"), variant("clf", "cpu-fp32", ms=5.0, accuracy=0.92))
    regressor = Candidate.of(model("reg"), variant("reg", "cpu-fp32", ms=1.0, accuracy=0.99, metric="1-rel-error"))
    pick = select(Requirements(task="t", min_accuracy=0.9), [classifier, regressor], live(), PRICES)
    assert pick.candidate.model.name == "clf"  # 0.99 of 1-rel-error is not 0.99 top-1
    with pytest.raises(AccuracyUnavailable, match=r"not comparable with top1.*reg \(1-rel-error\)"):
        select(Requirements(task="t", min_accuracy=0.95), [classifier, regressor], live(), PRICES)


def test_unknown_accuracy_meets_only_zero_and_the_422_says_what_to_register() -> None:
    unknown = Candidate.of(model("u"), variant("u", "cpu-fp32", fidelity=1.0))
    assert select(Requirements(model="u"), [unknown], live(), PRICES).candidate is unknown
    with pytest.raises(AccuracyUnavailable) as raised:
        select(Requirements(model="u", min_accuracy=0.01), [unknown], live(), PRICES)
    message = str(raised.value)
    assert "labels in the validation set" in message and "declared accuracy" in message and "min_fidelity" in message
    assert raised.value.code == "accuracy_unavailable" and raised.value.status == 422


def test_min_fidelity_picks_a_faithful_variant_or_says_the_best() -> None:
    m = model("u")
    original = Candidate.of(m, variant("u", "cpu-fp32", ms=5.0, fidelity=1.0))
    int8 = Candidate.of(m, variant("u", "cpu-int8-dynamic", ms=1.0, fidelity=0.93))
    unmeasured = Candidate.of(m, variant("u", "cpu-int8-static", ms=0.5))
    every = [original, int8, unmeasured]
    assert select(Requirements(model="u", min_fidelity=0.9), every, live(), PRICES).variant.name == "cpu-int8-dynamic"
    assert select(Requirements(model="u", min_fidelity=0.95), every, live(), PRICES).variant.name == "cpu-fp32"
    assert select(Requirements(model="u"), every, live(), PRICES).variant.name == "cpu-int8-static"
    with pytest.raises(FidelityUnavailable, match="best available is 0.93") as raised:
        select(Requirements(model="u", min_fidelity=0.95), [int8, unmeasured], live(), PRICES)
    assert raised.value.code == "fidelity_unavailable" and raised.value.status == 422


def test_offline_jobs_use_the_same_accuracy() -> None:
    labelled_m, declared_m = model("labelled"), model("declared", declared=0.60)
    plans = [
        plan_variant(labelled_m, variant("labelled", "cpu-fp32", ms=5.0, accuracy=0.92), 100, 4, PRICES),
        plan_variant(declared_m, variant("declared", "cpu-fp32", ms=1.0, fidelity=1.0), 100, 4, PRICES),
    ]
    assert choose_plan(plans, 0.9, None)[0].model.name == "labelled"
    assert choose_plan(plans, 0.5, None)[0].model.name == "declared"
    with pytest.raises(NoVariant, match=r"labelled/cpu-fp32 at 0.920 \(top1, measured\)"):
        choose_plan(plans, 0.95, None)
