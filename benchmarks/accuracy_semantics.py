"""Mixed-task selection check (issue 12 points 1 and 8c): one meaning of accuracy across the models of a task.

Two scikit-learn digit classifiers, exported with skl2onnx, registered for real in one task
(``digits-classification``) in a throw-away ``INFAAS_HOME`` (SQLite, local store): ``register_model``, then
``build_model_variants`` run synchronously (every CPU variant built and profiled as a worker runs it).

* ``digits-labelled``: an MLP 64-512-512-10 trained on 200 digits, registered with a labelled validation set:
  its accuracy is *measured* (top-1 on the validation rows held out from INT8 calibration), about 0.92-0.94.
* ``digits-declared``: a logistic regression trained on 30 digits (really about 0.62), registered with inputs but no
  labels and a *declared* accuracy of 0.60: its original variant gets exactly 0.60 (``declared``), the others
  0.60 minus their disagreement with it (``estimated``). It is far cheaper to run.

Then queries over HTTP (the app, in process), without a latency budget (the cheapest qualifying placement wins).
Each model first serves one plain query, so that both have a loaded variant and the choice is about the cost of
serving, not about which model happened to be loaded first (a cold placement's cost includes its load):

* to the task, ``min_accuracy`` 0.9 must pick the labelled model, and 0.5 the cheaper declared one;
* to the labelled model, ``min_fidelity`` (agreement with the registered model's own outputs) must pick a variant
  whose measured agreement reaches it; with an accuracy floor only a less faithful variant meets, the answer is
  422 ``fidelity_unavailable``;
* ``old_rule_picks`` is what the selector chose before this change, when an unlabelled variant's agreement with
  its original was stored as its accuracy (the declared model's FP32 scored 1.0), next to ``new_rule_picks``:
  both from the pure selector over the same candidates with nothing loaded.

    python benchmarks/accuracy_semantics.py        # writes benchmarks/results/accuracy_semantics.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "accuracy_semantics.json"
TASK = "digits-classification"
LABELLED, DECLARED = "digits-labelled", "digits-declared"
DECLARED_ACCURACY = 0.60
MAX_BATCH = 8


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def train(work: Path) -> dict[str, Any]:
    """Train and export both models; write their validation sets (the declared one without labels)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    features, labels = load_digits(return_X_y=True)
    features = (features / 16.0).astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(features, labels, test_size=0.4, random_state=0, stratify=labels)
    mlp = MLPClassifier(hidden_layer_sizes=(512, 512), max_iter=300, random_state=0).fit(x_train[:200], y_train[:200])
    logreg = LogisticRegression(max_iter=500).fit(x_train[:30], y_train[:30])
    out: dict[str, Any] = {"validation_rows": len(x_val)}
    for name, model, with_labels in ((LABELLED, mlp, True), (DECLARED, logreg, False)):
        onnx_path, npz_path = work / f"{name}.onnx", work / f"{name}.npz"
        onnx_path.write_bytes(to_onnx(model, x_train[:1], options={id(model): {"zipmap": False}}).SerializeToString())
        npz_path.write_bytes(_npz(inputs=x_val, labels=y_val) if with_labels else _npz(inputs=x_val))
        out[name] = {
            "onnx": onnx_path,
            "validation": npz_path,
            "true_top1_on_validation": round(float(np.mean(model.predict(x_val) == y_val)), 4),
        }
    out["query_rows"] = x_val[:1]
    return out


def _variants(client: Any, name: str) -> list[dict[str, Any]]:
    keep = ("name", "status", "accuracy", "accuracy_metric", "accuracy_source", "fidelity", "fidelity_metric")
    rows = []
    for v in client.get(f"/v1/models/{name}/variants").json():
        row = {k: v[k] for k in keep}
        row["p50_ms_b1"] = round(v["profiles"][0]["latency_p50_ms"], 4) if v["profiles"] else None
        rows.append(row)
    return rows


def _query(client: Any, rows: np.ndarray, target: dict[str, str], **hints: Any) -> dict[str, Any]:
    response = client.post("/v1/infer", json={**target, "inputs": {"X": rows.tolist()}, **hints})
    hints = {**target, **hints}
    body = response.json()
    if response.status_code != 200:
        return {"hints": hints, "status": response.status_code, "code": body.get("code"), "detail": body["detail"]}
    served = body["served_by"]
    return {
        "hints": hints,
        "status": 200,
        "served_by": f"{served['model']}/{served['variant']}",
        "cost": served["cost"],
        "estimated_ms": served["estimated_ms"],
    }


def _rule_picks(services: Any, floors: tuple[float, ...]) -> dict[str, dict[str, str]]:
    """The pure selector's pick per floor, nothing loaded, under the old rule (an unlabelled variant's agreement
    with its original was its accuracy) and the new one (``infaas.accuracy.accuracy_of``)."""
    from infaas.accuracy import Accuracy, fidelity_of
    from infaas.selector import Candidate, Requirements, select

    new = [Candidate.of(model, variant) for model, variant in services.metadata.ready_variants()]
    old = []
    for c in new:
        if c.accuracy_info.source != "measured":
            was = Accuracy(fidelity_of(c.variant).value, "top1", "measured")
            c = replace(c, accuracy=was.value, accuracy_info=was)
        old.append(c)
    live = replace(services.engine.workers.snapshot(), instances={})
    picks: dict[str, dict[str, str]] = {"old_rule_picks": {}, "new_rule_picks": {}}
    for rule, candidates in (("old_rule_picks", old), ("new_rule_picks", new)):
        for floor in floors:
            wanted = Requirements(task=TASK, min_accuracy=floor)
            picks[rule][str(floor)] = select(wanted, candidates, live, services.settings.prices).variant.key
    return picks


