"""Runs one function on untrusted input in a child process that is killed past a time or memory limit.

Why a process: ONNX Runtime gives no way to stop a ``session.run`` from outside, and no per-session cap on
CPU memory. A 291-byte model (a ``Loop`` with trip count 2^62 around an ``Identity``) pinned a core of the
API process until it was killed -- SIGTERM did not stop it within 10 s -- and a shape computed at run time
(``ReduceMax → Cast → Add → ConstantOfShape``) allocated 1.6 GB in it. In a child, the parent waits on a
pipe for at most ``wall_s`` and then SIGKILLs it, and ``RLIMIT_AS`` makes the child's allocations fail
(ONNX Runtime reports "Failed to allocate memory", numpy raises ``MemoryError``) rather than the host's.

Children come from a ``forkserver`` that imports the first function's module (onnx, ONNX Runtime) once:
a fork from it takes about 20 ms where a ``spawn`` re-imports them (0.3-0.75 s), and unlike a plain
``fork`` it never copies the server's threads or locks. What a child needs beyond that (the variant
generators, the profiler) it imports itself, in 0.03-0.1 s. Like every ``multiprocessing`` child it also
re-runs the main *script*'s imports: nothing under ``python -m infaas``, about 0.3 s under ``pytest``
and 0.5 s under the ``infaas`` console script (Python 3.11's fork server cannot preload ``__main__``).

The memory limit is address space *beyond* what the child holds when it starts (about 220 MB of imports,
measured from ``/proc/self/status``), so it means the same thing whatever was imported. A server killed
before it could kill its child takes the child with it (``_die_with_parent``); ``RLIMIT_CPU`` (the
wall-clock limit, rounded up, plus one second) is the backstop.

Each child gets a fresh temporary folder (``TMPDIR``) that the parent removes, whatever happened to the
child; only a parent killed with SIGKILL leaves it behind, as it does its own.
"""

from __future__ import annotations

import fcntl
import math
import multiprocessing
import os
import pickle
import resource
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from infaas.errors import Unprocessable

T = TypeVar("T")

# How ONNX Runtime words an allocation refused under ``RLIMIT_AS`` (its arena, or std::bad_alloc in a kernel).
ALLOCATION_FAILURES = ("Failed to allocate memory", "bad_alloc", "Available memory of")


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
    """How long (wall clock) and how much more memory (address space) one sandboxed call may take."""

    wall_s: float
    memory_mb: float
    time_setting: str = ""  # the setting that raises each limit, named in the refusal
    memory_setting: str = ""

    @property
    def time_limit(self) -> str:
        """The time limit as a message says it: ``30 s (INFAAS_CHECK_TIMEOUT_S)``."""
        return f"{self.wall_s:g} s" + (f" ({self.time_setting})" if self.time_setting else "")

    @property
    def memory_limit(self) -> str:
        """The memory limit as a message says it: ``1024 MB (INFAAS_CHECK_MEMORY_MB)``."""
        return f"{self.memory_mb:g} MB" + (f" ({self.memory_setting})" if self.memory_setting else "")


def _address_space() -> int:
    """This process's virtual memory size in bytes (``VmSize``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _child(
    reply: Connection,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    limits: Limits,
    tmp: str,
) -> None:
    _die_with_parent()
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = tmp
    memory = _address_space() + int(limits.memory_mb * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = math.ceil(limits.wall_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    try:
        outcome: tuple[str, Any] = ("ok", fn(*args, **kwargs))
    except Exception as exc:  # raised again in the parent, as if the call had run there
        if is_allocation_failure(exc):
            outcome = ("memory", str(exc))
        else:
            outcome = ("raised", exc if _pickles(exc) else f"{type(exc).__name__}: {exc}")
    except BaseException as exc:  # SystemExit, KeyboardInterrupt: reported, never raised in the parent
        outcome = ("raised", f"{type(exc).__name__}: {exc}")
    reply.send(outcome)
    reply.close()


def _die_with_parent() -> None:
    """Have the kernel end this child (SIGIO, whose default action terminates) when the process that asked
    for it dies: a server killed with SIGKILL cannot kill its check, which would otherwise spin on for good.

    The fork server cannot do it (it lives as long as any of its children) and ``PR_SET_PDEATHSIG`` would
    watch the fork server; the requester's end of ``parent_process().sentinel`` closes when it dies, and
    ``O_ASYNC`` turns that EOF into the signal.
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    fcntl.fcntl(parent.sentinel, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(parent.sentinel, fcntl.F_SETFL, fcntl.fcntl(parent.sentinel, fcntl.F_GETFL) | os.O_ASYNC)
    if not parent.is_alive():  # gone before the signal was armed
        os._exit(1)


def _pickles(exc: Exception) -> bool:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return False
    return True


def _context(fn: Callable[..., Any]) -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    # Only read when the fork server starts (on the first call); later calls reuse the running server.
    context.set_forkserver_preload([fn.__module__])
    return context


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit status {exitcode}"


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
    context = _context(fn)
    tmp = tempfile.mkdtemp(prefix="infaas-sandbox-")
    receive, send = context.Pipe(duplex=False)
    try:
        process = context.Process(target=_child, args=(send, fn, args, kwargs, limits, tmp), daemon=True)
        process.start()
        send.close()
        try:
            if not receive.poll(limits.wall_s):
                raise LimitExceeded(f"{what} did not finish within {limits.time_limit} and was stopped")
            try:
                outcome: tuple[str, Any] | None = receive.recv()
            except EOFError:  # the child died without answering (or its result did not pickle)
                outcome = None
        finally:
            if process.is_alive():
                process.kill()
            process.join()
            exitcode = process.exitcode
            process.close()
    finally:
        send.close()
        receive.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if outcome is None:
        raise SandboxCrashed(
            f"{what} crashed ({_death(exitcode)}), most likely at its memory limit of {limits.memory_limit}"
        )
    kind, value = outcome
    if kind == "ok":
        return value
    if kind == "memory":
        raise LimitExceeded(f"{what} needed more memory than its limit of {limits.memory_limit} and was stopped")
    if isinstance(value, Exception):
        raise value
    raise SandboxCrashed(f"{what} failed: {value}")
