"""Stored pipeline plans carried out on the workers, and resized by the tuner (issue 17, points 4 and 5).

Each model-level period the control loop (``autoscaler.loop``) asks ``PipelineScaler.decide`` for the planned
pipelines' actions: a stage holding fewer replicas of its planned variant than the plan says is brought to the
plan (``apply_plan``); beyond that only the tuner (``autoscaler.pipeline_tuner``) moves it (``tune_up`` /
``tune_down``). ``execute`` carries one out with the primitives the model level uses (``load``,
``add_replica``, ``remove_replica`` on the worker clients) and caps the instance's batch at the planned batch
(``set_max_batch``), so the stage serves as it was simulated. The model level leaves these instances alone
(``pinned``): two controllers sizing one instance would undo each other.

A stage's replicas are spread over the workers that run the variant's hardware (``spread_to``): each one added
goes to the worker with room holding the fewest of them, so that one worker's stall or loss is not the whole
stage's (before, all of a stage's replicas landed on one worker); each one removed comes off the worker holding the
most. The tuner reads the pipeline's arrivals from live state, which every front end writes
(``LiveState.record_pipeline_arrival``), so the leader sizes the stages by all the traffic, not by its own share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from autoscaler import pipeline_tuner
from autoscaler.pipeline_tuner import PlannedPipeline, PlannedStage
from autoscaler.policy_types import Action, instance_target
from infaas.catalog import VariantInfo
from infaas.hardware_kinds import required_hardware, runs_on
from infaas.pipelines.path import ServingPath
from infaas.pipelines.simulator import arrival_times
from infaas.pipelines.spec import parse_spec
from infaas.pipelines.store import PipelineInfo, PipelineStore
from infaas.selector import Candidate, ProfileCurve
from infaas.services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Loaded:
    worker: str
    replicas: int
    max_batch: int


def planned_pipeline(info: PipelineInfo, curves: Mapping[str, Candidate]) -> PlannedPipeline | None:
    """The tuner's view of a stored plan (``None`` without a feasible plan whose variants are all ready)."""
    plan = info.plan
    if not plan or not plan.get("feasible"):
        return None
    spec = parse_spec(info.spec)
    trace = arrival_times(spec.arrivals)
    span = float(trace[-1] - trace[0]) if len(trace) > 1 else 0.0
    scale = plan.get("scale_factors") or (info.scale_factors or {}).get("stages", {})
    # The serving path the plan was judged with (``infaas.pipelines.path``): a served run's measured excess over
    # its profile is part of what one replica takes per batch, as the planner's simulation had it.
    path = plan.get("serving_path") or {}
    excess = {n: float(np.mean(v)) for n, v in (path.get("excess_ms") or {}).items() if v}
    stages = []
    for name, stage in plan["stages"].items():
        key = f"{stage['model']}/{stage['variant']}"
        candidate = curves.get(key)
        if candidate is None:
            return None  # rebuilt or deleted since planning: the plan no longer describes anything loadable
        batch = int(stage["batch"])
        service_ms = candidate.curve.service_ms(batch) + max(0.0, excess.get(name, 0.0))
        stages.append(
            PlannedStage(
                name=name,
                variant=key,
                batch=batch,
                replicas=int(stage["replicas"]),
                scale=float(scale.get(name, 1.0)),
                utilisation=float(stage["utilisation"]),
                throughput_per_s=batch * 1000.0 / service_ms if service_ms > 0 else 0.0,
            )
        )
    service_s = float(plan.get("service_ms", plan["p99_ms"])) / 1000.0
    return PlannedPipeline(
        name=info.name,
        stages=tuple(stages),
        rate_per_s=(len(trace) - 1) / span if span > 0 else 0.0,
        envelope=pipeline_tuner.envelope(trace, pipeline_tuner.windows(service_s)),
        path_work_ms=_path_work_ms(path, scale),
        path_threads=int(path.get("threads", 1)),
    )


def _path_work_ms(path: Mapping[str, Any], scale: Mapping[str, float]) -> float:
    """Mean interpreter work per pipeline query in the plan's serving path (0 when it was not measured)."""
    if "entry_ms" not in path:
        return 0.0
    return ServingPath.from_json(path).work_ms({n: float(s) for n, s in scale.items()})