def run(work: Path) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from infaas.config import Settings
    from infaas.registration import RegistrationRequest, register_model
    from infaas.services import build_services
    from variant_generator.build import build_model_variants

    trained = train(work)
    home = work / "home"
    settings = Settings(
        home=home, build_variants=False, autoscaler="off", profile_runs=30, profile_max_seconds=0.5, worker_cores=2
    )
    services = build_services(settings, with_jobs=False)
    result: dict[str, Any] = {"models": {}, "queries": []}
    try:
        for name, declared in ((LABELLED, None), (DECLARED, DECLARED_ACCURACY)):
            started = time.perf_counter()
            request = RegistrationRequest(
                name=name,
                task=TASK,
                model_path=trained[name]["onnx"],
                validation_path=trained[name]["validation"],
                declared_accuracy=declared,
                max_batch=MAX_BATCH,
            )
            register_model(services, request)
            build_model_variants(services, name)
            result["models"][name] = {
                "declared_accuracy": declared,
                "labels_registered": declared is None,
                "true_top1_on_validation": trained[name]["true_top1_on_validation"],
                "build_s": round(time.perf_counter() - started, 1),
            }
        rows = trained["query_rows"]
        labelled = [v for v in services.metadata.get_model(LABELLED).variants if v.status == "ready"]
        with TestClient(create_app(settings, services=services)) as client:
            for name in (LABELLED, DECLARED):
                result["models"][name]["variants"] = _variants(client, name)
                result["models"][name]["warm_up"] = [_query(client, rows, {"model": name}) for _ in range(2)]
            task, model = {"task": TASK}, {"model": LABELLED}
            result["queries"] = [
                _query(client, rows, task, min_accuracy=0.9),
                _query(client, rows, task, min_accuracy=0.5),
                _query(client, rows, task, min_accuracy=0.99),
                _query(client, rows, model),
                _query(client, rows, model, min_fidelity=0.999),
            ]
            # An accuracy floor that only variants less faithful than 0.999 meet, if the build made one.
            scored = [_scores(services, v) for v in labelled]
            top_faithful = max((a for a, f in scored if (f or 0.0) >= 0.999), default=0.0)
            above = [a for a, f in scored if (f or 0.0) < 0.999 and a > top_faithful]
            if above:
                result["queries"].append(_query(client, rows, model, min_accuracy=max(above), min_fidelity=0.999))
        result.update(_rule_picks(services, (0.9, 0.5)))
    finally:
        services.close()
    served = {json.dumps(q["hints"], sort_keys=True): q for q in result["queries"]}

    def pick(**hints: Any) -> str:
        return served[json.dumps(hints, sort_keys=True)].get("served_by", "")

    fidelity_of_pick = {f"{LABELLED}/{v['name']}": v["fidelity"] for v in result["models"][LABELLED]["variants"]}
    result["checks"] = {
        "min_accuracy_0.9_picks_labelled": pick(task=TASK, min_accuracy=0.9).startswith(LABELLED + "/"),
        "min_accuracy_0.5_picks_declared_cheaper": pick(task=TASK, min_accuracy=0.5).startswith(DECLARED + "/"),
        "min_fidelity_0.999_served_by_a_faithful_variant": (
            fidelity_of_pick.get(pick(model=LABELLED, min_fidelity=0.999)) or 0.0
        )
        >= 0.999,
        "fidelity_unavailable_is_422": all(
            q["status"] == 422 and q["code"] == "fidelity_unavailable"
            for q in result["queries"]
            if "min_fidelity" in q["hints"] and "min_accuracy" in q["hints"]
        ),
        "old_rule_picked_declared_at_0.9": result["old_rule_picks"]["0.9"].startswith(DECLARED + "/"),
        "new_rule_picks_labelled_at_0.9": result["new_rule_picks"]["0.9"].startswith(LABELLED + "/"),
    }
    return result


def _scores(services: Any, variant: Any) -> tuple[float, float | None]:
    """A labelled variant's (measured accuracy, fidelity)."""
    from infaas.accuracy import accuracy_of, fidelity_of

    model = services.metadata.get_model(LABELLED)
    return accuracy_of(model, variant).value or 0.0, fidelity_of(variant).value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="accuracy-semantics-") as tmp:
        result = run(Path(tmp))
    result["machine"] = {"python": platform.python_version(), "platform": platform.platform()}
    result["ran_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["wall_s"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    for name, model in result["models"].items():
        print(f"{name}: declared {model['declared_accuracy']}, true top1 {model['true_top1_on_validation']}")
        for v in model["variants"]:
            acc = "unknown" if v["accuracy"] is None else f"{v['accuracy']:.3f} {v['accuracy_metric']}"
            fid = "" if v["fidelity"] is None else f"{v['fidelity']:.3f} {v['fidelity_metric']}"
            print(f"  {v['name']:<22} {v['status']:<8} acc {acc:<14} ({v['accuracy_source']}) fid {fid}")
    for q in result["queries"]:
        print(f"{json.dumps(q['hints']):<70} -> {q.get('served_by') or (q['status'], q['code'], q['detail'])}")
    print(f"pure selector, nothing loaded: old rule {result['old_rule_picks']}, new rule {result['new_rule_picks']}")
    print("checks:", result["checks"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
