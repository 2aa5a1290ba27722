"""The planner: InferLine's greedy algorithm, every candidate judged by the simulator on the pipeline's trace.

1. Every stage starts at batch 1, one replica, its fastest variant (at batch 1, among those meeting the stage's
   accuracy floor, ``infaas.pipelines.options``).
2. If the service time alone breaks the objective -- the P99 simulated with no queueing (the trace's queries
   spaced apart) -- the pipeline is infeasible: the plan says so, with that best achievable P99. Likewise, with a
   serving path, when the trace breaks it with every stage at the replica ceiling (the front end's queue).
3. Otherwise replicas are added to the bottleneck stage (highest simulated utilisation) until the simulated
   P99 meets the objective.
4. Then, repeatedly, the feasible cost-cutting move that cuts cost most is taken, until none does (moves are
   tried in order of what they cut, so only those cutting more than the one taken are simulated, each by a
   probe that stops once the move is known to break the objective): one replica fewer; a cheaper variant that
   meets the floor, with the fewest replicas that keep the plan feasible while the stage still costs less; a
   larger batch (the next profiled size up to the model's ``max_batch``), with as many replicas removed as stay
   feasible (a larger batch cuts cost only through the replicas its throughput frees, as in InferLine; one that
   frees none yet is taken when no move cuts more).

Measured on the test pipeline (``tests/infaas/test_pipeline_planning.py``): single-step moves only (a cheaper
variant at the same replicas, a batch taken only if it frees a replica at once) stopped at 2.2x the brute-force
optimum; with the re-sized variant and the zero-cut batch it reaches the optimum.

Cost is replicas x the per-hour price of the hardware a replica holds, summed over stages.

Every candidate is judged with the serving path's work (``infaas.pipelines.path.ServingPath``) when one is
given, as the estimator validated against the real path judges it: each query's path work queued for the front
end's interpreter, each stage's runs slowed by the measured excess. A plan made without it (``path=None``)
leaves out the ~1 ms per query the zoo pipeline's path adds, and the wait for the interpreter that grows with
the rate (``docs/pipelines.md``); the plan document says which (``serving_path``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from infaas.pipelines.options import StageOption
from infaas.pipelines.path import ServingPath
from infaas.pipelines.simulator import SimResult, StageConfig, simulate
from infaas.pipelines.spec import PipelineSpec

MAX_REPLICAS = 64  # per stage: past this, adding replicas is not what is missing
SPACED_S = 10.0  # gap between queries when measuring the service time alone
SATURATED = 0.95  # the path's interpreter busy share past which the trace outruns the front end


@dataclass(frozen=True)
class StageChoice:
    """One stage's configuration: which option (variant), the batch cap, the replicas."""

    option: int
    batch: int
    replicas: int


@dataclass(frozen=True)
class Plan:
    """The planner's answer; ``feasible`` False with ``p99_ms`` the best achievable when the objective cannot
    be met."""

    feasible: bool
    p99_ms: float
    objective_ms: float
    cost_per_hour: float
    choices: dict[str, StageChoice]
    utilisation: dict[str, float]
    simulations: int
    seconds: float
    path: ServingPath | None = None
    interpreter: float = 0.0  # the simulated front end's interpreter busy share at the plan

    def to_json(self, options: Mapping[str, Sequence[StageOption]]) -> dict[str, Any]:
        stages = {}
        for name, c in self.choices.items():
            option = options[name][c.option]
            stages[name] = {
                "model": option.model,
                "variant": option.variant,
                "batch": c.batch,
                "replicas": c.replicas,
                "utilisation": round(self.utilisation.get(name, 0.0), 4),
                "cost_per_hour": round(option.per_hour * c.replicas, 6),
                "accuracy": option.accuracy,
            }
        return {
            "feasible": self.feasible,
            "p99_ms": round(self.p99_ms, 3),
            "objective_ms": self.objective_ms,
            "cost_per_hour": round(self.cost_per_hour, 6),
            "stages": stages,
            "simulations": self.simulations,
            "planning_s": round(self.seconds, 3),
            "serving_path": self.path.to_json() if self.path is not None else {"source": "not measured: stages only"},
            "interpreter_utilisation": round(self.interpreter, 4),
        }


