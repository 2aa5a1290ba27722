"""VM-level autoscaling: how many workers the cluster holds.

Every ``vm_autoscaler_period_s`` the cluster's utilization is the cores its loaded instances keep busy
(Σ rate / per-replica capacity × cores per replica) over the cores of the workers that take new
queries. The cluster is *overloaded* when that is above ``high_utilization``, when SLO misses persist
under real load (rate-weighted miss rate above the threshold while utilization is at least
``low_utilization``; more machines do not fix misses at near-zero load), or when the model level
reported demand that fits on no worker; *underloaded* when utilization is below ``low_utilization`` with no misses.

After ``vm_up_periods`` overloaded periods a draining worker is taken back first (it is already paid
for), else a worker is added, never beyond ``max_workers``. After ``vm_down_periods`` underloaded
periods the idlest removable worker is drained, never below ``min_workers``, never within
``vm_down_after_up_s`` of the last addition (a worker is paid for by then, and the burst that called
for it often comes back in waves), and only when the rest would stay below ``target_utilization``
(so removing it does not immediately call for a new one).
A draining worker takes no new queries; once nothing is outstanding on it (or after
``drain_timeout_s``) it is removed and stopped. One cool-down (``vm_cooldown_s``) spaces all
cluster-size changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoscaler.policy_types import Action, ClusterView, History, PolicyConfig, WorkerLoad, next_streak

LEVEL = "vm"
CLUSTER = "cluster"
UP_ACTIONS = frozenset({"add_worker", "undrain"})  # actions that start the down-after-up guard


@dataclass(frozen=True)
class VmPlan:
    """The VM level's decisions and its updated memory."""

    actions: tuple[Action, ...]
    history: History


def busy_cores(view: ClusterView, worker: WorkerLoad) -> float:
    """Cores the worker's instances keep busy at their current arrival rates."""
    busy = 0.0
    for inst in worker.instances:
        option = view.variants.get(inst.variant_key)
        if option is None:
            continue
        busy += inst.rate_per_s / inst.capacity(option) * option.cores
    return busy


def _drain_key(worker_id: str) -> str:
    return f"drain:{worker_id}"


def decide(view: ClusterView, history: History, config: PolicyConfig, unmet: tuple[str, ...] = ()) -> VmPlan:
    """Plan this period's VM-level actions (pure: no I/O, time comes from ``view.now``)."""
    active = [w for w in view.workers if not w.draining]
    draining = [w for w in view.workers if w.draining]
    busy = {w.id: busy_cores(view, w) for w in view.workers}
    cores = sum(w.cores for w in active)
    utilization = sum(busy[w.id] for w in active) / cores if cores else 0.0
    rate = sum(i.rate_per_s for w in view.workers for i in w.instances)
    missed = sum(i.rate_per_s * i.slo_miss_rate for w in view.workers for i in w.instances)
    miss_rate = missed / rate if rate > 0 else 0.0
    persistent_misses = miss_rate > config.slo_miss_threshold and utilization >= config.low_utilization
    over = utilization > config.high_utilization or persistent_misses or bool(unmet)
    under = utilization < config.low_utilization and miss_rate <= config.slo_miss_threshold / 2 and not unmet
    streak = next_streak(history.streak(CLUSTER), over, under)
    inputs = {
        "utilization": round(utilization, 3),
        "busy_cores": round(sum(busy[w.id] for w in active), 3),
        "cores": cores,
        "slo_miss_rate": round(miss_rate, 4),
        "unmet": list(unmet),
        "active_workers": len(active),
        "draining_workers": len(draining),
        "pending_workers": view.pending_workers,
        "streak": streak,
    }
    streaks = {CLUSTER: streak}
    # Drain bookkeeping survives in last_action under drain:<id>; forget workers that are gone.
    last_action = {
        k: v for k, v in history.last_action.items() if not k.startswith("drain:") or view.worker(k[6:]) is not None
    }
    for w in draining:
        last_action.setdefault(_drain_key(w.id), view.now)
    new_history = History(streaks=streaks, last_action=last_action, last_up=dict(history.last_up))
    actions: list[Action] = []

    for w in draining:
        if not w.removable:
            continue
        waited = view.now - new_history.last_action[_drain_key(w.id)]
        if w.outstanding == 0 or waited >= config.drain_timeout_s:
            why = "drained: nothing outstanding" if w.outstanding == 0 else f"drain timed out after {waited:.0f} s"
            actions.append(
                Action(LEVEL, "remove_worker", w.id, why, {**inputs, "outstanding": w.outstanding}, worker=w.id)
            )

    if len(active) + view.pending_workers < view.min_workers:
        actions.append(
            Action(LEVEL, "add_worker", CLUSTER, f"fewer than min_workers {view.min_workers} workers", inputs)
        )
    elif not new_history.cooling(CLUSTER, view.now, config.vm_cooldown_s):
        last_up = new_history.last_up.get(CLUSTER)
        actions.extend(_resize(view, streak, active, draining, busy, utilization, config, inputs, last_up))

    for action in actions:
        if action.action == "remove_worker":
            new_history = _forget_drain(new_history, action.target)
        else:
            new_history = new_history.acted(CLUSTER, view.now, up=action.action in UP_ACTIONS)
            if action.action == "drain_worker":
                new_history = _note_drain(new_history, action.target, view.now)
            elif action.action == "undrain":
                new_history = _forget_drain(new_history, action.target)
    return VmPlan(tuple(actions), new_history)


