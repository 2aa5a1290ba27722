"""Which pairs of variants can form a cascade: same task, same owner, same inputs, outputs that merge row by row.

A cheap member must output multi-class scores (a float ``[batch, classes > 1]`` output: logits or
probabilities), whose max probability or top-1 margin is its confidence. Other outputs (a regression's value,
an embedding, a detector's boxes) carry no confidence infaas can read, so no cascade starts with them; they can
still be an expensive member. Members are ONNX Runtime CPU variants: a cascade holding a GPU and CPU cores at
once would need a placement across hardware kinds, which the selector does not offer (not built; documented in
``docs/cascades.md``). Pairs are across models of the task and within one model (an INT8 build before its FP32).
"""

from __future__ import annotations

from infaas.cascade_session import KIND
from infaas.catalog import ModelInfo, VariantInfo
from infaas.db.models import VariantStatus
from infaas.runtime import CPU_PROVIDERS
from infaas.tensors import TensorSpec

_FLOATS = frozenset({"float16", "float32", "float64"})


def score_index(outputs: tuple[TensorSpec, ...]) -> int | None:
    """Index of the first output that can hold multi-class scores, or ``None`` (no usable confidence).

    A dynamic class axis is allowed here; the construction checks the values it gets have more than one column.
    """
    for index, spec in enumerate(outputs):
        if spec.dtype.name in _FLOATS and len(spec.shape) == 2 and spec.shape[1] != 1:
            return index
    return None


def _batch_first(spec: TensorSpec) -> bool:
    return bool(spec.shape) and spec.shape[0] == -1


def compatible(cheap: ModelInfo, expensive: ModelInfo) -> str | None:
    """Why ``cheap``'s variants cannot be the first stage before ``expensive``'s, or ``None`` when they can."""
    if cheap.task != expensive.task:
        return f"different tasks ({cheap.task} vs {expensive.task})"
    if cheap.owner != expensive.owner or (expensive.public and not cheap.public):
        return "different owners or visibility: a cascade answers only with models its callers may use"
    if cheap.inputs != expensive.inputs:
        return "different inputs: one query's arrays must feed both stages"
    if len(cheap.outputs) != len(expensive.outputs):
        return "different numbers of outputs: answers are merged output by output"
    for ours, theirs in zip(cheap.outputs, expensive.outputs, strict=True):
        if not (_batch_first(ours) and _batch_first(theirs)):
            return f"output {theirs.name} has no dynamic batch axis first: rows cannot be merged"
        if ours.dtype != theirs.dtype:
            return f"outputs {ours.name} and {theirs.name} differ in dtype ({ours.dtype} vs {theirs.dtype})"
        if len(ours.shape) != len(theirs.shape) or any(
            a != b and a > 0 and b > 0 for a, b in zip(ours.shape[1:], theirs.shape[1:], strict=True)
        ):
            return f"outputs {ours.name} and {theirs.name} differ in shape"
    if score_index(cheap.outputs) is None:
        return "no multi-class score output: no usable confidence (max probability or top-1 margin)"
    return None


def eligible(variant: VariantInfo) -> bool:
    """A ready, profiled ONNX Runtime CPU variant with an artifact (never a cascade itself: chains are not built)."""
    return (
        variant.status == VariantStatus.READY
        and bool(variant.profiles)
        and variant.artifact_key is not None
        and variant.kind != KIND
        and variant.hardware == "cpu"
        and set(variant.providers) <= set(CPU_PROVIDERS)
    )
