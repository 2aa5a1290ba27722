"""A parsed pipeline checked against the catalog before it is stored: its stages exist and its tensors connect.

``check_against_catalog`` is given the models the owner may use; every check runs before anything is written,
so a refused pipeline leaves nothing behind. A task stage may be served by any of its models, so each of them
must fit the edges (the selector may pick any).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from infaas.catalog import ModelInfo
from infaas.pipelines.spec import PIPELINE_INPUT, PipelineInvalid, PipelineSpec, Stage
from infaas.tensors import TensorSpec


def stage_models(stage: Stage, models: Sequence[ModelInfo]) -> list[ModelInfo]:
    """The models that may serve ``stage``: its named model, or every model of its task."""
    if stage.model is not None:
        return [m for m in models if m.name == stage.model]
    return sorted((m for m in models if m.task == stage.task), key=lambda m: m.name)


def _fits(source: TensorSpec, target: TensorSpec) -> bool:
    """Same dtype and rank, and every dimension both fix is equal (``-1`` fits anything)."""
    if source.dtype != target.dtype or len(source.shape) != len(target.shape):
        return False
    return all(a < 0 or b < 0 or a == b for a, b in zip(source.shape, target.shape, strict=True))


def _describe(spec: TensorSpec) -> str:
    return f"{spec.dtype.name}{list(spec.shape)}"


def check_against_catalog(spec: PipelineSpec, models: Sequence[ModelInfo]) -> dict[str, list[ModelInfo]]:
    """Each stage's models, or ``PipelineInvalid`` naming the stage or edge to fix."""
    served: dict[str, list[ModelInfo]] = {}
    for stage in spec.stages:
        found = stage_models(stage, models)
        if not found:
            what = f"model {stage.model!r}" if stage.model else f"model registered for task {stage.task!r}"
            raise PipelineInvalid(f"stage {stage.name!r}: no {what} (register it first)")
        served[stage.name] = found
    inputs = {t.name: t for t in spec.inputs}
    for stage in spec.stages:
        edges = spec.into(stage.name)
        for model in served[stage.name]:
            wanted = {t.name: t for t in model.inputs}
            fed = {e.target_tensor for e in edges if e.target_tensor}
            missing = sorted(set(wanted) - fed)
            extra = sorted(fed - set(wanted))
            if missing or extra:
                raise PipelineInvalid(
                    f"stage {stage.name!r} ({model.name}) takes inputs {sorted(wanted)}: "
                    + "; ".join(
                        p
                        for p in (
                            f"no edge feeds {missing}" if missing else "",
                            f"it has no input {extra}" if extra else "",
                        )
                        if p
                    )
                )
            for edge in edges:
                for source in _sources(spec, edge.source_stage, edge.source_tensor, inputs, served):
                    where = f"edge {edge.source} -> {stage.name}"
                    if edge.target_tensor is not None:
                        target = wanted[edge.target_tensor]
                        if not _fits(source, target):
                            raise PipelineInvalid(
                                f"{where}.{edge.target_tensor}: {edge.source} is {_describe(source)} but "
                                f"{model.name} takes {_describe(target)}"
                            )
                    if edge.when is not None:
                        _check_condition(where, source, edge.when.class_index)
    return served


def _sources(
    spec: PipelineSpec,
    stage: str,
    tensor: str,
    inputs: Mapping[str, TensorSpec],
    served: Mapping[str, list[ModelInfo]],
) -> list[TensorSpec]:
    """The tensor an edge reads, once per model that may produce it."""
    if stage == PIPELINE_INPUT:
        return [inputs[tensor]]
    found = []
    for model in served[stage]:
        outputs = {t.name: t for t in model.outputs}
        if tensor not in outputs:
            raise PipelineInvalid(
                f"edge from {stage}.{tensor}: {model.name} has no output {tensor!r} (outputs: {sorted(outputs)})"
            )
        found.append(outputs[tensor])
    return found


def _check_condition(where: str, source: TensorSpec, class_index: int) -> None:
    if len(source.shape) != 2:
        raise PipelineInvalid(f"{where}: a condition needs [rows, classes] scores, the source is {_describe(source)}")
    if source.dtype.kind != "f":
        raise PipelineInvalid(f"{where}: a condition needs float scores, the source is {_describe(source)}")
    classes = source.shape[1]
    if classes > 0 and class_index >= classes:
        raise PipelineInvalid(f"{where}: when.class {class_index} is out of range ({classes} classes)")


__all__ = ["check_against_catalog", "stage_models"]