def _resize(
    view: ClusterView,
    streak: int,
    active: list[WorkerLoad],
    draining: list[WorkerLoad],
    busy: dict[str, float],
    utilization: float,
    config: PolicyConfig,
    inputs: dict,
    last_up: float | None,
) -> list[Action]:
    """Grow or shrink the cluster by one worker when the streak is long enough."""
    if streak >= config.vm_up_periods:
        why = (
            f"overloaded for {streak} periods: utilization {utilization:.2f}, "
            f"SLO misses {inputs['slo_miss_rate']:.2%}, unmet {len(inputs['unmet'])}"
        )
        taken_back = [w for w in draining if w.removable]
        if taken_back:
            w = min(taken_back, key=lambda w: (w.outstanding, w.id))
            return [Action(LEVEL, "undrain", w.id, f"{why}; taking back draining {w.id}", inputs, worker=w.id)]
        if len(active) + view.pending_workers < view.max_workers:
            return [Action(LEVEL, "add_worker", CLUSTER, why, inputs)]
        return []
    settled = last_up is None or view.now - last_up >= config.vm_down_after_up_s
    if streak <= -config.vm_down_periods and settled and view.pending_workers == 0 and len(active) > view.min_workers:
        removable = [w for w in active if w.removable]
        if not removable:
            return []
        idlest = min(removable, key=lambda w: (busy[w.id], len(w.instances), w.outstanding, w.id))
        rest_cores = sum(w.cores for w in active) - idlest.cores
        total_busy = sum(busy[w.id] for w in active)
        if rest_cores <= 0 or total_busy / rest_cores >= config.target_utilization:
            return []
        return [
            Action(
                LEVEL,
                "drain_worker",
                idlest.id,
                f"underloaded for {-streak} periods: utilization {utilization:.2f}; {idlest.id} is the idlest "
                f"({busy[idlest.id]:.2f} busy cores); the rest would run at {total_busy / rest_cores:.2f}",
                {**inputs, "worker_busy_cores": round(busy[idlest.id], 3)},
                worker=idlest.id,
            )
        ]
    return []


def _note_drain(history: History, worker_id: str, now: float) -> History:
    return History(
        streaks=history.streaks,
        last_action={**history.last_action, _drain_key(worker_id): now},
        last_up=history.last_up,
    )


def _forget_drain(history: History, worker_id: str) -> History:
    key = _drain_key(worker_id)
    return History(
        streaks=history.streaks,
        last_action={k: v for k, v in history.last_action.items() if k != key},
        last_up=history.last_up,
    )
