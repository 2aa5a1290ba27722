"""Checks an uploaded ONNX model before anything is stored, and reads its signature.

Order matters: parse → structural checks (checker, external data anywhere, absurd stored or declared
tensors) → ONNX Runtime load → one inference at the declared shapes. A model that passes all four is
safe to store and to serve. Where an input has a dynamic dimension besides the batch axis (an image's
height and width, a sequence length), the inference runs at the owner's ``--input-shape``, else at the
sizes ``infaas.input_shapes`` proposes (exporter metadata, then common sizes) until one runs; the shape
that ran is returned so registration records it.

Between the checker and the rest, a ZipMap output (skl2onnx's default for a classifier's probabilities)
is rewritten to the tensor it wraps (``infaas.zipmap``) and any other non-tensor input or output is
refused by name; the rewritten model is what the later checks see and what registration stores.

The static checks only see shapes known before running; a shape computed at run time (``ReduceMax →
Cast → Add → ConstantOfShape`` to [20000, 20000]: 1.6 GB) or a ``Loop`` with trip count 2^62 shows
itself only in the test inference. So registration goes through ``check_model_isolated``: the static
checks (bounded by the upload's size) in its own process, ONNX Runtime's load and the inference in a
child process with a time and a memory limit (``infaas/sandbox.py``).

ONNX Runtime has no per-session cap on CPU memory: its arena ``max_mem`` exists only for an allocator
registered for the whole process (``create_and_register_allocator`` + ``session.use_env_allocators``;
with 256 MB it refused a run-time ``ConstantOfShape``'s 576 MB and 1.6 GB requests), shared by every
session of the process, and kernels also allocate outside the arena. So a model whose allocation depends
on the *values* it is given can still be asked for much at serving time (a refused allocation is then a
4xx, ``infaas.worker.instance``); the check catches every case that shows at the declared shapes on
zeros, and variant builds, which run the owner's validation values, are sandboxed too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from infaas.array_files import ArrayFileError, file_kind, read_headers
from infaas.config import Settings
from infaas.errors import BadRequest, InvalidInput
from infaas.input_shapes import Shapes, candidate_shapes, check_given_shapes, describe, needs_resolving
from infaas.runtime import ONNX_TO_NUMPY, Session, create_session, numpy_dtype
from infaas.sandbox import Limits, is_allocation_failure, run_limited
from infaas.scratch import scratch_dir
from infaas.tensors import TensorSpec
from infaas.zipmap import describe_type, unwrap_zipmaps

# Far beyond any model infaas serves on one host; a declared tensor past this is an attack or a bug.
MAX_TENSOR_ELEMENTS = 2_000_000_000
# The largest graph input, output or intermediate (known dimensions, batch of one) the test inference may
# allocate: 128 Mi elements, 512 MB of float32. A graph past it (e.g. an Expand to a constant huge shape)
# would exhaust the server's memory during the check, which runs in the API process.
MAX_DECLARED_ELEMENTS = 1 << 27


class ModelCheckError(BadRequest):
    """The upload is not a model infaas can serve; the message says what to fix."""

    code = "invalid_model"


@dataclass(frozen=True)
class CheckedModel:
    """What the checks learned about a valid model."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int | None
    rewrites: tuple[str, ...] = ()  # what registration changed to serve the model (``infaas.zipmap``)
    artifact: bytes | None = None  # the rewritten model to store; ``None``: the upload, unchanged
    # The shape (batch 1) the test inference ran at, for each input with a dynamic non-batch dimension.
    input_shapes: Shapes = field(default_factory=dict)


@dataclass(frozen=True)
class _Static:
    """What the static checks hand to the runtime checks."""

    data: bytes  # the model to run (rewritten if ``rewrites``)
    opset: int | None
    rewrites: tuple[str, ...]
    metadata: dict[str, str]  # the model's ``metadata_props`` (shape hints such as ``imgsz``)


def _parse(data: bytes) -> onnx.ModelProto:
    if not data:
        raise ModelCheckError("the model file is empty")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelCheckError(f"the file is not an ONNX model (protobuf parse failed: {exc})") from exc
    if not model.graph.node and not model.graph.output:
        raise ModelCheckError("the file is not an ONNX model (no graph found)")
    return model


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[TensorProto]:
    """Tensors held in node attributes (e.g. ``Constant``), descending into subgraphs (``If``, ``Loop``)."""
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in [attr.sparse_tensor, *attr.sparse_tensors]:
                yield from (sparse.values, sparse.indices)
            for graph in [attr.g, *attr.graphs]:
                yield from _graph_tensors(graph)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _all_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every tensor stored in the file, wherever it hides: external data in a subgraph or a function is as
    dangerous as in the main graph, since ONNX Runtime resolves it against the model's folder."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs]:
                yield from _all_graphs(sub)


