"""The data variants are measured on, how it is split, and how a variant's accuracy and fidelity are scored.

Two numbers, never confused (``infaas.accuracy``): *accuracy* is top-1 (or 1 - relative error for a regression)
against the registration's ``labels``; *fidelity* is agreement (classifiers), cosine (vector outputs) or
1 - relative error (the rest) with the *original* model's outputs. Both are scored on the validation rows held
out from INT8-static calibration (``ValidationSet.split``): a variant calibrated on the rows it is scored on would
be graded on its own homework.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infaas.accuracy import AGREEMENT, COSINE, REL_ERROR, TOP1, is_classification
from infaas.catalog import ModelInfo
from infaas.runtime import Session
from infaas.tensors import TensorSpec

DEFAULT_DYNAMIC_DIM = 16  # a dynamic axis of a model registered before input shapes were recorded
MAX_ROWS = 1024  # bound on rows used for accuracy, so a big validation set cannot stall a build
SYNTHETIC_ROWS = 64
CALIBRATION_ROWS = 128  # at most this many rows calibrate INT8-static (MinMax ranges settle well before)
CALIBRATION_SHARE = 4  # ... and at most 1/4 of the set, so most rows remain to score on
_EPS = 1e-12


@dataclass(frozen=True)
class ValidationSet:
    """Input arrays by input name (same number of rows each), optional labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    synthetic: bool = False

    @property
    def rows(self) -> int:
        """Number of examples."""
        return len(next(iter(self.inputs.values())))

    def batch(self, size: int, start: int = 0) -> dict[str, np.ndarray]:
        """``size`` rows from ``start``, wrapping around so any batch size can be fed."""
        index = (np.arange(size) + start) % self.rows
        return {name: array[index] for name, array in self.inputs.items()}

    def take(self, index: np.ndarray) -> ValidationSet:
        """The rows at ``index``, labels included."""
        labels = None if self.labels is None else self.labels[index]
        return ValidationSet({n: a[index] for n, a in self.inputs.items()}, labels, self.synthetic)

    def split(self, seed: int = 0) -> tuple[ValidationSet | None, ValidationSet]:
        """Disjoint ``(calibration, scoring)`` rows, the same on every build of the same set.

        Calibration takes ``min(CALIBRATION_ROWS, rows // CALIBRATION_SHARE)`` rows drawn by a seeded
        permutation (a set sorted by class would otherwise calibrate on one class); every variant is scored on
        the rest, so accuracies stay comparable across variants. A set of fewer than ``CALIBRATION_SHARE`` rows
        is not split: nothing calibrates on it (``None``) and all of it is scored.
        """
        count = min(CALIBRATION_ROWS, self.rows // CALIBRATION_SHARE)
        if count == 0:
            return None, self
        order = np.random.default_rng(seed).permutation(self.rows)
        return self.take(np.sort(order[:count])), self.take(np.sort(order[count:]))


def load_validation(path: Path, model: ModelInfo) -> ValidationSet:
    """Read ``validation.npz``: arrays named after the inputs (or ``inputs`` for one input), ``labels``.

    Each array is conformed to its input as samples (``TensorSpec.conform``), as an offline job's are.
    """
    names = [spec.name for spec in model.inputs]
    with np.load(path, allow_pickle=False) as data:
        if len(names) == 1 and names[0] not in data and "inputs" in data:
            arrays = {names[0]: data["inputs"]}
        else:
            missing = [n for n in names if n not in data]
            if missing:
                raise ValueError(f"validation set has no array for input(s) {', '.join(missing)}")
            arrays = {n: data[n] for n in names}
        labels = data["labels"][:MAX_ROWS] if "labels" in data else None
    inputs = {
        spec.name: np.ascontiguousarray(spec.conform(arrays[spec.name][:MAX_ROWS], samples=True))
        for spec in model.inputs
    }
    rows = {len(a) for a in inputs.values()} | ({len(labels)} if labels is not None else set())
    if len(rows) != 1 or 0 in rows:
        raise ValueError("validation arrays (and labels) must have the same, non-zero number of rows")
    return ValidationSet(inputs=inputs, labels=labels)


def sample_shape(model: ModelInfo, spec: TensorSpec, batch: int) -> tuple[int, ...]:
    """``spec``'s shape for ``batch`` rows: its dynamic non-batch dims as registration recorded them.

    Registration records the shape its test inference ran at (``ModelInfo.input_shapes``); a YOLO
    detector, which fails below 2x2, is profiled at the 320x320 it ran at, not at a guessed size. Models
    registered before shapes were recorded fall back to ``DEFAULT_DYNAMIC_DIM``.
    """
    if not spec.shape:
        return ()
    recorded = model.input_shapes.get(spec.name)
    if recorded is not None and len(recorded) == len(spec.shape):
        return (batch, *recorded[1:])
    return (batch, *(d if d > 0 else DEFAULT_DYNAMIC_DIM for d in spec.shape[1:]))


def _synthetic_array(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dtype, name = spec.dtype, spec.name.lower()
    if dtype == np.bool_:
        return np.ones(shape, dtype=dtype)
    if np.issubdtype(dtype, np.integer):
        # Token ids, attention masks, segment ids: keep them valid for an embedding table.
        if "mask" in name:
            return np.ones(shape, dtype=dtype)
        if "type" in name or "segment" in name:
            return np.zeros(shape, dtype=dtype)
        high = 256 if dtype == np.uint8 else 100
        return rng.integers(0, high, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def synthetic_set(model: ModelInfo, rows: int = SYNTHETIC_ROWS, seed: int = 0) -> ValidationSet:
    """Deterministic random inputs of the declared dtypes, used when no validation set was given."""
    rng = np.random.default_rng(seed)
    rows = fixed_batch(model) or rows
    return ValidationSet(
        {spec.name: _synthetic_array(spec, sample_shape(model, spec, rows), rng) for spec in model.inputs},
        synthetic=True,
    )


def fixed_batch(model: ModelInfo) -> int | None:
    """The batch size if an input pins dim 0 to a number (then no other batch size can be fed)."""
    for spec in model.inputs:
        if spec.shape and spec.shape[0] > 0:
            return spec.shape[0]
    return None


def predict(session: Session, data: ValidationSet, batch: int, pinned: bool = False) -> np.ndarray:
    """The first output over every row of ``data``, ``batch`` rows at a time.

    With a ``pinned`` batch size the last, short batch is padded (wrapping around) and trimmed.
    """
    parts = []
    for start in range(0, data.rows, batch):
        remaining = data.rows - start
        out = np.asarray(session.run(None, data.batch(batch if pinned else min(batch, remaining), start))[0])
        parts.append(out[:remaining])
    return np.concatenate(parts)


def _is_class_scores(output: np.ndarray) -> bool:
    return output.ndim == 2 and output.shape[-1] > 1


def _closeness(predicted: np.ndarray, target: np.ndarray) -> float:
    """1 - L1 relative error, clipped to [0, 1] (L1 over the whole set, so near-zero values don't explode)."""
    predicted, target = predicted.astype(np.float64), target.astype(np.float64).reshape(predicted.shape)
    error = np.abs(predicted - target).sum() / (np.abs(target).sum() + _EPS)
    return float(np.clip(1.0 - error, 0.0, 1.0))


def _labels_of(output: np.ndarray) -> np.ndarray:
    return output.argmax(axis=-1) if _is_class_scores(output) else output.reshape(len(output), -1)[:, 0]


def _cosine(predicted: np.ndarray, target: np.ndarray) -> float:
    """Mean per-row cosine similarity, clipped to [0, 1]: how faithful an embedding variant stays."""
    a = predicted.astype(np.float64).reshape(len(predicted), -1)
    b = target.astype(np.float64).reshape(a.shape)
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + _EPS)
    return float(np.clip(cos.mean(), 0.0, 1.0))


def accuracy_score(predicted: np.ndarray, labels: np.ndarray) -> tuple[float, str]:
    """Accuracy against labels and its metric: ``top1`` for class scores or ids, else ``1-rel-error``."""
    if _is_class_scores(predicted) or np.issubdtype(predicted.dtype, np.integer):
        target = _labels_of(labels) if labels.ndim == 2 else labels.reshape(-1)
        return float(np.mean(_labels_of(predicted) == target)), TOP1
    return _closeness(predicted, labels), REL_ERROR


def fidelity_score(predicted: np.ndarray, reference: np.ndarray, task: str = "classification") -> tuple[float, str]:
    """Fidelity to the original model's outputs and its metric.

    ``agreement`` of argmax for classifiers (and integer outputs), ``cosine`` for vector outputs of other tasks
    (embeddings: argmax of an embedding means nothing), and ``1-rel-error`` for the rest.
    """
    if np.issubdtype(predicted.dtype, np.integer) or (_is_class_scores(predicted) and is_classification(task)):
        return float(np.mean(_labels_of(predicted) == _labels_of(reference))), AGREEMENT
    if _is_class_scores(predicted):
        return _cosine(predicted, reference), COSINE
    return _closeness(predicted, reference), REL_ERROR
