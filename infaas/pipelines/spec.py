"""A pipeline's definition: stages, the edges between them, the objective and the arrivals it is planned for.

``parse_spec`` turns what an owner sends (JSON over ``POST /v1/pipelines`` or a YAML file through
``infaas pipeline register``) into a ``PipelineSpec`` and refuses, with a ``PipelineInvalid`` (400) saying what
to fix, anything that is not a DAG of named stages: unknown references, a cycle, a malformed condition. What
needs the catalog (the stages' models exist, connected tensors agree) is ``infaas.pipelines.validation``.

The form::

    name: digits-cascade
    p99_ms: 40
    inputs: [{name: image, dtype: float32, shape: [-1, 64]}]
    stages:
      - {name: filter, model: digits-logreg}
      - {name: expert, task: digits-classification, min_accuracy: 0.97}
    edges:
      - {from: input.image, to: filter.input}          # data: a pipeline input feeds a stage input
      - {from: input.image, to: expert.input}
      - {from: filter.logits, to: expert,              # control only: gates the rows that reach expert
         when: {class: 3, above: 0.5}}
    arrivals: {rate_per_s: 50, burstiness: 4, duration_s: 60}   # or {trace: [0.0, 0.013, ...]} (seconds)

An edge's ``when`` keeps the rows whose score of ``class`` in the edge's source tensor exceeds ``above``; the
score is the softmax of the row (``scores: softmax``, for logits) or the value itself (``scores: raw``). A stage
runs on the rows that every conditional edge into it lets through (and that reached each stage it reads from).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from infaas.errors import BadRequest
from infaas.tensors import TensorSpec

PIPELINE_INPUT = "input"  # the source name of an edge that reads one of the pipeline's own inputs
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_STAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # no dot: "stage.tensor" splits at the first one
MAX_STAGES = 32
MAX_TRACE = 200_000
MIN_BURSTINESS, MAX_BURSTINESS = 0.01, 100.0  # CV² of the gaps: from near-regular to far burstier than InferLine's 4


class PipelineInvalid(BadRequest):
    """The pipeline definition is malformed or inconsistent; nothing was stored."""

    code = "invalid_pipeline"


@dataclass(frozen=True)
class Stage:
    """One node: a registered model, or a task served by any of its models that meets ``min_accuracy``."""

    name: str
    model: str | None
    task: str | None
    min_accuracy: float = 0.0


@dataclass(frozen=True)
class Condition:
    """Keep a row when its score of ``class_index`` exceeds ``above``."""

    class_index: int
    above: float
    scores: str = "softmax"  # or "raw"


@dataclass(frozen=True)
class Edge:
    """``source`` (``input.<name>`` or ``<stage>.<output>``) feeds ``target`` (``<stage>.<input>``), or, with no
    target tensor, only gates ``target_stage`` through ``when``."""

    source_stage: str  # PIPELINE_INPUT for a pipeline input
    source_tensor: str
    target_stage: str
    target_tensor: str | None  # None: a control edge
    when: Condition | None = None

    @property
    def source(self) -> str:
        return f"{self.source_stage}.{self.source_tensor}"


@dataclass(frozen=True)
class Arrivals:
    """The sample arrival trace (seconds from 0), or a rate and a burstiness (CV² of the gaps) to generate one."""

    trace: tuple[float, ...] = ()
    rate_per_s: float | None = None
    burstiness: float = 1.0
    duration_s: float = 60.0

    def to_json(self) -> dict[str, Any]:
        if self.trace:
            return {"trace": list(self.trace)}
        return {"rate_per_s": self.rate_per_s, "burstiness": self.burstiness, "duration_s": self.duration_s}


@dataclass(frozen=True)
class PipelineSpec:
    """A parsed, structurally valid pipeline; ``order`` is a topological order of its stages."""

    name: str
    p99_ms: float
    inputs: tuple[TensorSpec, ...]
    stages: tuple[Stage, ...]
    edges: tuple[Edge, ...]
    arrivals: Arrivals
    order: tuple[str, ...] = field(default=())

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def into(self, stage: str) -> list[Edge]:
        return [e for e in self.edges if e.target_stage == stage]

    def parents(self, stage: str) -> set[str]:
        return {e.source_stage for e in self.into(stage) if e.source_stage != PIPELINE_INPUT}

    def sinks(self) -> list[str]:
        """Stages no edge reads from: their outputs are the pipeline's answer."""
        read = {e.source_stage for e in self.edges}
        return [s for s in self.order if s not in read]

    def models(self) -> list[str]:
        return sorted({s.model for s in self.stages if s.model})

    def to_json(self) -> dict[str, Any]:
        """The stored form; ``parse_spec(spec.to_json())`` gives the same spec."""
        stages = []
        for s in self.stages:
            entry: dict[str, Any] = {"name": s.name, "model": s.model} if s.model else {"name": s.name, "task": s.task}
            if s.min_accuracy:
                entry["min_accuracy"] = s.min_accuracy
            stages.append(entry)
        edges = []
        for e in self.edges:
            entry = {
                "from": e.source,
                "to": f"{e.target_stage}.{e.target_tensor}" if e.target_tensor else e.target_stage,
            }
            if e.when is not None:
                entry["when"] = {"class": e.when.class_index, "above": e.when.above, "scores": e.when.scores}
            edges.append(entry)
        return {
            "name": self.name,
            "p99_ms": self.p99_ms,
            "inputs": [t.to_json() for t in self.inputs],
            "stages": stages,
            "edges": edges,
            "arrivals": self.arrivals.to_json(),
        }


