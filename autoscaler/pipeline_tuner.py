"""The pipeline tuner (issue 17, point 5; InferLine's tuner): a planned pipeline's stages resized to live traffic.

A plan is made for the pipeline's sample trace; live traffic drifts from it. Network calculus says how much: the
*traffic envelope* of a trace is, for each window length w, the largest number of queries any interval of length
w holds (as a rate: that count / w). Windows run from the pipeline's service time, doubling, up to 60 s, so both a
burst shorter than one query's service and a sustained rise are seen. Each period:

* **Up**: when the live envelope (arrivals of the last 60 s) exceeds the planned trace's at any window, the
  pipeline sees ``r`` = the planned mean rate times the largest live/planned ratio over those windows (traffic
  that is 1.5x the planned envelope anywhere needs 1.5x the capacity the plan gave the planned rate), and every
  stage gets ``k = ceil(r * s / (rho * mu))`` replicas, ``s`` its scale factor (share of queries reaching it),
  ``rho`` the utilisation the plan gave it, ``mu`` one replica's throughput at the planned batch. A stage is only
  ever raised by this rule (never below what it has).
* **Down**: when nothing exceeds, a stage above its planned replicas is brought down to the ``k`` of the largest
  rate of the last 30 s counted in 5 s windows, never below the plan.

The sizes come from the planner's estimator (``infaas.pipelines.path``, ``infaas.pipelines.planner``): ``rho``
is the simulated utilisation with the serving path's work included, ``mu`` counts each run's measured excess
over its profile (``autoscaler.pipeline_apply.planned_pipeline``), and every decision records the front end's
interpreter share at the rate it sized for (``front_end_utilisation``), which no replica count lowers.

Pure: the control loop (``autoscaler.loop``) gives it the plan and the live arrival times and carries out (and
records) the ``Action``s it returns, each with the inputs that triggered it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from autoscaler.policy_types import Action

LEVEL = "pipeline"
MAX_WINDOW_S = 60.0
DOWN_SPAN_S = 30.0
DOWN_WINDOW_S = 5.0
MIN_UTILISATION = 0.05  # a plan's rho below this (a nearly idle stage) is read as this: k stays bounded
MAX_REPLICAS = 64  # as the planner's ceiling per stage


@dataclass(frozen=True)
class PlannedStage:
    """One stage of a stored plan, with what the tuner sizes it by."""

    name: str
    variant: str  # model/variant key
    batch: int
    replicas: int  # the plan's: never fewer
    scale: float  # s: share of pipeline queries that reach the stage
    utilisation: float  # rho: the plan's simulated utilisation of the stage
    throughput_per_s: float  # mu: one replica's rows/s at the planned batch (profiled)


@dataclass(frozen=True)
class PlannedPipeline:
    """A planned pipeline: its stages, the planned trace's mean rate and envelope."""

    name: str
    stages: tuple[PlannedStage, ...]
    rate_per_s: float
    envelope: tuple[tuple[float, float], ...]  # (window s, max rate /s) of the planned trace
    path_work_ms: float = 0.0  # mean front-end interpreter work per query in the plan's serving path (0: unknown)
    path_threads: int = 1

    def front_end_utilisation(self, rate: float) -> float:
        """The front end's interpreter busy share at ``rate`` queries/s, as the planner's estimator has it: more
        replicas do not lower it, so a decision that scales stages past 1 here cannot meet the objective."""
        return rate * self.path_work_ms / 1000.0 / max(1, self.path_threads)


def windows(service_s: float) -> tuple[float, ...]:
    """From the service time, doubling, up to ``MAX_WINDOW_S`` (which is always included)."""
    w = max(service_s, 1e-3)
    out = []
    while w < MAX_WINDOW_S:
        out.append(w)
        w *= 2
    return (*out, MAX_WINDOW_S)


def envelope(times: Sequence[float] | np.ndarray, spans: Sequence[float]) -> tuple[tuple[float, float], ...]:
    """Per window: the most arrivals any interval of that length holds, as a rate (two pointers, O(n) each)."""
    t = np.sort(np.asarray(times, dtype=np.float64))
    out = []
    for w in spans:
        if not len(t):
            out.append((w, 0.0))
            continue
        # For each arrival i, arrivals in [t_i, t_i + w): index of the first at or after t_i + w, minus i.
        ends = np.searchsorted(t, t + w, side="left")
        out.append((w, float(np.max(ends - np.arange(len(t)))) / w))
    return tuple(out)


