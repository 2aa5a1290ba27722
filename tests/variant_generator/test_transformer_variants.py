"""Transformer encoders are recognised from their graph and get ONNX Runtime's transformer fusions (issue 15 point 1);
other graphs are skipped saying why."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from infaas.onnx_check import check_model_bytes
from infaas.runtime import CPU_PROVIDERS, Skip, open_session
from tests.factories import mlp_model, model_info
from tests.variant_generator.tiny_bert import HEADS, HIDDEN, LAYERS, export_tiny_bert, token_inputs
from variant_generator import registry, transformer_graph
from variant_generator.accuracy import ValidationSet
from variant_generator.base import BuildContext
from variant_generator.transformer_fp32 import CpuFp32Transformer


def context(source: Path, tmp_path: Path, task: str = "embedding") -> BuildContext:
    checked = check_model_bytes(source.read_bytes())
    info = model_info("enc", task=task, inputs=[s.to_json() for s in checked.inputs], max_batch=8)
    workdir = tmp_path / "build"
    workdir.mkdir()
    calibration, _ = ValidationSet(token_inputs(64)).split()
    return BuildContext(replace(info, input_shapes=checked.input_shapes), source, calibration, workdir, cores=2)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_bert(tmp_path_factory.mktemp("bert") / "bert.onnx")


@pytest.mark.parametrize("minus_one", [False, True], ids=["heads-written", "heads-as-minus-one"])
def test_a_bert_export_is_recognised_with_its_head_count(minus_one: bool, tmp_path: Path) -> None:
    shape = transformer_graph.inspect_file(export_tiny_bert(tmp_path / "b.onnx", heads_as_minus_one=minus_one))
    assert shape.is_transformer
    assert (shape.attention_blocks, shape.num_heads, shape.hidden_size) == (LAYERS, HEADS, HIDDEN)
    assert shape.layer_norms == 1 + 2 * LAYERS  # embeddings + two per layer


def test_a_bert_gets_attention_layer_norm_and_gelu_fusions_with_the_same_outputs(
    tiny_bert: Path, tmp_path: Path
) -> None:
    ctx = context(tiny_bert, tmp_path)
    CpuFp32Transformer().precheck(ctx)  # applies: no Skip
    artifact = CpuFp32Transformer().build(ctx)
    ops = Counter(node.op_type for node in onnx.load(str(artifact)).graph.node)
    assert ops["Attention"] == LAYERS and ops["SkipLayerNormalization"] == 2 * LAYERS and ops["BiasGelu"] == LAYERS
    assert ops["Softmax"] == 0 and ops["LayerNormalization"] == 0  # folded into the fused kernels
    feeds = token_inputs(16, seed=3)
    fused = open_session(artifact, CPU_PROVIDERS, 1).run(None, feeds)[0]
    original = open_session(tiny_bert, CPU_PROVIDERS, 1).run(None, feeds)[0]
    np.testing.assert_allclose(fused, original, rtol=1e-4, atol=1e-5)
    notes = CpuFp32Transformer().notes(artifact, ctx)
    assert notes is not None and notes.startswith("transformer fusions: ")
    assert f"{LAYERS} Attention" in notes and f"{2 * LAYERS} SkipLayerNormalization" in notes
    assert f"{HEADS} heads x {HIDDEN // HEADS} (hidden {HIDDEN})" in notes


def test_other_graphs_are_skipped_saying_what_was_looked_for(tmp_path: Path) -> None:
    source = tmp_path / "mlp.onnx"
    source.write_bytes(mlp_model(in_dim=6).SerializeToString())
    checked = check_model_bytes(source.read_bytes())
    info = model_info("mlp", inputs=[s.to_json() for s in checked.inputs])
    ctx = BuildContext(info, source, None, tmp_path, cores=2)
    for step in (CpuFp32Transformer().precheck, CpuFp32Transformer().build):  # the build skips it before any child
        with pytest.raises(Skip, match=r"^not a transformer encoder: .* found 0 attention block\(s\), 0 layer norm"):
            step(ctx)


def test_the_transformer_variant_is_registered_with_both_thread_counts() -> None:
    names = [g.variant_name for g in registry.generators()]
    assert {"cpu-fp32-transformer", "cpu-fp32-transformer-t1"} <= set(names)
    assert names.index("cpu-fp32") < names.index("cpu-fp32-transformer")
