"""The example model zoo: four real digit classifiers that make the latency/accuracy trade-off concrete.

A model-less server is only interesting when the models registered for one task really differ, so this
module trains, offline and from data that ships with scikit-learn (``load_digits``; nothing is
downloaded), a family whose members are far apart in both speed and accuracy:

================  ==============================================  ===============  ========
name              what it is                                      batch-1 latency  accuracy
================  ==============================================  ===============  ========
digits-logreg     logistic regression on a 4x4 downsampled image  ~0.005 ms        ~0.86
digits-mlp-small  MLP 64-8-10                                     ~0.006 ms        ~0.95
digits-mlp-large  MLP 64-2048-2048-10                             ~0.15 ms         ~0.98
digits-cnn        CNN on the image upsampled to 16x16, conv       ~6 ms            ~0.99
                  128-256-512 + fc 128, logits averaged over the
                  image and its four one-pixel shifts
================  ==============================================  ===============  ========

(Full build, seed 0, ONNX Runtime with default threads on an idle two-core x86 VM; a quick build has the
same architectures and latencies but lower accuracies.) What makes the CNN the most accurate is its
training: random shifts teach it translation invariance, which the MLPs cannot learn from 1347 digits.
What makes it slow is size plus test-time augmentation: it runs the image and four shifted copies as one
batch of five and averages their logits, so it really does five passes of work per query. On these
centred digits the extra views do not change accuracy (one view scores the same 0.987 at ~1.6 ms); set
``CNN_VIEWS`` to the first view only for that faster model. A wider CNN was no better a route to 5 ms: at
equal training steps it was less accurate and three times slower to train.

All four models share one interface (see ``infaas.examples.graphs``): input ``input`` float32
``[batch, 64]`` (flattened 8x8 image, pixel values / 16), output ``logits`` float32 ``[batch, 10]``. So
any of them can answer a ``digits-classification`` query, and the server's choice is purely about the
latency budget and the accuracy floor. Each model comes with a validation ``.npz`` (the held-out split)
holding ``inputs`` (also stored under the input name, ``input``) and ``labels``.

PyTorch is needed to *build* the zoo (it is imported only inside ``build_zoo``); serving the ONNX files
needs only ONNX Runtime.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from infaas.examples.graphs import INPUT_NAME, NUM_FEATURES, OUTPUT_NAME, Dense, cnn_graph, mlp_graph

log = logging.getLogger(__name__)

TASK = "digits-classification"
ZOO_FILE = "zoo.json"
VALIDATION_FRACTION = 0.25  # 450 of the 1797 digits are held out
CHECK_SAMPLES = 64  # validation digits on which each ONNX graph is compared with the network it came from


@dataclass(frozen=True)
class ZooModel:
    """One built example model: where its files are and what it measured on the held-out digits."""

    name: str
    task: str
    onnx_path: Path
    validation_path: Path
    accuracy: float  # top-1 of the ONNX model (run by ONNX Runtime) on validation_path
    input_name: str
    input_shape: tuple[int, ...]  # per sample, without the batch axis
    output_name: str = OUTPUT_NAME
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: paths as absolute strings, the shape as a list."""
        data = asdict(self)
        data["onnx_path"] = str(Path(self.onnx_path).resolve())
        data["validation_path"] = str(Path(self.validation_path).resolve())
        data["input_shape"] = list(self.input_shape)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], base: Path | None = None) -> ZooModel:
        """Inverse of ``to_json``; unknown keys (e.g. ``latency_b1_ms``) are ignored, relative paths resolved
        against ``base``."""
        base = Path(base) if base is not None else Path.cwd()
        return cls(
            name=data["name"],
            task=data["task"],
            onnx_path=base / data["onnx_path"],
            validation_path=base / data["validation_path"],
            accuracy=float(data["accuracy"]),
            input_name=data["input_name"],
            input_shape=tuple(int(d) for d in data["input_shape"]),
            output_name=data.get("output_name", OUTPUT_NAME),
            description=data.get("description", ""),
        )


# --------------------------------------------------------------------------------------------- data


def load_digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 digits as ``(x_train, y_train, x_val, y_val)``: a stratified split,
    inputs float32 ``[N, 64]`` scaled to ``[0, 1]`` (the zoo models' input format), labels int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = preprocess(digits.data)
    y = digits.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=VALIDATION_FRACTION, stratify=y, random_state=seed
    )
    return x_train, y_train, x_val, y_val