def down_rate(times: Sequence[float] | np.ndarray, now: float) -> float:
    """The largest rate of the last ``DOWN_SPAN_S`` counted in ``DOWN_WINDOW_S`` windows (ending at ``now``)."""
    t = np.asarray(times, dtype=np.float64)
    recent = t[(t > now - DOWN_SPAN_S) & (t <= now)]
    if not len(recent):
        return 0.0
    bins = np.floor((now - recent) / DOWN_WINDOW_S).astype(int)
    return float(np.bincount(bins).max()) / DOWN_WINDOW_S


def replicas_for(rate: float, stage: PlannedStage) -> int:
    """``k = ceil(r * s / (rho * mu))``, at least the plan's, at most ``MAX_REPLICAS``."""
    rho = max(stage.utilisation, MIN_UTILISATION)
    if stage.throughput_per_s <= 0:
        return stage.replicas
    k = math.ceil(rate * stage.scale / (rho * stage.throughput_per_s) - 1e-9)
    return min(MAX_REPLICAS, max(stage.replicas, k))


def decide(
    pipeline: PlannedPipeline, arrivals: Sequence[float] | np.ndarray, now: float, current: Mapping[str, int]
) -> list[Action]:
    """This period's resizing of ``pipeline``'s stages; ``current`` the replicas each stage holds now (a stage
    missing from it holds none: it is brought to at least its plan), ``arrivals`` live arrival times (same clock
    as ``now``)."""
    t = np.asarray(arrivals, dtype=np.float64)
    live = envelope(t[t > now - MAX_WINDOW_S], [w for w, _ in pipeline.envelope])
    exceeded = [
        (w, rate, planned)
        for (w, planned), (_w, rate) in zip(pipeline.envelope, live, strict=True)
        if rate > planned > 0 or (rate > 0 and planned <= 0)
    ]
    ratio = max((rate / planned if planned > 0 else math.inf for _w, rate, planned in exceeded), default=0.0)
    up_rate = pipeline.rate_per_s * min(ratio, MAX_REPLICAS) if exceeded else 0.0
    down = down_rate(t, now)
    actions = []
    for stage in pipeline.stages:
        have = current.get(stage.name, 0)
        inputs = {
            "pipeline": pipeline.name,
            "stage": stage.name,
            "variant": stage.variant,
            "batch": stage.batch,
            "replicas": have,
            "planned_replicas": stage.replicas,
            "scale_factor": round(stage.scale, 4),
            "planned_utilisation": round(stage.utilisation, 4),
            "throughput_per_replica_per_s": round(stage.throughput_per_s, 3),
            "planned_rate_per_s": round(pipeline.rate_per_s, 3),
            "exceeded_windows": [
                {"window_s": round(w, 4), "live_per_s": round(r, 3), "planned_per_s": round(p, 3)}
                for w, r, p in exceeded
            ],
            "down_rate_per_s": round(down, 3),
            "front_end_utilisation": round(pipeline.front_end_utilisation(up_rate if exceeded else down), 4),
        }
        target = f"{pipeline.name}/{stage.name}"
        if have < stage.replicas:
            actions.append(
                Action(
                    LEVEL,
                    "apply_plan",
                    target,
                    f"planned {stage.replicas} replica(s) of {stage.variant} at batch {stage.batch}; {have} loaded",
                    {**inputs, "to_replicas": stage.replicas},
                    variant=stage.variant,
                    count=stage.replicas,
                )
            )
            have = stage.replicas
        if exceeded:
            k = replicas_for(up_rate, stage)
            if k > have:
                w, r, p = max(exceeded, key=lambda e: e[1] / e[2] if e[2] > 0 else math.inf)
                actions.append(
                    Action(
                        LEVEL,
                        "tune_up",
                        target,
                        f"live traffic {r:.1f}/s over {w:.3g} s exceeds the planned envelope {p:.1f}/s: "
                        f"r = {up_rate:.1f}/s, k = ceil(r*s/(rho*mu)) = {k} replica(s), {have} loaded",
                        {**inputs, "rate_per_s": round(up_rate, 3), "to_replicas": k},
                        variant=stage.variant,
                        count=k,
                    )
                )
        elif have > stage.replicas:
            k = replicas_for(down, stage)
            if k < have:
                actions.append(
                    Action(
                        LEVEL,
                        "tune_down",
                        target,
                        f"largest 5 s rate of the last 30 s {down:.1f}/s needs k = {k} replica(s) "
                        f"(plan {stage.replicas}); {have} loaded",
                        {**inputs, "rate_per_s": round(down, 3), "to_replicas": k},
                        variant=stage.variant,
                        count=k,
                    )
                )
    return actions


__all__ = [
    "LEVEL",
    "PlannedPipeline",
    "PlannedStage",
    "decide",
    "down_rate",
    "envelope",
    "replicas_for",
    "windows",
]
