"""GPU check: on a machine with an NVIDIA GPU, build and serve a zoo model's CUDA/TensorRT variants and report
their speed-up over the CPU. Anywhere else it prints one line saying there is no GPU and exits 0.

What it does, through the real path: asks the host what a worker would advertise (``infaas.hardware.detect``,
``--gpu N`` pins a device); in a throw-away ``INFAAS_HOME`` trains the example zoo briefly (same
architectures; accuracy is not what this measures), registers the chosen models with their validation sets
(``register_model``) and builds every variant synchronously (``build_model_variants``: CPU, CUDA FP32/FP16,
TensorRT EP and engines, each profiled); starts the in-process worker, which registers with the GPU it found;
then serves ``--queries`` queries per variant and batch size on that worker (``LocalWorker.infer``, the path
a query takes after selection) and reports p50/p99, the speed-up over ``cpu-fp32`` and over the fastest CPU
variant, and how far each variant's outputs are from ``cpu-fp32``'s. Last, it asks the query engine for a
budget only a GPU variant's profile meets and records what it chose, on which worker.

    python benchmarks/gpu_check.py                       # digits-cnn; writes benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --gpu 1 --models digits-cnn digits-mlp-large

Never part of CI (it needs a GPU, torch to train the zoo, and minutes): run it where the device tool is
available. Timings depend on the host; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for variants.machine_info when run as a script

log = logging.getLogger("benchmarks.gpu_check")

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"
BASELINE = "cpu-fp32"
DEFAULT_MODELS = ("digits-cnn",)  # the zoo's slowest model on a CPU (13 ms at batch 1): room for a GPU to win
MAX_BATCH = 64


def no_gpu_reason(pinned: int | None) -> str | None:
    """One line saying why there is nothing to measure here, or ``None`` when a GPU worker can run.

    Raises ``GpuNotUsable`` when the host has GPUs but ``pinned`` is not one this worker could use.
    """
    from infaas.hardware import GPU, TENSORRT, advertise, probe

    report = probe(pinned)
    if report.devices:
        hardware = advertise(report)
        if GPU in hardware.kinds or TENSORRT in hardware.kinds:
            return None
    devices = "; ".join(d.describe() for d in report.devices) or "none"
    return (
        f"gpu_check: no GPU here, nothing to measure (CUDA devices: {devices}; onnxruntime providers: "
        f"{', '.join(report.providers)}; tensorrt: {'yes' if report.tensorrt else 'no'})"
    )


def _time_queries(worker: Any, variant: Any, feeds: dict[str, np.ndarray], queries: int) -> dict[str, Any]:
    """Serve ``queries`` requests one after another on ``worker`` (after warming up); latencies in ms."""
    for _ in range(min(10, queries)):
        worker.infer(variant, feeds, None)
    times = []
    for _ in range(queries):
        t0 = time.perf_counter()
        worker.infer(variant, feeds, None)
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"p50_ms": round(float(np.percentile(times, 50)), 4), "p99_ms": round(float(np.percentile(times, 99)), 4)}


def measure_model(services: Any, name: str, queries: int) -> dict[str, Any]:
    """Serve every ready variant of ``name`` on the in-process worker and compare with the CPU."""
    from infaas.engine import Query
    from infaas.selector import Requirements
    from variant_generator.accuracy import load_validation

    model = services.metadata.get_model(name)
    worker = services.engine.workers.local
    data = load_validation(services.store.local_path(model.validation_key), model)
    ready = {v.name: v for v in model.variants if v.status == "ready"}
    rows: dict[str, dict[str, Any]] = {
        v.name: {"status": v.status, "reason": v.reason, "hardware": v.hardware, "kind": v.kind} for v in model.variants
    }
    reference: dict[int, dict[str, np.ndarray]] = {}
    for batch in (1, model.max_batch):
        feeds = data.batch(batch)
        for vname in sorted(ready, key=lambda n: (n != BASELINE, n)):  # the baseline first: its outputs compare
            variant = ready[vname]
            outputs = worker.infer(variant, feeds, None).outputs
            reference.setdefault(batch, outputs)
            diff = max(float(np.max(np.abs(outputs[k] - reference[batch][k]))) for k in outputs)
            rows[vname][f"batch{batch}"] = {**_time_queries(worker, variant, feeds, queries), "max_abs_diff": diff}
            worker.unload(variant.key)  # one variant's memory at a time
    for batch in (1, model.max_batch):
        key = f"batch{batch}"
        cpu = {n: r[key]["p50_ms"] for n, r in rows.items() if key in r and r["hardware"] == "cpu"}
        base, fastest_cpu = cpu.get(BASELINE), min(cpu.values(), default=None)
        for row in rows.values():
            if key in row and row["hardware"] != "cpu":
                p50 = row[key]["p50_ms"]
                row[key]["speedup_over_cpu_fp32"] = round(base / p50, 2) if base else None
                row[key]["speedup_over_fastest_cpu"] = round(fastest_cpu / p50, 2) if fastest_cpu else None
    # A budget only a GPU variant's profile meets: what does the selector choose, and where?
    gpu_p99 = [min(p.latency_p99_ms for p in v.profiles) for v in ready.values() if v.hardware != "cpu" and v.profiles]
    cpu_p99 = [min(p.latency_p99_ms for p in v.profiles) for v in ready.values() if v.hardware == "cpu" and v.profiles]
    selection: dict[str, Any] = {}
    if gpu_p99 and cpu_p99 and min(gpu_p99) < min(cpu_p99):
        budget = (min(gpu_p99) + min(cpu_p99)) / 2
        answer = services.engine.infer(
            Query(Requirements(model=name, latency_ms=budget), {k: v.tolist() for k, v in data.batch(1).items()})
        )
        served = answer.served_by
        selection = {"budget_ms": round(budget, 4), "variant": served.variant, "worker": served.worker}
        selection |= {"actual_ms": round(served.actual_ms, 4), "slo_at_risk": served.slo_at_risk}
    return {"max_batch": model.max_batch, "variants": rows, "selection_for_a_gpu_only_budget": selection}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train, register, build, serve and measure; the result record."""
    from variants import machine_info

    from infaas.config import Settings
    from infaas.examples.zoo import build_zoo
    from infaas.registration import RegistrationRequest, register_model
    from infaas.services import build_services
    from variant_generator.build import build_model_variants

    started = time.perf_counter()
    home = work / "home"
    settings = Settings(
        home=home,
        database_url=f"sqlite:///{home / 'infaas.db'}",
        model_store=str(home / "models"),
        build_variants=False,  # built below, synchronously
        autoscaler="off",
        worker_gpu=args.gpu,
        worker_memory_mb=8192.0,
        profile_runs=args.profile_runs,
        profile_max_seconds=args.profile_seconds,
    )
    services = build_services(settings, with_jobs=False)
    worker = services.engine.workers.local
    models: dict[str, Any] = {}
    try:
        services.start_serving()
        zoo = {m.name: m for m in build_zoo(work / "zoo", quick=True, threads=settings.worker_cores)}
        for name in args.models:
            entry = zoo[name]
            request = RegistrationRequest(
                name=name,
                task=entry.task,
                model_path=Path(entry.onnx_path),
                validation_path=Path(entry.validation_path),
                declared_accuracy=entry.accuracy,
                max_batch=args.max_batch,
            )
            t0 = time.perf_counter()
            register_model(services, request)
            build_model_variants(services, name)
            log.info("%s: variants built and profiled in %.0f s", name, time.perf_counter() - t0)
            models[name] = measure_model(services, name, args.queries)
    finally:
        services.close()
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "worker": {"hardware": list(worker.hardware.kinds), "advertised": worker.hardware.describe()},
        "settings": {"queries": args.queries, "max_batch": args.max_batch, "profile_runs": args.profile_runs},
        "models": models,
        "runtime_s": round(time.perf_counter() - started, 1),
    }


