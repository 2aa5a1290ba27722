"""The autoscaler policies' own cost per period at fleet sizes up to 2,000 workers (issue 20 §3-4).

A period must be decided well inside itself (the model level's is 1 s), or it acts on a view that is already late.
Here the real ``Autoscaler.view`` (``autoscaler/loop.py``), ``model_level.decide`` and ``vm_level.decide`` run on
the state of ``benchmarks/fleet_sim.py``'s simulated fleet: N workers provisioned as static-peak is (every worker
preloaded with the idle-system picks), a few simulated seconds of traffic at the load the fleet is sized for, so
every instance has a rate, a p99 and a queue. Timed per size, CPU time of this process (``time.process_time``: the
host is shared, wall time there measures the neighbours):

* ``live_reads_ms``: the simulator's stand-ins for live state and the worker clients (Redis and HTTP in
  production; not policy code, reported so that it can be subtracted);
* ``view_ms``: ``Autoscaler.view`` in all, and ``view_own_ms`` = that minus the stand-in reads;
* ``model_decide_ms`` and ``vm_decide_ms``: the two policies, each on a fresh history and on the history its first
  call returned (the second period, where streaks and cool-downs exist).

Run: ``python -m benchmarks.policy_speed --home HOME [--sizes 250 1000 2000]``; writes
``benchmarks/results/policy_speed.json`` with the load average, per size the medians of ``--repeat`` rounds, and the
slope of each cost against the worker count (log-log; 1 is linear).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from autoscaler import model_level, vm_level
from autoscaler.policy_types import History, PolicyConfig
from benchmarks.fleet_sim import Day, FleetSim, Setup, fleet_classes, load_candidates, peak_workers_for

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _cpu_ms(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    started = time.process_time()
    out = fn(*args)
    return (time.process_time() - started) * 1000.0, out


def loaded_fleet(candidates: list, workers: int, cores: int, memory_mb: float, seconds: float) -> FleetSim:
    """A static fleet of ``workers`` workers after ``seconds`` of traffic at the rate it is sized for."""
    classes = fleet_classes(candidates)
    config = PolicyConfig()
    probe = FleetSim(
        candidates,
        classes,
        Setup("probe", False, False, 0, False),
        arrivals=None,
        length_s=1.0,
        cores=cores,
        memory_mb=memory_mb,
        config=config,
        tick_s=1.0,
        group=16,
    )
    peak_core_s, _mean = peak_workers_for(probe, Day(1, 1, 1), config, cores)
    qps = workers * cores * config.target_utilization / peak_core_s
    sim = FleetSim(
        candidates,
        classes,
        Setup("static", False, False, workers, True),
        arrivals=Day(seconds + 1, trough_qps=qps, peak_qps=qps, bursts=()),
        length_s=seconds + 1,
        cores=cores,
        memory_mb=memory_mb,
        config=config,
        tick_s=1.0,
        group=16,
        max_workers=2 * workers,
    )
    sim.env.process(sim.tick())
    sim.env.run(until=seconds)
    return sim


def measure(sim: FleetSim, repeat: int) -> dict:
    """Median CPU milliseconds of each stage over ``repeat`` rounds."""
    config = sim.config
    live = sim.scaler.engine.live
    clients = sim.scaler.engine.workers
    rounds: dict[str, list[float]] = {
        k: []
        for k in ("live_reads_ms", "view_ms", "view_own_ms", "model_decide_ms", "model_decide_2nd_ms", "vm_decide_ms")
    }
    rounds["vm_decide_2nd_ms"] = []
    actions = 0
    for _ in range(repeat):

        def reads() -> None:
            live.snapshot()
            live.instance_stats(sim.scaler.stats_window_s)
            live.instance_stats(1.0)
            live.recent_queries(1000)
            for w in sim.visible():
                clients.get(w.id).status()

        reads_ms, _ = _cpu_ms(reads)
        view_ms, view = _cpu_ms(sim.scaler.view)
        first_ms, plan = _cpu_ms(model_level.decide, view, History(), config)
        second_ms, _ = _cpu_ms(model_level.decide, view, plan.history, config)
        vm_ms, vm_plan = _cpu_ms(vm_level.decide, view, History(), config, plan.unmet, plan.history.derate)
        vm2_ms, _ = _cpu_ms(vm_level.decide, view, vm_plan.history, config, plan.unmet, plan.history.derate)
        actions = len(plan.actions) + len(vm_plan.actions)
        for key, value in (
            ("live_reads_ms", reads_ms),
            ("view_ms", view_ms),
            ("view_own_ms", max(0.0, view_ms - reads_ms)),
            ("model_decide_ms", first_ms),
            ("model_decide_2nd_ms", second_ms),
            ("vm_decide_ms", vm_ms),
            ("vm_decide_2nd_ms", vm2_ms),
        ):
            rounds[key].append(value)
    out = {k: round(statistics.median(v), 2) for k, v in rounds.items()}
    out["instances"] = sum(len(w.instances) for w in view.workers)
    out["actions_first_period"] = actions
    out["policies_own_ms"] = round(out["view_own_ms"] + out["model_decide_2nd_ms"] + out["vm_decide_2nd_ms"], 2)
    return out


def slope(sizes: list[int], values: list[float]) -> float | None:
    """Log-log slope of a cost against the worker count (1: linear, 2: quadratic)."""
    points = [(math.log(s), math.log(v)) for s, v in zip(sizes, values, strict=True) if v > 0]
    if len(points) < 2:
        return None
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    return round(float(np.polyfit(xs, ys, 1)[0]), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a registered, profiled zoo home")
    parser.add_argument("--sizes", type=int, nargs="*", default=[250, 1000, 2000])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--memory-mb", type=float, default=4096.0)
    parser.add_argument("--seconds", type=float, default=4.0, help="simulated traffic before measuring")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "policy_speed.json")
    args = parser.parse_args()
    candidates = load_candidates(args.home)
    load_before = os.getloadavg()
    sizes: dict[int, dict] = {}
    for n in args.sizes:
        sim = loaded_fleet(candidates, n, args.cores, args.memory_mb, args.seconds)
        sizes[n] = measure(sim, args.repeat)
        print(n, json.dumps(sizes[n]), flush=True)
    keys = [k for k in next(iter(sizes.values())) if k.endswith("_ms")]
    report = {
        "what": __doc__,
        "variants": len(candidates),
        "load_average": {"before": [round(x, 1) for x in load_before], "after": [round(x, 1) for x in os.getloadavg()]},
        "sizes": {str(n): r for n, r in sizes.items()},
        "slopes": {k: slope(list(sizes), [sizes[n][k] for n in sizes]) for k in keys},
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
