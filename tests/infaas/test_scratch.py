"""Scratch space: every temporary folder lives under the home, and the sweep removes what killed processes left."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from infaas.config import Settings
from infaas.scratch import STALE_MARGIN_S, make_scratch, stale_after_s, sweep_scratch
from infaas.services import build_services
from tests.factories import wait_for


def _age(path: Path, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def test_the_sweep_removes_old_files_and_folders_and_keeps_young_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_dir, old_file = tmp_path / "build-old", tmp_path / "upload-old"
    young_dir, young_file = tmp_path / "build-young", tmp_path / "upload-young"
    (old_dir / "inner").mkdir(parents=True)
    (old_dir / "inner" / "model.onnx").write_bytes(b"x")
    old_file.write_bytes(b"x")
    for path in (old_dir / "inner" / "model.onnx", old_dir / "inner", old_dir, old_file):
        _age(path, 100)
    young_dir.mkdir()
    young_file.write_bytes(b"x")
    # An old folder whose content was written just now is still in use (a long upload or build step).
    busy = tmp_path / "register-busy"
    busy.mkdir()
    (busy / "model.onnx").write_bytes(b"x")
    _age(busy, 100)

    with caplog.at_level(logging.WARNING, logger="infaas.scratch"):
        removed = sweep_scratch(tmp_path, older_than_s=50)

    assert sorted(removed) == [old_dir, old_file]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build-young", "register-busy", "upload-young"]
    assert sum("removed scratch entry" in r.getMessage() for r in caplog.records) == 2


def test_a_missing_scratch_folder_is_nothing_to_sweep(tmp_path: Path) -> None:
    assert sweep_scratch(tmp_path / "absent", older_than_s=0) == []


def test_no_live_step_outlasts_the_bound(settings: Settings) -> None:
    settings.build_timeout_s, settings.check_timeout_s, settings.orphan_grace_s = 900.0, 30.0, 600.0
    assert stale_after_s(settings) == 900.0 + STALE_MARGIN_S
    settings.orphan_grace_s = 1200.0
    assert stale_after_s(settings) == 1200.0 + STALE_MARGIN_S


def test_the_start_up_sweep_removes_a_killed_processs_folder_and_keeps_a_live_ones(settings: Settings) -> None:
    stale = make_scratch(settings, "register-")
    (stale / "model.onnx").write_bytes(b"x" * 1000)
    for path in (stale / "model.onnx", stale):
        _age(path, stale_after_s(settings) + 1)
    fresh = make_scratch(settings, "build-")
    assert stale.parent == fresh.parent == settings.scratch_dir

    services = build_services(settings)  # its maintenance thread sweeps at start
    try:
        assert wait_for(lambda: not stale.exists(), 10)
        assert fresh.is_dir()
    finally:
        services.close()
