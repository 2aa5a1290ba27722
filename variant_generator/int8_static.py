"""INT8 with static activation scales (QDQ), calibrated on the registration's validation inputs.

Calibration uses only the rows ``ValidationSet.split`` sets aside (``BuildContext.validation``); every variant is
scored on the others, so this one is never graded on the rows its scales were fitted to.

Static INT8 made a CNN 2.2-2.9x faster on this kind of host. Per-channel weights are tried first (more
accurate for convolutions); ``quantize_static(per_channel=True)`` crashes in onnxruntime 1.32 on graphs
where MatMul+Add were fused into Gemm, so any failure there is retried per-tensor.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

from infaas.runtime import Skip
from variant_generator.accuracy import CALIBRATION_SHARE, ValidationSet, fixed_batch
from variant_generator.base import BuildContext, VariantGenerator
from variant_generator.int8_dynamic import int8_notes, quantizable_source, require_quantized

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 16


class ValidationReader(CalibrationDataReader):
    """Feeds the calibration rows in batches the model accepts."""

    def __init__(self, data: ValidationSet, batch: int, pinned: bool) -> None:
        rows = data.rows
        starts = range(0, rows, batch)
        self._batches = iter([data.batch(batch if pinned else min(batch, rows - s), s) for s in starts])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


class Int8Static(VariantGenerator):
    """QDQ ``quantize_static`` with MinMax calibration; skipped when there is no validation set."""

    name = "cpu-int8-static"
    kind = "cpu-int8-static"
    precision = "int8"

    def build(self, ctx: BuildContext) -> Path:
        if ctx.validation is None:
            raise Skip(
                "no validation inputs to calibrate on: upload validation.npz with at least "
                f"{CALIBRATION_SHARE} rows (calibration rows are held out from scoring)"
            )
        source, out = quantizable_source(ctx), self.output_path(ctx)
        pinned = fixed_batch(ctx.model)
        batch = pinned or min(CALIBRATION_BATCH, max(1, ctx.model.max_batch))
        try:
            self._quantize(source, out, ctx.validation, batch, pinned is not None, per_channel=True)
        except Exception as exc:
            log.info("per-channel static quantization failed for %s (%s); retrying per-tensor", ctx.model.name, exc)
            self._quantize(source, out, ctx.validation, batch, pinned is not None, per_channel=False)
        return require_quantized(
            out,
            ctx.model,
            "static INT8",
            "the rest are operators ONNX Runtime does not quantize statically, so the variant would run in float",
        )

    def notes(self, artifact: Path, ctx: BuildContext) -> str | None:
        return int8_notes(artifact, ctx.model)

    @staticmethod
    def _quantize(source: Path, out: Path, data: ValidationSet, batch: int, pinned: bool, *, per_channel: bool) -> None:
        quantize_static(
            source,
            out,
            ValidationReader(data, batch, pinned),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
        )
