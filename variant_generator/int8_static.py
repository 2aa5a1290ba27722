"""INT8 with static activation scales (QDQ, per-channel weights), the configuration chosen by measurement.

``int8_search`` tries the quantization configurations on the calibration rows (``BuildContext.validation``; every
variant is scored on the others, so none is graded on the rows its scales or its configuration were chosen on)
and keeps those on the speed-fidelity front. ``cpu-int8-static`` is the most faithful kept configuration,
``cpu-int8-static-fast`` the fastest one, skipped when it is the same. Both stay batch-invariant: their scales are
fixed at build time, so a row's answer does not depend on the rows batched with it (unlike ``cpu-int8-dynamic``).
"""

from __future__ import annotations

from pathlib import Path

from infaas.runtime import Skip
from variant_generator import int8_search
from variant_generator.accuracy import CALIBRATION_SHARE
from variant_generator.base import BuildContext, VariantGenerator
from variant_generator.int8_dynamic import int8_notes, quantizable_source

# The fast slot is a variant only when it is this much faster at the batcher's batch than cpu-int8-static: with a
# 10% margin, rebuilding the same small MLP twice on a loaded host still kept it once and not the other time.
FAST_GAIN = 1.5


class Int8Static(VariantGenerator):
    """The most faithful configuration on the static INT8 front; skipped when there is no validation set."""

    name = "cpu-int8-static"
    kind = "cpu-int8-static"
    precision = "int8"

    def _pick(self, result: int8_search.Search) -> int8_search.Outcome:
        front = result.front
        if not front:
            raise Skip(f"no static INT8 configuration could be made: {result.summary()}")
        return front[0]

    def build(self, ctx: BuildContext) -> Path:
        if ctx.validation is None:
            raise Skip(
                "no validation inputs to calibrate on: upload validation.npz with at least "
                f"{CALIBRATION_SHARE} rows (calibration rows are held out from scoring)"
            )
        quantizable_source(ctx)  # raises Skip for graphs ONNX Runtime cannot quantize (ai.onnx.ml only)
        return int8_search.take(ctx, self._pick(int8_search.search(ctx)), self.output_path(ctx))

    def notes(self, artifact: Path, ctx: BuildContext) -> str | None:
        result = int8_search.search(ctx)  # the build's record (kept under ctx.workdir), not a new search
        chosen = self._pick(result)
        return f"{int8_notes(artifact, ctx.model)}; chose {chosen.describe()}; {result.summary()}"


class Int8StaticFast(Int8Static):
    """The fastest configuration on the static INT8 front, when it is not also the most faithful one."""

    name = "cpu-int8-static-fast"
    kind = "cpu-int8-static"

    def precheck(self, ctx: BuildContext) -> None:
        recorded = int8_search.recorded(ctx)  # cpu-int8-static's search, when it ran in this build
        if recorded is not None:
            self._pick(recorded)

    def _pick(self, result: int8_search.Search) -> int8_search.Outcome:
        faithful = super()._pick(result)
        fastest = min(result.front, key=lambda o: (o.ms_batch or 0.0, o.ms_batch1 or 0.0))
        if fastest is faithful or (fastest.ms_batch or 0.0) * FAST_GAIN > (faithful.ms_batch or 0.0):
            raise Skip(int8_search.sole_front_reason(result))
        return fastest
