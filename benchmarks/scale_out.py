"""Scale-out benchmark: one front-end with 1 vs 2 remote workers, and the cost of Redis on the query path.

Needs Redis on 127.0.0.1:6379 (override with INFAAS_BENCH_REDIS_URL). The front-end keeps its
catalog in a SQLite file (the query path never touches SQL, so the database does not matter here).
Every process runs on this machine, so on a small machine the load generator, the front-end and
the workers compete for the same cores: read the figures with ``cores`` in mind.

    python benchmarks/scale_out.py [--seconds 6] [--threads 16]

Prints the figures and writes ``benchmarks/results/scale_out.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
import urllib3

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infaas.catalog import VariantInfo  # noqa: E402
from infaas.db.session import Database  # noqa: E402
from infaas.live_state import QueryRecord  # noqa: E402
from infaas.live_state.redis import RedisLiveState  # noqa: E402
from infaas.metadata import MetadataStore  # noqa: E402
from infaas.worker.remote import RemoteWorkerClient  # noqa: E402
from tests.factories import write_mlp  # noqa: E402
from tests.s3server import free_port  # noqa: E402

REDIS_URL = os.environ.get("INFAAS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "infaas", *args],
        env=env,
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _wait(check: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def load(url: str, body: bytes, seconds: float, threads: int) -> dict[str, float]:
    """Closed-loop load: ``threads`` clients sending queries back to back for ``seconds``."""
    parsed = urllib3.util.parse_url(url)
    pool = urllib3.HTTPConnectionPool(parsed.host, parsed.port, maxsize=threads, retries=False, timeout=30.0)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0]
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        mine = latencies[i]
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            response = pool.urlopen("POST", "/v1/infer", body=body, headers={"content-type": "application/json"})
            if response.status != 200:
                errors[0] += 1
            mine.append(time.perf_counter() - start)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    began = time.monotonic()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    elapsed = time.monotonic() - began
    all_ms = np.array([x for xs in latencies for x in xs]) * 1000.0
    return {
        "queries": int(all_ms.size),
        "errors": errors[0],
        "throughput_qps": float(all_ms.size / elapsed),
        "p50_ms": float(np.percentile(all_ms, 50)),
        "p99_ms": float(np.percentile(all_ms, 99)),
    }


def redis_costs(n: int = 2000) -> dict[str, float]:
    """Per-call cost of each live-state operation on the query path, measured directly."""
    prefix = f"infaas-bench-{uuid.uuid4().hex[:8]}"
    live = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=0.0)
    cached = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=0.005)
    raw = redis.Redis.from_url(REDIS_URL)
    try:
        from infaas.live_state import InstanceState, WorkerState

        for w in ("w1", "w2"):
            live.register_worker(WorkerState(id=w, address=f"http://{w}", cores=2, memory_budget_mb=1000))
            live.set_instance(InstanceState(w, "m/v", 1, 10.0))
            live.set_queue_depth(w, "m/v", 1)
        live.flush()
        record = QueryRecord(
            at=time.time(), tenant="t", model="m", variant="v", worker="w1", batch=1, latency_ms=10.0,
            min_accuracy=0.0, max_cost=None, estimated_ms=1.0, actual_ms=1.2, queue_ms=0.0, cost=1e-9,
            slo_at_risk=False, reason="bench",
        )  # fmt: skip

        def per_call_us(fn: Any, count: int = n) -> float:
            start = time.perf_counter()
            for _ in range(count):
                fn()
            return (time.perf_counter() - start) / count * 1e6

        out = {
            "ping_round_trip_us": per_call_us(raw.ping),
            "snapshot_fetch_us (1 Lua call, 2 workers)": per_call_us(live.snapshot),
            "snapshot_cached_us": per_call_us(cached.snapshot),
            "record_query_buffered_us": per_call_us(lambda: live.record_query(record)),
            "set_queue_depth_buffered_us": per_call_us(lambda: live.set_queue_depth("w1", "m/v", 2)),
        }
        batch: list[QueryRecord] = [record] * 100
        start = time.perf_counter()
        for _ in range(50):
            for r in batch:
                live.record_query(r)
            live.flush()
        out["flush_per_record_us (batches of 100)"] = (time.perf_counter() - start) / 5000 * 1e6
        start = time.perf_counter()
        for _ in range(200):
            live.record_query(record)
            live.set_queue_depth("w1", "m/v", 1)
            live.flush()
        out["flush_unbatched_one_query_us"] = (time.perf_counter() - start) / 200 * 1e6
        return out
    finally:
        live.delete_all()
        live.close()
        cached.close()
        raw.close()


def _variant(tmp: Path, model: str, name: str) -> VariantInfo:
    """A variant as the catalog describes it (read from the front-end's database)."""
    db = Database(f"sqlite:///{tmp / 'infaas.db'}")
    try:
        return next(v for m, v in MetadataStore(db).ready_variants() if m.name == model and v.name == name)
    finally:
        db.dispose()


def _commands(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def _front_end(env: dict[str, str], tmp: Path, procs: list[subprocess.Popen[bytes]]) -> str:
    """Start a front-end, register the benchmark model through it, wait for its variants."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs.append(_spawn(["serve", "--port", str(port)], {**env, "INFAAS_HOME": str(tmp / "fe")}, tmp / "fe.log"))
    http = urllib3.PoolManager()
    _wait(lambda: http.request("GET", f"{url}/v1/models").status == 200, "the front-end")
    model = write_mlp(tmp / "mlp.onnx", in_dim=256, hidden=1024, classes=10)
    fields = {"name": "mlp", "task": "classification", "max_batch": "8", "model": ("mlp.onnx", model.read_bytes())}
    response = http.request("POST", f"{url}/v1/models", fields=fields)
    assert response.status == 201, response.data
    _wait(lambda: orjson.loads(http.request("GET", f"{url}/v1/models/mlp").data)["status"] == "ready", "variants", 120)
    return url


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "INFAAS_DATABASE_URL": f"sqlite:///{tmp / 'infaas.db'}",
        "INFAAS_MODEL_STORE": str(tmp / "store"),
        "INFAAS_AUTOSCALER": "off",
        "INFAAS_PROFILE_RUNS": "10",
        "INFAAS_PROFILE_MAX_SECONDS": "1",
        "INFAAS_WORKER_CORES": "1",
        **extra,
    }
    for key in ("INFAAS_BROKER_URL", "INFAAS_ADMIN_KEY", "INFAAS_REDIS_URL"):
        if key not in extra:
            env.pop(key, None)
    return env


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_embedded(body: bytes, seconds: float, threads: int) -> dict[str, Any]:
    """Baseline: one front-end with its in-process worker and in-memory live state (no Redis, no HTTP hop)."""
    tmp = Path(tempfile.mkdtemp(prefix="infaas-bench-embedded-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        url = _front_end(_env(tmp, INFAAS_IN_PROCESS_WORKER="true"), tmp, procs)
        load(url, body, 1.0, threads)  # warm-up
        figures = load(url, body, seconds, threads)
        print(f"embedded (in-process worker): {figures}", flush=True)
        return figures
    finally:
        _stop(procs)


def run_scaled_out(body: bytes, seconds: float, threads: int) -> dict[str, Any]:
    """One front-end over Redis with 1, then 2, remote workers."""
    tmp = Path(tempfile.mkdtemp(prefix="infaas-bench-"))
    prefix = f"infaas-bench-{uuid.uuid4().hex[:8]}"
    env = _env(tmp, INFAAS_REDIS_URL=REDIS_URL, INFAAS_REDIS_PREFIX=prefix, INFAAS_IN_PROCESS_WORKER="false")
    procs: list[subprocess.Popen[bytes]] = []
    raw = redis.Redis.from_url(REDIS_URL)
    live = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=0.0)
    http = urllib3.PoolManager()
    try:
        url = _front_end(env, tmp, procs)
        results: dict[str, Any] = {}
        for n_workers in (1, 2):
            wid = f"w{n_workers}"
            wport = free_port()
            worker_env = {**env, "INFAAS_HOME": str(tmp / wid)}
            procs.append(_spawn(["worker", "--port", str(wport), "--id", wid], worker_env, tmp / f"{wid}.log"))
            _wait(lambda wid=wid: wid in {w.id for w in live.workers()}, f"worker {wid}")
            # Place the chosen variant on the new worker as the autoscaler would: the selector keeps
            # a model where it is loaded and spreads queries only over loaded instances.
            served = orjson.loads(http.request("POST", f"{url}/v1/infer", body=body).data)["served_by"]
            address = next(w.address for w in live.workers() if w.id == wid)
            RemoteWorkerClient(wid, address).load(_variant(tmp, served["model"], served["variant"]))
            load(url, body, 1.0, threads)  # warm-up
            before = _commands(raw)
            figures = load(url, body, seconds, threads)
            # Every client of this Redis counts here, so this is an upper bound for infaas's own traffic.
            figures["redis_commands_per_query_upper_bound"] = (_commands(raw) - before) / max(figures["queries"], 1)
            share: dict[str, int] = {}
            for record in live.recent_queries(1000):
                share[record.worker] = share.get(record.worker, 0) + 1
            figures["worker_share_last_1000"] = share
            results[f"{n_workers}_worker{'s' if n_workers > 1 else ''}"] = figures
            print(f"{n_workers} remote worker(s): {figures}", flush=True)
        return results
    finally:
        _stop(procs)
        live.delete_all()
        live.close()
        raw.close()


def main() -> None:
    """Run the benchmark and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    costs = redis_costs()
    print("live-state costs (µs):", json.dumps(costs, indent=2), flush=True)
    x = np.random.default_rng(0).normal(size=(1, 256)).astype(np.float32)
    body = orjson.dumps({"model": "mlp", "inputs": {"x": x.tolist()}})
    serving = {"embedded": run_embedded(body, args.seconds, args.threads)}
    serving.update(run_scaled_out(body, args.seconds, args.threads))
    out = {
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "seconds_per_run": args.seconds,
        "client_threads": args.threads,
        "serving": serving,
        "live_state_us": costs,
    }
    path = ROOT / "benchmarks" / "results" / "scale_out.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
