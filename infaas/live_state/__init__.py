"""Live state: workers, loaded instances, queue depths and recent query statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infaas.live_state.base import (
    InstanceState,
    LiveSnapshot,
    LiveState,
    QueryRecord,
    Rejection,
    RejectionStats,
    VariantStats,
    WorkerState,
)
from infaas.live_state.memory import MemoryLiveState

if TYPE_CHECKING:
    from infaas.config import Settings


def make_live_state(settings: Settings) -> LiveState:
    """Redis when ``INFAAS_REDIS_URL`` is set (shared by every process), otherwise in this process."""
    if settings.redis_url:
        from infaas.live_state.redis import RedisLiveState

        return RedisLiveState.from_settings(settings)
    return MemoryLiveState()


__all__ = [
    "InstanceState",
    "LiveSnapshot",
    "LiveState",
    "MemoryLiveState",
    "QueryRecord",
    "Rejection",
    "RejectionStats",
    "VariantStats",
    "WorkerState",
    "make_live_state",
]
