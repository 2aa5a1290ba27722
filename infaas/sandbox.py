"""Runs one function on untrusted input in a child process that is killed past a time or memory limit.

Why a process: ONNX Runtime gives no way to stop a ``session.run`` from outside, and no per-session cap on
CPU memory. A 291-byte model (a ``Loop`` with trip count 2^62 around an ``Identity``) pinned a core of the
API process until it was killed -- SIGTERM did not stop it within 10 s -- and a shape computed at run time
(``ReduceMax → Cast → Add → ConstantOfShape``) allocated 1.6 GB in it. In a child, the parent waits for at
most ``wall_s`` and then SIGKILLs it, and ``RLIMIT_AS`` makes the child's allocations fail (ONNX Runtime
reports "Failed to allocate memory", numpy raises ``MemoryError``) rather than the host's.

Why a fresh interpreter (``subprocess``) rather than ``multiprocessing``: a Celery prefork worker, where
variant builds run, is a daemonic process that ``multiprocessing`` refuses children ("daemonic processes
are not allowed to have children"; in billiard's workers even its fork server cannot pickle the worker's
authentication key), and a ``multiprocessing`` child re-runs the parent's main script (0.5 s of imports
under the ``infaas`` console script). A fresh ``python`` imports only the function's module: 0.3 s for
the profiler or a generator, 0.65 s for ``infaas.onnx_check`` (measured cold, unloaded two-core host).
The request and the answer are pickles over its stdin and stdout; what the function prints goes to
stderr.

The memory limit is address space *beyond* what the child holds once it has imported what it runs (about
220 MB, measured from ``/proc/self/status``), so it means the same thing whatever was imported. The child
asks the kernel for SIGKILL when the thread that started it goes (``PR_SET_PDEATHSIG``), so a server
killed before it could kill its child takes the child with it; ``RLIMIT_CPU`` (the wall-clock limit,
rounded up, plus one second) is the backstop.

Each child gets a fresh temporary folder (``TMPDIR``; its working folder stays the parent's, so relative
paths such as a relative ``INFAAS_HOME`` mean the same) that the parent removes, whatever happened to the
child; only a parent killed with SIGKILL leaves it behind, as it does its own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from infaas.errors import Unprocessable

T = TypeVar("T")

# How ONNX Runtime words an allocation refused under ``RLIMIT_AS`` (its arena, or std::bad_alloc in a kernel).
ALLOCATION_FAILURES = ("Failed to allocate memory", "bad_alloc", "Available memory of")
_CHILD = "from infaas.sandbox import serve_child; serve_child()"
_PARENT_PID = "INFAAS_SANDBOX_PARENT"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def is_allocation_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a refused allocation: numpy's ``MemoryError`` or ONNX Runtime's wording of one."""
    return isinstance(exc, MemoryError) or any(marker in str(exc) for marker in ALLOCATION_FAILURES)


class LimitExceeded(Unprocessable):
    """The work was stopped at a limit; the message names the limit and the setting that raises it."""

    code = "limit_exceeded"


class SandboxCrashed(Unprocessable):
    """The child died without answering (a signal, or a failure the function did not report)."""

    code = "sandbox_crashed"


@dataclass(frozen=True)
class Limits:
    """How long (wall clock) and how much more memory (address space) one sandboxed call may take.

    ``memory_mb=None`` bounds time only: for work on a GPU, because CUDA reserves virtual address ranges far
    beyond any host-memory limit (under ``ulimit -v`` of 16 GB, CUDA reports out of memory), so an
    address-space limit would refuse every GPU variant rather than the costly ones.
    """

    wall_s: float
    memory_mb: float | None
    time_setting: str = ""  # the setting that raises each limit, named in the refusal
    memory_setting: str = ""
    scratch: Path | None = None  # where the child's TMPDIR is made (the home's scratch folder); None: system temp

    @property
    def time_limit(self) -> str:
        """The time limit as a message says it: ``30 s (INFAAS_CHECK_TIMEOUT_S)``."""
        return f"{self.wall_s:g} s" + (f" ({self.time_setting})" if self.time_setting else "")

    @property
    def memory_limit(self) -> str:
        """The memory limit as a message says it: ``1024 MB (INFAAS_CHECK_MEMORY_MB)``."""
        if self.memory_mb is None:
            return "none"
        return f"{self.memory_mb:g} MB" + (f" ({self.memory_setting})" if self.memory_setting else "")


