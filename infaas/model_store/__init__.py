"""Model store: where model files, validation sets, variant artifacts and job results live.

One small interface, two implementations: a local folder (embedded default, or a shared mount) and S3.
"""

from __future__ import annotations

from infaas.model_store.base import ModelStore, ObjectNotFound
from infaas.model_store.local import LocalModelStore


def open_model_store(location: str, cache_dir: str | None = None) -> ModelStore:
    """Open the store named by ``location``: ``s3://bucket/prefix`` or a folder path."""
    if location.startswith("s3://"):
        from infaas.model_store.s3 import S3ModelStore

        return S3ModelStore.from_url(location, cache_dir=cache_dir)
    return LocalModelStore(location)


__all__ = ["LocalModelStore", "ModelStore", "ObjectNotFound", "open_model_store"]
