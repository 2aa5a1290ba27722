"""Query inputs read from a file, shared by ``infaas query`` and ``infaas topk``."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_inputs(path: Path, input_name: str | None) -> dict[str, list]:
    """A ``.npy`` (one input, named by ``--input-name`` or the model's only input) or an ``.npz``."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name].tolist() for name in archive.files}
    array = np.load(path, allow_pickle=False)
    return {input_name or "__single__": array.tolist()}