class Judge:
    """Simulates configurations (memoised) and prices them. A feasibility question is answered by a probe that
    stops once the P99 is known to exceed the objective (``simulate(over_ms=...)``): the same answer, for less
    than a whole trace when it is no."""

    def __init__(
        self,
        spec: PipelineSpec,
        options: Mapping[str, Sequence[StageOption]],
        edge_pass: Mapping[int, float],
        arrivals: np.ndarray,
        seed: int,
        path: ServingPath | None = None,
    ) -> None:
        self.spec, self.options, self.edge_pass, self.arrivals, self.seed = spec, options, edge_pass, arrivals, seed
        self.path = path
        self.runs = 0
        self._seen: dict[tuple, SimResult] = {}
        self._probed: dict[tuple, bool] = {}

    def configs(self, choices: Mapping[str, StageChoice]) -> dict[str, StageConfig]:
        excess = self.path.excess if self.path is not None else {}
        return {
            name: StageConfig(self.options[name][c.option].curve, c.batch, c.replicas, excess.get(name, 0.0))
            for name, c in choices.items()
        }

    def sim(self, choices: Mapping[str, StageChoice], arrivals: np.ndarray | None = None) -> SimResult:
        key = (tuple(sorted(choices.items())), arrivals is None)
        if key not in self._seen:
            self.runs += 1
            trace = self.arrivals if arrivals is None else arrivals
            self._seen[key] = simulate(
                self.spec, self.configs(choices), self.edge_pass, trace, seed=self.seed, path=self.path
            )
        return self._seen[key]

    def cost(self, choices: Mapping[str, StageChoice]) -> float:
        return sum(self.options[n][c.option].per_hour * c.replicas for n, c in choices.items())

    def feasible(self, choices: Mapping[str, StageChoice]) -> bool:
        key = (tuple(sorted(choices.items())), True)
        if key in self._seen:
            return self._seen[key].p99_ms <= self.spec.p99_ms
        if key not in self._probed:
            self.runs += 1
            probe = simulate(
                self.spec,
                self.configs(choices),
                self.edge_pass,
                self.arrivals,
                seed=self.seed,
                path=self.path,
                over_ms=self.spec.p99_ms,
            )
            if not probe.stopped:  # it ran the whole trace: as good as ``sim``'s
                self._seen[key] = probe
            self._probed[key] = probe.p99_ms <= self.spec.p99_ms
        return self._probed[key]


def _batches(option: StageOption) -> list[int]:
    return [b for b in option.curve.batches if b <= option.max_batch] or [1]


def _candidates(judge: Judge, choices: dict[str, StageChoice]) -> list[tuple[float, dict[str, StageChoice]]]:
    """Every single-stage cost-cutting candidate and what it cuts, none simulated yet: one replica fewer; a
    cheaper variant (at the largest of its batches up to the current one) at each replica count from the current
    one up while the stage still costs less; the next larger batch with each replica count up to the current one
    (the current one cuts nothing: see ``plan``)."""
    out = []
    for name, c in choices.items():
        options = judge.options[name]
        price = options[c.option].per_hour
        spend = price * c.replicas
        if c.replicas > 1:
            out.append((price, {**choices, name: replace(c, replicas=c.replicas - 1)}))
        for i, option in enumerate(options):
            if i == c.option or option.per_hour >= price:
                continue
            batch = max((b for b in _batches(option) if b <= c.batch), default=1)
            replicas = c.replicas
            while replicas <= MAX_REPLICAS and option.per_hour * replicas < spend:
                out.append((spend - option.per_hour * replicas, {**choices, name: StageChoice(i, batch, replicas)}))
                replicas += 1
        bigger = [b for b in _batches(options[c.option]) if b > c.batch]
        # A larger batch cuts only through replicas it frees or a cheaper variant it lets keep up: a stage at one
        # replica of its cheapest variant has neither. On the benchmark's pipeline the zero-cut batch steps of such
        # a filter stage (1 -> 2 -> 4 -> 8, each with the failed probes before it) took the planner from 7
        # simulations to 16, for the same cost.
        floor = c.replicas == 1 and all(o.per_hour >= price for o in options)
        if bigger and not floor:
            for replicas in range(1, c.replicas + 1):
                out.append(
                    (price * (c.replicas - replicas), {**choices, name: StageChoice(c.option, bigger[0], replicas)})
                )
    return out


