"""Scale factors: the share of a pipeline's queries that reach each stage, measured as InferLine's profiler does.

The pipeline's DAG (``infaas.pipelines.dag``, the executor serving uses too) runs on validation rows: each
pipeline input is taken from the validation set of a stage it feeds directly, every stage runs its model's
registered file with ONNX Runtime, and the conditional edges keep the rows they keep when serving. A stage's
factor is the rows that reached it over the rows run; an edge's pass rate (rows it kept over rows that reached
its source) is what the simulator draws each query's path with.

Without validation rows for every pipeline input there is nothing to measure: every factor is 1 and every edge
passes (``source: "assumed"``), the conservative choice -- the plan provisions every stage for every query.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infaas.catalog import ModelInfo
from infaas.model_store.base import ModelStore
from infaas.pipelines.dag import run_dag
from infaas.pipelines.spec import PIPELINE_INPUT, PipelineSpec
from infaas.runtime import create_session

MAX_ROWS = 2000  # validation rows run: enough for a pass rate to +-2% (95%), and under a second for the zoo


@dataclass(frozen=True)
class ScaleFactors:
    """Per stage, the share of queries reaching it; per conditional edge (its index), the share it lets through."""

    stages: dict[str, float]
    edges: dict[int, float] = field(default_factory=dict)
    rows: int = 0
    source: str = "assumed"  # or "validation"

    def to_json(self) -> dict[str, Any]:
        return {
            "stages": self.stages,
            "edges": {str(i): p for i, p in self.edges.items()},
            "rows": self.rows,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ScaleFactors:
        return cls(
            stages={k: float(v) for k, v in (raw.get("stages") or {}).items()},
            edges={int(k): float(v) for k, v in (raw.get("edges") or {}).items()},
            rows=int(raw.get("rows", 0)),
            source=str(raw.get("source", "assumed")),
        )


def assumed(spec: PipelineSpec) -> ScaleFactors:
    """Every query reaches every stage."""
    return ScaleFactors(
        stages={s: 1.0 for s in spec.order}, edges={i: 1.0 for i, e in enumerate(spec.edges) if e.when is not None}
    )


def _validation_inputs(
    spec: PipelineSpec, served: Mapping[str, Sequence[ModelInfo]], store: ModelStore
) -> dict[str, np.ndarray] | None:
    """Each pipeline input, from the validation set of a model it feeds directly; ``None`` if one has none."""
    found: dict[str, np.ndarray] = {}
    for tensor in spec.inputs:
        for edge in spec.edges:
            if edge.source_stage != PIPELINE_INPUT or edge.source_tensor != tensor.name or edge.target_tensor is None:
                continue
            model = next((m for m in served[edge.target_stage] if m.validation_key), None)
            if model is None or model.validation_key is None:
                continue
            with np.load(io.BytesIO(store.get_bytes(model.validation_key))) as data:
                if edge.target_tensor in data.files:
                    found[tensor.name] = np.asarray(data[edge.target_tensor])[:MAX_ROWS].astype(tensor.dtype)
                    break
        if tensor.name not in found:
            return None
    return found


def measure(spec: PipelineSpec, served: Mapping[str, Sequence[ModelInfo]], store: ModelStore) -> ScaleFactors:
    """Run the DAG on validation rows with each stage's (first) model; ``assumed`` when there are none."""
    inputs = _validation_inputs(spec, served, store)
    if inputs is None:
        return assumed(spec)
    rows = min(len(a) for a in inputs.values())
    inputs = {k: v[:rows] for k, v in inputs.items()}
    sessions = {
        stage: create_session(store.get_bytes(served[stage][0].artifact_key), threads=1) for stage in spec.order
    }

    def run_stage(stage: str, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], None]:
        session = sessions[stage]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True)), None

    run = run_dag(spec, inputs, rows, run_stage)
    edges = {}
    for i, edge in enumerate(spec.edges):
        if edge.when is not None:
            reached = len(run.reached[edge.source_stage])
            edges[i] = run.passed.get(i, 0) / reached if reached else 0.0
    return ScaleFactors(
        stages={s: len(run.reached[s]) / rows for s in spec.order}, edges=edges, rows=rows, source="validation"
    )


__all__ = ["MAX_ROWS", "ScaleFactors", "assumed", "measure"]
