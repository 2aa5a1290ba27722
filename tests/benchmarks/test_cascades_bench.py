"""benchmarks/cascades.py's timing of a cascade's own work: the cascade run over members replaying their recorded
outputs splits every batch exactly as over the real members (so what it times is the real path), and runs no
member."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.cascades import _Recorded, python_overhead
from infaas.cascade_session import STAGE_OUTPUT, CascadeSession, CascadeSpec, Member


class _Tensor:
    def __init__(self, name: str, shape: list[Any], kind: str) -> None:
        self.name, self.shape, self.type = name, shape, kind


class _Counting:
    """A member answering fixed class probabilities per row (row i: ``probabilities[i]``), counting its runs."""

    def __init__(self, probabilities: np.ndarray) -> None:
        self.probabilities, self.runs = probabilities, 0

    def get_inputs(self) -> list[_Tensor]:
        return [_Tensor("x", ["batch", 1], "tensor(float)")]

    def get_outputs(self) -> list[_Tensor]:
        return [_Tensor("label", ["batch"], "tensor(int64)"), _Tensor("probabilities", ["batch", 3], "tensor(float)")]

    def run(self, _names: Any, feeds: dict[str, np.ndarray], /) -> list[np.ndarray]:
        self.runs += 1
        rows = feeds["x"][:, 0].astype(int)
        scores = self.probabilities[rows]
        return [scores.argmax(axis=1), scores.copy()]


def test_replayed_members_split_each_batch_as_the_real_ones_and_run_no_model() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.full(3, 0.3), size=64).astype(np.float32)
    cheap, expensive = _Counting(probabilities), _Counting(probabilities[::-1].copy())
    member = Member("m/v", ("CPUExecutionProvider",), 1, "m.onnx")
    cascade = CascadeSession(CascadeSpec(member, member, "max_prob", 0.8, 1, "probabilities"), cheap, expensive)
    batches = [{"x": np.arange(start, start + 16, dtype=np.float32)[:, None]} for start in range(0, 64, 16)]
    recorded = _Recorded(cascade, batches)
    replayed = CascadeSession(cascade.spec, *recorded.stages)
    for feeds in batches * 2:  # twice: a replay must not change what it replays (the cascade merges in place)
        real = dict(zip([o.name for o in cascade.get_outputs()], cascade.run(None, feeds), strict=True))
        again = dict(zip([o.name for o in replayed.get_outputs()], replayed.run(None, feeds), strict=True))
        np.testing.assert_array_equal(again[STAGE_OUTPUT], real[STAGE_OUTPUT])
        assert again["probabilities"].shape == real["probabilities"].shape
    assert 0 < np.mean([cascade.run(None, f)[-1].mean() for f in batches]) < 1  # some rows escalate, not all
    runs = cheap.runs + expensive.runs
    timed = python_overhead(cascade, {"batch16": batches}, runs=20)
    assert set(timed) == {"batch16"} and timed["batch16"] > 0
    assert cheap.runs + expensive.runs == runs + 2 * len(batches)  # recording only: the timed runs replay
