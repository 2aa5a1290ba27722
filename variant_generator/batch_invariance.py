"""Whether a variant's answer to a row depends on the rows batched with it: measured, not assumed from its kind.

A worker batches concurrent queries into one run, which is only right when each row's answer is the one it would
get alone. Dynamic INT8 breaks this: it picks each activation's scale from the whole batch at run time. Measured
on all-MiniLM-L6-v2 (8 sentences run together vs one by one): FP32, the transformer-fused FP32 and static INT8
differed by at most 2.2e-7 of the largest output, dynamic INT8 by 0.14. ``RELATIVE_TOLERANCE`` sits at 1e-2, well
below the second and far above the first, leaving room for FP16 GPU kernels, which may pick another algorithm
at another batch size (a last-digit difference, not a different answer). A batch-dependent variant is
stored as such on its profiles (``ProfileInfo.batch_invariant``), so workers run its requests one at a time and the
selector prices its queue one row per round (``infaas.selector.ProfileCurve``).
"""

from __future__ import annotations

import numpy as np

from infaas.catalog import ModelInfo
from infaas.runtime import Session
from variant_generator.accuracy import ValidationSet, fixed_batch

CHECK_ROWS = 8
RELATIVE_TOLERANCE = 1e-2


def is_batch_invariant(session: Session, model: ModelInfo, data: ValidationSet) -> bool:
    """Whether the first output of up to ``CHECK_ROWS`` rows run together equals each row run alone (within
    ``RELATIVE_TOLERANCE`` of that row's largest output).

    A model whose batch is pinned by an input is never batched across queries, so it is invariant by construction;
    so is one with a single row to compare or non-numeric outputs (nothing to compare).
    """
    rows = min(CHECK_ROWS, max(1, model.max_batch), data.rows)
    if fixed_batch(model) is not None or rows < 2:
        return True
    together = np.asarray(session.run(None, data.batch(rows))[0])
    if together.dtype == object:
        return True
    alone = np.concatenate([np.asarray(session.run(None, data.batch(1, start))[0]) for start in range(rows)])
    if np.issubdtype(together.dtype, np.integer) or together.dtype == np.bool_:
        return bool(np.array_equal(together, alone))
    # Row by row: a small row batched with a large one is where dynamic scales hurt, and where a tolerance relative
    # to the whole batch's largest output would not see it.
    alone = alone.astype(np.float64).reshape(rows, -1)
    diff = np.abs(together.astype(np.float64).reshape(rows, -1) - alone).max(axis=1)
    scale = np.maximum(np.abs(alone).max(axis=1), 1e-6 * float(np.abs(alone).max()) + 1e-12)
    return bool(np.all(diff <= RELATIVE_TOLERANCE * scale))