def _check_declared_shapes(model: onnx.ModelProto) -> None:
    """Reject graphs whose inputs, outputs or intermediates are declared (or inferred, constants folded)
    absurdly large, before the test inference tries to allocate them."""
    _check_value_infos(model)
    # Infer again from the inputs alone: a declared output shape must not hide what the graph computes.
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.graph.value_info[:]
    for output in stripped.graph.output:
        output.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(stripped, data_prop=True)
    except Exception:  # inference is best effort; ONNX Runtime's load and the probe still follow.
        return
    _check_value_infos(inferred)


def _check_value_infos(model: onnx.ModelProto) -> None:
    for graph in _all_graphs(model.graph):
        for info in [*graph.input, *graph.output, *graph.value_info]:
            if not info.type.HasField("tensor_type"):
                continue
            dims = [d.dim_value for d in info.type.tensor_type.shape.dim if d.HasField("dim_value")]
            if any(d < 0 for d in dims) or float(np.prod(dims, dtype=np.float64)) > MAX_DECLARED_ELEMENTS:
                raise ModelCheckError(
                    f"tensor {info.name!r} has shape {dims}, past the limit of {MAX_DECLARED_ELEMENTS} "
                    "elements for one sample"
                )


def _check_tensor_signature(model: onnx.ModelProto) -> None:
    """Refuse a graph input or output infaas cannot serve, naming it and its type: a non-tensor (sequence,
    map, optional, sparse) or a tensor of an element type with no numpy counterpart here (e.g. string)."""
    from_skl2onnx = model.producer_name == "skl2onnx"
    for role, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            kind = value.type.WhichOneof("value")
            if kind is None or (kind == "tensor_type" and _served_element(value.type.tensor_type.elem_type)):
                continue
            if kind == "tensor_type":
                labels_hint = (
                    "; for a scikit-learn classifier, fit it on integer class labels (sklearn.preprocessing."
                    "LabelEncoder) and map them back to names yourself"
                    if from_skl2onnx and role == "output"
                    else ""
                )
                raise ModelCheckError(
                    f"{role} {value.name!r} is a {describe_type(value.type)}, which infaas does not serve (tensors "
                    f"of {', '.join(t[len('tensor(') : -1] for t in ONNX_TO_NUMPY)} only){labels_hint}"
                )
            zipmap_hint = (
                "; from skl2onnx, export with options={id(model): {'zipmap': False}} to get the probabilities as "
                "a tensor (a ZipMap that is itself a graph output, as skl2onnx makes it, is unwrapped automatically)"
                if from_skl2onnx
                or (kind == "sequence_type" and value.type.sequence_type.elem_type.HasField("map_type"))
                else ""
            )
            raise ModelCheckError(
                f"{role} {value.name!r} is a {describe_type(value.type)}, not a tensor: infaas serves tensors only "
                f"(queries are batched, split and scored as arrays); change the model so that {value.name!r} is a "
                f"dense tensor{zipmap_hint}"
            )


def _served_element(elem_type: int) -> bool:
    """Whether tensors of this element type can be served (undefined is left to ONNX Runtime's load)."""
    return (
        elem_type == TensorProto.UNDEFINED or f"tensor({TensorProto.DataType.Name(elem_type).lower()})" in ONNX_TO_NUMPY
    )


def _check_tensors(model: onnx.ModelProto) -> None:
    for tensor in _all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            raise ModelCheckError(
                f"tensor {tensor.name!r} uses external data; upload a single self-contained .onnx file"
            )
        elements = int(np.prod(tensor.dims, dtype=np.float64)) if tensor.dims else 1
        if any(d < 0 for d in tensor.dims) or elements > MAX_TENSOR_ELEMENTS:
            raise ModelCheckError(f"initializer {tensor.name!r} declares an invalid or huge shape {list(tensor.dims)}")
        if tensor.raw_data:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            if len(tensor.raw_data) != elements * itemsize:
                raise ModelCheckError(
                    f"initializer {tensor.name!r} holds {len(tensor.raw_data)} bytes but its shape needs "
                    f"{elements * itemsize}; the file is corrupt"
                )


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape or []))
    return TensorSpec(name=arg.name, dtype=numpy_dtype(arg.type), shape=shape)


