"""Model store on a local (or shared, mounted) folder.

Writes are atomic and durable: the bytes go to a temporary file in the target's folder (so the rename
never crosses a file system), which is flushed and fsynced, then ``os.replace``d onto the key, and the
folder is fsynced so the rename itself survives a power cut. A reader therefore sees the old object or
the whole new one, never a half-written file; a process killed mid-write leaves only a ``.tmp-`` file,
which ``list`` never shows and ``remove_partial_writes`` deletes once it is older than the grace period.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from infaas.model_store.base import ModelStore, ObjectNotFound, check_key

TEMP_PREFIX = ".tmp-"


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalModelStore(ModelStore):
    """Keys map to files under ``root``; writes are atomic (temp file + fsync + rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:
            raise ValueError(f"invalid store key {key!r}")
        return path

    def _write_atomic(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_folder(target.parent)

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as source:
            self._write_atomic(key, lambda handle: shutil.copyfileobj(source, handle, 1 << 20))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write_atomic(key, lambda handle: handle.write(data))

    def get_bytes(self, key: str) -> bytes:
        return self.local_path(key).read_bytes()

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _files(self, prefix: str) -> list[Path]:
        base = self.root / prefix.rstrip("/") if prefix else self.root
        if not base.is_dir():
            return []
        return [p for p in base.rglob("*") if p.is_file() and not p.name.startswith(TEMP_PREFIX)]

    def list(self, prefix: str) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self._files(prefix))

    def list_modified(self, prefix: str) -> dict[str, datetime]:
        modified: dict[str, datetime] = {}
        for path in self._files(prefix):
            try:
                modified[str(path.relative_to(self.root))] = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            except FileNotFoundError:  # deleted while listing
                continue
        return dict(sorted(modified.items()))

    def remove_partial_writes(self, older_than: datetime) -> list[str]:
        removed: list[str] = []
        for path in self.root.rglob(f"{TEMP_PREFIX}*"):
            try:
                if path.is_file() and datetime.fromtimestamp(path.stat().st_mtime, UTC) < older_than:
                    path.unlink()
                    removed.append(str(path.relative_to(self.root)))
            except FileNotFoundError:  # its writer finished (renamed it) or another sweep took it
                continue
        return sorted(removed)

    def delete_prefix(self, prefix: str) -> int:
        check_key(prefix.rstrip("/"))
        base = self._path(prefix.rstrip("/"))
        if base.is_file():
            base.unlink(missing_ok=True)
            return 1
        if not base.is_dir():
            return 0
        count = sum(1 for p in base.rglob("*") if p.is_file())
        # Idempotent under a concurrent or repeated delete (a resumed deletion, the orphan sweep).
        shutil.rmtree(base, onerror=_ignore_missing)
        return count

    def uri(self, key: str) -> str:
        return str(self._path(key))


def _ignore_missing(_function: object, _path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
    """``rmtree`` error handler: something already gone is fine, anything else is raised."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]
