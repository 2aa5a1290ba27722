"""An ONNX Runtime model for MLServer, so ``benchmarks/peers.py`` can serve the same ONNX files as infaas.

MLServer ships no ONNX runtime (its runtimes are scikit-learn, XGBoost, LightGBM, MLflow, HuggingFace, ...),
so this is the smallest faithful one: an ``MLModel`` that opens one ``onnxruntime.InferenceSession`` per
MLServer worker and runs each (adaptively batched) request on it, the way MLServer's own runtimes call
their frameworks inline in ``predict``. It decodes and encodes with MLServer's ``NumpyCodec``.

Session options come from ``parameters.extra`` in ``model-settings.json``: ``intra_op_threads`` (the
benchmark gives each of MLServer's parallel workers ``cores // workers`` threads, so the workers together
use exactly the cores infaas gets and neither oversubscribes them) and ``graph_optimization`` (ONNX
Runtime's full graph optimisation, its default, as infaas's FP32 original is opened with).

Imported only inside the benchmark's own MLServer virtual environment, never by the project.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


class OnnxRuntimeModel(MLModel):
    """Serves one ONNX file on ONNX Runtime's CPU provider."""

    async def load(self) -> bool:
        extra = dict((self.settings.parameters.extra or {}) if self.settings.parameters else {})
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra.get("intra_op_threads", 1))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = _LEVELS[str(extra.get("graph_optimization", "all"))]
        uri = await get_model_uri(self.settings)
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._types = {i.name: _TYPES.get(i.type, np.float32) for i in self._session.get_inputs()}
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {
            tensor.name: np.ascontiguousarray(NumpyCodec.decode_input(tensor), dtype=self._types[tensor.name])
            for tensor in payload.inputs
        }
        results = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in zip(self._outputs, results, strict=True)],
        )
