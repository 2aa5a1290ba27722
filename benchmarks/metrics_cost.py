"""What the Prometheus metrics cost (issue 18 points 1 and 6), below the HTTP level ``overhead.py`` measures.

* ``served_us`` / ``failed_us``: one ``QueryMetrics.served`` (a request counter, five histograms, an SLO-miss
  check) and one ``QueryMetrics.failed``, per call, on bound label children: what metrics add to every query.
* ``engine_serve_us``: ``QueryEngine.serve`` on seeded linear models (embedded mode, in-process worker) with
  metrics off (``engine.metrics is None``) and on, in adjacent pairs: the whole per-query cost in context
  (``added_us``: the median of the pairs' differences).
* ``scrape_ms``: one ``GET /metrics`` worth of ``generate_latest`` (live state, three GROUP BY queries on SQLite)
  with 20 variants served: what a Prometheus scrape costs the front-end, every scrape interval.

Each number is the median over rounds (load from other processes hits both sides of a comparison alike).

    python benchmarks/metrics_cost.py [--quick]   # writes benchmarks/results/metrics_cost.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infaas.config import Settings  # noqa: E402
from infaas.engine import Query  # noqa: E402
from infaas.errors import BadRequest  # noqa: E402
from infaas.live_state import QueryRecord  # noqa: E402
from infaas.metrics import QueryMetrics, StateCollector, cached_threads  # noqa: E402
from infaas.selector import Requirements  # noqa: E402
from infaas.services import build_services  # noqa: E402
from tests.factories import linear_model, profiles, seed_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "metrics_cost.json"


def _per_call_us(function: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) / calls * 1e6


def hooks(rounds: int, calls: int) -> dict[str, float]:
    """Per-call cost of the two engine hooks, on children already bound (the steady state)."""
    metrics = QueryMetrics(CollectorRegistry())
    record = QueryRecord(
        at=time.time(), tenant="t", model="m", variant="fp32", worker="local", batch=1, latency_ms=100.0,
        min_accuracy=0.0, max_cost=None, estimated_ms=2.0, actual_ms=1.3, queue_ms=0.1, cost=1e-6,
        slo_at_risk=False, reason="",
    )  # fmt: skip
    error = BadRequest("x")
    metrics.served("v1", record, 0.9, 1)
    served = [_per_call_us(lambda: metrics.served("v1", record, 0.9, 1), calls) for _ in range(rounds)]
    failed = [_per_call_us(lambda: metrics.failed("v1", error), calls) for _ in range(rounds)]
    return {"served_us": statistics.median(served), "failed_us": statistics.median(failed)}


def engine(home: Path, rounds: int, pairs: int) -> dict[str, Any]:
    """``QueryEngine.serve`` with metrics off and on, alternating rounds; and one scrape's cost."""
    services = build_services(Settings(home=home, autoscaler="off"), with_jobs=False)
    services.start_serving()  # registers the in-process worker
    try:
        for i in range(20):
            seed_model(services, f"m{i}", linear_model(4, 3), task="t", variants={"fp32": profiles({1: 0.1})})
        x = np.zeros((1, 4), np.float32)
        queries = [Query(Requirements(model=f"m{i}", latency_ms=1000.0), {"x": x}) for i in range(20)]
        engine = services.engine
        registry = CollectorRegistry()
        metrics = QueryMetrics(registry)
        registry.register(
            StateCollector(services.live, services.metadata, cached_threads(engine.cache), heartbeat_ttl_s=3.0)
        )
        loop = asyncio.new_event_loop()

        def serve_all() -> None:
            for query in queries:
                loop.run_until_complete(engine.serve(lambda query=query: (query, None), 64))

        for on in (False, True):  # warm: load every variant, bind every child
            engine.metrics = metrics if on else None
            serve_all()
        # Off and on in adjacent pairs, in alternating order: a burst of load from other processes lands on both
        # sides of most pairs, and the median of the pairs' differences ignores the rest.
        off_us, on_us, added_us = [], [], []
        for i in range(pairs):
            timed = {}
            for on in (False, True) if i % 2 else (True, False):
                engine.metrics = metrics if on else None
                timed[on] = _per_call_us(serve_all, 1) / len(queries)
            off_us.append(timed[False])
            on_us.append(timed[True])
            added_us.append(timed[True] - timed[False])
        scrape = [_per_call_us(lambda: generate_latest(registry), 20) / 1000.0 for _ in range(rounds)]
        loop.close()
        off = statistics.median(off_us)
        added = statistics.median(added_us)
        return {
            "engine_serve_us": {
                "pairs": pairs,
                "metrics_off": off,
                "metrics_on": statistics.median(on_us),
                "added_us": added,
                "added_pct": 100 * added / off,
            },
            "scrape_ms": statistics.median(scrape),
            "scrape_bytes": len(generate_latest(registry)),
        }
    finally:
        services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args()
    rounds, calls = (3, 2_000) if args.quick else (9, 20_000)
    with tempfile.TemporaryDirectory() as home:
        result = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_1m": os.getloadavg()[0]},
            "rounds": rounds,
            **hooks(rounds, calls * 5),
            **engine(Path(home), rounds, calls // 10),
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
