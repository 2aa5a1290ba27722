"""Train scikit-learn models and export them as users do (skl2onnx, probabilities as a tensor), with validation
sets carrying labels: shared by the cascade and top-K benchmarks' families."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np


def export_family(
    family: dict[str, Any], x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, out: Path
) -> list[tuple[str, Path, Path, float]]:
    """Fit each estimator (a pipeline's last step is the classifier), write ``NAME.onnx`` and ``NAME.npz`` (the
    model's input and ``labels``) under ``out``; ``(name, onnx path, validation path, validation accuracy)`` each."""
    from skl2onnx import to_onnx

    out.mkdir(parents=True, exist_ok=True)
    built = []
    for name, estimator in family.items():
        classifier = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
        with warnings.catch_warnings():  # convergence notes; SVC(probability=True) is deprecated from 1.9 (works)
            warnings.simplefilter("ignore")
            estimator.fit(x_train, y_train)
            model = to_onnx(estimator, x_train[:1], options={id(classifier): {"zipmap": False}}, target_opset=17)
        path, validation = out / f"{name}.onnx", out / f"{name}.npz"
        path.write_bytes(model.SerializeToString())
        np.savez(validation, **{model.graph.input[0].name: x_val, "labels": y_val})
        built.append((name, path, validation, float(estimator.score(x_val, y_val))))
    return built
