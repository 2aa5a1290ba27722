"""The real Redis server of this machine: its URL, whether it answers, and cleaning up a test's keys."""

from __future__ import annotations

import redis

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_up() -> bool:
    """Whether Redis answers: tests that need it skip, rather than fail, on a machine without it."""
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def delete_keys(prefix: str) -> None:
    """Delete every key under ``prefix`` (a test's unique key prefix), so tests leave Redis as they found it."""
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()
