"""The model store interface."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from datetime import datetime
from pathlib import Path

from infaas.errors import NotFound

_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*)*$")


class ObjectNotFound(NotFound, KeyError):
    """The key does not exist in the store (a 404 if it reaches a caller: e.g. a job whose result is gone)."""

    code = "object_not_found"

    def __init__(self, key: str) -> None:
        super().__init__(f"{key!r} is not in the model store")
        self.key = key


def check_key(key: str) -> str:
    """Reject keys that could escape the store (``..``, absolute paths, odd characters)."""
    if not _SAFE_KEY.fullmatch(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ValueError(f"invalid store key {key!r}")
    return key


class ModelStore(ABC):
    """Objects addressed by slash-separated keys such as ``models/resnet/model.onnx``."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Copy a local file into the store under ``key``."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read an object; raises ``ObjectNotFound``."""

    @abstractmethod
    def local_path(self, key: str) -> Path:
        """A local file holding the object (downloaded and cached for remote stores)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (a folder-like prefix ending in ``/``)."""

    @abstractmethod
    def list_modified(self, prefix: str) -> dict[str, datetime]:
        """Keys under ``prefix`` with when each was last written (timezone-aware UTC)."""

    @abstractmethod
    def remove_partial_writes(self, older_than: datetime) -> list[str]:
        """Remove what writes cut short by a crash left behind before ``older_than``; returns what went.

        A write is atomic (a reader sees the whole object or none), but a process killed mid-write can
        leave its unfinished part: a temporary file (local) or an incomplete multipart upload (S3).
        """

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many were deleted."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """A human-readable location of the object (shown to users)."""