# -- the child -------------------------------------------------------------------------------------------------


def _address_space() -> int:
    """This process's virtual memory size in bytes (``VmSize``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _die_with_parent() -> None:
    """SIGKILL this child when the thread that started it exits (a server killed with SIGKILL cannot kill it)."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is not None and hasattr(libc, "prctl"):
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(os.environ.get(_PARENT_PID, os.getppid())):  # it went before the request was armed
        os._exit(1)


def _pickles(exc: Exception) -> bool:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return False
    return True


def _run(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", fn(*args, **kwargs)
    except Exception as exc:  # raised again in the parent, as if the call had run there
        if is_allocation_failure(exc):
            return "memory", str(exc)
        return "raised", exc if _pickles(exc) else f"{type(exc).__name__}: {exc}"
    except BaseException as exc:  # SystemExit, KeyboardInterrupt: reported, never raised in the parent
        return "raised", f"{type(exc).__name__}: {exc}"


def _answer(out: IO[bytes], outcome: tuple[str, Any]) -> None:
    try:
        pickle.dump(outcome, out)
    except MemoryError as exc:  # a result too large to pickle within the limit
        pickle.dump(("memory", str(exc)), out)
    except Exception as exc:  # a result that does not pickle is a bug of the caller, said as such
        pickle.dump(("raised", f"the result of the call cannot be sent back: {exc}"), out)
    out.flush()


def serve_child() -> None:
    """The child's side: read ``(fn, args, kwargs, limits)`` from stdin, run it within the limits, answer on stdout."""
    _die_with_parent()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what the function prints goes to stderr, not into the answer
    try:
        fn, args, kwargs, limits = pickle.load(sys.stdin.buffer)  # imports fn's module: before the limits
    except Exception as exc:
        _answer(out, ("raised", f"the call could not be read: {type(exc).__name__}: {exc}"))
        return
    if limits.memory_mb is not None:
        memory = _address_space() + int(limits.memory_mb * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = math.ceil(limits.wall_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    _answer(out, _run(fn, args, kwargs))


# -- the parent ------------------------------------------------------------------------------------------------


def _death(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


def _environment(tmp: str) -> dict[str, str]:
    """The parent's environment and import path (tests import functions from ``tests``), ``TMPDIR`` its own."""
    path = [os.path.abspath(p) for p in sys.path if os.path.isdir(p or os.curdir)]  # "" is the working folder
    return {**os.environ, "TMPDIR": tmp, "PYTHONPATH": os.pathsep.join(path), _PARENT_PID: str(os.getpid())}


def run_limited(fn: Callable[..., T], *args: Any, limits: Limits, what: str, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a child process within ``limits``: its result, or the exception it raised.

    ``fn`` and its arguments and result must pickle (``fn`` by module and name). An exception that pickles
    is raised here as it was (so callers handle ``ModelCheckError`` or ``Skip`` as if the call had run in
    this process); one that does not is ``SandboxCrashed`` with its text. Past the time limit the child is
    killed and ``LimitExceeded`` names that limit; an allocation refused by the memory limit
    (``is_allocation_failure``) is ``LimitExceeded`` naming the memory limit; any other death is
    ``SandboxCrashed``. ``what`` starts each message, so it should say what was stopped and why it can be
    slow or large ("the model check (ONNX Runtime load and one inference on zeros)").
    """
    request = pickle.dumps((fn, args, kwargs, limits))
    tmp = tempfile.mkdtemp(dir=limits.scratch, prefix="infaas-sandbox-")
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_environment(tmp),
        )
        try:
            answer, _ = child.communicate(request, timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            raise LimitExceeded(f"{what} did not finish within {limits.time_limit} and was stopped") from None
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        kind, value = pickle.loads(answer)
    except Exception:  # no answer (or half of one): the child died
        raise SandboxCrashed(
            f"{what} crashed ({_death(child.returncode)}), most likely at its memory limit of {limits.memory_limit}"
        ) from None
    if kind == "ok":
        return value
    if kind == "memory":
        raise LimitExceeded(f"{what} needed more memory than its limit of {limits.memory_limit} and was stopped")
    if isinstance(value, Exception):
        raise value
    raise SandboxCrashed(f"{what} failed: {value}")
