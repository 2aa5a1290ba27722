"""What a front-end that becomes the autoscaler's leader remembers of its predecessor: the decision log.

Only the lease holder acts (``infaas/leadership.py``), and each front-end keeps the policies' ``History``
in memory, so a new leader would start with none: no cool-downs, so it could repeat at once the replica
or worker its predecessor added a second ago. Every action is a ``decisions`` row with its time, level,
action and target, which is exactly what the guards need, so they are rebuilt from it:

- rebuilt: when each target was last acted on (model-level cool-down per instance, VM-level cool-down of
  the cluster), when each was last scaled up (the down-after-up guards), when each draining worker
  began to drain (its drain timeout), and when each worker was started (its minimum lifetime);
- fresh: the streaks (consecutive over- or underloaded periods) and the capacity deratings. A streak only
  delays an action until a condition has held ``up_periods`` / ``down_periods`` periods in a row, so
  starting it at zero makes the new leader wait a few periods longer, never act sooner or twice. A
  derating is relearned from the misses that caused it within those periods, and a replica added for
  misses is still protected by its rebuilt down-after-up time.

Decisions are rebuilt in the mode they were taken (dry-run decisions rebuild a dry-run history).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC

from autoscaler import model_level, vm_level
from autoscaler.policy_types import History, instance_target
from infaas.catalog import DecisionInfo

LEVEL = "leader"  # the level of the decisions that record leadership changes
DECISIONS_READ = 500  # newest decisions read at a take-over: far more than any guard's window holds

# The VM level's own actions; ``worker_started`` / ``worker_failed`` record how an ``add_worker`` ended.
VM_ACTIONS = frozenset({"add_worker", "undrain", "drain_worker", "remove_worker"})


@dataclass(frozen=True)
class Handover:
    """Both levels' rebuilt memory, the previous leader as recorded, and how many decisions were used."""

    model: History
    vm: History
    previous_leader: str | None
    decisions_used: int


def rebuild(decisions: Sequence[DecisionInfo], *, now: float, dry_run: bool, wall_now: float | None = None) -> Handover:
    """Rebuild the policies' guards from ``decisions`` (newest first, as ``list_decisions`` returns them).

    ``now`` is the loop's clock (monotonic) and ``wall_now`` the wall clock at the same instant: a decision
    taken ``age`` seconds ago is placed at ``now - age`` on the loop's clock.
    """
    wall_now = time.time() if wall_now is None else wall_now
    model_last: dict[str, float] = {}
    model_up: dict[str, float] = {}
    vm_last: dict[str, float] = {}
    vm_up: dict[str, float] = {}
    vm_started: dict[str, float] = {}
    previous = next((d.target for d in decisions if d.level == LEVEL and d.action == "leader"), None)
    used = 0
    for decision in reversed(decisions):  # oldest first, so later decisions overwrite earlier ones
        if decision.dry_run != dry_run:
            continue
        at = decision.at if decision.at.tzinfo else decision.at.replace(tzinfo=UTC)
        when = now - (wall_now - at.timestamp())
        if decision.level == model_level.LEVEL:
            up = decision.action in model_level.UP_ACTIONS
            targets = [decision.target]
            worker, to_variant = decision.inputs.get("worker"), decision.inputs.get("to_variant")
            if worker and to_variant:  # an upgrade or downgrade also acted on the instance it loaded
                targets.append(instance_target(worker, to_variant))
            for target in targets:
                model_last[target] = when
                if up:
                    model_up[target] = when
            used += 1
        elif decision.level == vm_level.LEVEL and decision.action == "worker_started":
            vm_started[decision.target] = when  # how an add_worker ended: not an action of its own
        elif decision.level == vm_level.LEVEL and decision.action in VM_ACTIONS:
            drain = f"drain:{decision.target}"
            if decision.action == "remove_worker":
                vm_last.pop(drain, None)
            else:
                vm_last[vm_level.CLUSTER] = when
                if decision.action in vm_level.UP_ACTIONS:
                    vm_up[vm_level.CLUSTER] = when
                if decision.action == "drain_worker":
                    vm_last[drain] = when
                elif decision.action == "undrain":
                    vm_last.pop(drain, None)
            used += 1
    return Handover(
        model=History(last_action=model_last, last_up=model_up),
        vm=History(last_action=vm_last, last_up=vm_up, started=vm_started),
        previous_leader=previous,
        decisions_used=used,
    )