def _number(raw: Any, what: str, *, low: float = 0.0, positive: bool = True) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise PipelineInvalid(f"{what} must be a number")
    if raw < low or (positive and raw <= low):
        raise PipelineInvalid(f"{what} must be {'>' if positive else '>='} {low:g}")
    return float(raw)


def _stage(raw: Any, i: int) -> Stage:
    if not isinstance(raw, Mapping):
        raise PipelineInvalid(f"stages[{i}] must be an object with 'name' and 'model' or 'task'")
    name = raw.get("name")
    if not isinstance(name, str) or not _STAGE.match(name):
        raise PipelineInvalid(f"stages[{i}].name must be letters, digits, '_' or '-' (no dot), at most 64")
    model, task = raw.get("model"), raw.get("task")
    if (model is None) == (task is None) or not isinstance(model or task, str):
        raise PipelineInvalid(f"stage {name!r}: give exactly one of 'model' or 'task' (a string)")
    unknown = set(raw) - {"name", "model", "task", "min_accuracy"}
    if unknown:
        raise PipelineInvalid(f"stage {name!r}: unknown field(s) {sorted(unknown)}")
    accuracy = raw.get("min_accuracy", 0.0)
    accuracy = _number(accuracy, f"stage {name!r}: min_accuracy", positive=False)
    if accuracy > 1:
        raise PipelineInvalid(f"stage {name!r}: min_accuracy must be in [0, 1]")
    return Stage(name=name, model=model, task=task, min_accuracy=accuracy)


def _condition(raw: Any, where: str) -> Condition:
    if not isinstance(raw, Mapping) or "class" not in raw or "above" not in raw:
        raise PipelineInvalid(f"{where}: 'when' must be {{class: C, above: T}} (score of class C above T)")
    c = raw["class"]
    if isinstance(c, bool) or not isinstance(c, int) or c < 0:
        raise PipelineInvalid(f"{where}: when.class must be a class index >= 0")
    above = raw["above"]
    if isinstance(above, bool) or not isinstance(above, int | float):
        raise PipelineInvalid(f"{where}: when.above must be a number")
    scores = raw.get("scores", "softmax")
    if scores not in ("softmax", "raw"):
        raise PipelineInvalid(f"{where}: when.scores must be 'softmax' (for logits) or 'raw'")
    return Condition(class_index=c, above=float(above), scores=scores)


def _edge(raw: Any, i: int, stages: set[str]) -> Edge:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("from"), str) or not isinstance(raw.get("to"), str):
        raise PipelineInvalid(f"edges[{i}] must be an object with 'from' and 'to' strings")
    where = f"edge {raw['from']} -> {raw['to']}"
    source_stage, _, source_tensor = raw["from"].partition(".")
    if not source_tensor:
        raise PipelineInvalid(f"{where}: 'from' must be 'input.<name>' or '<stage>.<output>'")
    if source_stage != PIPELINE_INPUT and source_stage not in stages:
        raise PipelineInvalid(f"{where}: no stage named {source_stage!r} (stages: {sorted(stages)})")
    target_stage, _, target_tensor = raw["to"].partition(".")
    if target_stage not in stages:
        raise PipelineInvalid(f"{where}: no stage named {target_stage!r} (stages: {sorted(stages)})")
    when = _condition(raw["when"], where) if raw.get("when") is not None else None
    if when is not None and source_stage == PIPELINE_INPUT:
        raise PipelineInvalid(f"{where}: a condition reads a stage's output scores, not a pipeline input")
    if not target_tensor and when is None:
        raise PipelineInvalid(f"{where}: an edge to a whole stage only gates it: give 'when', or name its input")
    return Edge(source_stage, source_tensor, target_stage, target_tensor or None, when)


