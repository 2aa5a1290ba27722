"""``CascadeSession``: the cheap stage on the whole batch, escalated rows batched to the expensive one, merged in
row order; the bundle opened by ``open_session`` like any variant."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from infaas.cascade_session import (
    CASCADE,
    STAGE_OUTPUT,
    CascadeSession,
    CascadeSpec,
    Member,
    confidence,
    probabilities,
    read_spec,
    score_kind,
    split_stages,
    write_bundle,
)
from infaas.runtime import open_session
from tests.cascade_models import cheap_model, digits, expensive_model


class Counting:
    """A session that counts the rows it was asked to run."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session, self.rows = session, []

    def get_inputs(self) -> Sequence[object]:
        return self.session.get_inputs()

    def get_outputs(self) -> Sequence[object]:
        return self.session.get_outputs()

    def run(self, names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.rows.append(len(next(iter(feeds.values()))))
        return self.session.run(names, feeds)


def spec(threshold: float, rule: str = "max_prob") -> CascadeSpec:
    return CascadeSpec(
        cheap=Member("cheap/cpu-fp32", ("CPUExecutionProvider",), 1, "cheap.onnx"),
        expensive=Member("big/cpu-fp32", ("CPUExecutionProvider",), 1, "expensive.onnx"),
        rule=rule,  # type: ignore[arg-type]
        threshold=threshold,
        score_index=0,
    )


@pytest.fixture(scope="module")
def sessions() -> tuple[ort.InferenceSession, ort.InferenceSession]:
    return ort.InferenceSession(cheap_model()), ort.InferenceSession(expensive_model())


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return digits()[2][:97]


def test_rows_merge_in_order_and_only_unconfident_rows_escalate(sessions, rows) -> None:
    cheap, big = sessions
    cheap_out, big_out = cheap.run(None, {"x": rows})[0], big.run(None, {"x": rows})[0]
    conf = confidence(cheap_out, "max_prob", "logits")
    threshold = float(np.median(conf))
    counted = Counting(big)
    cascade = CascadeSession(spec(threshold), cheap, counted)
    scores, stage = cascade.run(None, {"x": rows})
    escalate = conf < threshold
    assert 0 < escalate.sum() < len(rows)
    assert counted.rows == [int(escalate.sum())]  # one batch of the escalated rows, not one run per row
    np.testing.assert_array_equal(stage, escalate.astype(np.int8))
    np.testing.assert_allclose(scores[escalate], big_out[escalate], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores[~escalate], cheap_out[~escalate], rtol=1e-6)
    assert scores.shape == big_out.shape and scores.dtype == big_out.dtype


def test_same_outputs_as_a_plain_variant_plus_the_stage(sessions, rows) -> None:
    cheap, big = sessions
    cascade = CascadeSession(spec(0.5), cheap, big)
    assert [i.name for i in cascade.get_inputs()] == [i.name for i in big.get_inputs()]
    assert [o.name for o in cascade.get_outputs()] == [*(o.name for o in big.get_outputs()), STAGE_OUTPUT]
    (only,) = cascade.run(["y"], {"x": rows[:5]})
    assert only.shape == (5, 10)
    answer, served = split_stages(dict(zip(["y", STAGE_OUTPUT], cascade.run(None, {"x": rows[:5]}), strict=True)))
    assert list(answer) == ["y"] and served["rows"] == 5 and len(served["stages"]) == 5
    assert served["escalation_share"] == served["escalated"] / 5


def test_confident_batch_never_runs_the_expensive_stage_and_unconfident_one_is_the_expensive_answer(
    sessions, rows
) -> None:
    cheap, big = sessions
    counted = Counting(big)
    scores, stage = CascadeSession(spec(0.0), cheap, counted).run(None, {"x": rows})
    assert counted.rows == [] and not stage.any()
    np.testing.assert_allclose(scores, cheap.run(None, {"x": rows})[0], rtol=1e-6)
    scores, stage = CascadeSession(spec(1.01), cheap, big).run(None, {"x": rows})
    assert stage.all()
    np.testing.assert_allclose(scores, big.run(None, {"x": rows})[0], rtol=1e-6)


def test_confidence_rules_are_multi_class() -> None:
    logits = np.array([[4.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert score_kind(logits) == "logits"
    probs = probabilities(logits, "logits")
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(confidence(logits, "max_prob", "logits"), probs.max(axis=1))
    top2 = np.sort(probs, axis=1)[:, -2:]
    np.testing.assert_allclose(confidence(logits, "margin", "logits"), top2[:, 1] - top2[:, 0], atol=1e-12)
    assert confidence(logits, "max_prob", "logits")[2] == pytest.approx(0.25)
    given = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])  # already probabilities: taken as they are
    assert score_kind(given) == "probabilities"
    np.testing.assert_allclose(confidence(given, "max_prob", "probabilities"), [0.7, 0.4])
    np.testing.assert_allclose(confidence(given, "margin", "probabilities"), [0.5, 0.05])
    nan = np.array([[np.nan, 1.0]])
    assert not (confidence(nan, "max_prob", "logits") >= 0.0).any()  # NaN escalates (below any threshold)


def test_bundle_opens_through_the_one_loader(tmp_path: Path, rows) -> None:
    (tmp_path / "c.onnx").write_bytes(cheap_model())
    (tmp_path / "e.onnx").write_bytes(expensive_model())
    bundle = write_bundle(tmp_path / "cascade.zip", spec(0.9, "margin"), tmp_path / "c.onnx", tmp_path / "e.onnx")
    assert read_spec(bundle) == spec(0.9, "margin")
    session = open_session(bundle, (CASCADE,), 1)
    assert isinstance(session, CascadeSession)
    scores, stage = session.run(None, {"x": rows})
    big = ort.InferenceSession(expensive_model()).run(None, {"x": rows})[0]
    np.testing.assert_allclose(scores[stage == 1], big[stage == 1], rtol=1e-5, atol=1e-5)
