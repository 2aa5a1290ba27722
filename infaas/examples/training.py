"""PyTorch training for the zoo's neural networks (build-time only: the server never imports this module).

Each function trains one network on flattened 8x8 digits and hands back its weights as the plain numpy
layers that ``infaas.examples.graphs`` turns into ONNX, plus the network's own logits on the evaluation
inputs so the caller can check that the ONNX graph computes the same function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from infaas.examples.graphs import NUM_CLASSES, NUM_FEATURES, Conv, Dense, bilinear_upsample_matrix


@dataclass(frozen=True)
class Schedule:
    """How long and how hard to train: Adam with a cosine-decayed learning rate, in mini-batches."""

    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    augment: bool = False  # CNN only: random ±1 pixel shifts of the upsampled image


class _MLP(nn.Module):
    def __init__(self, hidden: Sequence[int]) -> None:
        super().__init__()
        sizes = [NUM_FEATURES, *hidden, NUM_CLASSES]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)

    def export(self) -> list[Dense]:
        return [_dense(layer) for layer in self.layers]


class _CNN(nn.Module):
    """Bilinear upsample (a fixed matrix) → 3x3 conv/ReLU[/max-pool] stack → flatten → MLP head.

    In eval mode the logits are averaged over shifted copies of the upsampled image (``views``: offsets
    into the image padded by one pixel; ``(1, 1)`` is the unshifted image), as the ONNX graph does.
    """

    def __init__(
        self,
        size: int,
        channels: Sequence[int],
        pools: Sequence[bool],
        hidden: Sequence[int],
        views: Sequence[tuple[int, int]] = ((1, 1),),
    ) -> None:
        super().__init__()
        self.size = size
        self.pools = list(pools)
        self.views = list(views)
        self.register_buffer("upsample", torch.from_numpy(bilinear_upsample_matrix(size)))
        ins = [1, *channels[:-1]]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(ins, channels, strict=True))
        side = size // 2 ** sum(self.pools)
        sizes = [channels[-1] * side * side, *hidden, NUM_CLASSES]
        self.head = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        for conv, pool in zip(self.convs, self.pools, strict=True):
            images = F.relu(conv(images))
            if pool:
                images = F.max_pool2d(images, 2)
        x = torch.flatten(images, 1)
        for layer in self.head[:-1]:
            x = F.relu(layer(x))
        return self.head[-1](x)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        images = (x @ self.upsample).reshape(-1, 1, self.size, self.size)
        if self.training:  # one randomly shifted view per image (augmentation), when given a generator
            return self._logits(images if generator is None else _shift(images, 1, generator))
        padded = F.pad(images, (1, 1, 1, 1))
        views = [padded[:, :, dy : dy + self.size, dx : dx + self.size] for dy, dx in self.views]
        return self._logits(torch.cat(views)).reshape(len(views), -1, NUM_CLASSES).mean(dim=0)

    def export(self) -> tuple[list[Conv], list[Dense]]:
        convs = [
            Conv(weight=_numpy(conv.weight), bias=_numpy(conv.bias), pool=pool)
            for conv, pool in zip(self.convs, self.pools, strict=True)
        ]
        return convs, [_dense(layer) for layer in self.head]


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float32)


def _dense(layer: nn.Linear) -> Dense:
    # torch stores [out, in]; the ONNX graph computes x @ W, so W is [in, out].
    return Dense(weight=_numpy(layer.weight).T.copy(), bias=_numpy(layer.bias))


def _shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each ``[N, 1, H, W]`` image by up to ``max_shift`` pixels each way, filling with zeros
    (background): digits that sit slightly off-centre are still the same digit."""
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    out = torch.empty_like(images)
    for dy in range(2 * max_shift + 1):
        for dx in range(2 * max_shift + 1):
            mask = (offsets[:, 0] == dy) & (offsets[:, 1] == dx)
            out[mask] = padded[mask, :, dy : dy + h, dx : dx + w]
    return out


def _fit(
    forward: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor],
    params: Iterable[nn.Parameter],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    schedule: Schedule,
    generator: torch.Generator,
) -> None:
    """Minimise cross-entropy with Adam over shuffled mini-batches (reshuffled every epoch)."""
    optimizer = torch.optim.Adam(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    order, cursor = torch.randperm(len(inputs), generator=generator), 0
    for step in range(schedule.steps):
        if cursor + schedule.batch_size > len(order):  # a new epoch
            order, cursor = torch.randperm(len(inputs), generator=generator), 0
        batch = order[cursor : cursor + schedule.batch_size]
        cursor += schedule.batch_size
        for group in optimizer.param_groups:  # cosine decay to 5% of the peak rate
            group["lr"] = schedule.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / schedule.steps)))
        optimizer.zero_grad(set_to_none=True)
        logits = forward(inputs[batch], generator if schedule.augment else None)
        F.cross_entropy(logits, labels[batch]).backward()
        optimizer.step()


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))


def _logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def train_mlp(
    x: np.ndarray, y: np.ndarray, x_eval: np.ndarray, hidden: Sequence[int], schedule: Schedule, seed: int
) -> tuple[list[Dense], np.ndarray]:
    """Train an MLP with the given hidden widths; return its layers and its logits on ``x_eval``."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = _MLP(hidden).train()
    _fit(lambda xb, _: model(xb), model.parameters(), *_tensors(x, y), schedule, generator)
    return model.export(), _logits(model, x_eval)


def train_cnn(
    x: np.ndarray,
    y: np.ndarray,
    x_eval: np.ndarray,
    *,
    size: int,
    channels: Sequence[int],
    pools: Sequence[bool],
    hidden: Sequence[int],
    views: Sequence[tuple[int, int]],
    schedule: Schedule,
    seed: int,
) -> tuple[list[Conv], list[Dense], np.ndarray]:
    """Train the upsampling CNN; return its conv layers, head layers and (view-averaged) logits on ``x_eval``.

    With ``schedule.augment`` every training image is shifted by up to one pixel of the upsampled image;
    that is what lets this CNN beat the MLPs on 1347 training digits (translation is the variation the
    MLPs cannot generalise over), and it matches the shifted views averaged at inference.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = _CNN(size, channels, pools, hidden, views).train()
    _fit(model, model.parameters(), *_tensors(x, y), schedule, generator)
    convs, dense = model.export()
    return convs, dense, _logits(model, x_eval)