def preprocess(images: np.ndarray) -> np.ndarray:
    """Raw digits (8x8 or 64 values each, intensities 0-16) → the zoo models' input, float32 ``[N, 64]``."""
    array = np.asarray(images, dtype=np.float32)
    return (array.reshape(-1, NUM_FEATURES) / 16.0).astype(np.float32)


def _pool_matrix() -> np.ndarray:
    """``[64, 16]``: flattened 8x8 image → flattened 4x4 image of 2x2 means."""
    pool = np.zeros((NUM_FEATURES, 16), dtype=np.float32)
    for r in range(8):
        for c in range(8):
            pool[r * 8 + c, (r // 2) * 4 + c // 2] = 0.25
    return pool


# ------------------------------------------------------------------------------------------- models


# Architectures are the same in quick and full builds (so are latencies); only training length differs.
MLP_SMALL_HIDDEN = (8,)
MLP_LARGE_HIDDEN = (2048, 2048)
CNN_SIZE = 16  # the 8x8 digits are upsampled to 16x16 inside the graph
CNN_CHANNELS = (128, 256, 512)
CNN_POOLS = (False, True, True)
CNN_HIDDEN = (128,)
# Test-time augmentation: the unshifted image and its four one-pixel shifts, logits averaged.
CNN_VIEWS = ((1, 1), (0, 1), (2, 1), (1, 0), (1, 2))


_CNN_DESCRIPTION = "CNN on 16x16 upsampled digits (conv 128-256-512, fc 128), averaged over 5 shifted views"


def _schedules(quick: bool) -> dict[str, Any]:
    """Training lengths in optimizer steps (1347 training digits: 21 steps of 64, or 42 of 32, per epoch)."""
    from infaas.examples.training import Schedule

    return {
        "mlp-small": Schedule(steps=300 if quick else 1500, lr=1e-2),
        "mlp-large": Schedule(steps=100 if quick else 600, lr=1e-3),
        "cnn": Schedule(steps=80 if quick else 300, batch_size=16 if quick else 32, lr=1e-3, augment=True),
    }


def build_zoo(out_dir: Path, *, seed: int = 0, quick: bool = False, threads: int = 2) -> list[ZooModel]:
    """Train the four example models, export them to ONNX, and write their validation sets and ``zoo.json``.

    ``quick`` trains for a fraction of the steps (for tests: same architectures and latencies, lower
    accuracy). Training uses ``threads`` CPU threads; the previous torch setting is restored afterwards.
    Each exported graph is checked against the trained network's own outputs, and each recorded accuracy
    is measured by running the ONNX file in ONNX Runtime, so it is exactly what a server would observe.
    """
    import torch  # build-time dependency only

    from infaas.examples import training

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_val, y_val = load_digits_split(seed)
    x_check = x_val[:CHECK_SAMPLES]  # the trained network's own logits on these must match the ONNX graph's
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    built: list[ZooModel] = []

    schedules = _schedules(quick)

    def finish(name: str, model: onnx.ModelProto, description: str, reference: np.ndarray | None) -> None:
        nonlocal lap
        built.append(_save(out_dir, name, model, description, x_val, y_val, reference))
        now = time.perf_counter()
        log.info("%s: accuracy %.4f (%.1f s)", name, built[-1].accuracy, now - lap)
        lap = now

    started = lap = time.perf_counter()
    try:
        name = "digits-logreg"
        finish(name, mlp_graph([_train_logreg(x_train, y_train)], name), "logistic regression on 4x4 means", None)

        name = "digits-mlp-small"
        layers, ref = training.train_mlp(x_train, y_train, x_check, MLP_SMALL_HIDDEN, schedules["mlp-small"], seed)
        finish(name, mlp_graph(layers, name), "MLP 64-8-10", ref)

        name = "digits-mlp-large"
        layers, ref = training.train_mlp(x_train, y_train, x_check, MLP_LARGE_HIDDEN, schedules["mlp-large"], seed)
        finish(name, mlp_graph(layers, name), "MLP 64-2048-2048-10", ref)

        name = "digits-cnn"
        convs, head, ref = training.train_cnn(
            x_train,
            y_train,
            x_check,
            size=CNN_SIZE,
            channels=CNN_CHANNELS,
            pools=CNN_POOLS,
            hidden=CNN_HIDDEN,
            views=CNN_VIEWS,
            schedule=schedules["cnn"],
            seed=seed,
        )
        finish(name, cnn_graph(CNN_SIZE, convs, head, name, views=CNN_VIEWS), _CNN_DESCRIPTION, ref)
        log.info("zoo built in %.1f s", time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous_threads)
    write_zoo_json(out_dir, built)
    return built


def _train_logreg(x: np.ndarray, y: np.ndarray) -> Dense:
    """Logistic regression on the 4x4 downsampled image, folded into one ``[64, 10]`` layer.

    Downsampling throws most of the detail away on purpose: this is the zoo's fast-but-sloppy member.
    Pooling is linear, so ``pooled @ W == x @ (P @ W)`` and the ONNX graph stays a single MatMul + Add.
    """
    from sklearn.linear_model import LogisticRegression

    pool = _pool_matrix()
    classifier = LogisticRegression(C=1.0, max_iter=5000).fit(x @ pool, y)
    return Dense(weight=(pool @ classifier.coef_.T).astype(np.float32), bias=classifier.intercept_.astype(np.float32))


def _save(
    out_dir: Path,
    name: str,
    model: onnx.ModelProto,
    description: str,
    x_val: np.ndarray,
    y_val: np.ndarray,
    reference: np.ndarray | None,
) -> ZooModel:
    onnx_path = out_dir / f"{name}.onnx"
    validation_path = out_dir / f"{name}.npz"
    onnx.save(model, onnx_path)
    np.savez(validation_path, **{"inputs": x_val, INPUT_NAME: x_val, "labels": y_val})
    logits = run_onnx(onnx_path, x_val)
    if reference is not None and not np.allclose(logits[: len(reference)], reference, rtol=1e-3, atol=1e-3):
        worst = float(np.max(np.abs(logits[: len(reference)] - reference)))
        raise RuntimeError(f"{name}: the ONNX graph disagrees with the trained network (max |diff| {worst:.3g})")
    return ZooModel(
        name=name,
        task=TASK,
        onnx_path=onnx_path,
        validation_path=validation_path,
        accuracy=float(np.mean(logits.argmax(axis=1) == y_val)),
        input_name=INPUT_NAME,
        input_shape=(NUM_FEATURES,),
        description=description,
    )


# ----------------------------------------------------------------------------------- using the zoo


def _session(onnx_path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def run_onnx(onnx_path: Path, inputs: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits of a zoo model for ``inputs`` (float32 ``[N, 64]``), computed by ONNX Runtime on the CPU."""
    session = _session(onnx_path)
    chunks = [
        session.run([OUTPUT_NAME], {INPUT_NAME: inputs[i : i + batch_size]})[0]
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(chunks)


def measure_latency_ms(onnx_path: Path, *, batch_size: int = 1, runs: int = 200, warmup: int = 20) -> float:
    """Median wall time (ms) of one ONNX Runtime call at ``batch_size``, default session options."""
    session = _session(onnx_path)
    x = np.random.default_rng(0).random((batch_size, NUM_FEATURES), dtype=np.float32)
    feed = {INPUT_NAME: x}
    for _ in range(warmup):
        session.run([OUTPUT_NAME], feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run([OUTPUT_NAME], feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def write_zoo_json(out_dir: Path, models: list[ZooModel], extra: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write ``out_dir/zoo.json``: a list of ``ZooModel.to_json()`` dicts, merged with ``extra[name]``
    (e.g. ``{"latency_b1_ms": 0.01}``) so that scripts can read the zoo without importing this package."""
    extra = extra or {}
    entries = [{**model.to_json(), **extra.get(model.name, {})} for model in models]
    path = Path(out_dir) / ZOO_FILE
    path.write_text(json.dumps(entries, indent=2) + "\n")
    return path


def load_zoo(out_dir: Path) -> list[ZooModel]:
    """Read the models listed in ``out_dir/zoo.json``."""
    out_dir = Path(out_dir)
    return [ZooModel.from_json(entry, out_dir) for entry in json.loads((out_dir / ZOO_FILE).read_text())]


def build_and_profile(out_dir: Path, *, seed: int = 0, quick: bool = False, runs: int = 200) -> list[dict[str, Any]]:
    """``build_zoo``, then measure each model's batch-1 latency and record it in ``zoo.json`` as
    ``latency_b1_ms``; returns the ``zoo.json`` entries. This is what ``python -m infaas.examples`` runs."""
    models = build_zoo(out_dir, seed=seed, quick=quick)
    latencies = {m.name: {"latency_b1_ms": round(measure_latency_ms(m.onnx_path, runs=runs), 4)} for m in models}
    write_zoo_json(out_dir, models, latencies)
    return json.loads((Path(out_dir) / ZOO_FILE).read_text())