class PipelineScaler:
    """Decides and carries out the planned pipelines' actions for the control loop."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._envelopes: dict[tuple[str, str], PlannedPipeline] = {}  # (name, planned_at): envelopes are O(trace)

    def _planned(self, curves: Mapping[str, Candidate]) -> list[PlannedPipeline]:
        out = []
        for info in PipelineStore(self.services.db).list():
            if not info.plan:
                continue
            cache_key = (info.name, str(info.plan.get("planned_at")))
            planned = self._envelopes.get(cache_key)
            if planned is None:
                planned = planned_pipeline(info, curves)
                if planned is None:
                    continue
                self._envelopes[cache_key] = planned
            out.append(planned)
        return out

    def _loaded(self) -> dict[str, list[_Loaded]]:
        """Per variant key, where it is loaded (status of every reachable worker)."""
        out: dict[str, list[_Loaded]] = {}
        workers = self.services.engine.workers
        for state in self.services.live.snapshot().workers:
            client = workers.get(state.id)
            if client is None:
                continue
            try:
                status = client.status()
            except Exception:
                log.warning("status of worker %s failed", state.id, exc_info=True)
                continue
            for i in status.instances:
                out.setdefault(i.variant_key, []).append(_Loaded(state.id, i.replicas, i.max_batch))
        return out

    def pinned(self, curves: Mapping[str, Candidate]) -> frozenset[str]:
        """Instance targets (``worker/model/variant``) of planned stages: the model level keeps its hands off."""
        keys = {s.variant for p in self._planned(curves) for s in p.stages}
        if not keys:
            return frozenset()
        loaded = self._loaded()
        return frozenset(instance_target(w.worker, key) for key in keys for w in loaded.get(key, ()))

    def decide(self, curves: Mapping[str, Candidate]) -> list[Action]:
        """This period's actions over every planned pipeline, and the batch caps put back where they drifted (an
        instance reloaded after an eviction starts at its best profiled batch)."""
        pipelines = self._planned(curves)
        if not pipelines:
            return []
        loaded = self._loaded()
        now = time.time()
        live = self.services.live
        # A variant two pipelines plan is sized by the larger plan: one's tune_down must not undo the other's.
        floor: dict[str, int] = {}
        for planned in pipelines:
            for stage in planned.stages:
                floor[stage.variant] = max(floor.get(stage.variant, 0), stage.replicas)
        actions: list[Action] = []
        for planned in pipelines:
            current = {s.name: sum(w.replicas for w in loaded.get(s.variant, ())) for s in planned.stages}
            arrivals = np.asarray(live.pipeline_arrivals(planned.name, now - pipeline_tuner.MAX_WINDOW_S))
            for action in pipeline_tuner.decide(planned, arrivals, now, current):
                if action.action == "tune_down" and action.variant is not None:
                    count = max(action.count, floor[action.variant])
                    if count >= action.inputs["replicas"]:
                        continue
                    action = replace(action, count=count)
                actions.append(action)
            for stage in planned.stages:
                for where in loaded.get(stage.variant, ()):
                    if where.max_batch != stage.batch:
                        self._set_batch(where.worker, stage.variant, stage.batch)
        return actions

    def _set_batch(self, worker_id: str, key: str, batch: int) -> int:
        client = self.services.engine.workers.get(worker_id)
        return client.set_max_batch(key, batch) if client is not None else 0

    def execute(self, action: Action, variant: VariantInfo) -> str:
        """Bring ``action.variant`` to ``action.count`` replicas with its batch capped; returns what happened."""
        key, want = variant.key, action.count
        batch = int(action.inputs.get("batch", 0)) or None
        loaded = self._loaded().get(key, [])
        have = sum(w.replicas for w in loaded)
        if want > have:
            placed = self._grow(variant, {w.worker: w.replicas for w in loaded}, want - have)
        elif want < have:
            placed = self._shrink(key, {w.worker: w.replicas for w in loaded}, have - want)
        else:
            placed = f"{have} replica(s)"
        caps = sorted({self._set_batch(w.worker, key, batch) for w in self._loaded().get(key, ())}) if batch else []
        return f"{placed}; batch cap {caps or 'unchanged'}"

    def _grow(self, variant: VariantInfo, held: dict[str, int], more: int) -> str:
        """``more`` replicas of ``variant``, each on the worker ``spread_to`` names (loading it there first)."""
        workers = self.services.engine.workers
        needed = required_hardware(variant)
        free = {
            s.id: s.memory_free_mb
            for s in self.services.live.snapshot().workers
            if not s.draining and runs_on(needed, s.hardware) and workers.get(s.id) is not None
        }
        if not free:
            raise LookupError(f"no reachable worker runs {variant.key}")
        replica_mb = ProfileCurve.of(variant).memory_mb
        for _ in range(more):
            home = spread_to(held, free, replica_mb)
            client = workers.get(home)
            assert client is not None  # reachable when ``free`` was read
            if held.get(home, 0):
                client.add_replica(variant)
            else:
                client.load(variant)
            held[home] = held.get(home, 0) + 1
            free[home] -= replica_mb
        return f"{sum(held.values())} replica(s): " + ", ".join(f"{n} on {w}" for w, n in sorted(held.items()) if n)

    def _shrink(self, key: str, held: dict[str, int], fewer: int) -> str:
        """``fewer`` replicas of ``key`` off the workers holding the most; an instance down to one replica is
        unloaded while another instance of it stays."""
        workers = self.services.engine.workers
        held = {w: n for w, n in held.items() if workers.get(w) is not None}
        for _ in range(fewer):
            if not held:
                break
            worker = max(sorted(held), key=lambda w: held[w])
            client = workers.get(worker)
            assert client is not None
            if held[worker] > 1:
                client.remove_replica(key)
                held[worker] -= 1
            elif len(held) > 1:
                client.unload(key)
                del held[worker]
            else:
                break
        return f"{sum(held.values())} replica(s): " + ", ".join(f"{n} on {w}" for w, n in sorted(held.items()))


def spread_to(held: Mapping[str, int], free_mb: Mapping[str, float], replica_mb: float) -> str:
    """The worker the next replica of a stage goes to: among the workers (``free_mb``: those that may run it,
    with their free memory) with room for one more, the one holding the fewest of the stage's replicas (``held``),
    then the one with the most free memory. When none has room, the one with the most free memory: a worker
    makes room by unloading idle instances, or refuses with why (the action then fails, recorded)."""
    roomy = [w for w, mb in free_mb.items() if mb >= replica_mb]
    if not roomy:
        return max(sorted(free_mb), key=lambda w: free_mb[w])
    return min(sorted(roomy), key=lambda w: (held.get(w, 0), -free_mb[w]))


__all__ = ["PipelineScaler", "planned_pipeline", "spread_to"]