def spaced_trace(queries: int) -> np.ndarray:
    """Up to 500 queries far enough apart that none waits: what the service time alone gives."""
    return np.arange(min(queries, 500)) * SPACED_S


def service_time_p99(
    spec: PipelineSpec,
    options: Mapping[str, Sequence[StageOption]],
    edge_pass: Mapping[int, float],
    seed: int = 0,
    path: ServingPath | None = None,
) -> float:
    """The best achievable P99: every stage's fastest option, batch 1, no queueing (the path's work included)."""
    judge = Judge(spec, options, edge_pass, spaced_trace(500), seed, path)
    return judge.sim({name: StageChoice(0, 1, 1) for name in spec.order}).p99_ms


def plan(
    spec: PipelineSpec,
    options: Mapping[str, Sequence[StageOption]],
    edge_pass: Mapping[int, float],
    arrivals: np.ndarray,
    *,
    seed: int = 0,
    path: ServingPath | None = None,
) -> Plan:
    """Plan ``spec`` against its objective on ``arrivals``; ``options`` per stage, fastest first (non-empty);
    ``path``: the serving path's measured work, judged with every candidate (none: the stages alone)."""
    started = time.perf_counter()
    judge = Judge(spec, options, edge_pass, arrivals, seed, path)
    choices = {name: StageChoice(0, 1, 1) for name in spec.order}

    def done(feasible: bool, result: SimResult) -> Plan:
        return Plan(
            feasible=feasible,
            p99_ms=result.p99_ms,
            objective_ms=spec.p99_ms,
            cost_per_hour=judge.cost(choices),
            choices=dict(choices),
            utilisation=result.utilisation,
            simulations=judge.runs,
            seconds=time.perf_counter() - started,
            path=path,
            interpreter=result.interpreter,
        )

    alone = judge.sim(choices, spaced_trace(len(arrivals)))
    if alone.p99_ms > spec.p99_ms:
        return done(False, alone)
    if path is not None:
        # The trace with every stage at its ceiling of replicas: what is left is the path's queue for the front
        # end, which no replica shortens. Past the objective, growing stages (up to 64 each) would be in vain.
        roomy = judge.sim({name: StageChoice(0, 1, MAX_REPLICAS) for name in spec.order})
        if roomy.p99_ms > spec.p99_ms:
            return done(False, roomy)
    while (result := judge.sim(choices)).p99_ms > spec.p99_ms:
        if result.interpreter > SATURATED:  # the front end, not a stage, is the bottleneck: replicas cannot help
            return done(False, result)
        growable = [n for n in spec.order if choices[n].replicas < MAX_REPLICAS]
        if not growable:
            return done(False, result)
        bottleneck = max(growable, key=lambda n: result.utilisation[n])
        choices[bottleneck] = replace(choices[bottleneck], replicas=choices[bottleneck].replicas + 1)
    while True:
        # The feasible candidate that cuts most is the first feasible one in order of cut: the ones after it are
        # never simulated (an earlier planner simulated every move: 43 simulations where this takes fewer).
        # A larger batch that frees no replica yet (cut 0) is still taken when nothing cuts more: its throughput
        # is what lets a later move drop a replica. Batches only grow, so this ends.
        ordered = sorted(_candidates(judge, choices), key=lambda cut_move: -cut_move[0])
        best = next((move for cut, move in ordered if cut > -1e-12 and judge.feasible(move)), None)
        if best is None:
            break
        choices = best
    return done(True, judge.sim(choices))


__all__ = ["Judge", "Plan", "StageChoice", "plan", "service_time_p99", "spaced_trace"]
