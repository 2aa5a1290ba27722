"""Autoscaling: model-level (replicas and variants per worker) and VM-level (workers), with decisions recorded.

``Autoscaler(services, engine)`` runs both; the policies themselves are pure functions in
``model_level`` and ``vm_level`` over the values in ``policy_types``.
"""

from __future__ import annotations

from autoscaler.loop import Autoscaler
from autoscaler.policy_types import Action, ClusterView, History, PolicyConfig

__all__ = ["Action", "Autoscaler", "ClusterView", "History", "PolicyConfig"]
