"""Serving an approximate top-K query: a cheap variant scores every row, the most accurate re-scores the best few.

``POST /v1/topk`` and ``infaas topk`` come here. For a query of N rows asking for the k best in one output
column, among the ready variants the caller may use (of the named model, or of every model of the task):

* the *expensive* variant is the most accurate one (``infaas.accuracy``; then the highest fidelity, then the
  cheapest on N rows);
* each cheaper variant is a candidate *cheap* stage; its ratio r comes from ``infaas.topk.choose_ratio`` on the
  validation rows of the expensive variant's model, split in two halves: r is chosen on one (the smallest r that
  reaches ``min_precision`` in 99 of 100 bootstrap resamples), and the precision the answer states is
  bootstrapped on the other, so no number is reported on the rows it was tuned on. Rows an INT8-static variant
  was calibrated on are left out (the rule of ``variant_generator.accuracy.ValidationSet.split``);
* a pair is kept when its stated precision reaches ``min_precision`` and its expected time (profiled p50 of the
  cheap variant on N rows plus the expensive one on ``ceil(r k)``, in query-sized chunks) is below the exact
  top-K's (the expensive variant on all N rows); the fastest kept pair serves. With none kept, the query is
  served exactly, and the answer says why.

The choice is computed on the first query of its k-range and N-range (powers of two; r is the largest of the
range's corners) and kept for the candidate set it was made for: a catalog change makes a new one.

Every stage runs through the ``QueryEngine`` like any query (selector, worker batching, live state, metrics under
endpoint ``topk``), pinned to its variant (``Query.variants``) and split into queries of at most
``max_batch_per_query`` rows. Scoring the validation rows for a choice is served the same way.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from infaas.accuracy import is_classification
from infaas.cascade_session import KIND as CASCADE_KIND
from infaas.catalog import ModelInfo
from infaas.engine import Query, QueryEngine, ServedBy
from infaas.errors import BadRequest, ModelNotReady, UnknownModel, Unprocessable
from infaas.model_store.base import ModelStore
from infaas.selector import Candidate, Requirements
from infaas.tensors import TensorSpec, check_limits, conform_inputs
from infaas.topk import (
    BOOTSTRAP_SAMPLES,
    DEFAULT_MIN_PRECISION,
    REQUIRED_SAMPLES,
    PrecisionEstimate,
    choose_ratio,
    estimate_precision,
    power_range,
    range_corners,
    rescored_for,
)

ENDPOINT = "topk"
MAX_VALIDATION_ROWS = 4096  # held-out rows scored per choice: enough for a 1,000-row query's bootstrap
MIN_HALF_ROWS = 20  # fewer held-out rows per half than this and r is not chosen (the query is served exactly)
# variant_generator.accuracy.ValidationSet.split: INT8-static calibrates on min(128, rows // 4) rows of a seeded
# permutation (seed 0); those rows are left out here (infaas cannot import variant_generator).
_INT8_CALIBRATION_ROWS, _INT8_CALIBRATION_SHARE = 128, 4


class ColumnOutOfRange(BadRequest):
    """``column`` is not a column of the ranked output."""

    code = "column_out_of_range"


class NoScoreToRank(Unprocessable):
    """The model's outputs have no per-row score a ranking can read."""

    code = "no_score_to_rank"


@dataclass(frozen=True)
class TopKRequest:
    """A top-K query: the k best of the input rows by one column of the model's score output."""

    inputs: Mapping[str, Any]
    k: int
    column: int | None = None  # may be left out only when the ranked output has one column
    model: str | None = None
    task: str | None = None
    min_precision: float = DEFAULT_MIN_PRECISION
    latency_ms: float | None = None


@dataclass(frozen=True)
class Choice:
    """How one (candidate set, k-range, N-range, floor) is served: a pair with its ratio, or exactly."""

    expensive: Candidate
    cheap: Candidate | None  # None: exact top-K
    ratio: float | None
    precision: PrecisionEstimate | None  # on the held-out half r was not chosen on
    reason: str
    k_range: tuple[int, int]
    rows_range: tuple[int, int]
    tune_rows: int = 0
    report_rows: int = 0
    considered: tuple[dict[str, Any], ...] = ()  # each cheap candidate: r, precision, expected ms, kept or why not


