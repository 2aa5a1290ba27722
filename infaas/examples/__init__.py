"""Example model zoo: real digit classifiers of very different speed and accuracy, trained offline.

``python -m infaas.examples --out DIR`` builds it (needs scikit-learn and PyTorch, build-time only);
see ``infaas.examples.zoo`` for what is in it. Importing this package needs neither.
"""

from infaas.examples.zoo import (
    TASK,
    ZooModel,
    build_and_profile,
    build_zoo,
    load_zoo,
    measure_latency_ms,
    preprocess,
    run_onnx,
    write_zoo_json,
)

__all__ = [
    "TASK",
    "ZooModel",
    "build_and_profile",
    "build_zoo",
    "load_zoo",
    "measure_latency_ms",
    "preprocess",
    "run_onnx",
    "write_zoo_json",
]