def _runtime_failure(exc: Exception, refusal: str) -> Exception:
    """``MemoryError`` for a refused allocation (so a sandbox reports its memory limit), else ``ModelCheckError``."""
    if is_allocation_failure(exc):
        return MemoryError(f"{refusal}: ONNX Runtime could not allocate memory")
    return ModelCheckError(f"{refusal}: {str(exc).splitlines()[0][:500]}")


def _declared_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """The shapes of the graph inputs that are not initializers, by name (``-1``: dynamic or unknown)."""
    stored = {t.name for t in model.graph.initializer}
    return {
        value.name: tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in value.type.tensor_type.shape.dim
        )
        for value in model.graph.input
        if value.name not in stored
    }


def _static_checks(data: bytes, given: Shapes) -> _Static:
    """Parse, checker, ZipMap rewrite, tensors, declared shapes and the owner's input shapes.

    Bounded by the upload's size, so they run in the caller's process: a file refused here (most hostile
    uploads are) costs no child process.
    """
    model = _parse(data)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelCheckError(f"ONNX checker rejected the model: {str(exc).splitlines()[0]}") from exc
    rewrites = unwrap_zipmaps(model)
    if rewrites:
        data = model.SerializeToString()
    _check_tensor_signature(model)
    _check_tensors(model)
    _check_declared_shapes(model)
    check_given_shapes(given, _declared_shapes(model), MAX_DECLARED_ELEMENTS)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    metadata = {p.key: p.value for p in model.metadata_props}
    return _Static(data=data, opset=opset, rewrites=rewrites, metadata=metadata)


def _test_inference(
    session: Session, inputs: tuple[TensorSpec, ...], given: Shapes, metadata: dict[str, str]
) -> Shapes:
    """Run the model on zeros until a candidate shape works; the shapes of inputs that needed resolving.

    With nothing dynamic but the batch axis there is one try (batch 1). Otherwise the candidates of
    ``infaas.input_shapes`` are tried in order (at most 8, all within the check's sandbox limits); a
    refused allocation ends the search at once (the sandbox reports its memory limit).
    """
    candidates = candidate_shapes(inputs, given, metadata)
    resolving = [s.name for s in inputs if needs_resolving(s)]
    failure: Exception | None = None
    for shapes in candidates:
        try:
            session.run(None, {s.name: np.zeros(shapes[s.name], dtype=s.dtype) for s in inputs})
        except Exception as exc:
            if is_allocation_failure(exc):
                raise _runtime_failure(exc, f"a test inference at {describe(shapes)} failed") from exc
            failure = exc
            continue
        return {name: shapes[name] for name in resolving}
    assert failure is not None  # there is always at least one candidate
    reason = str(failure).splitlines()[0][:500]
    if not resolving:
        raise ModelCheckError(f"a test inference at the declared input shapes failed: {reason}")
    if given and len(candidates) == 1:
        raise ModelCheckError(
            f"a test inference at the given input shape ({describe(candidates[0])}) failed: {reason}; "
            "check the shape the model takes (--input-shape NAME=D0,D1,... on the CLI, the input_shape form field)"
        )
    tried = ", ".join(f"[{describe(c)}]" for c in candidates)
    raise ModelCheckError(
        f"inputs {', '.join(repr(n) for n in resolving)} have dynamic dimensions and a test inference failed at "
        f"every shape tried ({tried}); the last error: {reason}. Give the shape the model takes: "
        "--input-shape NAME=D0,D1,... on the CLI, or the input_shape form field (e.g. images=1,3,320,320)"
    )


def _runtime_checks(
    data: bytes, given: Shapes, metadata: dict[str, str]
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], Shapes]:
    """ONNX Runtime load and a test inference on zeros: the model's inputs, outputs and resolved input shapes.

    Unbounded in time and memory (a ``Loop`` may never end, a shape computed at run time may be huge):
    ``check_model_isolated`` runs this in a sandboxed child.
    """
    try:
        session = create_session(data, threads=1)
    except Exception as exc:  # ONNX Runtime raises several unrelated exception types.
        raise _runtime_failure(exc, "ONNX Runtime cannot load the model") from exc
    try:
        inputs = tuple(_spec(a) for a in session.get_inputs())
        outputs = tuple(_spec(a) for a in session.get_outputs())
    except ValueError as exc:
        raise ModelCheckError(f"unsupported input or output type: {exc}") from exc
    shapes = _test_inference(session, inputs, given, metadata)
    return inputs, outputs, shapes