@dataclass(frozen=True)
class Stage:
    """One variant's part in a top-K answer."""

    model: str
    variant: str
    rows: int
    ms: float
    served_by: tuple[ServedBy, ...]

    def to_json(self) -> dict[str, Any]:
        workers = sorted({s.worker for s in self.served_by})
        return {
            "model": self.model,
            "variant": self.variant,
            "rows": self.rows,
            "ms": self.ms,
            "queries": len(self.served_by),
            "workers": workers,
            "slo_at_risk": any(s.slo_at_risk for s in self.served_by),
        }


@dataclass(frozen=True)
class TopKAnswer:
    """The k best rows (indices into the query, best first) with the expensive variant's scores, and how."""

    indices: list[int]
    scores: list[float]
    mode: str  # "approximate" or "exact"
    k: int
    rows: int
    column: int
    output: str
    rescored: int
    choice: Choice
    cheap: Stage | None
    expensive: Stage
    latency_ms: float

    def to_json(self) -> dict[str, Any]:
        c = self.choice
        precision = c.precision
        return {
            "indices": self.indices,
            "scores": self.scores,
            "mode": self.mode,
            "k": self.k,
            "rows": self.rows,
            "column": self.column,
            "output": self.output,
            "r": c.ratio,
            "rescored": self.rescored,
            "estimated_precision": 1.0 if precision is None else precision.mean,
            "precision_low": 1.0 if precision is None else precision.low,
            "cheap": None if self.cheap is None else self.cheap.to_json(),
            "expensive": self.expensive.to_json(),
            "reason": c.reason,
            "calibration": {
                "k_range": list(c.k_range),
                "rows_range": list(c.rows_range),
                "tune_rows": c.tune_rows,
                "report_rows": c.report_rows,
                "samples": BOOTSTRAP_SAMPLES,
                "required": REQUIRED_SAMPLES,
                "considered": list(c.considered),
            },
            "latency_ms": self.latency_ms,
        }


def score_output(model: ModelInfo) -> tuple[TensorSpec, int | None] | None:
    """The output a ranking reads and its number of columns (``None``: dynamic): the first float output of
    shape ``[N]`` or ``[N, C]``; a classifier's class scores, a regressor's value. ``None`` when there is none."""
    for spec in model.outputs:
        if spec.dtype.kind == "f" and len(spec.shape) in (1, 2):
            columns = 1 if len(spec.shape) == 1 else spec.shape[1]
            return spec, (columns if columns > 0 else None)
    return None


def check_column(model: ModelInfo, column: int) -> TensorSpec:
    """The output ``column`` ranks by, or the 4xx saying what to fix."""
    found = score_output(model)
    outputs = ", ".join(f"{s.name} {s.dtype.name}{list(s.shape)}" for s in model.outputs)
    if found is None:
        raise NoScoreToRank(
            f"model {model.name!r} has no per-row score to rank by (outputs: {outputs}); top-K needs a float "
            "output of shape [N] or [N, C]"
        )
    spec, columns = found
    if columns is not None and columns > 1 and not is_classification(model.task):
        raise NoScoreToRank(
            f"model {model.name!r} (task {model.task!r}) outputs {spec.name} {spec.dtype.name}{list(spec.shape)}: "
            "not class scores, and more than one column; top-K ranks a classifier's class score or a "
            "single-column score"
        )
    if columns is not None and column >= columns:
        raise ColumnOutOfRange(
            f"column {column} is out of range: {model.name}'s output {spec.name!r} has {columns} column(s), "
            f"0 to {columns - 1}"
        )
    return spec


def _only_column(models: list[ModelInfo]) -> int:
    """Column 0 when every model's ranked output has one column; otherwise the 400 asking for ``column``."""
    for model in models:
        found = score_output(model)
        if found is not None and found[1] != 1:
            spec = found[0]
            raise BadRequest(
                f"name the 'column' to rank by: {model.name}'s output {spec.name!r} is "
                f"{spec.dtype.name}{list(spec.shape)}"
            )
    return 0


def _column(output: np.ndarray, column: int, model: str) -> np.ndarray:
    scores = np.asarray(output)
    if scores.ndim == 1:
        scores = scores[:, None]
    if column >= scores.shape[1]:
        raise ColumnOutOfRange(f"column {column} is out of range: {model}'s output has {scores.shape[1]} column(s)")
    return scores[:, column].astype(np.float64)


