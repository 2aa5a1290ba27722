"""Throughput under concurrency is measured per replica count, stored with the profile, and read back."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from api.schemas import ProfileOut
from infaas.config import Settings
from infaas.services import build_services
from infaas.worker.remote import variant_from_json, variant_to_json
from tests.factories import mlp_model, model_info, seed_model
from variant_generator.accuracy import ValidationSet
from variant_generator.profiler import _concurrent_throughput, _replica_throughput, profile_variant, replica_counts

X = {"name": "x", "dtype": "float32", "shape": ["batch", 8]}
Y = {"name": "y", "dtype": "float32", "shape": ["batch", 3]}
DATA = ValidationSet({"x": np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)})


class _SleepingSession:
    """Holds the thread ``ms`` per run without the GIL, as ``session.run`` does: replicas that truly run side by
    side add up; replicas serialised by the harness would not."""

    def __init__(self, ms: float) -> None:
        self.ms = ms

    def run(self, _names: object, _feeds: object) -> list[np.ndarray]:
        time.sleep(self.ms / 1000.0)
        return []


@pytest.mark.parametrize(("threads", "cores", "expected"), [(1, 2, 2), (2, 2, 1), (0, 2, 1), (1, 4, 4), (2, 4, 2)])
def test_replica_counts_are_the_factorizations_of_the_cores(threads: int, cores: int, expected: int) -> None:
    assert replica_counts(threads, cores) == expected


def test_concurrent_sessions_add_up() -> None:
    one = _concurrent_throughput([_SleepingSession(10.0)], [{}], rows=4, budget_s=0.3)
    two = _concurrent_throughput([_SleepingSession(10.0), _SleepingSession(10.0)], [{}], rows=4, budget_s=0.3)
    assert 250 < one <= 400  # 4 rows every ~10 ms
    assert two / one > 1.6  # run together, not one after the other
    alone, together = _replica_throughput([_SleepingSession(10.0), _SleepingSession(10.0)], [{}], rows=4, budget_s=0.6)
    assert together / alone > 1.6  # side by side, medians of the rounds


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(mlp_model(hidden=64).SerializeToString())
    return path


def test_a_one_thread_variant_is_measured_as_one_and_two_replicas(mlp_path: Path) -> None:
    settings = Settings(home=Path("/nonexistent"), profile_runs=10, profile_max_seconds=0.4, worker_cores=2)
    model = model_info("mlp", inputs=[X], outputs=[Y], max_batch=4)
    profiles = profile_variant(
        mlp_path, model, providers=["CPUExecutionProvider"], threads=1, settings=settings, data=DATA
    )
    for p in profiles:
        alone, together = p.replica_throughput_per_s
        assert alone > 0 and together > 0
        print(f"batch {p.batch_size}: 1x1 {alone:.0f} rows/s, 2x1 {together:.0f} rows/s ({together / alone:.2f}x)")


def test_an_all_cores_variant_has_no_replica_measurement(mlp_path: Path) -> None:
    settings = Settings(home=Path("/nonexistent"), profile_runs=5, profile_max_seconds=0.2, worker_cores=2)
    model = model_info("mlp", inputs=[X], outputs=[Y], max_batch=2)
    for threads in (0, 2):
        profiles = profile_variant(
            mlp_path, model, providers=["CPUExecutionProvider"], threads=threads, settings=settings, data=DATA
        )
        assert all(p.replica_throughput_per_s == () for p in profiles)


def test_replica_throughput_is_stored_and_read_back(tmp_path: Path) -> None:
    from tests.factories import profiles

    services = build_services(Settings(home=tmp_path / "home", build_variants=False), with_jobs=False)
    try:
        measured = tuple(
            replace(p, replica_throughput_per_s=(p.throughput_per_s, 1.5 * p.throughput_per_s))
            for p in profiles({1: 2.0, 4: 4.0})
        )
        seed_model(services, "m", mlp_model().SerializeToString(), task="classify", variants={"t1": measured})
        seed_model(
            services, "old", mlp_model().SerializeToString(), task="classify", variants={"t1": profiles({1: 2.0})}
        )
        read = services.metadata.get_model("m").variants[0].profiles  # type: ignore[union-attr]
        assert [p.replica_throughput_per_s for p in read] == [(500.0, 750.0), (1000.0, 1500.0)]
        old = services.metadata.get_model("old").variants[0].profiles  # type: ignore[union-attr]
        assert old[0].replica_throughput_per_s == ()
        variant = services.metadata.get_model("m").variants[0]  # type: ignore[union-attr]
        assert ProfileOut.of(read[0]).replica_throughput_per_s == [500.0, 750.0]  # what GET /v1/models/{name} shows
        sent = variant_from_json(variant_to_json(variant))  # as a remote worker receives it (timestamps dropped)
        assert sent.profiles == tuple(replace(p, measured_at=None) for p in variant.profiles)
    finally:
        services.close()
