"""How often a latency estimate within budget is a promise kept: raw profile estimates vs calibrated ones.

Issue 12 point 2: the selector compared the profiled p50 with the budget, so a query whose budget sat near
it missed about half the time by design, and a 0.01 ms estimate was served in 0.34 ms. It now compares a
tail estimate (profiled p99 at the query's batch + the time to drain the rows queued + load if cold)
corrected online by ``infaas.calibration``. This benchmark measures, on the example zoo under mixed load,
the share of queries whose estimate was within budget (a promise) that were served within it:

* ``profile_p50``: the profiled p50 of the chosen variant at the query's rows, the old selector's service term
  (without its queue term, which cannot be recomputed after the fact: an optimistic stand-in for the old rule);
* ``raw``: the tail estimate before correction (``ServedBy.raw_estimated_ms``);
* ``corrected``: the estimate the selector compared with the budget (``ServedBy.estimated_ms``), over the first
  ``--learn`` queries (the correction still learning) and over the rest (target: at least 99% kept).

All three are read from the same served queries: the selector chose with the corrected estimate, so the
other two are what the same placements would have promised. Actual latency is the engine's, from the
query's arrival to its answer (``ServedBy.actual_ms``, what SLO misses are counted with).

What is real: the zoo's four models with every variant built and profiled by the real pipeline, the
``QueryEngine`` (selector, calibration, live state) and one in-process ``LocalWorker`` with ONNX Runtime
sessions and adaptive batching. The load: ``--clients`` closed-loop client threads, each drawing a query
class (rows 1 to 64, accuracy floors from none to the CNN's), a budget log-uniform over the class's range and
an exponential think time; the autoscaler is off, so queueing is what the clients make of one replica each.
Timings depend on the host and on anything else running on it (the run records the load average).

    python -m benchmarks.estimate_honesty --home /tmp/zoo-home   # reuses a registered, profiled zoo there

Writes ``benchmarks/results/estimate_honesty.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from infaas.config import Settings
from infaas.engine import Query
from infaas.examples.zoo import TASK, load_zoo
from infaas.registration import RegistrationRequest, register_model
from infaas.selector import ProfileCurve, Requirements
from infaas.services import Services, build_services

log = logging.getLogger("estimate_honesty")
ROOT = Path(__file__).resolve().parents[1]
PROFILED_BATCH = 64
TARGET = 0.99


@dataclass(frozen=True)
class QueryClass:
    """A kind of client: share of the traffic, rows per query, accuracy floor, budget range (log-uniform)."""

    name: str
    share: float
    rows: int
    floor: float
    budget_ms: tuple[float, float]


@dataclass(frozen=True)
class Served:
    order: int  # completion order
    cls: str
    variant: str
    rows: int
    budget_ms: float
    profile_p50_ms: float
    raw_ms: float
    corrected_ms: float
    actual_ms: float


def prepare(zoo_dir: Path, home: Path) -> Services:
    """Register the zoo (variants built and profiled) unless ``home`` already holds it; autoscaler off."""
    settings = Settings(home=home, build_variants=True, autoscaler="off", profile_max_seconds=2.0, heartbeat_s=0.25)
    services = build_services(settings)
    registered = {m.name for m in services.metadata.list_models()}
    for model in load_zoo(zoo_dir):
        if model.name not in registered:
            register_model(
                services,
                RegistrationRequest(
                    name=model.name,
                    task=model.task,
                    model_path=model.onnx_path,
                    validation_path=model.validation_path,
                    max_batch=PROFILED_BATCH,
                    public=True,
                ),
            )
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        if all(m.status in {"ready", "failed"} for m in services.metadata.list_models()):
            break
        time.sleep(1.0)
    services.start_serving()
    return services


def classes_for(services: Services) -> list[QueryClass]:
    """Floors between the zoo models' accuracies, so each class is served by a different set of models."""
    accuracy = sorted({v.accuracy for _m, v in services.metadata.ready_variants() if v.accuracy is not None})
    if len(accuracy) < 4:
        raise SystemExit(f"expected the zoo's four models with accuracies, found {accuracy}")
    between = [round((a + b) / 2, 4) for a, b in zip(accuracy, accuracy[1:], strict=False)]
    return [
        QueryClass("interactive", 0.4, 1, 0.0, (0.02, 2.0)),  # the tiny models: the serving path dominates
        QueryClass("bulk", 0.3, 64, between[0], (0.1, 30.0)),
        QueryClass("accurate", 0.2, 8, between[1], (0.3, 30.0)),
        QueryClass("best", 0.1, 1, between[-1], (3.0, 100.0)),  # the CNN: the heavy neighbour
    ]


