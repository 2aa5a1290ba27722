"""Cascades over variants (issue 16 point 8): speed-up of each kept cascade over the best single variant of the same
measured accuracy, the bootstrap interval of its accuracy, and the selector's choice under three needs.

Two tasks, each registered with every variant built and profiled by the real pipeline, then the task's cascades
constructed (``variant_generator.cascades``) exactly as the background job does:

* the example zoo (``infaas.examples``: logistic regression, two MLPs, a CNN on scikit-learn's digits);
* scikit-learn's bundled breast-cancer set (569 rows, 2 classes), with a family trained here and exported with
  skl2onnx: ``LogisticRegression`` (cheap, C=0.005) and an ``MLPClassifier`` 1024-1024 (expensive).

For each kept cascade, the baseline is the fastest single (non-cascade) variant of the task whose accuracy on the
cascade's *report* rows (never used to choose its threshold) is at least the cascade's minus the tolerance (0.5
points): "the same measured accuracy". Both are opened with ``open_session`` (what workers serve) and timed in
paired, alternating rounds over the report rows in turn (the cascade escalates the real share): throughput at
batch 32 and p50 at batch 1, wall and CPU time per run; a ratio is the median of the per-round ratios (keys named
``*speedup*``). Then three queries through the ``QueryEngine`` show when the selector picks a cascade and when not.

    python -m benchmarks.cascades [--zoo DIR] [--home DIR] [--rounds 5] [--quick-zoo] [--no-topk]

Writes ``benchmarks/results/cascades.json``; when ``benchmarks/topk.py`` exists its ``run_topk()`` result is stored
under ``"topk"`` in the same file (one run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from infaas.cascade_session import KIND
from infaas.config import Settings
from infaas.engine import Query
from infaas.registration import RegistrationRequest, register_model
from infaas.runtime import Session, open_session
from infaas.selector import Requirements
from infaas.services import Services, build_services
from variant_generator.accuracy import accuracy_score
from variant_generator.build import Measurement, build_model_variants
from variant_generator.cascades import sweep
from variant_generator.cascades.construct import build_task_cascades

log = logging.getLogger("benchmarks.cascades")
RESULT = Path(__file__).parent / "results" / "cascades.json"
ZOO_TASK = "digits-classification"
SK_TASK = "breast-cancer-classification"
MAX_BATCH = 32


def train_breast_cancer(out: Path, seed: int = 0) -> list[tuple[str, Path, Path]]:
    """The scikit-learn pair on breast cancer (60/40 split), exported with skl2onnx (probabilities as a tensor)."""
    import warnings

    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.4, random_state=seed, stratify=y)
    out.mkdir(parents=True, exist_ok=True)
    family = {
        # Strongly regularised (C=0.005): 0.947 on the validation rows, where the default C reaches the MLP's 0.965
        # and a cascade has nothing to add.
        "cancer-logreg": make_pipeline(StandardScaler(), LogisticRegression(C=0.005, max_iter=2000)),
        "cancer-mlp": make_pipeline(StandardScaler(), MLPClassifier((1024, 1024), max_iter=300, random_state=seed)),
    }
    built = []
    for name, estimator in family.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimator.fit(x_train, y_train)
        options = {id(estimator.steps[-1][1]): {"zipmap": False}}
        model = to_onnx(estimator, x_train[:1], options=options, target_opset=17)
        path, validation = out / f"{name}.onnx", out / f"{name}.npz"
        path.write_bytes(model.SerializeToString())
        np.savez(validation, **{model.graph.input[0].name: x_val, "labels": y_val})
        log.info("%s: accuracy %.4f on the validation rows", name, estimator.score(x_val, y_val))
        built.append((name, path, validation))
    return built


def register_all(services: Services, models: list[tuple[str, str, Path, Path]]) -> dict[str, float]:
    """Register and build every model synchronously (variants built and profiled); seconds each."""
    took = {}
    registered = {m.name for m in services.metadata.list_models()}
    for name, task, onnx_path, validation in models:
        if name in registered:
            continue
        started = time.perf_counter()
        register_model(
            services,
            RegistrationRequest(
                name=name, task=task, model_path=onnx_path, validation_path=validation, max_batch=MAX_BATCH
            ),
        )
        build_model_variants(services, name)
        took[name] = round(time.perf_counter() - started, 1)
        log.info("%s built in %.0f s", name, took[name])
    return took


def _session(services: Services, model_name: str, variant_name: str) -> Session:
    model = services.metadata.get_model(model_name)
    assert model is not None
    variant = next(v for v in model.variants if v.name == variant_name)
    path = services.store.local_path(variant.artifact_key or "")
    return open_session(path, variant.providers, variant.threads, shapes=model.input_shapes)


def _timed(session: Session, batches: list[dict[str, np.ndarray]], runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``runs`` runs taking ``batches`` in turn."""
    wall, cpu = [], []
    for i in range(runs):
        feeds = batches[i % len(batches)]
        w0, c0 = time.perf_counter(), time.process_time()
        session.run(None, feeds)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def paired(a: Session, b: Session, batches: list[dict[str, np.ndarray]], rounds: int, runs: int) -> dict[str, Any]:
    """Alternating rounds of ``a`` and ``b``: per-run medians of each and the median of per-round ratios b/a."""
    for session in (a, b):
        _timed(session, batches, 5)
    wall_ratios, cpu_ratios, a_wall, b_wall = [], [], [], []
    for _ in range(rounds):
        aw, ac = _timed(a, batches, runs)
        bw, bc = _timed(b, batches, runs)
        a_wall.append(statistics.median(aw))
        b_wall.append(statistics.median(bw))
        wall_ratios.append(statistics.median(bw) / statistics.median(aw))
        cpu_ratios.append(statistics.mean(bc) / max(statistics.mean(ac), 1e-9))
    return {
        "cascade_ms": round(statistics.median(a_wall) * 1e3, 4),
        "baseline_ms": round(statistics.median(b_wall) * 1e3, 4),
        "wall_ratio": round(statistics.median(wall_ratios), 3),
        "cpu_ratio": round(statistics.median(cpu_ratios), 3),
        "round_ratios": [round(r, 3) for r in wall_ratios],
    }