def chunked_ms(candidate: Candidate, rows: int, chunk: int) -> float:
    """Profiled p50 of running ``rows`` rows in queries of at most ``chunk`` rows, one after another."""
    full, rest = divmod(rows, chunk)
    curve = candidate.curve
    return full * curve.service_ms(chunk) + (curve.service_ms(rest) if rest else 0.0)


def _strength(candidate: Candidate) -> tuple[float, float]:
    accuracy, fidelity = candidate.accuracy_info.value, candidate.fidelity.value
    return (-1.0 if accuracy is None else accuracy, -1.0 if fidelity is None else fidelity)


def held_out_rows(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (tune, report) halves of the validation rows no INT8-static variant was calibrated on."""
    calibrated = min(_INT8_CALIBRATION_ROWS, rows // _INT8_CALIBRATION_SHARE)
    held = np.sort(np.random.default_rng(0).permutation(rows)[calibrated:])
    shuffled = np.random.default_rng(1).permutation(held)
    return np.sort(shuffled[::2]), np.sort(shuffled[1::2])


@dataclass
class _Caches:
    validation: dict[tuple[str, int], dict[str, np.ndarray] | None] = field(default_factory=dict)
    outputs: dict[tuple[str, int, str, int], np.ndarray] = field(default_factory=dict)
    choices: dict[tuple[Any, ...], Choice] = field(default_factory=dict)


class TopKService:
    """Serves top-K queries through a ``QueryEngine``; keeps its ratio choices and held-out scores in memory."""

    MAX_CHOICES = 1024

    def __init__(self, engine: QueryEngine, store: ModelStore, max_batch: int, max_inputs: int) -> None:
        self.engine = engine
        self.store = store
        self.max_batch = max_batch
        self.max_inputs = max_inputs
        self._caches = _Caches()
        self._lock = threading.Lock()  # one choice is made at a time (it runs variants on the held-out rows)

    # -- the entry point ------------------------------------------------------------------------
    def serve(
        self,
        request: TopKRequest,
        allowed: Callable[[ModelInfo], bool] = lambda _m: True,
        tenant: str = "",
        *,
        exact: bool = False,
    ) -> TopKAnswer:
        """Answer one top-K query (blocking: call it off the event loop); ``exact`` skips the cheap stage (what
        the approximate answer is measured against)."""
        started = time.monotonic()
        if isinstance(request.k, bool) or not isinstance(request.k, int) or request.k <= 0:
            raise BadRequest(f"'k' must be a positive integer, not {request.k!r:.50}")
        column = request.column
        if column is not None and (isinstance(column, bool) or not isinstance(column, int) or column < 0):
            raise BadRequest(f"'column' must be a non-negative integer, not {column!r:.50}")
        if not 0.0 < request.min_precision <= 1.0:
            raise BadRequest(f"'min_precision' must be in (0, 1], not {request.min_precision!r:.50}")
        models = self._models(request, allowed)
        if column is None:
            request = replace(request, column=_only_column(models))
        check_limits(request.inputs, sys.maxsize, self.max_inputs)  # rows are split into queries below
        first_error: Exception | None = None
        usable: list[ModelInfo] = []
        for model in models:
            try:
                check_column(model, request.column)
            except (ColumnOutOfRange, NoScoreToRank) as exc:
                first_error = first_error or exc
                continue
            usable.append(model)
        if not usable:
            assert first_error is not None
            raise first_error
        arrays, rows, candidates = self._conform(usable, request.inputs)
        if request.k > rows:
            raise BadRequest(f"'k' is {request.k} but the query has {rows} rows: ask for at most {rows}")
        choice = self._choice(candidates, request, rows, allowed, tenant)
        if exact or choice.cheap is None:
            return self._exact(request, choice, arrays, rows, allowed, tenant, started, forced=exact)
        return self._approximate(request, choice, arrays, rows, allowed, tenant, started)

    # -- validation of the query ------------------------------------------------------------------
    def _models(self, request: TopKRequest, allowed: Callable[[ModelInfo], bool]) -> list[ModelInfo]:
        cache = self.engine.cache
        if (request.model is None) == (request.task is None):
            raise BadRequest("give exactly one of 'model' or 'task' (a string)")
        if request.model is not None:
            info = cache.model(request.model)
            if info is None or not allowed(info):
                raise UnknownModel(f"model {request.model!r} not found")
            return [info]
        assert request.task is not None
        models = [m for m in cache.models_for_task(request.task) if allowed(m)]
        if not models:
            raise UnknownModel(f"no model registered for task {request.task!r}")
        return models

    def _conform(
        self, models: list[ModelInfo], inputs: Mapping[str, Any]
    ) -> tuple[dict[str, np.ndarray], int, list[Candidate]]:
        """The inputs as arrays and the ready candidates of the models they fit (the first fitting signature's,
        as the engine does)."""
        cache = self.engine.cache
        ready = [m for m in models if cache.for_model(m.name)]
        if not ready:
            first = models[0]
            raise ModelNotReady(f"model {first.name!r} is not ready: status {first.status}")
        first_error: Exception | None = None
        for model in ready:
            try:
                arrays, rows = conform_inputs(model.inputs, inputs)
            except BadRequest as exc:
                first_error = first_error or exc
                continue
            same = [m for m in ready if m.inputs == model.inputs]
            # A cascade takes no part: each row's score comes from whichever member answered it, on two models'
            # scales, so its rows do not rank against each other.
            candidates = [c for m in same for c in cache.for_model(m.name) if c.variant.kind != CASCADE_KIND]
            if not candidates:
                raise ModelNotReady(f"model {model.name!r} has no ready variant but cascades")
            return arrays, rows, candidates
        assert first_error is not None
        raise first_error

    # -- the choice -------------------------------------------------------------------------------
    def _choice(
        self,
        candidates: list[Candidate],
        request: TopKRequest,
        rows: int,
        allowed: Callable[[ModelInfo], bool],
        tenant: str,
    ) -> Choice:
        chunk = self.max_batch
        expensive = max(candidates, key=lambda c: (*_strength(c), -chunked_ms(c, rows, chunk), c.key))
        k_range, rows_range = power_range(request.k), power_range(rows)
        key = (
            tuple(sorted((c.key, c.variant.id) for c in candidates)),
            request.column,
            request.min_precision,
            k_range,
            rows_range,
        )
        found = self._caches.choices.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._caches.choices.get(key)
            if found is None:
                found = self._make_choice(candidates, expensive, request, rows, k_range, rows_range, allowed, tenant)
                if len(self._caches.choices) >= self.MAX_CHOICES:
                    self._caches.choices.clear()
                self._caches.choices[key] = found
        return found

    def _make_choice(
        self,
        candidates: list[Candidate],
        expensive: Candidate,
        request: TopKRequest,
        rows: int,
        k_range: tuple[int, int],
        rows_range: tuple[int, int],
        allowed: Callable[[ModelInfo], bool],
        tenant: str,
    ) -> Choice:
        chunk = self.max_batch

        def exact(reason: str, **extra: Any) -> Choice:
            return Choice(expensive, None, None, None, reason, k_range, rows_range, **extra)

        exact_ms = chunked_ms(expensive, rows, chunk)
        cheaper = sorted(
            (c for c in candidates if c.key != expensive.key and chunked_ms(c, rows, chunk) < exact_ms),
            key=lambda c: chunked_ms(c, rows, chunk),
        )
        if not cheaper:
            return exact(f"exact: no variant is cheaper than {expensive.key} on {rows} rows")
        validation = self._validation(expensive.model)
        if validation is None:
            return exact(f"exact: {expensive.model.name} has no validation rows to choose r on")
        tune, report = held_out_rows(len(next(iter(validation.values()))))
        if min(len(tune), len(report)) < MIN_HALF_ROWS:
            return exact(f"exact: {len(tune) + len(report)} held-out validation rows, fewer than {2 * MIN_HALF_ROWS}")
        corners = range_corners(request.k, rows)
        top = self._held_out_scores(expensive, expensive.model, validation, request.column, allowed, tenant)
        considered: list[dict[str, Any]] = []
        best: tuple[float, Candidate, float, PrecisionEstimate] | None = None
        for cheap in cheaper:
            scores = self._held_out_scores(cheap, expensive.model, validation, request.column, allowed, tenant)
            ratio = max(choose_ratio(scores[tune], top[tune], k, n, request.min_precision).ratio for k, n in corners)
            estimates = [
                estimate_precision(scores[report], top[report], k, n, ratio, request.min_precision) for k, n in corners
            ]
            worst = min(estimates, key=lambda e: e.mean)
            rescored = rescored_for(ratio, request.k, rows)
            expected = chunked_ms(cheap, rows, chunk) + chunked_ms(expensive, rescored, chunk)
            entry: dict[str, Any] = {
                "cheap": cheap.key,
                "r": ratio,
                "estimated_precision": worst.mean,
                "precision_low": worst.low,
                "expected_ms": expected,
                "exact_ms": exact_ms,
            }
            if rescored >= rows:
                entry["kept"] = f"no: r {ratio:.3g} re-scores every row"
            elif worst.mean < request.min_precision:
                entry["kept"] = f"no: precision {worst.mean:.3f} on the report rows is below {request.min_precision}"
            elif expected >= exact_ms:
                entry["kept"] = f"no: expected {expected:.3g} ms is not below exact {exact_ms:.3g} ms"
            else:
                entry["kept"] = "yes"
                if best is None or expected < best[0]:
                    best = (expected, cheap, ratio, worst)
            considered.append(entry)
        sizes = {"tune_rows": len(tune), "report_rows": len(report), "considered": tuple(considered)}
        if best is None:
            return exact(f"exact: no cheaper variant reaches precision {request.min_precision} for less", **sizes)
        expected, cheap, ratio, worst = best
        reason = (
            f"approximate: {cheap.key} scores every row, {expensive.key} (the most accurate) re-scores the top "
            f"r*k (r {ratio:.3g}, chosen on {len(tune)} held-out rows: precision >= {request.min_precision} in "
            f"{REQUIRED_SAMPLES} of {BOOTSTRAP_SAMPLES} resamples); expected {expected:.3g} ms vs exact "
            f"{exact_ms:.3g} ms"
        )
        return Choice(expensive, cheap, ratio, worst, reason, k_range, rows_range, **sizes)

    def _validation(self, model: ModelInfo) -> dict[str, np.ndarray] | None:
        """The model's stored validation inputs (conformed, at most ``MAX_VALIDATION_ROWS``), ``None`` without."""
        key = (model.name, model.id)
        if key in self._caches.validation:
            return self._caches.validation[key]
        found: dict[str, np.ndarray] | None = None
        if model.validation_key:
            names = [spec.name for spec in model.inputs]
            with np.load(io.BytesIO(self.store.get_bytes(model.validation_key)), allow_pickle=False) as data:
                if len(names) == 1 and names[0] not in data.files and "inputs" in data.files:
                    raw = {names[0]: data["inputs"]}
                else:
                    raw = {n: data[n] for n in names if n in data.files}
            if len(raw) == len(names):
                found = {
                    s.name: np.ascontiguousarray(s.conform(raw[s.name][:MAX_VALIDATION_ROWS], samples=True))
                    for s in model.inputs
                }
        self._caches.validation[key] = found
        return found

    def _held_out_scores(
        self,
        candidate: Candidate,
        owner: ModelInfo,
        validation: dict[str, np.ndarray],
        column: int,
        allowed: Callable[[ModelInfo], bool],
        tenant: str,
    ) -> np.ndarray:
        """The candidate's scores in ``column`` on every row of ``owner``'s validation set, served through the
        engine once per variant (every column is kept: each class's ranking reuses the run)."""
        key = (candidate.key, candidate.variant.id, owner.name, owner.id)
        found = self._caches.outputs.get(key)
        if found is None:
            found, _stage = self._run(candidate, validation, None, allowed, tenant)
            self._caches.outputs[key] = found
        return _column(found, column, candidate.model.name)

    # -- serving ----------------------------------------------------------------------------------
    def _run(
        self,
        candidate: Candidate,
        arrays: Mapping[str, np.ndarray],
        deadline: float | None,
        allowed: Callable[[ModelInfo], bool],
        tenant: str,
    ) -> tuple[np.ndarray, Stage]:
        """``candidate``'s score output on every row, in queries of at most ``max_batch`` rows."""
        started = time.monotonic()
        rows = len(next(iter(arrays.values())))
        found = score_output(candidate.model)
        assert found is not None  # the query's models were checked (``check_column``)
        spec = found[0]
        pinned = frozenset({candidate.key})
        parts: list[np.ndarray] = []
        served: list[ServedBy] = []
        for start in range(0, rows, self.max_batch):
            part = {name: array[start : start + self.max_batch] for name, array in arrays.items()}
            budget = None if deadline is None else max((deadline - time.monotonic()) * 1000.0, 1e-3)
            requirements = Requirements(
                model=candidate.model.name, latency_ms=budget, batch=len(next(iter(part.values())))
            )
            answer = self.engine.infer(Query(requirements, part, allowed, tenant, variants=pinned), ENDPOINT)
            parts.append(np.asarray(answer.outputs[spec.name]))
            served.append(answer.served_by)
        variant = served[0].variant if served else candidate.variant.name
        stage = Stage(candidate.model.name, variant, rows, (time.monotonic() - started) * 1000.0, tuple(served))
        return np.concatenate(parts), stage

    def _exact(
        self,
        request: TopKRequest,
        choice: Choice,
        arrays: dict[str, np.ndarray],
        rows: int,
        allowed: Callable[[ModelInfo], bool],
        tenant: str,
        started: float,
        *,
        forced: bool,
    ) -> TopKAnswer:
        deadline = None if request.latency_ms is None else started + request.latency_ms / 1000.0
        output, stage = self._run(choice.expensive, arrays, deadline, allowed, tenant)
        scores = _column(output, request.column, choice.expensive.model.name)
        order = _best(scores, request.k)
        if forced:
            choice = Choice(choice.expensive, None, None, None, "exact: asked for", choice.k_range, choice.rows_range)
        spec = check_column(choice.expensive.model, request.column)
        return TopKAnswer(
            indices=[int(i) for i in order],
            scores=[float(scores[i]) for i in order],
            mode="exact",
            k=request.k,
            rows=rows,
            column=request.column,
            output=spec.name,
            rescored=rows,
            choice=choice,
            cheap=None,
            expensive=stage,
            latency_ms=(time.monotonic() - started) * 1000.0,
        )

    def _approximate(
        self,
        request: TopKRequest,
        choice: Choice,
        arrays: dict[str, np.ndarray],
        rows: int,
        allowed: Callable[[ModelInfo], bool],
        tenant: str,
        started: float,
    ) -> TopKAnswer:
        assert choice.cheap is not None and choice.ratio is not None
        deadline = None if request.latency_ms is None else started + request.latency_ms / 1000.0
        cheap_output, cheap_stage = self._run(choice.cheap, arrays, deadline, allowed, tenant)
        rescored = rescored_for(choice.ratio, request.k, rows)
        kept = _best(_column(cheap_output, request.column, choice.cheap.model.name), rescored)
        subset = {name: array[kept] for name, array in arrays.items()}
        output, stage = self._run(choice.expensive, subset, deadline, allowed, tenant)
        scores = _column(output, request.column, choice.expensive.model.name)
        order = _best(scores, request.k)
        spec = check_column(choice.expensive.model, request.column)
        return TopKAnswer(
            indices=[int(kept[i]) for i in order],
            scores=[float(scores[i]) for i in order],
            mode="approximate",
            k=request.k,
            rows=rows,
            column=request.column,
            output=spec.name,
            rescored=rescored,
            choice=choice,
            cheap=cheap_stage,
            expensive=stage,
            latency_ms=(time.monotonic() - started) * 1000.0,
        )


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, best first (ties by position), without sorting every row."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    threshold = scores[part].min()
    tied = np.flatnonzero(scores >= threshold)  # every row at the cut, so ties resolve by position as top_k does
    return tied[np.argsort(-scores[tied], kind="stable")][:k]


__all__ = [
    "ENDPOINT",
    "Choice",
    "ColumnOutOfRange",
    "NoScoreToRank",
    "Stage",
    "TopKAnswer",
    "TopKRequest",
    "TopKService",
    "check_column",
    "chunked_ms",
    "held_out_rows",
    "score_output",
]
