"""The sandbox: a child killed past its time limit, refused allocations past its memory limit, temporary folder
removed either way; and the registration check run in it against models that only show their cost when run."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from infaas.errors import Conflict
from infaas.onnx_check import ModelCheckError, check_model_bytes, check_model_isolated
from infaas.sandbox import LimitExceeded, Limits, SandboxCrashed, run_limited
from tests.factories import mlp_model, wait_for
from tests.infaas import runtime_bombs, sandboxed
from tests.infaas.sandboxed import add, allocate, fail, fail_oddly, refuse, segfault, spin_forever

ROOT = Path(__file__).resolve().parents[2]
QUICK = Limits(wall_s=5.0, memory_mb=256.0, time_setting="TIME_SETTING", memory_setting="MEMORY_SETTING")
# Short, for the models that must be stopped; models that must pass get all the time a loaded machine needs.
CHECK = Limits(
    wall_s=1.5, memory_mb=256.0, time_setting="INFAAS_CHECK_TIMEOUT_S", memory_setting="INFAAS_CHECK_MEMORY_MB"
)
UNHURRIED = Limits(wall_s=120.0, memory_mb=256.0)


def _grew_mb(peak_before_kb: int) -> float:
    """How far this process's peak resident set grew since ``peak_before_kb`` (``ru_maxrss``, in KB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kb) / 1024


# -- the sandbox ---------------------------------------------------------------------------------------------


def test_results_and_exceptions_come_back() -> None:
    assert run_limited(add, 2, 3, limits=QUICK, what="adding") == 5
    with pytest.raises(Conflict, match="taken"):
        run_limited(refuse, limits=QUICK, what="refusing")
    with pytest.raises(ValueError, match="broken"):
        run_limited(fail, limits=QUICK, what="failing")
    with pytest.raises(SandboxCrashed, match="failing failed: Unpicklable: odd"):
        run_limited(fail_oddly, limits=QUICK, what="failing")


def test_past_the_time_limit_the_child_is_killed_and_its_folder_removed(tmp_path: Path) -> None:
    report = tmp_path / "child"
    started = time.monotonic()
    with pytest.raises(LimitExceeded, match=r"spinning did not finish within 1 s \(TIME_SETTING\)") as refused:
        run_limited(
            spin_forever,
            report,
            limits=Limits(wall_s=1.0, memory_mb=64.0, time_setting="TIME_SETTING", scratch=tmp_path),
            what="spinning",
        )
    assert refused.value.status == 422
    assert time.monotonic() - started < 3.0
    pid, scratch = report.read_text().split()
    assert not psutil.pid_exists(int(pid)) or psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE
    assert not Path(scratch).exists()  # the child's TMPDIR went with it
    assert Path(scratch).parent.name.startswith("infaas-sandbox-")
    assert Path(scratch).parent.parent == tmp_path  # under the scratch folder the start-up sweep looks in


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_child_dies_with_its_killed_parent(tmp_path: Path) -> None:
    """A server killed with SIGKILL cannot kill its check: the child must not spin on (it did, for good)."""
    report = tmp_path / "child"
    script = (
        "from pathlib import Path\n"
        "from infaas.sandbox import Limits, run_limited\n"
        "from tests.infaas.sandboxed import spin_forever\n"
        f"run_limited(spin_forever, Path({str(report)!r}), limits=Limits(wall_s=600, memory_mb=64), what='spinning')\n"
    )
    scratch = tmp_path / "tmp"  # a parent killed with SIGKILL cannot remove its child's folder: keep it here
    scratch.mkdir()
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "TMPDIR": str(scratch)})
    try:
        assert wait_for(lambda: report.exists() and report.read_text(), 30), "the child never started"
        pid = int(report.read_text().split()[0])
        assert _running(pid)
    finally:
        parent.kill()
        parent.wait(10)
    assert wait_for(lambda: not _running(pid), 5), f"child {pid} outlived its killed parent"


