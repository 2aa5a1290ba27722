"""Drift: a cascade whose live escalation share leaves its validation interval for a sustained window is marked
stale (not selected), recorded, and recalibrated on the stored validation set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infaas.cascade_drift import CascadeMonitor, catalog_monitor
from infaas.config import Settings
from infaas.db.models import VariantStatus
from infaas.services import Services, build_services
from tests.variant_generator.test_cascades import TASK, seed_pair
from variant_generator.cascades.construct import build_task_cascades, recalibrate_cascade

KEY = "big/cascade-cpu-fp32"


def monitor(stale: list[tuple[str, dict[str, Any]]]) -> CascadeMonitor:
    return CascadeMonitor(
        lambda key: (0.55, 0.65),
        lambda key, numbers: stale.append((key, numbers)),
        window_s=30,
        min_rows=200,
        checker=False,
    )


def test_a_share_inside_its_interval_or_on_few_rows_is_never_stale() -> None:
    stale: list[tuple[str, dict[str, Any]]] = []
    drift = monitor(stale)
    for t in range(120):
        drift.observe(KEY, 10, 6, now=float(t))  # 60% escalated: the validation estimate
        drift.check(now=float(t))
    drift.observe("big/other", 50, 50, now=120.0)  # all escalated, but 50 rows in the window
    for t in range(120, 200):
        drift.check(now=float(t))
    assert stale == []
    status = drift.status(KEY)
    assert status is not None and status["escalation_share_total"] == 0.6 and not status["stale"]


def test_a_share_outside_for_the_window_is_stale_once() -> None:
    stale: list[tuple[str, dict[str, Any]]] = []
    drift = monitor(stale)
    for t in range(100):
        drift.observe(KEY, 10, 10, now=float(t))  # every row escalates: traffic unlike the validation rows
        drift.check(now=float(t))
        if t < 48:  # 200 rows at t=19, outside since then: not yet for 30 s
            assert stale == []
    assert [key for key, _ in stale] == [KEY]
    numbers = stale[0][1]
    assert numbers["live_escalation_share"] == 1.0 and numbers["expected_interval"] == [0.55, 0.65]
    assert drift.snapshot()[KEY]["stale"]


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(home=tmp_path, profile_runs=3, profile_max_seconds=0.1, worker_cores=2)
    built = build_services(settings, with_jobs=False)
    yield built
    built.close()


@pytest.mark.timeout(900)  # two constructions (sandboxed runs and profiling): minutes on a loaded 2-core host
def test_stale_cascade_is_not_selected_and_recalibration_on_the_same_rows_keeps_it_stale(services: Services) -> None:
    seed_pair(services, cheap_ms=0.01)
    build_task_cascades(services, TASK, "local")
    assert KEY in {c.key for c in services.engine.cache.for_model("big")}
    drift = catalog_monitor(services.metadata, None, window_s=5, min_rows=50)
    drift._checker = False  # this test drives the clock
    for t in range(20):
        drift.observe(KEY, 10, 10, now=float(t))
        drift.check(now=float(t))
    model = services.metadata.get_model("big")
    assert model is not None
    variant = next(v for v in model.variants if v.name == "cascade-cpu-fp32")
    assert variant.status == VariantStatus.STALE and "stale: live escalation share 100.0%" in (variant.reason or "")
    assert KEY not in {c.key for c in services.engine.cache.for_model("big")}  # not selected
    assert any(d.kind == "stale" and d.variant == KEY for d in services.metadata.list_cascade_decisions(TASK))

    recalibrate_cascade(services, "big", "cascade-cpu-fp32")
    model = services.metadata.get_model("big")
    assert model is not None
    variant = next(v for v in model.variants if v.name == "cascade-cpu-fp32")
    assert variant.status == VariantStatus.STALE and "the same threshold" in (variant.reason or "")
    assert any(d.kind == "recalibrated" for d in services.metadata.list_cascade_decisions(TASK))
