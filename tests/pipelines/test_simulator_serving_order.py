"""The estimator runs a query's stages as the serving path does: one after another in the pipeline's order
(``infaas.pipelines.dag.run_dag`` in the query's thread), so two stages that both read only the input add up."""

from __future__ import annotations

import numpy as np
import pytest

from infaas.pipelines.path import ServingPath
from infaas.pipelines.simulator import StageConfig, simulate
from infaas.pipelines.spec import PipelineSpec, parse_spec
from infaas.selector import ProfileCurve
from tests.factories import profiles, variant_info


def _spec(stages: tuple[str, ...], edges: list[tuple[str, str]]) -> PipelineSpec:
    """A pipeline of stages named after their models (``a`` runs model ``ma``) on one float input ``x``."""
    return parse_spec(
        {
            "name": "p",
            "p99_ms": 100.0,
            "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
            "stages": [{"name": name, "model": f"m{name}"} for name in stages],
            "edges": [{"from": source, "to": target} for source, target in edges],
            "arrivals": {"rate_per_s": 1, "duration_s": 10},
        }
    )


def _fixed(ms: float) -> StageConfig:
    """A stage whose every run takes ``ms`` (p99 = p50: no spread), one replica, no batching."""
    return StageConfig(ProfileCurve.of(variant_info("m", "v", profiles({1: ms}, p99_factor=1.0))), 1, 1)


def test_two_stages_fed_by_the_input_run_one_after_the_other() -> None:
    spec = _spec(("a", "b"), [("input.x", "a.x"), ("input.x", "b.x")])
    arrivals = np.arange(10) * 1.0  # one query a second: nothing ever queues
    result = simulate(spec, {"a": _fixed(5.0), "b": _fixed(3.0)}, {}, arrivals)
    assert result.p50_ms == pytest.approx(8.0)  # 5 + 3, not max(5, 3)
    assert result.p99_ms == pytest.approx(8.0)


def test_each_stage_path_work_is_paid_before_its_own_run() -> None:
    spec = _spec(("a", "b"), [("input.x", "a.x"), ("a.y", "b.x")])
    arrivals = np.arange(10) * 1.0
    path = ServingPath(entry=(2.0,), stage={"a": (0.5,), "b": (1.0,)})
    result = simulate(spec, {"a": _fixed(5.0), "b": _fixed(3.0)}, {}, arrivals, path=path)
    assert result.p50_ms == pytest.approx(2.0 + 0.5 + 5.0 + 1.0 + 3.0)


def test_queued_share_counts_the_visits_that_found_the_replica_busy() -> None:
    spec = _spec(("a",), [("input.x", "a.x")])
    # Pairs 1 ms apart on a 5 ms stage, pairs 1 s apart: every second query finds the replica busy.
    arrivals = np.sort(np.concatenate([np.arange(10) * 1.0, np.arange(10) * 1.0 + 0.001]))
    result = simulate(spec, {"a": _fixed(5.0)}, {}, arrivals)
    assert result.queued == {"a": pytest.approx(0.5)}


def test_a_run_excess_holds_the_replica_like_the_run() -> None:
    """1 ms measured beyond a 4 ms profile: each run takes 5 ms, and a query 4.5 ms behind another still waits."""
    spec = _spec(("a",), [("input.x", "a.x")])
    arrivals = np.array([0.0, 0.0045])
    plain = simulate(spec, {"a": _fixed(4.0)}, {}, arrivals)
    config = _fixed(4.0)
    slower = simulate(spec, {"a": StageConfig(config.curve, 1, 1, excess_ms=(1.0,))}, {}, arrivals)
    assert plain.queued["a"] == 0.0 and list(plain.latencies_ms) == pytest.approx([4.0, 4.0])
    assert slower.queued["a"] == 0.5 and list(slower.latencies_ms) == pytest.approx([5.0, 5.5])