def _arrivals(raw: Any) -> Arrivals:
    if raw is None:
        raise PipelineInvalid("'arrivals' is required: {trace: [seconds...]} or {rate_per_s, burstiness}")
    if not isinstance(raw, Mapping):
        raise PipelineInvalid("'arrivals' must be an object")
    if "trace" in raw:
        trace = raw["trace"]
        if not isinstance(trace, Sequence) or isinstance(trace, str) or not 2 <= len(trace) <= MAX_TRACE:
            raise PipelineInvalid(f"arrivals.trace must be a list of 2 to {MAX_TRACE} arrival times (seconds)")
        times = [_number(t, "arrivals.trace[i]", positive=False) for t in trace]
        if any(b < a for a, b in zip(times, times[1:], strict=False)):
            raise PipelineInvalid("arrivals.trace must be in non-decreasing order")
        return Arrivals(trace=tuple(times))
    rate = _number(raw.get("rate_per_s"), "arrivals.rate_per_s")
    burstiness = _number(raw.get("burstiness", 1.0), "arrivals.burstiness")
    if not MIN_BURSTINESS <= burstiness <= MAX_BURSTINESS:
        raise PipelineInvalid(
            f"arrivals.burstiness (the CV² of the gaps; 1 is Poisson) must be in [{MIN_BURSTINESS}, {MAX_BURSTINESS}]"
        )
    duration = _number(raw.get("duration_s", 60.0), "arrivals.duration_s")
    if rate * duration > MAX_TRACE:
        raise PipelineInvalid(f"arrivals.rate_per_s x duration_s must be at most {MAX_TRACE} queries")
    return Arrivals(rate_per_s=rate, burstiness=burstiness, duration_s=duration)


def _order(stages: Sequence[Stage], edges: Sequence[Edge]) -> tuple[str, ...]:
    """Kahn's topological order; ``PipelineInvalid`` naming the stages on a cycle."""
    parents = {s.name: {e.source_stage for e in edges if e.target_stage == s.name} - {PIPELINE_INPUT} for s in stages}
    order: list[str] = []
    ready = [s.name for s in stages if not parents[s.name]]
    while ready:
        name = ready.pop(0)
        order.append(name)
        for s in stages:
            if name in parents[s.name]:
                parents[s.name].discard(name)
                if not parents[s.name] and s.name not in order and s.name not in ready:
                    ready.append(s.name)
    if len(order) < len(stages):
        cycle = sorted(s.name for s in stages if s.name not in order)
        raise PipelineInvalid(f"the edges form a cycle through stages {cycle}: a pipeline must be acyclic")
    return tuple(order)


def parse_spec(raw: Any) -> PipelineSpec:
    """A ``PipelineSpec`` from its JSON/YAML form, or ``PipelineInvalid`` saying what to fix."""
    if not isinstance(raw, Mapping):
        raise PipelineInvalid("the pipeline must be an object")
    unknown = set(raw) - {"name", "p99_ms", "inputs", "stages", "edges", "arrivals"}
    if unknown:
        raise PipelineInvalid(f"unknown field(s) {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise PipelineInvalid("'name' must be 1-128 letters, digits, '_', '-' or '.'")
    p99 = _number(raw.get("p99_ms"), "'p99_ms' (the end-to-end objective)")
    raw_inputs = raw.get("inputs")
    if not isinstance(raw_inputs, Sequence) or isinstance(raw_inputs, str) or not raw_inputs:
        raise PipelineInvalid("'inputs' must list the pipeline's inputs: [{name, dtype, shape}]")
    try:
        inputs = tuple(TensorSpec.from_json(t) for t in raw_inputs)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise PipelineInvalid(f"'inputs' must be [{{name, dtype, shape}}]: {exc}") from None
    raw_stages = raw.get("stages")
    if not isinstance(raw_stages, Sequence) or isinstance(raw_stages, str) or not 1 <= len(raw_stages) <= MAX_STAGES:
        raise PipelineInvalid(f"'stages' must list 1 to {MAX_STAGES} stages")
    stages = tuple(_stage(s, i) for i, s in enumerate(raw_stages))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise PipelineInvalid(f"stage names must be unique: {sorted(n for n in set(names) if names.count(n) > 1)}")
    raw_edges = raw.get("edges")
    if not isinstance(raw_edges, Sequence) or isinstance(raw_edges, str) or not raw_edges:
        raise PipelineInvalid("'edges' must list at least one edge {from, to}")
    edges = tuple(_edge(e, i, set(names)) for i, e in enumerate(raw_edges))
    input_names = {t.name for t in inputs}
    for e in edges:
        if e.source_stage == PIPELINE_INPUT and e.source_tensor not in input_names:
            raise PipelineInvalid(f"edge from {e.source}: the pipeline has no input {e.source_tensor!r}")
    fed: dict[str, str] = {}
    for e in edges:
        if e.target_tensor is not None:
            key = f"{e.target_stage}.{e.target_tensor}"
            if key in fed:
                raise PipelineInvalid(f"{key} is fed twice (from {fed[key]} and {e.source}): one edge per input")
            fed[key] = e.source
    for s in stages:
        if not any(e.target_stage == s.name and e.target_tensor for e in edges):
            raise PipelineInvalid(f"stage {s.name!r} has no input edge: nothing would feed it")
    order = _order(stages, edges)
    return PipelineSpec(
        name=name,
        p99_ms=p99,
        inputs=inputs,
        stages=stages,
        edges=edges,
        arrivals=_arrivals(raw.get("arrivals")),
        order=order,
    )


__all__ = ["PIPELINE_INPUT", "Arrivals", "Condition", "Edge", "PipelineInvalid", "PipelineSpec", "Stage", "parse_spec"]