def run(
    services: Services,
    inputs: np.ndarray,
    classes: list[QueryClass],
    clients: int,
    duration_s: float,
    think_ms: float,
    seed: int,
) -> tuple[list[Served], dict[str, int]]:
    """Closed-loop clients for ``duration_s``; returns what was served, in completion order, and the failures."""
    engine = services.engine
    curves = {f"{m.name}/{v.name}": ProfileCurve.of(v) for m, v in services.metadata.ready_variants()}
    served: list[Served] = []
    failures: dict[str, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s

    def client(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        while time.monotonic() < stop_at:
            cls = rng.choices(classes, weights=[c.share for c in classes])[0]
            low, high = cls.budget_ms
            budget = math.exp(rng.uniform(math.log(low), math.log(high)))
            start = rng.randrange(0, len(inputs) - cls.rows)
            x = inputs[start : start + cls.rows]
            needs = Requirements(task=TASK, latency_ms=budget, min_accuracy=cls.floor)
            try:
                # One tenant: fair admission (``infaas.fair_share``) never refuses a lone tenant, so every
                # at-risk query is served and counted, as before it existed.
                how = engine.infer(Query(needs, {"input": x}, tenant="bench")).served_by
            except Exception as exc:  # counted, not hidden: a benchmark that drops failures flatters itself
                with lock:
                    failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                continue
            p50 = curves[f"{how.model}/{how.variant}"].service_ms(cls.rows)
            with lock:
                served.append(
                    Served(
                        len(served),
                        cls.name,
                        f"{how.model}/{how.variant}",
                        cls.rows,
                        budget,
                        p50,
                        how.raw_estimated_ms,
                        how.estimated_ms,
                        how.actual_ms,
                    )
                )
            time.sleep(rng.expovariate(1000.0 / think_ms))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return served, failures


def promises(served: list[Served], estimate: str) -> dict[str, object]:
    """Of the queries whose ``estimate`` was within budget, how many were served within it; and the error."""
    promised = [s for s in served if getattr(s, estimate) <= s.budget_ms]
    met = sum(1 for s in promised if s.actual_ms <= s.budget_ms)
    errors = np.array([s.actual_ms - getattr(s, estimate) for s in served]) if served else np.zeros(1)
    return {
        "queries": len(served),
        "promised": len(promised),
        "met": met,
        "met_share": round(met / len(promised), 4) if promised else None,
        "error_ms_p50": round(float(np.percentile(errors, 50)), 4),
        "error_ms_p99": round(float(np.percentile(errors, 99)), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=Path(tempfile.gettempdir()) / "infaas-zoo")
    parser.add_argument("--home", type=Path, help="keep the registered, profiled zoo here and reuse it next time")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--think-ms", type=float, default=2.0, help="mean think time between a client's queries")
    parser.add_argument("--learn", type=int, default=1000, help="first queries counted as 'still learning'")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "estimate_honesty.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("infaas").setLevel(logging.WARNING)
    if not (args.zoo / "zoo.json").exists():
        from infaas.examples.zoo import build_zoo

        build_zoo(args.zoo)
    inputs = np.load(load_zoo(args.zoo)[0].validation_path)["inputs"].astype(np.float32)  # one input for all four
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="infaas-honesty-") as scratch:
        services = prepare(args.zoo, args.home or Path(scratch))
        try:
            classes = classes_for(services)
            started = datetime.now(UTC)
            served, failures = run(services, inputs, classes, args.clients, args.duration, args.think_ms, args.seed)
            calibration = services.engine.calibration.report()
        finally:
            services.close()
    learning, learned = served[: args.learn], served[args.learn :]
    report = {
        "benchmark": "estimate_honesty",
        "started": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_avg_before": load_before, "load_avg_after": os.getloadavg()},
        "config": {
            "clients": args.clients,
            "duration_s": args.duration,
            "think_ms": args.think_ms,
            "learn": args.learn,
            "seed": args.seed,
            "classes": [vars(c) for c in classes],
        },
        "served": len(served),
        "failures": failures,
        "target_met_share": TARGET,
        "before": {
            "profile_p50_all": promises(served, "profile_p50_ms"),
            "raw_all": promises(served, "raw_ms"),
            "corrected_first_queries": promises(learning, "corrected_ms"),
        },
        "after": {
            "corrected": promises(learned, "corrected_ms"),
            "per_class": {c.name: promises([s for s in learned if s.cls == c.name], "corrected_ms") for c in classes},
            "per_variant": {
                key: promises([s for s in learned if s.variant == key], "corrected_ms")
                for key in sorted({s.variant for s in learned})
            },
        },
        "calibration": calibration,
    }
    kept = report["after"]["corrected"]["met_share"]  # type: ignore[index]
    report["meets_target"] = kept is not None and kept >= TARGET
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s: after calibration %s of promises kept (target %s)", args.out, kept, TARGET)


if __name__ == "__main__":
    main()
