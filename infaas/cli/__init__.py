"""The ``infaas`` command line (Typer). Server commands run locally; the rest talk to ``INFAAS_URL``."""

from __future__ import annotations

import sys

from infaas.cli.main import app

MISSING_ONNXRUNTIME = "onnxruntime is not installed: pip install 'infaas[cpu]' (or 'infaas[gpu]' on a CUDA host)"


def main() -> None:
    """The ``infaas`` console script and ``python -m infaas``.

    ONNX Runtime is an extra, not a dependency, because its CPU and GPU builds ship the same module and
    must never be installed together; so a plain ``pip install infaas`` lacks it, and every command that
    needs it would otherwise end in an import traceback. This says which extra to install instead.
    """
    try:
        app()
    except ModuleNotFoundError as error:
        if error.name != "onnxruntime":
            raise
        print(MISSING_ONNXRUNTIME, file=sys.stderr)
        sys.exit(1)


__all__ = ["MISSING_ONNXRUNTIME", "app", "main"]