def _checked(static: _Static, runtime: tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], Shapes]) -> CheckedModel:
    inputs, outputs, shapes = runtime
    return CheckedModel(
        inputs=inputs,
        outputs=outputs,
        opset=static.opset,
        rewrites=static.rewrites,
        artifact=static.data if static.rewrites else None,
        input_shapes=shapes,
    )


def check_model_bytes(data: bytes, input_shapes: Shapes | None = None) -> CheckedModel:
    """Run every check on an in-memory model, in this process; raises ``ModelCheckError`` with a fix-it message.

    Unbounded in time and memory: anything a client uploads goes through ``check_model_isolated``.
    """
    static = _static_checks(data, input_shapes or {})
    return _checked(static, _runtime_checks(static.data, input_shapes or {}, static.metadata))


def check_limits(settings: Settings) -> Limits:
    """The registration check's limits (``INFAAS_CHECK_TIMEOUT_S``, ``INFAAS_CHECK_MEMORY_MB``)."""
    return Limits(
        wall_s=settings.check_timeout_s,
        memory_mb=settings.check_memory_mb,
        time_setting="INFAAS_CHECK_TIMEOUT_S",
        memory_setting="INFAAS_CHECK_MEMORY_MB",
        scratch=scratch_dir(settings),
    )


def check_model_isolated(path: Path, limits: Limits, input_shapes: Shapes | None = None) -> CheckedModel:
    """Every check on an uploaded file, the ONNX Runtime part in a child process within ``limits``.

    What registration runs; ``input_shapes`` are the owner's (``--input-shape``), checked against the
    declared inputs before any child starts. Past a limit the child is killed and its temporary folder
    removed; the caller gets ``LimitExceeded`` (422) naming the limit, and nothing has been stored.
    """
    static = _static_checks(Path(path).read_bytes(), input_shapes or {})
    runtime = run_limited(
        _runtime_checks,
        static.data,
        input_shapes or {},
        static.metadata,
        limits=limits,
        what="the model check (ONNX Runtime load and test inferences on zeros)",
    )
    return _checked(static, runtime)


def check_validation_file(path: Path, inputs: tuple[TensorSpec, ...], max_bytes: int) -> int:
    """Check a validation ``.npz`` against the model's inputs; returns the number of samples.

    Arrays are named after the model's inputs (a single-input model may use ``inputs``), plus an optional
    ``labels`` array of one integer per sample. Each array must fit ``TensorSpec.conform`` for samples and,
    stricter than a job's input, already have the model's dtype: the set is stored as uploaded and every
    variant's accuracy is measured on it, so the uploader should see the exact values it is scored on.

    Names, dtypes and shapes all come from the arrays' headers (``infaas.array_files``), so nothing is
    held in memory: the archive is refused past ``max_bytes`` uncompressed (413) before any data is
    inflated, and otherwise only streamed through once to prove that it decompresses as declared.
    """
    try:
        if file_kind(path) != "npz":
            raise ModelCheckError("the validation file must be a .npz archive (numpy.savez), not a single .npy array")
        headers = read_headers(path, max_bytes, verify_data=True)
    except ArrayFileError as exc:
        raise ModelCheckError(f"the validation file is not a readable .npz archive: {exc}") from exc
    if len(inputs) == 1 and inputs[0].name not in headers and "inputs" in headers:
        headers[inputs[0].name] = headers.pop("inputs")
    count: int | None = None
    for spec in inputs:
        if spec.name not in headers:
            raise ModelCheckError(
                f"the validation file has no array {spec.name!r}; name arrays after the model inputs "
                f"({', '.join(s.name for s in inputs)})"
            )
        header = headers[spec.name]
        if header.dtype != spec.dtype:
            raise ModelCheckError(
                f"validation array {spec.name!r} has dtype {header.dtype}, the model expects {spec.dtype}"
            )
        if not header.shape:
            raise ModelCheckError(f"validation array {spec.name!r} is a scalar; its first axis must count samples")
        try:
            spec.conform(np.empty((0, *header.shape[1:]), header.dtype), samples=True)
        except InvalidInput as exc:
            raise ModelCheckError(f"the validation file does not fit the model: {exc}") from exc
        if count is not None and header.shape[0] != count:
            raise ModelCheckError("validation arrays disagree on the number of samples")
        count = header.shape[0]
    if not count:
        raise ModelCheckError("the validation file holds no samples")
    if "labels" in headers:
        labels = headers["labels"]
        if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
            raise ModelCheckError(
                f"'labels' must be {count} integers, one per sample; got {labels.dtype}{list(labels.shape)}"
            )
    return count