def test_a_daemonic_worker_can_run_sandboxed_calls() -> None:
    """Celery's prefork workers, where builds run, are daemonic: ``multiprocessing`` refuses them children."""
    billiard = pytest.importorskip("billiard")
    answers = billiard.Queue()
    worker = billiard.Process(target=sandboxed.add_in_a_sandbox, args=(answers,), daemon=True)
    worker.start()
    try:
        assert answers.get(timeout=60) == 5
    finally:
        worker.join(10)


def test_allocations_past_the_memory_limit_fail_in_the_child() -> None:
    assert run_limited(allocate, 64, limits=QUICK, what="allocating") == 64 * 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(
        LimitExceeded, match=r"allocating needed more memory than its limit of 256 MB \(MEMORY_SETTING\)"
    ):
        run_limited(allocate, 1024, limits=QUICK, what="allocating")
    assert _grew_mb(before) < 50  # this process allocated nothing


def test_without_a_memory_limit_only_time_is_bounded() -> None:
    """For GPU work: CUDA reserves more address space than any host-memory limit would allow."""
    unbounded = Limits(wall_s=60.0, memory_mb=None)
    assert unbounded.memory_limit == "none"
    assert run_limited(allocate, 300, limits=unbounded, what="allocating") == 300 * 2**20


def test_a_child_that_dies_is_reported() -> None:
    with pytest.raises(SandboxCrashed, match=r"crashing crashed \(signal SIGSEGV\)"):
        run_limited(segfault, limits=QUICK, what="crashing")


# -- the registration check in the sandbox -------------------------------------------------------------------


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    return path


def test_an_ordinary_model_passes_as_it_does_unbounded(tmp_path: Path) -> None:
    data = mlp_model().SerializeToString()
    assert check_model_isolated(_write(tmp_path, data), UNHURRIED) == check_model_bytes(data)


@pytest.mark.parametrize(
    "bomb",
    [
        pytest.param(lambda: runtime_bombs.loop_with_trip_count(runtime_bombs.TRIP_COUNT_2_62), id="loop-2^62"),
        pytest.param(lambda: runtime_bombs.loop_with_trip_count(runtime_bombs.TRIP_COUNT_10_12), id="loop-10^12"),
        pytest.param(runtime_bombs.loop_driven_by_condition, id="loop-by-condition"),
    ],
)
def test_endless_loops_are_stopped_at_the_time_limit(tmp_path: Path, bomb) -> None:  # noqa: ANN001
    path = _write(tmp_path, bomb())
    assert path.stat().st_size < 400
    started = time.monotonic()
    with pytest.raises(LimitExceeded, match=r"did not finish within 1\.5 s \(INFAAS_CHECK_TIMEOUT_S\)"):
        check_model_isolated(path, CHECK)
    assert time.monotonic() - started < 4.0


@pytest.mark.parametrize("build", [runtime_bombs.constant_of_shape_at_run_time, runtime_bombs.expand_at_run_time])
def test_shapes_computed_at_run_time_are_stopped_at_the_memory_limit(tmp_path: Path, build) -> None:  # noqa: ANN001
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(LimitExceeded, match=r"needed more memory than its limit of 256 MB \(INFAAS_CHECK_MEMORY_MB\)"):
        check_model_isolated(_write(tmp_path, build(20000)), CHECK)  # float32 [20000, 20000]: 1.6 GB
    assert _grew_mb(before) < 50
    # The same graph asking for what fits is a fine model: the limit, not the pattern, refuses.
    assert check_model_isolated(_write(tmp_path, build(100)), UNHURRIED).outputs[0].name == "y"


def test_static_checks_still_answer_first(tmp_path: Path) -> None:
    with pytest.raises(ModelCheckError, match="not an ONNX model"):
        check_model_isolated(_write(tmp_path, b"not a model"), CHECK)
