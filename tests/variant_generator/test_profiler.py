"""The profiler's numbers are plausible, its batch list is right, and accuracy is scored as specified."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from infaas.catalog import ModelInfo
from infaas.config import Settings
from infaas.tensors import TensorSpec
from tests.factories import linear_model, model_info
from variant_generator.accuracy import ValidationSet, accuracy_score, fidelity_score, load_validation, synthetic_set
from variant_generator.profiler import batch_sizes, profile_variant, reference_outputs, replica_counts

SETTINGS = Settings(home=Path("/nonexistent"), profile_runs=10, profile_max_seconds=0.3)


X = {"name": "x", "dtype": "float32", "shape": ["batch", 8]}
Y = {"name": "y", "dtype": "float32", "shape": ["batch", 3]}


@pytest.fixture
def linear_path(tmp_path: Path) -> Path:
    """y = x @ w + b with 8 features and 3 classes, dynamic batch."""
    path = tmp_path / "m.onnx"
    path.write_bytes(linear_model(in_dim=8, out_dim=3))
    return path


def info(max_batch: int = 8, inputs: list[dict] | None = None) -> ModelInfo:
    return model_info("linear", task="classification", inputs=inputs or [X], outputs=[Y], max_batch=max_batch)


@pytest.mark.parametrize(
    ("max_batch", "expected"), [(1, [1]), (8, [1, 2, 4, 8]), (12, [1, 2, 4, 8, 12]), (3, [1, 2, 3])]
)
def test_batch_sizes_are_powers_of_two_then_max(max_batch: int, expected: list[int]) -> None:
    assert batch_sizes(info(max_batch)) == expected


def test_a_pinned_batch_axis_is_profiled_only_at_that_size() -> None:
    assert batch_sizes(info(16, [{"name": "x", "dtype": "float32", "shape": [1, 8]}])) == [1]


def test_profiles_are_plausible_with_labels(linear_path: Path) -> None:
    path, model = linear_path, info()
    x = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32)
    labels = reference_outputs(path, model, ValidationSet({"x": x})).argmax(-1)
    profiles = profile_variant(
        path,
        model,
        providers=["CPUExecutionProvider"],
        threads=1,
        settings=SETTINGS,
        data=ValidationSet({"x": x}, labels=labels),
        reference=reference_outputs(path, model, ValidationSet({"x": x})),
    )
    assert [p.batch_size for p in profiles] == [1, 2, 4, 8]
    for p in profiles:
        assert p.latency_p99_ms >= p.latency_p50_ms > 0
        assert p.throughput_per_s > 0 and p.load_ms > 0 and p.memory_mb >= 0
        assert (p.accuracy, p.accuracy_metric, p.threads) == (1.0, "top1", 1)
        assert (p.fidelity, p.fidelity_metric) == (1.0, "agreement")  # labels do not replace fidelity
        assert p.host and p.measured_at is not None


def test_profiled_load_time_includes_the_warm_up_a_worker_does(
    linear_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from infaas import runtime

    warmed: list[object] = []

    def slow_warm_up(session: object, shapes: object = None) -> bool:
        warmed.append(session)
        time.sleep(0.05)
        return True

    monkeypatch.setattr(runtime, "warm_up", slow_warm_up)
    path, model = linear_path, info()
    x = np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32)
    data = ValidationSet({"x": x}, labels=np.zeros(8, dtype=np.int64))
    profiles = profile_variant(path, model, providers=["CPUExecutionProvider"], threads=1, settings=SETTINGS, data=data)
    # Each session is warmed up as a worker's: the measured one, and one per further replica measured together.
    assert len(warmed) == replica_counts(1, SETTINGS.worker_cores) and all(p.load_ms >= 50.0 for p in profiles)


def test_without_labels_agreement_is_fidelity_never_accuracy(linear_path: Path) -> None:
    path, model = linear_path, info(max_batch=2)
    data = synthetic_set(model)
    profiles = profile_variant(
        path,
        model,
        providers=["CPUExecutionProvider"],
        threads=1,
        settings=SETTINGS,
        data=data,
        reference=reference_outputs(path, model, data),
    )
    assert {(p.accuracy, p.accuracy_metric) for p in profiles} == {(None, None)}
    assert {(p.fidelity, p.fidelity_metric) for p in profiles} == {(1.0, "agreement-synthetic")}


def test_score_rules() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy_score(scores, np.array([1, 0, 0])) == (pytest.approx(2 / 3), "top1")
    assert fidelity_score(scores, scores[[0, 1, 1]]) == (pytest.approx(2 / 3), "agreement")
    # Vector outputs of a non-classification task (embeddings) are scored by cosine, not argmax.
    embedding = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert fidelity_score(embedding, embedding, task="sentence-embedding") == (pytest.approx(1.0), "cosine")
    assert fidelity_score(embedding, embedding[[1, 0]], task="sentence-embedding") == (0.0, "cosine")
    regression = np.array([[1.0], [2.0], [3.0]])
    assert fidelity_score(regression * 1.1, regression) == (pytest.approx(0.9), "1-rel-error")
    assert fidelity_score(regression * 5, regression) == (0.0, "1-rel-error")  # clipped, never negative
    assert accuracy_score(regression * 1.1, regression) == (pytest.approx(0.9), "1-rel-error")
    assert accuracy_score(np.array([1, 2, 2]), np.array([1, 2, 3])) == (pytest.approx(2 / 3), "top1")


def test_calibration_rows_are_never_scored() -> None:
    rows = 600
    data = ValidationSet({"x": np.arange(rows, dtype=np.float32)[:, None]}, labels=np.arange(rows))
    calibration, scoring = data.split()
    assert calibration is not None and calibration.rows == 128 and scoring.rows == rows - 128
    used, scored = set(calibration.inputs["x"][:, 0]), set(scoring.inputs["x"][:, 0])
    assert used.isdisjoint(scored) and len(used | scored) == rows
    assert (scoring.labels == scoring.inputs["x"][:, 0]).all()  # labels travel with their rows
    assert calibration.inputs["x"].max() > rows / 2  # drawn over the set, not its first rows
    again, _ = data.split()
    assert again is not None and (again.inputs["x"] == calibration.inputs["x"]).all()  # deterministic
    small_calibration, small_scoring = ValidationSet({"x": np.ones((40, 1))}).split()
    assert small_calibration is not None and (small_calibration.rows, small_scoring.rows) == (10, 30)
    tiny = ValidationSet({"x": np.ones((3, 1))})
    assert tiny.split() == (None, tiny)  # too small to hold rows out: nothing calibrates on it


def test_synthetic_integer_inputs_are_valid_token_data() -> None:
    model = info(
        inputs=[
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
            {"name": "attention_mask", "dtype": "int64", "shape": [-1, -1]},
        ]
    )
    data = synthetic_set(model, rows=4)
    ids, mask = data.inputs["input_ids"], data.inputs["attention_mask"]
    assert ids.shape == mask.shape == (4, 16) and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < 100 and (mask == 1).all()


def test_validation_file_conventions(tmp_path: Path) -> None:
    x = np.ones((5, 8), np.float64)
    np.savez(tmp_path / "single.npz", inputs=x, labels=np.arange(5))
    loaded = load_validation(tmp_path / "single.npz", info())
    assert loaded.inputs["x"].dtype == np.float32 and loaded.rows == 5 and loaded.labels is not None
    np.savez(tmp_path / "named.npz", x=x)
    assert load_validation(tmp_path / "named.npz", info()).labels is None
    np.savez(tmp_path / "bad.npz", z=x)
    with pytest.raises(ValueError, match="no array for input"):
        extra = TensorSpec("k", np.dtype("float32"), ())
        load_validation(tmp_path / "bad.npz", replace(info(), inputs=(*info().inputs, extra)))
