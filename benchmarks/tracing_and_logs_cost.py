"""What traces and logs cost the serving path (issue 18 points 3 and 4).

Three measurements, each as the median of alternating rounds (so load from other processes hits both sides):

* ``tracing_off_check``: the one test of ``tracing.ENABLED`` a query pays while tracing is off (the default):
  a function that tests the flag against the same function without the test.
* ``engine_query``: ``QueryEngine.infer`` on a seeded linear model (embedded mode, in-process worker), with
  tracing off and on (the SDK's batch processor, spans dropped by the exporter): what turning traces on costs.
* ``request_id``: ``infaas.logs.RequestIds`` around a trivial ASGI app against the bare app: what the request-id
  hook adds to every HTTP request (target: under 2 µs).

    python benchmarks/tracing_and_logs_cost.py [--quick]   # writes benchmarks/results/tracing_and_logs_cost.json
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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infaas import logs, tracing  # noqa: E402
from infaas.config import Settings  # noqa: E402
from infaas.engine import Query  # noqa: E402
from infaas.selector import Requirements  # noqa: E402
from infaas.services import build_services  # noqa: E402
from tests.factories import linear_model, profiles, seed_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "tracing_and_logs_cost.json"


class _Dropped(SpanExporter):
    """Accepts spans and keeps none: the cost measured is infaas's and the SDK's, not a collector's."""

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _per_call_ns(function: Callable[[], object], calls: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(calls):
        function()
    return (time.perf_counter_ns() - started) / calls


def _paired(a: Callable[[], float], b: Callable[[], float], rounds: int) -> dict[str, float]:
    """Median per-call time of ``a`` and of ``b``, and the median of their per-round differences."""
    first, second, diffs = [], [], []
    for _ in range(rounds):
        x, y = a(), b()
        first.append(x)
        second.append(y)
        diffs.append(x - y)
    return {"a": statistics.median(first), "b": statistics.median(second), "diff": statistics.median(diffs)}


def tracing_off_check(rounds: int, calls: int) -> dict[str, float]:
    def checked() -> None:
        if tracing.ENABLED:
            raise AssertionError("tracing is on")

    def unchecked() -> None:
        return None

    measured = _paired(lambda: _per_call_ns(checked, calls), lambda: _per_call_ns(unchecked, calls), rounds)
    return {"with_check_ns": measured["a"], "without_ns": measured["b"], "added_ns": measured["diff"]}


def engine_query(rounds: int, calls: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        services = build_services(Settings(home=Path(tmp), build_variants=False, autoscaler="off"), with_jobs=False)
        try:
            seed_model(services, "lin", linear_model(), task="t", variants={"fp32": profiles({1: 0.05})})
            services.start_serving()
            query = Query(Requirements(model="lin"), {"x": np.ones((1, 4), np.float32).tolist()})
            for _ in range(200):  # load the instance, warm the caches
                services.engine.infer(query)

            def timed() -> float:
                return _per_call_ns(lambda: services.engine.infer(query), calls) / 1000.0

            off_us, on_us = [], []
            for _ in range(rounds):
                tracing.shutdown()
                off_us.append(timed())
                # As an operator's OTLP setup has it (the batch processor), exporting to nowhere.
                tracing.configure("benchmark", exporter=_Dropped(), batched=True)
                on_us.append(timed())
            tracing.shutdown()
        finally:
            services.close()
    off, on = statistics.median(off_us), statistics.median(on_us)
    return {"off_us": off, "on_us": on, "on_added_us": on - off}


def request_id(rounds: int, calls: int) -> dict[str, float]:
    async def app(scope: dict, receive: object, send: object) -> None:
        return None

    wrapped = logs.RequestIds(app)
    scope = {"type": "http"}

    async def loop(target: Callable[..., Any]) -> float:
        started = time.perf_counter_ns()
        for _ in range(calls):
            await target(scope, None, None)
        return (time.perf_counter_ns() - started) / calls

    async def main() -> dict[str, float]:
        hooked, bare, diffs = [], [], []
        for _ in range(rounds):
            # Each HTTP request runs in its own task with its own context; copy one per round like uvicorn would.
            x = await asyncio.create_task(loop(wrapped))
            y = await asyncio.create_task(loop(app))
            hooked.append(x)
            bare.append(y)
            diffs.append(x - y)
        return {
            "with_hook_ns": statistics.median(hooked),
            "bare_ns": statistics.median(bare),
            "added_ns": statistics.median(diffs),
        }

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args()
    rounds = 5 if args.quick else 15
    results: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "rounds": rounds,
        "tracing_off_check": tracing_off_check(rounds, 1_000_000),
        "request_id": request_id(rounds, 200_000),
        "engine_query": engine_query(rounds, 500 if args.quick else 2000),
    }
    results["targets"] = {"request_id_under_2us": results["request_id"]["added_ns"] < 2000}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
