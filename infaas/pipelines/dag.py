"""Running a pipeline's DAG on a batch of rows: which rows reach each stage, and what each stage is fed.

One executor for both uses, so that the scale factors the planner plans with are measured by the same row
logic the serving path applies: ``infaas.pipelines.scale`` runs it on a stage's validation data with the models
run directly, ``infaas.pipelines.serving`` with every stage's query going through the ``QueryEngine``. Tensors
stay numpy arrays in this process from stage to stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infaas.pipelines.spec import PIPELINE_INPUT, Condition, PipelineSpec

# run_stage(stage name, inputs) -> (outputs, what to report about the run)
RunStage = Callable[[str, dict[str, np.ndarray]], tuple[Mapping[str, np.ndarray], Any]]


@dataclass
class DagRun:
    """Per stage: the pipeline rows it ran on (indices into the query's rows), its outputs, its report."""

    rows: int
    reached: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, Mapping[str, np.ndarray]] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)
    passed: dict[int, int] = field(default_factory=dict)  # per conditional edge (index in spec.edges): rows it kept


def condition_mask(scores: np.ndarray, when: Condition) -> np.ndarray:
    """Rows whose score of ``when.class_index`` exceeds ``when.above`` (softmax of the row, or the raw value)."""
    values = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if when.scores == "softmax":
        shifted = np.exp(values - values.max(axis=1, keepdims=True))
        values = shifted / shifted.sum(axis=1, keepdims=True)
    return values[:, when.class_index] > when.above


def run_dag(spec: PipelineSpec, inputs: Mapping[str, np.ndarray], rows: int, run_stage: RunStage) -> DagRun:
    """Run the stages in topological order on the rows that reach them; a stage no row reaches is not run."""
    result = DagRun(rows=rows)
    everything = np.arange(rows)
    for stage in spec.order:
        edges = spec.into(stage)
        reached = everything
        for edge in edges:
            if edge.source_stage != PIPELINE_INPUT:
                reached = np.intersect1d(reached, result.reached[edge.source_stage], assume_unique=True)
        for i, edge in enumerate(spec.edges):
            if edge.target_stage != stage or edge.when is None:
                continue
            source_rows = result.reached[edge.source_stage]
            scores = result.outputs[edge.source_stage][edge.source_tensor] if len(source_rows) else np.empty((0, 1))
            kept = source_rows[condition_mask(scores, edge.when)] if len(source_rows) else source_rows
            reached = np.intersect1d(reached, kept, assume_unique=True)
            result.passed[i] = len(kept)
        result.reached[stage] = reached
        if not len(reached):
            result.outputs[stage] = {}
            continue
        feeds: dict[str, np.ndarray] = {}
        for edge in edges:
            if edge.target_tensor is None:
                continue
            if edge.source_stage == PIPELINE_INPUT:
                feeds[edge.target_tensor] = np.asarray(inputs[edge.source_tensor])[reached]
            else:
                source_rows = result.reached[edge.source_stage]
                positions = np.searchsorted(source_rows, reached)
                feeds[edge.target_tensor] = np.asarray(result.outputs[edge.source_stage][edge.source_tensor])[positions]
        outputs, report = run_stage(stage, feeds)
        result.outputs[stage] = outputs
        result.reports[stage] = report
    return result


__all__ = ["DagRun", "RunStage", "condition_mask", "run_dag"]
