"""Batch-dependent variants (dynamic INT8) are measured as such, their profiles say so, workers never batch them and
the selector prices their queue one row at a time, so a batch-invariant variant wins under load (issue 15 point 2)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from infaas.config import Settings
from infaas.live_state.base import InstanceState, LiveSnapshot, WorkerState
from infaas.onnx_check import check_model_bytes
from infaas.runtime import CPU_PROVIDERS, open_session
from infaas.selector import Candidate, ProfileCurve, Requirements, select
from infaas.services import Services, build_services
from tests.factories import mlp_model, model_info, profiles, seed_model, variant_info
from variant_generator.accuracy import ValidationSet
from variant_generator.base import BuildContext
from variant_generator.batch_invariance import is_batch_invariant
from variant_generator.build import build_model_variants
from variant_generator.int8_dynamic import Int8Dynamic

PRICES = {"cpu-core": 0.048}


def _rows(count: int, seed: int = 1) -> np.ndarray:
    """Rows of very different magnitudes: a batch's dynamic scale is set by its largest row."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((count, 6)) * rng.uniform(0.1, 10.0, size=(count, 1))).astype(np.float32)


def test_dynamic_int8_is_measured_batch_dependent_and_fp32_is_not(tmp_path: Path) -> None:
    source = tmp_path / "mlp.onnx"
    source.write_bytes(mlp_model(in_dim=6, hidden=64).SerializeToString())
    checked = check_model_bytes(source.read_bytes())
    info = model_info("mlp", inputs=[s.to_json() for s in checked.inputs], max_batch=8)
    data = ValidationSet({"x": _rows(16)})
    workdir = tmp_path / "build"
    workdir.mkdir()
    dynamic = Int8Dynamic().build(BuildContext(info, source, None, workdir, cores=2))
    assert not is_batch_invariant(open_session(dynamic, CPU_PROVIDERS, 1), info, data)
    assert is_batch_invariant(open_session(source, CPU_PROVIDERS, 1), info, data)
    single = replace(info, max_batch=1)  # never batched: nothing to compare
    assert is_batch_invariant(open_session(dynamic, CPU_PROVIDERS, 1), single, data)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(home=tmp_path, build_variants=True, profile_runs=3, profile_max_seconds=0.1, worker_cores=2)
    built = build_services(settings, with_jobs=False)
    yield built
    built.close()


def test_the_build_stores_it_on_the_profiles_and_the_curve_never_batches_it(services: Services) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, inputs=_rows(40))
    model = mlp_model(in_dim=6, hidden=64).SerializeToString()
    seed_model(services, "mlp", model, task="classification", max_batch=4, validation=buffer.getvalue())
    build_model_variants(services, "mlp")
    stored = services.metadata.get_model("mlp")
    assert stored is not None
    built = {v.name: v for v in stored.variants if v.profiles}
    for name in ("cpu-int8-dynamic", "cpu-int8-dynamic-t1"):
        assert [p.batch_invariant for p in built[name].profiles] == [False, False, False], name
        curve = ProfileCurve.of(built[name])
        assert not curve.batch_invariant and curve.best_batch == 1
    for name in ("cpu-fp32", "cpu-int8-static"):
        assert all(p.batch_invariant for p in built[name].profiles), name
        assert ProfileCurve.of(built[name]).batch_invariant


def _candidate(name: str, latencies: dict[int, float], invariant: bool) -> Candidate:
    measured = tuple(replace(p, batch_invariant=invariant) for p in profiles(latencies, threads=1, p99_factor=1.0))
    return Candidate.of(model_info("m"), variant_info("m", name, measured, kind=name))


def test_under_load_the_batch_invariant_variant_is_preferred() -> None:
    """Dynamic INT8 is faster alone; 16 rows queued on each, it drains them one by one while static INT8 batches 8."""
    dynamic = _candidate("dynamic", {1: 1.0, 8: 2.5}, invariant=False)
    static = _candidate("static", {1: 2.0, 8: 3.0}, invariant=True)
    worker = WorkerState(id="w1", address="local", cores=2, memory_budget_mb=1000)
    instances = {c.key: (InstanceState("w1", c.key, 1, 10.0),) for c in (dynamic, static)}
    need = Requirements(model="m", latency_ms=12.0)

    def chosen(depth: int, *candidates: Candidate) -> str:
        queue = {("w1", c.key): depth for c in candidates}
        return select(need, list(candidates), LiveSnapshot((worker,), instances, queue), PRICES).variant.name

    assert chosen(0, dynamic, static) == "dynamic"  # idle: the faster one at batch 1
    assert chosen(16, dynamic, static) == "static"  # 16 rounds of 1 ms vs 2 rounds of 3 ms
    # Were dynamic INT8 batch-invariant, its queue would drain 8 rows a round and it would still be chosen.
    batched = _candidate("dynamic", {1: 1.0, 8: 2.5}, invariant=True)
    assert chosen(16, batched, static) == "dynamic"
