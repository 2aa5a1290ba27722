"""Functions the sandbox tests run in a child: in a module of their own, so that the child, which imports a
function's module to run it, starts in a fraction of a second (the test module imports far more)."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from infaas.errors import Conflict
from infaas.sandbox import Limits, run_limited


def add(a: int, b: int) -> int:
    return a + b


def refuse() -> None:
    raise Conflict("taken")


def fail() -> None:
    raise ValueError("broken")


class Unpicklable(Exception):
    def __init__(self, message: str, extra: object) -> None:  # pickle cannot rebuild it from args alone
        super().__init__(message)
        self.extra = extra


def fail_oddly() -> None:
    raise Unpicklable("odd", object())


def spin_forever(report: Path) -> None:
    """Record this process and its temporary folder, then never return."""
    scratch = Path(tempfile.mkdtemp())
    (scratch / "leftover").write_bytes(b"x")
    report.write_text(f"{os.getpid()} {scratch}")
    while True:
        pass


def allocate(megabytes: int) -> int:
    return int(np.ones(megabytes * 2**20, dtype=np.uint8).sum())


def segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def add_in_a_sandbox(answers: Any) -> None:
    """Run ``add`` through the sandbox and put the sum on ``answers`` (a worker process's queue)."""
    answers.put(run_limited(add, 2, 3, limits=Limits(wall_s=60.0, memory_mb=256.0), what="adding"))
