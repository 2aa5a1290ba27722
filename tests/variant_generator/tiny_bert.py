"""A BERT encoder in miniature, exported by PyTorch the way Hugging Face models are, for the transformer tests.

Same structure as ``transformers.BertModel`` (word + position + token-type embeddings with a layer norm; per
layer: Q/K/V projections split into heads, scaled scores plus an additive mask, softmax, mixing, output projection
with a residual layer norm, an exact-GELU feed-forward block with a residual layer norm), then mean pooling: so
ONNX Runtime's BERT fusions see the patterns they fuse on real exports, without the ``transformers`` package (not
installed by ``make install``). Weights are random but fixed (seed 0); 2 layers, hidden 32, 4 heads.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

VOCAB, HIDDEN, HEADS, LAYERS, FFN, MAX_POSITIONS = 100, 32, 4, 2, 64, 64
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (
            nn.Linear(HIDDEN, HIDDEN),
            nn.Linear(HIDDEN, HIDDEN),
            nn.Linear(HIDDEN, HIDDEN),
        )
        self.output, self.norm1 = nn.Linear(HIDDEN, HIDDEN), nn.LayerNorm(HIDDEN, eps=1e-12)
        self.up, self.down, self.norm2 = nn.Linear(HIDDEN, FFN), nn.Linear(FFN, HIDDEN), nn.LayerNorm(HIDDEN, eps=1e-12)

    heads_written = HEADS  # -1: split as transformers 5 does, view(..., -1, head_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.size()[:-1], self.heads_written, HIDDEN // HEADS).permute(0, 2, 1, 3)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(hidden)), self._heads(self.value(hidden))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(HIDDEN // HEADS) + mask
        mixed = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).contiguous()
        attended = self.norm1(self.output(mixed.view(*mixed.size()[:-2], HIDDEN)) + hidden)
        return self.norm2(self.down(nn.functional.gelu(self.up(attended))) + attended)


class TinyBert(nn.Module):
    """``(input_ids, attention_mask, token_type_ids) -> mean-pooled embedding [batch, HIDDEN]``."""

    def __init__(self) -> None:
        super().__init__()
        self.words, self.positions = nn.Embedding(VOCAB, HIDDEN), nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.types, self.norm = nn.Embedding(2, HIDDEN), nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(_Layer() for _ in range(LAYERS))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), dtype=torch.long).unsqueeze(0)
        hidden = self.norm(self.words(input_ids) + self.positions(positions) + self.types(token_type_ids))
        additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * -10000.0
        for layer in self.layers:
            hidden = layer(hidden, additive)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


def export_tiny_bert(path: Path, sequence: int = 8, heads_as_minus_one: bool = False) -> Path:
    """Write the encoder to ``path`` (opset 17, batch and sequence axes dynamic) and return it; with
    ``heads_as_minus_one`` the head split is written ``[b, s, -1, head_size]`` (as all-MiniLM-L6-v2's export)."""
    torch.manual_seed(0)
    model = TinyBert().eval()
    for layer in model.layers:
        layer.heads_written = -1 if heads_as_minus_one else HEADS
    example = tuple(torch.from_numpy(a) for a in token_inputs(2, sequence).values())
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    with torch.no_grad():
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=["embedding"],
            dynamic_axes={**dynamic, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path


def token_inputs(rows: int, sequence: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """``rows`` token sequences with varying lengths (padding masked out), as a tokenizer would give."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(rows, sequence)).astype(np.int64)
    lengths = rng.integers(2, sequence + 1, size=rows)
    mask = (np.arange(sequence)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
