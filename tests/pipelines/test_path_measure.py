"""The serving path measured once through the real path (``infaas.pipelines.path.measure``: real QueryEngine,
LocalWorker, ONNX Runtime), and the plan judged with it, stored with it and re-planned with it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from infaas.config import Settings
from infaas.pipelines.path import measure
from infaas.pipelines.registry import plan_pipeline, register_pipeline
from infaas.selector import ProfileCurve
from infaas.services import Services, build_services
from tests.factories import TASK, mlp_model, profiles, seed_model


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    built = build_services(Settings(home=tmp_path / "home", build_variants=False), with_jobs=False)
    buffer = io.BytesIO()
    np.savez(buffer, x=np.random.default_rng(3).normal(size=(200, 8)).astype(np.float32))
    for name, seed in (("filter", 0), ("wide", 2)):
        seed_model(
            built,
            name,
            mlp_model(seed=seed).SerializeToString(),
            task=TASK,
            validation=buffer.getvalue() if name == "filter" else None,
            variants={"cpu-fp32": profiles({1: 0.05, 4: 0.1}, p99_factor=1.2)},
        )
    built.start_serving()
    yield built
    built.close()


def test_the_path_is_measured_through_the_real_path_and_plans_keep_it(services: Services) -> None:
    definition = {
        "name": "two",
        "p99_ms": 200,
        "inputs": [{"name": "image", "dtype": "float32", "shape": [-1, 8]}],
        "stages": [{"name": "f", "model": "filter"}, {"name": "w", "model": "wide"}],
        "edges": [{"from": "input.image", "to": "f.x"}, {"from": "input.image", "to": "w.x"}],
        "arrivals": {"rate_per_s": 20, "burstiness": 1, "duration_s": 10},
    }
    info, spec = register_pipeline(services, definition, "local", lambda _m: True)
    plan = plan_pipeline(services, info, lambda _m: True).plan
    assert plan is not None and plan["serving_path"] == {"source": "not measured: stages only"}
    curves = {f"{m.name}/{v.name}": ProfileCurve.of(v) for m in services.metadata.list_models() for v in m.variants}
    rows = [{"image": np.full((1, 8), i, dtype=np.float32)} for i in range(5)]
    path = measure(
        services.engine, spec, plan, rows, curves, queries=100, gap_s=0.0, allowed=lambda _m: True, tenant="local"
    )
    assert len(path.entry) == 100 and set(path.stage) == set(path.excess) == {"f", "w"}
    assert all(len(v) == 100 for v in path.stage.values())
    assert min(path.entry) > 0.0 and "100 queries" in path.source
    assert path.entry_cpu is not None and all(0.0 <= c <= t for c, t in zip(path.entry_cpu, path.entry, strict=True))
    assert (
        0.0
        < path.work_ms({"f": 1.0, "w": 1.0})
        <= float(np.mean(path.entry)) + sum(float(np.mean(v)) for v in path.stage.values())
    )
    planned = plan_pipeline(services, info, lambda _m: True, path)
    assert planned.plan is not None and planned.plan["serving_path"]["source"] == path.source
    assert planned.plan["interpreter_utilisation"] > 0.0
    again = plan_pipeline(services, planned, lambda _m: True)  # a re-plan keeps the measured path
    assert again.plan is not None and again.plan["serving_path"]["source"] == path.source
    with pytest.raises(ValueError, match="at least 100"):
        measure(services.engine, spec, plan, rows, curves, queries=10, gap_s=0.0, allowed=lambda _m: True, tenant="x")
