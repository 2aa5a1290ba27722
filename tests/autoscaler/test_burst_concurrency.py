"""A burst on a cold instance gets its second replica in the first period that sees it, not after the burst.

Pure policy tests first (hand-made states), then one end to end: in-process mode, a real worker and ONNX Runtime,
the production loop (1 s period, 5 s statistics window, default policy).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from autoscaler import Autoscaler, model_level
from autoscaler.policy_types import History, PolicyConfig
from infaas.config import Settings
from infaas.engine import Query
from infaas.runtime import Session, open_session
from infaas.selector import Requirements
from infaas.services import Services, build_services
from infaas.worker import LocalWorker
from tests.autoscaler.test_autoscaler_policies import inst, option, view
from tests.factories import mlp_model, profiles, seed_model, wait_for

CFG = PolicyConfig(idle_unload_s=60.0)  # up_periods 2, surge_utilization 0.8: the defaults


def actions(load, cfg: PolicyConfig = CFG, history: History | None = None):
    plan = model_level.decide(view([load], [option(p50=10.0)]), history or History(), cfg)  # 200/s alone
    return plan


def test_a_burst_one_second_old_is_sized_by_the_last_seconds_rate() -> None:
    """The 5 s window reads a 1 s old burst of 400/s as 80/s; the last second reads it as it is."""
    load = inst(rate_per_s=80.0, recent_rate_per_s=400.0, queue_depth=30)
    (action,) = actions(load).actions
    assert action.action == "add_replica" and action.inputs["surge"] and action.inputs["streak"] == 1
    assert action.count == 3  # 400/s at 60% of 200/s: 4 replicas, 3 more (cores allow)
    assert action.reason.startswith("surge: 400.0/s")
    # Read by the windowed rate alone, the same state is in band: nothing for now.
    assert actions(replace(load, recent_rate_per_s=0.0)).actions == ()


def test_a_surge_is_acted_on_in_its_first_period_only_when_the_replicas_are_behind() -> None:
    over = inst(rate_per_s=50.0, recent_rate_per_s=250.0)  # 1.25 of capacity, nothing waits, nothing missed
    first = actions(over)
    assert first.actions == ()  # a second of high arrivals alone may be noise: the usual two periods
    assert [a.action for a in actions(over, history=first.history).actions] == ["add_replica"]
    for behind in (replace(over, queue_depth=5), replace(over, slo_miss_rate=0.2, p99_ms=15.0)):
        (action,) = actions(behind).actions
        assert action.action == "add_replica" and action.inputs["surge"]
    # Saturated: served queries read about 1 whatever is offered, and a queue stands; in band with a queue: nothing.
    assert [a.action for a in actions(inst(rate_per_s=190.0, queue_depth=3)).actions] == ["add_replica"]
    assert actions(inst(rate_per_s=140.0, queue_depth=3)).actions == ()


def test_a_queue_that_already_takes_the_budget_is_a_surge_whatever_the_rate() -> None:
    """Queries waiting behind 20 rows of 10 ms each miss a 100 ms budget now; the rate has not caught up yet."""
    load = inst(rate_per_s=10.0, queue_depth=21, budget_ms=100.0)
    (action,) = actions(load).actions
    assert action.action == "add_replica" and action.inputs["surge"]
    assert actions(replace(load, queue_depth=8)).actions == ()  # 70 ms of queue: over half the budget, not a surge


def test_a_high_last_second_keeps_replicas_that_the_window_calls_idle() -> None:
    """Scale-down reads the demand too: a burst that just started is not a reason to remove replicas."""
    history = History(streaks={"w1/m/fp32": -10})
    cfg = replace(CFG, down_periods=1)
    calm = inst(replicas=3, rate_per_s=20.0)
    assert [a.action for a in actions(calm, cfg, history).actions] == ["remove_replica"]
    assert actions(replace(calm, recent_rate_per_s=300.0), cfg, history).actions == ()


# -- end to end ---------------------------------------------------------------------------------------------------
MODEL = "burst"
SERVICE_S = 0.010  # what every run of the model takes, whatever else the host runs: one replica serves 100/s
RATE = 160.0  # the burst: 1.6x one replica, within two
SECOND_REPLICA_WITHIN_S = 4.0  # measured 1.5-1.7 s at load average 14-18 (4.8 s once at ~30); the old rule 5.5-6.4 s


class _PacedSession:
    """A real ONNX Runtime session whose runs take ``SERVICE_S`` (the rest slept, without the GIL, as a session's
    run is spent): a model as slow as its profile on any host, so the burst builds a real queue."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get_inputs(self):  # type: ignore[no-untyped-def]
        return self._session.get_inputs()

    def get_outputs(self):  # type: ignore[no-untyped-def]
        return self._session.get_outputs()

    def run(self, names, feeds):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        out = self._session.run(names, feeds)
        time.sleep(max(0.0, SERVICE_S - (time.perf_counter() - started)))
        return out


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(
        home=tmp_path / "home",
        build_variants=False,
        autoscaler="on",
        in_process_worker=False,
        worker_cores=2,
        worker_memory_mb=2000.0,
        min_workers=1,
        max_workers=1,
    )
    services = build_services(settings, with_jobs=False)
    variants = {"fp32-t1": profiles({1: SERVICE_S * 1000.0}, p99_factor=1.5, memory_mb=100.0, load_ms=100.0)}
    seed_model(
        services, MODEL, mlp_model().SerializeToString(), task="classify", max_batch=1, public=True, variants=variants
    )
    worker = LocalWorker(
        "local",
        services.store,
        services.live,
        memory_budget_mb=2000.0,
        cores=2,
        opener=lambda *args, **kwargs: _PacedSession(open_session(*args, **kwargs)),
    )
    worker.start()
    services.engine.workers.add(worker)
    services.start_serving()
    yield services
    worker.stop()
    services.close()


def test_a_burst_on_a_cold_instance_gets_its_second_replica_within_seconds(served: Services) -> None:
    engine = served.engine
    scaler = Autoscaler(served)  # production defaults: 1 s period, 5 s window, default policy
    scaler.start()
    try:
        assert wait_for(lambda: scaler.leading, 10)
        time.sleep(1.2)  # an idle period or two, as on a server that has been up a while
        worker = engine.workers.get("local")
        assert worker is not None and worker.status().instances == ()  # cold: nothing loaded
        x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
        need = Requirements(model=MODEL)  # no latency budget: no queue-time trigger, only rate and queue
        second: list[float] = []
        started = time.monotonic()

        def watch() -> None:
            while not second and time.monotonic() - started < 6.0:
                if any(i.replicas >= 2 for i in worker.status().instances):
                    second.append(time.monotonic() - started)
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(max_workers=64) as pool:
            for n in range(int(RATE * 6.0)):  # open loop, for 6 s of a 10 s burst at most
                if second:
                    break
                time.sleep(max(0.0, n / RATE - (time.monotonic() - started)))
                pool.submit(engine.infer, Query(need, {"x": x}, tenant="t"))
        watcher.join()
        assert second, "no second replica within 6 s of the burst starting"
        assert second[0] <= SECOND_REPLICA_WITHIN_S, f"second replica after {second[0]:.2f} s"
        print(f"second replica {second[0]:.2f} s after the burst started")
        decided = [d for d in served.metadata.list_decisions() if d.action == "add_replica"]
        # A surge, or (no latency budget here) the rows that waited behind the replica in two periods in a row.
        assert decided and (decided[-1].inputs["surge"] or decided[-1].inputs["waiting_rows"] > 0), decided
    finally:
        scaler.stop()
