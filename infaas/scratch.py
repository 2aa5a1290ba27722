"""The one place that owns scratch space: every temporary folder of infaas lives under ``<home>/scratch``.

Uploads being checked (up to ``INFAAS_MAX_UPLOAD_MB`` each), job inputs, offline-job results on their way
to the store, variant builds and the sandbox children's ``TMPDIR`` all need a folder for a while. Each
removes its own when it finishes, but a process killed with SIGKILL removes nothing: a kill -9 harness
found 12-26 such folders left in the system temp folder per 10 kills, where nothing ever looked again.
Under the home, the start-up and periodic sweep (``infaas.services``) finds and removes them.

Several processes on one host may share a home (a front-end and a Celery worker, or two front-ends), so
the sweep cannot know which entries belong to a dead process: it removes only entries in which nothing
was modified for longer than any live step can go without writing (``stale_after_s``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from infaas.config import Settings

log = logging.getLogger(__name__)

# Added to the longest bounded step: a build writes each step's output into its folder, then profiles it
# before the next step starts; the margin covers that gap and coarse file-system timestamps.
STALE_MARGIN_S = 120.0


def scratch_dir(settings: Settings) -> Path:
    """The home's scratch folder, created when missing (a home made before it existed has none)."""
    root = settings.scratch_dir
    root.mkdir(parents=True, exist_ok=True)
    return root


def make_scratch(settings: Settings, prefix: str) -> Path:
    """A new empty folder under the home's scratch folder; the caller removes it when done."""
    return Path(tempfile.mkdtemp(dir=scratch_dir(settings), prefix=prefix))


def stale_after_s(settings: Settings) -> float:
    """How long nothing in a scratch entry may change before the sweep takes it for a dead process's.

    A live owner writes into its folder at least once per bounded step: an upload writes as it receives,
    a registration check is stopped at ``INFAAS_CHECK_TIMEOUT_S``, each build step at
    ``INFAAS_BUILD_TIMEOUT_S``, and the orphan grace (``INFAAS_ORPHAN_GRACE_S``) is already the bound the
    store's sweep trusts for a live registration. An entry quiet for longer than all of them plus a margin
    can belong to no live process.
    """
    return max(settings.orphan_grace_s, settings.build_timeout_s, settings.check_timeout_s) + STALE_MARGIN_S


def _last_modified(entry: Path) -> float:
    """The newest modification time in ``entry`` (itself, and everything under it when a folder)."""
    newest = entry.lstat().st_mtime
    if entry.is_dir() and not entry.is_symlink():
        for path in entry.rglob("*"):
            try:
                newest = max(newest, path.lstat().st_mtime)
            except FileNotFoundError:  # its owner removed it meanwhile
                continue
    return newest


def sweep_scratch(root: Path, older_than_s: float, now: float | None = None) -> list[Path]:
    """Remove every entry of ``root`` in which nothing changed for ``older_than_s``; logs and returns them."""
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    removed: list[Path] = []
    for entry in sorted(root.iterdir()):
        try:
            age_s = now - _last_modified(entry)
        except FileNotFoundError:  # its owner removed it meanwhile
            continue
        if age_s <= older_than_s:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        log.warning("removed scratch entry %s: untouched for %.0f s, its process is gone", entry, age_s)
        removed.append(entry)
    return removed
