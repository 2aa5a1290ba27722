"""Burst benchmark (issue 15 point 3): how soon a cold instance gets its second replica when a 10-second burst
starts, and the SLO misses during the burst; this checkout and (``--before PATH``) earlier code side by side.

In-process mode (SQLite, in-memory live state, one real ``LocalWorker`` of 2 cores, one worker at most so only
the model level acts), the production autoscaler (``Autoscaler(services)``: default policy, 1 s period, 5 s
statistics window). The model is a real ONNX session whose every run is padded to ``--service-ms`` by a sleep
(no GIL held, as a run's time is spent), matching its seeded profile, so that the burst builds the same queue
whatever else this shared host runs: what is compared is how soon each checkout's policy reacts. Nothing is
loaded when the burst starts: the first query loads the variant. Arrivals are open-loop at ``--rate-factor``
times one replica's rows/s (``max_batch`` 1), each query with a ``--budget-ms`` latency budget, and again with
none (so no queue-time trigger). A sampler reads the worker's status every 20 ms: ``second_replica_s`` is the
time from the first query to the status showing two replicas; a query misses when it takes longer than its
budget (``misses_after_2s``: of queries sent 2 s or more into the burst).

    python benchmarks/burst.py [--before PATH] [--rounds 2] [--seconds 10] [--rate-factor 1.6] [--budget-ms 40]

``--before`` is a checkout of earlier code (``git worktree add /tmp/before <commit>``); each run is a child
process importing ``infaas`` and ``autoscaler`` from its checkout. Runs alternate now / before. Writes
``benchmarks/results/burst.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "burst.json"
MODEL = "burst"


def _git(path: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=False)
    return done.stdout.strip()


# -- the parent: run each checkout, compare -------------------------------------------------------------------------
def _run_child(code: Path, args: argparse.Namespace, budget_ms: float, rate: float) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(code),
        "--service-ms",
        str(args.service_ms),
        "--rate",
        str(rate),
        "--seconds",
        str(args.seconds),
        "--budget-ms",
        str(budget_ms),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=str(code))
    if done.returncode != 0:
        raise SystemExit(f"child for {code} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict]) -> dict[str, Any]:
    seconds = [r["second_replica_s"] for r in runs]
    reached = [s for s in seconds if s is not None]
    return {
        "second_replica_s": seconds,
        "second_replica_s_median": statistics.median(reached) if len(reached) == len(seconds) else None,
        "miss_rate": [r["miss_rate"] for r in runs],
        "miss_rate_median": statistics.median(r["miss_rate"] for r in runs),
        "misses_after_2s": [r["misses_after_2s"] for r in runs],
        "p99_ms": [r["p99_ms"] for r in runs],
        "queries": [r["queries"] for r in runs],
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="a checkout of earlier code, compared side by side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate-factor", type=float, default=1.6)
    parser.add_argument("--budget-ms", type=float, default=40.0)
    parser.add_argument("--service-ms", type=float, default=10.0)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_child(args)))
        return
    load_before = os.getloadavg()
    rate = args.rate_factor * 1000.0 / args.service_ms
    checkouts = {"now": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    scenarios = {f"budget_{args.budget_ms:g}ms": args.budget_ms, "no_budget": 0.0}
    runs: dict[str, dict[str, list[dict]]] = {sc: {label: [] for label in checkouts} for sc in scenarios}
    for round_ in range(args.rounds):
        for scenario, budget_ms in scenarios.items():
            for label, code in checkouts.items():
                run = _run_child(code, args, budget_ms, rate)
                runs[scenario][label].append(run)
                print(
                    f"round {round_ + 1} {scenario} {label}: second replica at {run['second_replica_s']} s, "
                    f"{run['miss_rate']:.1%} of {run['queries']} queries missed, p99 {run['p99_ms']:.0f} ms",
                    flush=True,
                )
    results = {
        "what": "time from the first query of a 10 s burst on a cold instance to its second replica, and SLO misses",
        "command": " ".join(["python", "benchmarks/burst.py", *sys.argv[1:]]),
        "host_cores": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "service_ms": args.service_ms,
        "rate_per_s": round(rate, 1),
        "seconds": args.seconds,
        "checkouts": {
            label: {"path": str(code), "commit": _git(code, "rev-parse", "--short", "HEAD")}
            for label, code in checkouts.items()
        },
        "results": {sc: {label: _summary(r) for label, r in by.items()} for sc, by in runs.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for scenario, by in results["results"].items():
        for label, summary in by.items():
            print(
                f"{scenario} {label}: second replica median {summary['second_replica_s_median']} s, "
                f"miss rates {summary['miss_rate']}"
            )
    print(f"wrote {RESULTS}")


# -- the child: one burst on one checkout's code --------------------------------------------------------------------
def _child(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(args.child))
    import numpy as np

    from autoscaler import Autoscaler
    from infaas.config import Settings
    from infaas.engine import Query
    from infaas.runtime import open_session
    from infaas.selector import Requirements
    from infaas.services import build_services
    from infaas.worker import LocalWorker
    from tests.factories import mlp_model, profiles, seed_model, wait_for

    service_s = args.service_ms / 1000.0

    class PacedSession:
        """A real session whose runs take ``service_s`` (the rest slept without the GIL)."""

        def __init__(self, session: Any) -> None:
            self._session = session

        def get_inputs(self) -> Any:
            return self._session.get_inputs()

        def get_outputs(self) -> Any:
            return self._session.get_outputs()

        def run(self, names: Any, feeds: Any) -> Any:
            started = time.perf_counter()
            out = self._session.run(names, feeds)
            time.sleep(max(0.0, service_s - (time.perf_counter() - started)))
            return out

    with tempfile.TemporaryDirectory(prefix="infaas-burst-child-") as home:
        settings = Settings(
            home=Path(home),
            build_variants=False,
            autoscaler="on",
            in_process_worker=False,
            worker_cores=2,
            worker_memory_mb=4000.0,
            min_workers=1,
            max_workers=1,
        )
        services = build_services(settings, with_jobs=False)
        measured = profiles({1: args.service_ms}, p99_factor=1.5, memory_mb=100.0, load_ms=100.0)
        model = mlp_model().SerializeToString()
        seed_model(services, MODEL, model, task="classify", max_batch=1, public=True, variants={"fp32-t1": measured})
        local = LocalWorker(
            "local",
            services.store,
            services.live,
            memory_budget_mb=4000.0,
            cores=2,
            opener=lambda *a, **kw: PacedSession(open_session(*a, **kw)),
        )
        local.start()
        services.engine.workers.add(local)
        services.start_serving()
        engine = services.engine
        scaler = Autoscaler(services)
        scaler.start()
        assert wait_for(lambda: scaler.leading, 10), "the autoscaler did not take the lease"
        time.sleep(1.5)  # a few idle periods, as on a server that has been up a while

        seen: dict[str, float] = {}
        stop = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                for i in local.status().instances:
                    if i.variant_key.startswith(f"{MODEL}/"):
                        seen.setdefault("loaded", time.monotonic() - t0)
                        if i.replicas >= 2:
                            seen.setdefault("second", time.monotonic() - t0)
                time.sleep(0.02)

        x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
        need = Requirements(model=MODEL, latency_ms=args.budget_ms if args.budget_ms > 0 else None)
        outcomes: list[tuple[float, float, bool]] = []  # (sent at, latency ms, error)

        def one(sent: float) -> None:
            try:
                engine.infer(Query(need, {"x": x}, tenant="t"))
                outcomes.append((sent, (time.monotonic() - t0 - sent) * 1000.0, False))
            except Exception:
                outcomes.append((sent, (time.monotonic() - t0 - sent) * 1000.0, True))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with ThreadPoolExecutor(max_workers=64) as pool:
            for n in range(int(args.rate * args.seconds)):
                at = n / args.rate
                delay = at - (time.monotonic() - t0)
                if delay > 0:
                    time.sleep(delay)
                pool.submit(one, at)
        time.sleep(0.5)
        stop.set()
        sampler.join()
        decisions = [
            {"action": d.action, "reason": d.reason, "outcome": d.outcome, "inputs": d.inputs}
            for d in reversed(services.metadata.list_decisions(limit=50))
            if d.level == "model"
        ]
        scaler.stop()
        local.stop()
        services.close()
    latencies = np.array([lat for _s, lat, _e in outcomes])
    budget = args.budget_ms if args.budget_ms > 0 else float("inf")  # without one, only errors miss
    missed = [(s, lat, e) for s, lat, e in outcomes if e or lat > budget]
    return {
        "code": str(args.child),
        "second_replica_s": round(seen["second"], 2) if "second" in seen else None,
        "loaded_s": round(seen["loaded"], 2) if "loaded" in seen else None,
        "queries": len(outcomes),
        "errors": sum(1 for o in outcomes if o[2]),
        "miss_rate": round(len(missed) / max(1, len(outcomes)), 4),
        "misses_after_2s": sum(1 for s, _l, _e in missed if s >= 2.0),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "decisions": decisions[:4],
    }


if __name__ == "__main__":
    main()