def _outputs(session: Session, rows: dict[str, np.ndarray]) -> np.ndarray:
    size = len(next(iter(rows.values())))
    parts = [session.run(None, {k: v[i : i + 64] for k, v in rows.items()})[0] for i in range(0, size, 64)]
    return np.concatenate(parts)


def compare_task(services: Services, task: str, rounds: int, runs: int) -> dict[str, Any]:
    """Each kept cascade of ``task`` against the fastest single variant as accurate on its report rows."""
    models = [m for m in services.metadata.list_models() if m.task == task]
    all_decisions = services.metadata.list_cascade_decisions(task)
    decisions = [d for d in all_decisions if d.kept and d.variant]
    tolerance = services.settings.cascade_tolerance
    out: dict[str, Any] = {
        "decisions": len(all_decisions),
        "kept": len(decisions),
        "not_kept_reasons": sorted({d.reason.split(":")[0].split(" (")[0] for d in all_decisions if not d.kept}),
        "cascades": [],
    }
    for decision in decisions:
        model_name, cascade_name = (decision.variant or "").split("/", 1)
        model = next(m for m in models if m.name == model_name)
        measurement = Measurement(services, model, services.store.local_path(model.artifact_key))
        data = measurement.data
        _, report = sweep.tune_report(data.rows)
        rows = data.take(report)
        assert rows.labels is not None
        cascade = _session(services, model_name, cascade_name)
        cascade_accuracy, _ = accuracy_score(_outputs(cascade, rows.inputs), rows.labels)
        singles = []
        for other in models:
            if other.inputs != model.inputs:
                continue
            for variant in other.variants:
                if variant.status != "ready" or variant.kind == KIND or variant.hardware != "cpu":
                    continue
                session = _session(services, other.name, variant.name)
                accuracy, _ = accuracy_score(_outputs(session, rows.inputs), rows.labels)
                batches = [rows.batch(MAX_BATCH, i * MAX_BATCH) for i in range(4)]
                wall, _ = _timed(session, batches, max(20, runs // 2))
                singles.append((variant.key, accuracy, MAX_BATCH / statistics.median(wall), session))
        same = [s for s in singles if s[1] >= cascade_accuracy - tolerance]
        entry: dict[str, Any] = {
            "cascade": decision.variant,
            "cheap": decision.cheap,
            "expensive": decision.expensive,
            "rule": decision.numbers.get("rule"),
            "threshold": decision.numbers.get("threshold"),
            "answered_tune": decision.numbers.get("answered"),
            "answered_report": decision.numbers.get("answered_report"),
            "expected_saving": decision.numbers.get("saving"),
            "report_rows": int(len(report)),
            "accuracy": round(cascade_accuracy, 4),
            "expensive_accuracy": decision.numbers.get("expensive_accuracy"),
            "accuracy_difference_interval_95": decision.numbers.get("accuracy_difference_interval"),
            "singles_on_report_rows": {k: round(a, 4) for k, a, _, _ in singles},
        }
        if not same:
            entry["baseline"] = None
            entry["why"] = "no single variant is as accurate on the report rows"
            out["cascades"].append(entry)
            continue
        baseline = max(same, key=lambda s: s[2])
        entry["baseline"] = baseline[0]
        entry["baseline_accuracy"] = round(baseline[1], 4)
        b32 = [rows.batch(MAX_BATCH, i * MAX_BATCH) for i in range(max(1, rows.rows // MAX_BATCH))]
        b1 = [rows.batch(1, i) for i in range(rows.rows)]
        at32 = paired(cascade, baseline[3], b32, rounds, max(10, runs // 4))
        at1 = paired(cascade, baseline[3], b1, rounds, runs)
        entry["batch32"] = at32
        entry["batch1"] = at1
        entry["throughput_b32_speedup"] = at32["wall_ratio"]  # baseline time / cascade time = throughput ratio
        entry["throughput_b32_cpu_speedup"] = at32["cpu_ratio"]
        entry["p50_b1_speedup"] = at1["wall_ratio"]
        entry["p50_b1_cpu_speedup"] = at1["cpu_ratio"]
        out["cascades"].append(entry)
    return out


def selector_choices(services: Services, task: str, x: np.ndarray, input_name: str) -> list[dict[str, Any]]:
    """The engine's choice for three needs: a low accuracy floor, a floor a cascade meets, one above every
    cascade's accuracy (each with no latency budget, then batch 32)."""
    models = [m for m in services.metadata.list_models() if m.task == task]
    cascades = [c for m in models for c in services.engine.cache.for_model(m.name) if c.variant.kind == KIND]
    singles = [c for m in models for c in services.engine.cache.for_model(m.name) if c.variant.kind != KIND]
    if not cascades:
        return [{"note": "no cascade kept for this task"}]
    best_cascade = max(c.accuracy or 0.0 for c in cascades)
    top_single = max(c.accuracy or 0.0 for c in singles)
    needs = {  # run 1 used the least accurate cascade's floor, which the cheapest model met too
        "low floor (cheapest model meets it)": min(c.accuracy or 0.0 for c in singles),
        "floor the most accurate cascade meets": best_cascade - 0.0005,
        "floor above every cascade": min(top_single, best_cascade + 0.0005),
    }
    out = []
    for label, floor in needs.items():
        for rows in (1, 32):
            query = Query(Requirements(task=task, min_accuracy=floor), {input_name: x[:rows]})
            try:
                for _ in range(3):  # the first may load a variant; the selector then prefers loaded placements
                    answer = services.engine.infer(query)
                served = answer.served_by
                out.append(
                    {
                        "need": label,
                        "min_accuracy": round(floor, 4),
                        "rows": rows,
                        "served_by": f"{served.model}/{served.variant}",
                        "is_cascade": served.variant.startswith(f"{KIND}-"),
                        "escalation_share": served.cascade["escalation_share"] if served.cascade else None,
                        "estimated_ms": round(served.estimated_ms, 3),
                        "reason": served.reason,
                    }
                )
            except Exception as exc:  # e.g. no variant reaches the floor: recorded as the answer
                out.append({"need": label, "min_accuracy": round(floor, 4), "rows": rows, "error": str(exc)})
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build everything, construct the cascades, measure, and return the record."""
    from infaas.examples.zoo import build_zoo, load_digits_split, load_zoo

    started = time.perf_counter()
    zoo_dir, home = Path(args.zoo), Path(args.home)
    if not (zoo_dir / "zoo.json").exists():
        build_zoo(zoo_dir, quick=args.quick_zoo)
    settings = Settings(
        home=home, build_variants=False, autoscaler="off", profile_max_seconds=args.profile_seconds, heartbeat_s=0.25
    )
    services = build_services(settings, with_jobs=False)
    try:
        wanted = [
            (m.name, ZOO_TASK, Path(m.onnx_path), Path(m.validation_path))
            for m in load_zoo(zoo_dir)
            if not args.zoo_models or m.name in args.zoo_models
        ]
        wanted += [(n, SK_TASK, p, v) for n, p, v in train_breast_cancer(home / "sklearn")]
        build_s = register_all(services, wanted)
        construction_s = {}
        for task in (ZOO_TASK, SK_TASK):
            t0 = time.perf_counter()
            build_task_cascades(services, task, "local")
            construction_s[task] = round(time.perf_counter() - t0, 1)
        services.start_serving()
        _, _, x_digits, _ = load_digits_split(0)
        from sklearn.datasets import load_breast_cancer

        x_cancer = load_breast_cancer(return_X_y=True)[0].astype(np.float32)
        cancer_input = next(m for m in services.metadata.list_models() if m.task == SK_TASK).inputs[0].name
        zoo_input = next(m for m in services.metadata.list_models() if m.task == ZOO_TASK).inputs[0].name
        result: dict[str, Any] = {
            "command": "python -m benchmarks.cascades " + " ".join(sys.argv[1:]),
            "load_average": list(os.getloadavg()),
            "cores": os.cpu_count(),
            "tolerance_points": settings.cascade_tolerance * 100,
            "bootstrap": f"{sweep.REQUIRED} of {sweep.RESAMPLES} resamples",
            "build_s": build_s,
            "construction_s": construction_s,
            "tasks": {},
        }
        for task, x, name in ((ZOO_TASK, x_digits, zoo_input), (SK_TASK, x_cancer, cancer_input)):
            entry = compare_task(services, task, args.rounds, args.runs)
            entry["selector"] = selector_choices(services, task, x, name)
            result["tasks"][task] = entry
        result["load_average_after"] = list(os.getloadavg())
        result["runtime_s"] = round(time.perf_counter() - started, 1)
        return result
    finally:
        services.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cascades", description=__doc__)
    tmp = Path(tempfile.gettempdir())
    parser.add_argument("--zoo", default=str(tmp / "infaas-zoo"), help="example zoo folder (built if missing)")
    parser.add_argument("--home", default=str(tmp / "infaas-cascades-home"), help="infaas home (reused)")
    parser.add_argument("--quick-zoo", action="store_true", help="train the zoo briefly when it must be built")
    parser.add_argument("--zoo-models", nargs="*", help="only these zoo models (default: all four)")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds per comparison")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per round at batch 1 (a quarter at 32)")
    parser.add_argument("--profile-seconds", type=float, default=1.0, help="profiling budget per variant")
    parser.add_argument("--no-topk", action="store_true", help="skip benchmarks/topk.py's run_topk")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    result = run(args)
    if not args.no_topk and (Path(__file__).parent / "topk.py").exists():
        sys.path.insert(0, str(Path(__file__).parent.parent))
        from benchmarks.topk import run_topk

        result["topk"] = run_topk()
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1, default=str) + "\n")
    for task, entry in result["tasks"].items():
        print(f"{task}: {entry['kept']} kept of {entry['decisions']} decisions")
        for c in entry["cascades"]:
            print(
                f"  {c['cascade']} ({c['cheap']} -> {c['expensive']}): acc {c['accuracy']} "
                f"interval {c['accuracy_difference_interval_95']} vs {c.get('baseline')}: "
                f"b32 x{c.get('throughput_b32_speedup')} b1 x{c.get('p50_b1_speedup')}"
            )
        for s in entry["selector"]:
            print(f"  need {s.get('need')} rows {s.get('rows')}: {s.get('served_by') or s.get('error') or s}")
    print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
