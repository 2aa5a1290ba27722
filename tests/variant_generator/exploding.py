"""A variant generator that fails on purpose, importable on its own.

Builds run each generator in a sandboxed child (``infaas.sandbox``), which unpickles the generator by
module and class name: a failing stand-in must live in a module the child can import cheaply, not in a
test's closure.
"""

from __future__ import annotations

from pathlib import Path

from variant_generator.base import BuildContext, VariantGenerator


class Exploding(VariantGenerator):
    """Stands in for a registered generator (same names) and fails as a broken quantizer would."""

    def __init__(self, real: VariantGenerator, message: str) -> None:
        super().__init__(real.threads)
        self.name, self.kind, self.precision, self.message = real.name, real.kind, real.precision, message

    def build(self, ctx: BuildContext) -> Path:
        raise RuntimeError(self.message)
