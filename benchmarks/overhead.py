"""Serving overhead: what infaas adds on top of ONNX Runtime, in process and over HTTP.

One run, the same models, every layer measured side by side (so machine load affects them alike):

* ``raw``        ``session.run`` in this process, on the very variant file infaas chose, same options;
* ``engine``     infaas selection + dispatch in this process (``QueryEngine.infer``, same catalog);
* ``v1``         ``POST /v1/infer`` on a real ``infaas serve`` subprocess (embedded default settings,
                 temporary ``INFAAS_HOME``, models registered over HTTP, variants built before measuring);
* ``oip``        ``POST /v2/models/{name}/infer`` (Open Inference Protocol, JSON tensors) on that server;
* ``bare``       a bare FastAPI endpoint on uvicorn (uvloop, httptools, no access log) running the same
                 ONNX session inline: the reference ceiling for any Python HTTP server.

Over HTTP several servers run at once, each on its own copy of one registered home (so all choose
among the same variant files and profiles): ``now`` (this checkout, defaults, which include the
inference fast path ``api/fast_routes.py``), ``fast_path_off`` (the same with
``INFAAS_INFERENCE_FAST_PATH=false``), ``metrics_off`` (the defaults with ``INFAAS_METRICS=false``: no
``/metrics`` and no per-query metric hooks; tracing is off in every server, its default), and one
``before_<commit>`` per ``--before PATH`` (a checkout of
earlier code, e.g. ``git worktree add /tmp/before 04c8258``, started as that code starts; with one, the
oldest registers the models and newer code migrates a copy of its database forward). Each HTTP
measurement runs on every server back to back, in an order that rotates, for ``--rounds`` rounds;
comparisons (``fast_path``, ``before``) take the median of the per-round ratios. ``fast_path`` applies
issue 11's rule: the fast path stays only while it serves at least 15% more requests per second at 16
connections on both inference endpoints (``keep``). ``metrics`` applies issue 18's: Prometheus metrics (on by
default) may cost at most 5% of the requests per second at 16 connections on either endpoint (``met``).

In process: p50/p99 at batch 1 with one caller, and throughput with 8 calling threads. Over HTTP the
load comes from ``wrk`` (C; ``benchmarks/wrk/post.lua`` posts the body) with 1, 8 and 16 connections,
plus one Python client (``http.client``, one keep-alive connection per thread) for comparison. The
load generator shares the machine's cores with the server: read the figures with ``cpu_count`` and
the load averages in mind. Each ``wrk`` run also records the server process's CPU time per answered
request (``server_cpu_us``, from ``/proc``): req/s follow the CPU share a server happens to get on a
shared machine, its CPU time per request does not, so comparisons report both (``cpu_ratio``).

Models: the example zoo's smallest (``digits-logreg``, trained here from scikit-learn's digits) and
a 64→256→10 MLP on the same data (the model the issue's MLServer/KServe/BentoML/Ray figures used).

    python benchmarks/overhead.py [--seconds 3] [--rounds 3] [--models digits-logreg,digits-mlp-256]
                                  [--before PATH ...] [--profile]

Needs ``wrk`` (``apt-get install -y wrk``). Prints a table and writes
``benchmarks/results/overhead.json``; ``--profile`` adds a py-spy profile of the server under OIP load.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response  # module level: the reference route's annotations resolve here

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LUA = ROOT / "benchmarks" / "wrk" / "post.lua"
RESULTS = ROOT / "benchmarks" / "results" / "overhead.json"
PRIMARY = "digits-logreg"
MODELS = ("digits-logreg", "digits-mlp-256")
TASK = "digits-classification"

# Targets from the issue (milliseconds and requests per second).
TARGET_ENGINE_ADDED_P50_MS = 0.1
TARGET_HTTP_ADDED_P50_MS = 0.5
TARGET_OIP_C16_RPS = 3000.0
TARGET_OIP_C16_P99_MS = 10.0

CONNECTIONS = (1, 8, 16)  # wrk connections per HTTP measurement
# Issue 11's rule for the inference fast path (api/fast_routes.py): it stays only if it adds this much.
RULE_CONNECTIONS = 16
METRICS_MAX_COST = 0.05  # issue 18: what Prometheus metrics may cost in req/s at RULE_CONNECTIONS
FAST_PATH_MIN_GAIN = 0.15


# ------------------------------------------------------------------------------------------- models


def build_models(out: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """The benchmark models as ONNX files with their validation sets (seconds, no torch needed)."""
    from sklearn.neural_network import MLPClassifier

    from infaas.examples.graphs import Dense, mlp_graph
    from infaas.examples.zoo import _save, _train_logreg, load_digits_split

    out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", module="sklearn")  # the MLP is trained briefly on purpose
    x_train, y_train, x_val, y_val = load_digits_split(0)
    built: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == "digits-logreg":
            graph, what = mlp_graph([_train_logreg(x_train, y_train)], name), "example zoo: logistic regression"
        elif name == "digits-mlp-256":
            mlp = MLPClassifier(hidden_layer_sizes=(256,), max_iter=60, random_state=0).fit(x_train, y_train)
            layers = [
                Dense(w.astype(np.float32), b.astype(np.float32))
                for w, b in zip(mlp.coefs_, mlp.intercepts_, strict=True)
            ]
            graph, what = mlp_graph(layers, name), "MLP 64-256-10 on the zoo's digits"
        else:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        model = _save(out, name, graph, what, x_val, y_val, None)
        built[name] = {"onnx": model.onnx_path, "validation": model.validation_path, "accuracy": model.accuracy}
    return built


def sample(seed: int = 0) -> np.ndarray:
    """One digit, batch 1: ``[1, 64]`` float32."""
    from infaas.examples.zoo import load_digits_split

    return load_digits_split(seed)[2][:1].astype(np.float32)


def bodies(name: str, x: np.ndarray) -> dict[str, bytes]:
    """The request body each HTTP endpoint takes for one query."""
    v1 = orjson.dumps({"model": name, "inputs": {"input": x.tolist()}})
    oip = orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    )
    return {"v1": v1, "oip": oip, "bare": v1}


# ---------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what} ({last})")


def request(port: int, method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def server_env(home: Path, code: Path = ROOT) -> dict[str, str]:
    """Embedded defaults (SQLite + local store + in-process worker, no auth) under a temporary home.

    Only the variant profiler is shortened so that the build finishes in seconds. ``code`` is the
    checkout whose packages the process imports (this one, or ``--before``'s).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFAAS_")}
    env.update(
        INFAAS_HOME=str(home),
        INFAAS_PROFILE_RUNS="10",
        INFAAS_PROFILE_MAX_SECONDS="1",
        PYTHONPATH=os.pathsep.join([str(code), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    return env


def start(args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """``python ARGS`` in ``cwd`` (``-m`` puts the working directory first on ``sys.path``)."""
    return subprocess.Popen([sys.executable, *args], env=env, cwd=cwd, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Server:
    """One way to run ``infaas serve`` on the benchmark's home: which code, started how, with which settings."""

    label: str
    code: Path
    module: str
    settings: dict[str, str] = field(default_factory=dict)

    def launch(self, home: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
        """Start it and wait until it answers; (process, port)."""
        port = free_port()
        env = server_env(home, self.code) | self.settings
        proc = start(["-m", self.module, "serve", "--port", str(port)], env, log, cwd=self.code)

        def ready() -> bool:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise SystemExit(f"{self.label} server exited ({proc.returncode}):\n{tail}")
            return request(port, "GET", "/v2/health/ready")[0] == 200

        wait_until(ready, f"the {self.label} server", 60)
        return proc, port

    def imports_from(self) -> str:
        """Where this server's ``infaas`` package is imported from (proof that ``--before`` runs the old code)."""
        probe = [sys.executable, "-c", "import infaas; print(infaas.__file__)"]
        env = server_env(Path(tempfile.gettempdir()), self.code)
        return subprocess.run(probe, env=env, cwd=self.code, capture_output=True, text=True, check=False).stdout.strip()


def now_servers() -> list[Server]:
    """This checkout with its defaults (fast path and metrics on), without the fast path, and without metrics."""
    return [
        Server("now", ROOT, "infaas", {"INFAAS_INFERENCE_FAST_PATH": "true", "INFAAS_METRICS": "true"}),
        Server("fast_path_off", ROOT, "infaas", {"INFAAS_INFERENCE_FAST_PATH": "false"}),
        Server("metrics_off", ROOT, "infaas", {"INFAAS_METRICS": "false"}),
    ]


def before_server(path: Path) -> Server:
    """A checkout of earlier code (e.g. ``git worktree add /tmp/before <commit>``), started as that code starts."""
    path = path.resolve()
    if not (path / "infaas").is_dir():
        raise SystemExit(f"--before {path}: not an infaas checkout")
    module = "infaas" if (path / "infaas" / "__main__.py").exists() else "infaas.cli.main"
    return Server(f"before_{git(path, 'rev-parse', '--short', 'HEAD') or path.name}", path, module)


def register(port: int, name: str, files: dict[str, Any]) -> None:
    """Register a model over HTTP, as a user would (multipart upload)."""
    import httpx

    with open(files["onnx"], "rb") as model, open(files["validation"], "rb") as validation:
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/models",
            data={"name": name, "task": TASK, "max_batch": "16", "public": "true"},
            files={"model": (f"{name}.onnx", model), "validation": (f"{name}.npz", validation)},
            timeout=60,
        )
    if response.status_code != 201:
        raise RuntimeError(f"registering {name}: {response.status_code} {response.text}")


def prepare(
    server: Server, home: Path, files: dict[str, dict[str, Any]], log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``server`` on a new home, register the models over HTTP and wait for their variants."""
    proc, port = server.launch(home, log)
    for name, model in files.items():
        register(port, name, model)
    wait_until(lambda: all(model_status(port, n) == "ready" for n in files), "the variant builds", 180)
    return proc, port


def model_status(port: int, name: str) -> str:
    status, data = request(port, "GET", f"/v1/models/{name}")
    return orjson.loads(data)["status"] if status == 200 else f"http {status}"


# ------------------------------------------------------------------------------------------ reference


def reference_app(models: dict[str, tuple[str, list[str], int]]) -> Any:
    """The bare FastAPI endpoint: parse with orjson, run the session inline, answer with orjson."""
    from infaas.runtime import create_session

    sessions = {
        name: create_session(Path(path), providers, threads) for name, (path, providers, threads) in models.items()
    }
    app = FastAPI()

    @app.post("/v1/infer")
    async def infer(request: Request) -> Response:
        document = orjson.loads(await request.body())
        session = sessions[document["model"]]
        inputs = {k: np.asarray(v, dtype=np.float32) for k, v in document["inputs"].items()}
        outputs = session.run(None, inputs)
        names = [o.name for o in session.get_outputs()]
        content = {"outputs": dict(zip(names, outputs, strict=True))}
        return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    return app


def serve_reference(port: int, spec: str) -> None:
    import uvicorn

    models = {name: tuple(value) for name, value in json.loads(spec).items()}
    uvicorn.run(
        reference_app(models),  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        log_level="warning",
        http="httptools",
        loop="uvloop",
        access_log=False,
    )


# --------------------------------------------------------------------------------------- measuring


def summarize(latencies_s: list[float], elapsed_s: float, errors: int = 0) -> dict[str, Any]:
    ms = np.asarray(latencies_s) * 1000.0
    return {
        "requests": int(ms.size),
        "errors": errors,
        "rps": round(ms.size / elapsed_s, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
    }


def closed_loop(call: Callable[[], Any], seconds: float, threads: int, warmup: int = 200) -> dict[str, Any]:
    """``threads`` callers running ``call`` back to back for ``seconds``."""
    for _ in range(warmup):
        call()
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop_at = time.perf_counter() + seconds
    barrier = threading.Barrier(threads + 1)

    def caller(mine: list[float]) -> None:
        barrier.wait()
        perf = time.perf_counter
        while True:
            begin = perf()
            call()
            end = perf()
            mine.append(end - begin)
            if end >= stop_at:
                return

    workers = [threading.Thread(target=caller, args=(latencies[i],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    began = time.perf_counter()
    stop_at = began + seconds  # the callers read it at their first check, after the barrier
    for worker in workers:
        worker.join()
    return summarize([x for xs in latencies for x in xs], time.perf_counter() - began)


def python_client(port: int, path: str, body: bytes, seconds: float, threads: int) -> dict[str, Any]:
    """The same load from Python: one keep-alive ``http.client`` connection per thread."""
    local = threading.local()
    headers = {"content-type": "application/json"}
    errors = [0]

    def call() -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            errors[0] += 1

    result = closed_loop(call, seconds, threads, warmup=20)
    result["errors"] = errors[0]
    return result


def wrk(url: str, body_file: Path, seconds: float, connections: int) -> dict[str, Any]:
    threads = min(connections, max(1, os.cpu_count() or 1))
    env = {**os.environ, "WRK_BODY": str(body_file)}
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 30, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout} {proc.stderr}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    lat = raw["latency_us"]
    errors = sum(raw["errors"].values())
    return {
        "requests": raw["requests"],
        "errors": errors,
        "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": lat["p50"] / 1000.0,
        "p99_ms": lat["p99"] / 1000.0,
        "mean_ms": round(lat["mean"] / 1000.0, 4),
        "max_ms": lat["max"] / 1000.0,
        "wrk_threads": threads,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux ``/proc/PID/stat``, clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured_wrk(pid: int, url: str, body_file: Path, seconds: float, connections: int) -> dict[str, Any]:
    """``wrk`` against the server ``pid``, with the server's CPU time per answered request.

    Requests per second depend on the CPU share the server gets, and on a machine shared with other work
    (or with ``wrk`` itself) that share varies from run to run by more than the differences measured here;
    the CPU time the server spends per request does not, so it is what compares two servers' overhead.
    """
    before = cpu_seconds(pid)
    result = wrk(url, body_file, seconds, connections)
    used = cpu_seconds(pid) - before
    result["server_cpu_us"] = round(used / max(result["requests"], 1) * 1e6, 1)
    return result


def in_process(home: Path, names: list[str], x: np.ndarray, seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Raw ``session.run`` vs ``QueryEngine.infer`` over the server's own catalog and store.

    Returns the measurements and, per model, the variant the engine chose (file, providers, threads), so
    that the HTTP reference runs exactly the same session.
    """
    from infaas.config import Settings
    from infaas.engine import Query
    from infaas.runtime import create_session
    from infaas.selector import Requirements
    from infaas.services import build_services

    services = build_services(Settings(home=home, autoscaler="off"), migrate=False, with_jobs=False)
    services.start_serving()
    engine = services.engine
    results: dict[str, Any] = {}
    chosen: dict[str, Any] = {}

    try:
        for name in names:
            requirements = Requirements(model=name)
            inputs = {"input": x}
            served = engine.infer(Query(requirements, inputs)).served_by
            variant = next(c.variant for c in engine.cache.for_model(name) if c.variant.name == served.variant)
            path = services.store.local_path(variant.artifact_key or "")
            providers = list(variant.providers) or ["CPUExecutionProvider"]
            chosen[name] = {
                "variant": variant.name,
                "path": str(path),
                "providers": providers,
                "threads": variant.threads,
            }
            session = create_session(path, providers, variant.threads)
            output_names = [o.name for o in session.get_outputs()]

            def raw(session: Any = session, names: list[str] = output_names, inputs: Any = inputs) -> Any:
                return session.run(names, inputs)

            def through_engine(requirements: Requirements = requirements, inputs: Any = inputs) -> Any:
                return engine.infer(Query(requirements, inputs))

            results[name] = {
                "raw_c1": closed_loop(raw, seconds, 1, warmup=500),
                "engine_c1": closed_loop(through_engine, seconds, 1, warmup=500),
                "raw_c8": closed_loop(raw, seconds, 8),
                "engine_c8": closed_loop(through_engine, seconds, 8),
            }
    finally:
        services.close()
    return results, chosen


# ----------------------------------------------------------------------------------------- profiling


def profile_server(pid: int, url: str, body_file: Path, seconds: float, out: Path) -> dict[str, Any]:
    """py-spy samples of the server's GIL-holding thread (not paused: ``--nonblocking``) under wrk -c16."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    raw = out.with_suffix(".txt")
    spy = subprocess.Popen(
        [
            py_spy,
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds) + 1),
            "-r",
            "250",
            "-f",
            "raw",
            "-o",
            str(raw),
            "--gil",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)
    load = wrk(url, body_file, seconds, 16)
    _, err = spy.communicate(timeout=seconds + 30)
    if not raw.exists():
        return {"skipped": f"py-spy failed: {err.decode(errors='replace')[-300:]}"}
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1] for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def top(counter: Counter[str], k: int) -> list[list[Any]]:
        return [[frame, round(100.0 * n / total, 1)] for frame, n in counter.most_common(k)]

    return {"samples": total, "load": load, "own_pct": top(own, 25), "inclusive_pct": top(inclusive, 90)}


# --------------------------------------------------------------------------------------------- main


def git(checkout: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def source() -> dict[str, Any]:
    """Which code was measured: the commit, and whether the serving code had uncommitted changes."""
    return {
        "root": str(ROOT),
        "commit": git(ROOT, "rev-parse", "--short", "HEAD"),
        "uncommitted_serving_changes": bool(git(ROOT, "status", "--porcelain", "--", "api", "infaas")),
    }


def machine() -> dict[str, Any]:
    import onnxruntime

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0],
    }


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """Which of the issue's targets this run met (on the primary model)."""
    m = results["models"][PRIMARY]
    raw_p50 = m["raw_c1"]["p50_ms"]
    engine_added = m["engine_c1"]["p50_ms"] - raw_p50
    out: dict[str, Any] = {
        "engine_added_p50_ms": {
            "value": round(engine_added, 4),
            "target": f"<= {TARGET_ENGINE_ADDED_P50_MS}",
            "met": engine_added <= TARGET_ENGINE_ADDED_P50_MS,
        }
    }
    for endpoint in ("v1", "oip"):
        added = m[f"{endpoint}_wrk_c1"]["p50_ms"] - raw_p50
        out[f"{endpoint}_http_added_p50_ms"] = {
            "value": round(added, 4),
            "target": f"<= {TARGET_HTTP_ADDED_P50_MS}",
            "met": added <= TARGET_HTTP_ADDED_P50_MS,
        }
    c16 = m["oip_wrk_c16"]
    out["oip_c16"] = {
        "rps": c16["rps"],
        "p99_ms": c16["p99_ms"],
        "target": f">= {TARGET_OIP_C16_RPS:g} req/s with p99 < {TARGET_OIP_C16_P99_MS:g} ms",
        "met": c16["rps"] >= TARGET_OIP_C16_RPS and c16["p99_ms"] < TARGET_OIP_C16_P99_MS and c16["errors"] == 0,
        "fraction_of_bare_fastapi": round(c16["rps"] / m["bare_wrk_c16"]["rps"], 3),
    }
    return out


def compare(a: dict[str, Any], b: dict[str, Any], connections: int = RULE_CONNECTIONS) -> dict[str, Any]:
    """Two servers' wrk figures for one model, per inference endpoint: req/s at ``connections``, p50 at 1.

    ``rps_ratio`` is the median over rounds of each round's ratio (the two were measured back to back),
    steadier on a busy machine than the ratio of the means. ``cpu_ratio`` is the same for the server CPU
    time per request, as ``b``'s over ``a``'s (above 1: ``a`` serves more requests per CPU second); it
    does not depend on the CPU share each server got, which is what varies most on a shared machine.
    ``variants`` names the variant each server chose: a comparison is fair only when they agree.
    """

    def median_ratio(xs: list[float], ys: list[float]) -> float:
        return round(float(np.median([p / q for p, q in zip(xs, ys, strict=True)])), 3)

    out: dict[str, Any] = {"variants": [a["variant"], b["variant"]]}
    for endpoint in ("v1", "oip"):
        x, y = a[f"{endpoint}_wrk_c{connections}"], b[f"{endpoint}_wrk_c{connections}"]
        x1, y1 = a[f"{endpoint}_wrk_c1"], b[f"{endpoint}_wrk_c1"]
        out[endpoint] = {
            "rps": [x["rps"], y["rps"]],
            "rps_ratio": median_ratio(x["rounds_rps"], y["rounds_rps"]),
            "rounds_rps": [x["rounds_rps"], y["rounds_rps"]],
            "server_cpu_us": [x["server_cpu_us"], y["server_cpu_us"]],
            "cpu_ratio": median_ratio(y["rounds_server_cpu_us"], x["rounds_server_cpu_us"]),
            "rounds_server_cpu_us": [x["rounds_server_cpu_us"], y["rounds_server_cpu_us"]],
            "p99_ms": [x["p99_ms"], y["p99_ms"]],
            "c1_p50_ms": [x1["p50_ms"], y1["p50_ms"]],
            "c1_server_cpu_us": [x1["server_cpu_us"], y1["server_cpu_us"]],
            "c1_cpu_ratio": median_ratio(y1["rounds_server_cpu_us"], x1["rounds_server_cpu_us"]),
        }
    return out


def fast_path_verdict(servers: dict[str, Any]) -> dict[str, Any]:
    """Issue 11's rule for ``api/fast_routes.py``, applied to this run: on vs off, same code, same home."""
    on, off = servers["now"], servers["fast_path_off"]
    out: dict[str, Any] = {
        "rule": f">= {FAST_PATH_MIN_GAIN:.0%} more req/s with it than without at {RULE_CONNECTIONS} connections, "
        f"on both POST /v1/infer and OIP infer ({PRIMARY})",
        "pairs": "[on, off]",
    }
    for name in on:
        out[name] = compare(on[name], off[name])
        for endpoint in ("v1", "oip"):
            out[name][endpoint]["gain"] = round(out[name][endpoint]["rps_ratio"] - 1.0, 3)
    out["keep"] = all(out[PRIMARY][e]["gain"] >= FAST_PATH_MIN_GAIN for e in ("v1", "oip"))
    return out


def metrics_verdict(servers: dict[str, Any]) -> dict[str, Any]:
    """Issue 18's rule for ``infaas/metrics.py``: defaults (metrics on, tracing off) vs metrics off, same code."""
    on, off = servers["now"], servers["metrics_off"]
    out: dict[str, Any] = {
        "rule": f"<= {METRICS_MAX_COST:.0%} fewer req/s with metrics than without at {RULE_CONNECTIONS} connections, "
        f"on both POST /v1/infer and OIP infer ({PRIMARY})",
        "pairs": "[on, off]",
    }
    for name in on:
        out[name] = compare(on[name], off[name])
        for endpoint in ("v1", "oip"):
            out[name][endpoint]["cost"] = round(1.0 - out[name][endpoint]["rps_ratio"], 3)
    out["met"] = all(out[PRIMARY][e]["cost"] <= METRICS_MAX_COST for e in ("v1", "oip"))
    return out


def before_comparison(servers: dict[str, Any], before: Server) -> dict[str, Any]:
    """This checkout (default settings) vs one ``--before`` checkout's code, measured in the same rounds."""
    out: dict[str, Any] = {
        "code": str(before.code),
        "commit": git(before.code, "rev-parse", "--short", "HEAD"),
        "imports_from": before.imports_from(),
        "pairs": "[now, before]",
    }
    for name in servers["now"]:
        out[name] = compare(servers["now"][name], servers[before.label][name])
    return out


def table(results: dict[str, Any]) -> str:
    rows = [
        ("raw session.run", "raw_c1", "raw_c8", None),
        ("engine.infer (in process)", "engine_c1", "engine_c8", None),
        ("bare FastAPI (wrk)", "bare_wrk_c1", "bare_wrk_c8", "bare_wrk_c16"),
        ("POST /v1/infer (wrk)", "v1_wrk_c1", "v1_wrk_c8", "v1_wrk_c16"),
        ("OIP infer (wrk)", "oip_wrk_c1", "oip_wrk_c8", "oip_wrk_c16"),
        ("POST /v1/infer (Python client)", "v1_py_c1", "v1_py_c8", None),
    ]
    lines = []
    for name, m in results["models"].items():
        lines.append(f"\n{name}  (variant {results['chosen'][name]['variant']})")
        head = f"{'c1 p50':>9} {'c1 p99':>9} {'+p50':>8} | {'c8 req/s':>9} {'c8 p99':>8}"
        lines.append(f"{'':36} {head} | {'c16 req/s':>9} {'c16 p99':>8}")
        raw_p50 = m["raw_c1"]["p50_ms"]
        labelled = [(label, m, c1, c8, c16) for label, c1, c8, c16 in rows]
        for server, measured in results["servers"].items():
            if server == "now":
                continue
            for endpoint, what in (("v1", "POST /v1/infer"), ("oip", "OIP infer")):
                keys = tuple(f"{endpoint}_wrk_c{c}" for c in CONNECTIONS)
                labelled.append((f"{what} [{server}]", measured[name], *keys))
        for label, source_, c1, c8, c16 in labelled:
            if c1 not in source_:
                continue
            a, b = source_[c1], source_[c8]
            c = source_.get(c16) if c16 else None
            tail = f"{c['rps']:>9.0f} {c['p99_ms']:>8.3f}" if c else f"{'':>9} {'':>8}"
            lines.append(
                f"{label:36} {a['p50_ms']:>9.3f} {a['p99_ms']:>9.3f} {a['p50_ms'] - raw_p50:>+8.3f} | "
                f"{b['rps']:>9.0f} {b['p99_ms']:>8.3f} | {tail}"
            )
    lines.append("\n(ms; '+p50' is added over raw session.run; c<N> = N concurrent clients/connections)")
    verdict = results["fast_path"]
    for endpoint in ("v1", "oip"):
        v = verdict[PRIMARY][endpoint]
        lines.append(
            f"fast path {endpoint} c{RULE_CONNECTIONS}: on {v['rps'][0]:.0f} / off {v['rps'][1]:.0f} req/s, "
            f"gain {v['gain']:+.1%} (rounds on {v['rounds_rps'][0]}, off {v['rounds_rps'][1]}); server CPU "
            f"{v['server_cpu_us'][0]:.0f} / {v['server_cpu_us'][1]:.0f} us/request (x{v['cpu_ratio']})"
        )
    lines.append(f"fast path rule ({verdict['rule']}): {'KEEP' if verdict['keep'] else 'REMOVE'}")
    metrics = results["metrics"]
    for endpoint in ("v1", "oip"):
        v = metrics[PRIMARY][endpoint]
        lines.append(
            f"metrics {endpoint} c{RULE_CONNECTIONS}: on {v['rps'][0]:.0f} / off {v['rps'][1]:.0f} req/s, "
            f"cost {v['cost']:+.1%} (rounds on {v['rounds_rps'][0]}, off {v['rounds_rps'][1]}); server CPU "
            f"{v['server_cpu_us'][0]:.0f} / {v['server_cpu_us'][1]:.0f} us/request; c1 p50 "
            f"{v['c1_p50_ms'][0]:.3f} / {v['c1_p50_ms'][1]:.3f} ms"
        )
    lines.append(f"metrics rule ({metrics['rule']}): {'MET' if metrics['met'] else 'NOT MET'}")
    for label, before in results.get("before", {}).items():
        for endpoint in ("v1", "oip"):
            v = before[PRIMARY][endpoint]
            lines.append(
                f"now vs {label} {endpoint} c{RULE_CONNECTIONS}: {v['rps'][0]:.0f} / {v['rps'][1]:.0f} req/s "
                f"(x{v['rps_ratio']}), server CPU {v['server_cpu_us'][0]:.0f} / {v['server_cpu_us'][1]:.0f} us/request "
                f"(x{v['cpu_ratio']} requests per CPU second); c1 p50 {v['c1_p50_ms'][0]:.3f} / "
                f"{v['c1_p50_ms'][1]:.3f} ms, CPU {v['c1_server_cpu_us'][0]:.0f} / {v['c1_server_cpu_us'][1]:.0f} us; "
                f"variants {before[PRIMARY]['variants']}"
            )
    for key, value in results["targets"].items():
        lines.append(f"target {key}: {'MET' if value['met'] else 'missed'}  {value}")
    return "\n".join(lines)


def check(port: int, path: str, body_file: Path) -> dict[str, Any]:
    """One request that must succeed; its decoded answer."""
    status, answer = request(port, "POST", path, body_file.read_bytes(), **{"content-type": "application/json"})
    if status != 200:
        raise RuntimeError(f"{path} on port {port}: {status} {answer[:300]!r}")
    return orjson.loads(answer)


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one wrk measurement as one: mean req/s and latencies, median server CPU per request, each
    round's req/s and CPU per request kept."""

    def mean(key: str) -> float:
        return round(float(np.mean([r[key] for r in runs])), 4)

    return {
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "rps": round(mean("rps"), 1),
        "p50_ms": mean("p50_ms"),
        "p99_ms": mean("p99_ms"),
        "mean_ms": mean("mean_ms"),
        "max_ms": max(r["max_ms"] for r in runs),
        "wrk_threads": runs[0]["wrk_threads"],
        "rounds_rps": [r["rps"] for r in runs],
        "server_cpu_us": round(float(np.median([r["server_cpu_us"] for r in runs])), 1),
        "rounds_server_cpu_us": [r["server_cpu_us"] for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each load run")
    parser.add_argument("--rounds", type=int, default=3, help="HTTP rounds (each measures every server once)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument(
        "--before",
        type=Path,
        action="append",
        default=[],
        help="a checkout of earlier code to measure over HTTP alongside (repeatable)",
    )
    parser.add_argument("--profile", action="store_true", help="also profile the server under OIP load (py-spy)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--serve-reference", nargs=2, metavar=("PORT", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_reference:
        serve_reference(int(args.serve_reference[0]), args.serve_reference[1])
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    names = [n for n in args.models.split(",") if n]
    if PRIMARY not in names:
        names.insert(0, PRIMARY)
    befores = [before_server(path) for path in args.before]
    servers = now_servers() + befores
    began = time.monotonic()
    results: dict[str, Any] = {
        "benchmark": "overhead",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine() | {"loadavg_start": list(os.getloadavg())},
        "seconds_per_run": args.seconds,
        "rounds": args.rounds,
        "source": source(),
    }
    tmp = Path(tempfile.mkdtemp(prefix="infaas-overhead-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        print(f"building models in {tmp} ...", flush=True)
        files = build_models(tmp / "models", names)
        x = sample()
        body_files: dict[str, dict[str, Path]] = {}
        for name in names:
            body_files[name] = {}
            for endpoint, body in bodies(name, x).items():
                body_files[name][endpoint] = tmp / f"{name}.{endpoint}.json"
                body_files[name][endpoint].write_bytes(body)
        # One registration (by the oldest code, whose database the newer code migrates forward), and each
        # server its own copy of that home: all choose among the same variant files and profiles.
        registrar = befores[-1] if befores else servers[0]
        print(f"registering the models with {registrar.label} ...", flush=True)
        base = tmp / "home-registered"
        stop(prepare(registrar, base, files, tmp / "setup.log")[0])
        homes = {srv.label: tmp / f"home-{srv.label}" for srv in servers}
        for home in homes.values():
            shutil.copytree(base, home)
        ports: dict[str, int] = {}
        pids: dict[str, int] = {}
        for srv in servers:
            proc, ports[srv.label] = srv.launch(homes[srv.label], tmp / f"{srv.label}.log")
            procs.append(proc)
            pids[srv.label] = proc.pid
            wait_until(lambda p=ports[srv.label]: all(model_status(p, n) == "ready" for n in names), srv.label, 60)
        server, port = procs[0], ports["now"]
        results["setup_s"] = round(time.monotonic() - began, 1)
        print(f"servers ready after {results['setup_s']} s; measuring in process ...", flush=True)

        measured, chosen = in_process(homes["now"], names, x, args.seconds)
        results["chosen"] = chosen
        print(f"{PRIMARY}: Python client → v1", flush=True)
        for threads in (1, 8):
            measured[PRIMARY][f"v1_py_c{threads}"] = python_client(
                port, "/v1/infer", body_files[PRIMARY]["v1"].read_bytes(), args.seconds, threads
            )
        if args.profile:
            print("profiling the server under OIP load ...", flush=True)
            results["profile"] = profile_server(
                server.pid,
                f"http://127.0.0.1:{port}/v2/models/{PRIMARY}/infer",
                body_files[PRIMARY]["oip"],
                max(args.seconds, 5.0),
                tmp / "profile",
            )

        spec = json.dumps({n: [c["path"], c["providers"], c["threads"]] for n, c in chosen.items()})
        ports["bare"] = free_port()
        reference = [__file__, "--serve-reference", str(ports["bare"]), spec]
        procs.append(start(reference, server_env(homes["now"]), tmp / "ref.log"))
        pids["bare"] = procs[-1].pid
        wait_until(lambda: request(ports["bare"], "GET", "/docs")[0] == 200, "the reference server", 60)

        def path(endpoint: str, name: str) -> str:
            return f"/v2/models/{name}/infer" if endpoint == "oip" else "/v1/infer"

        # Every server answers once (a cold load, and which variant it chose) before anything is timed.
        variants: dict[str, dict[str, str]] = defaultdict(dict)
        for label, p in ports.items():
            for name in names:
                for endpoint in ("bare",) if label == "bare" else ("v1", "oip"):
                    answer = check(p, path(endpoint, name), body_files[name][endpoint])
                    if endpoint == "v1":
                        variants[label][name] = answer["served_by"]["variant"]

        # All servers stay up; each measurement runs on every server back to back, the order rotating, so
        # that whatever else loads the machine hits them alike and each round gives paired figures.
        runs: dict[str, dict[str, dict[str, list[Any]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        labels, turn = list(ports), 0
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", flush=True)
            for name in names:
                for endpoint in ("v1", "oip"):
                    for connections in CONNECTIONS:
                        for label in labels[turn % len(labels) :] + labels[: turn % len(labels)]:
                            measure = "bare" if label == "bare" else endpoint
                            if label == "bare" and endpoint == "oip":
                                continue
                            url = f"http://127.0.0.1:{ports[label]}{path(measure, name)}"
                            result = measured_wrk(
                                pids[label], url, body_files[name][measure], args.seconds, connections
                            )
                            runs[label][name][f"{measure}_wrk_c{connections}"].append(result)
                        turn += 1
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    results["servers"] = {
        label: {
            name: {"variant": variants[label][name]} | {key: combine(values) for key, values in by_key.items()}
            for name, by_key in by_model.items()
        }
        for label, by_model in runs.items()
        if label != "bare"
    }
    for name in names:
        now = results["servers"]["now"][name]
        measured[name] |= {k: v for k, v in now.items() if k != "variant"}
        measured[name] |= {k: combine(v) for k, v in runs["bare"][name].items()}
    results["models"] = measured
    results["fast_path"] = fast_path_verdict(results["servers"])
    results["metrics"] = metrics_verdict(results["servers"])
    if befores:
        results["before"] = {srv.label: before_comparison(results["servers"], srv) for srv in befores}
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["elapsed_s"] = round(time.monotonic() - began, 1)
    results["targets"] = targets(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwrote {args.out} in {results['elapsed_s']} s")


if __name__ == "__main__":
    main()