def print_table(result: dict[str, Any]) -> None:
    """Per model, variant and batch: p50, p99 and the speed-ups."""
    print(f"worker: {result['worker']['advertised']}")
    for name, model in result["models"].items():
        print(f"\n{name} (max batch {model['max_batch']})")
        print(f"{'variant':22} {'batch':>5} {'p50 ms':>9} {'p99 ms':>9} {'vs cpu-fp32':>11} {'vs best cpu':>11}")
        for vname, row in model["variants"].items():
            measured = [k for k in row if k.startswith("batch")]
            if not measured:
                print(f"{vname:22} {row['status']}: {row['reason'] or ''}")
            for key in measured:
                m = row[key]
                over = [m.get(k) for k in ("speedup_over_cpu_fp32", "speedup_over_fastest_cpu")]
                base, best = ("" if x is None else f"x{x}" for x in over)
                print(f"{vname:22} {key[5:]:>5} {m['p50_ms']:9.4f} {m['p99_ms']:9.4f} {base:>11} {best:>11}")
        chosen = model["selection_for_a_gpu_only_budget"]
        if chosen:
            print(f"budget {chosen['budget_ms']} ms -> {chosen['variant']} on {chosen['worker']}")


def main(argv: list[str] | None = None) -> int:
    """Parse flags; without a GPU print why and stop; else run, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", type=int, default=None, help="CUDA device to pin (default: 0)")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="zoo models to build and serve")
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH, help="max_batch the models register with")
    parser.add_argument("--queries", type=int, default=200, help="queries timed per variant and batch size")
    parser.add_argument("--profile-runs", type=int, default=50, help="timed runs per batch size (profiler setting)")
    parser.add_argument("--profile-seconds", type=float, default=4.0, help="profiler time budget per variant")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS})")
    parser.add_argument("--work", type=Path, help="keep the zoo and INFAAS_HOME here (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)

    from infaas.hardware import GpuNotUsable

    try:
        reason = no_gpu_reason(args.gpu)
    except GpuNotUsable as exc:  # GPUs here, but not the one asked for
        print(f"gpu_check: --gpu {args.gpu}: {exc}")
        return 2
    if reason is not None:
        print(reason)
        return 0
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="infaas-gpu-check-") as tmp:
            result = run(args, Path(tmp))
    else:
        result = run(args, args.work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
