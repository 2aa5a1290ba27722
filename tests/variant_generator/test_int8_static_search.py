"""Static INT8 configurations are chosen by measurement on calibration rows only, keep attention softmax and layer
norms in float, and only those on the speed-fidelity front are kept (issue 15 point 2)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from infaas.accuracy import COSINE
from infaas.onnx_check import check_model_bytes
from infaas.runtime import CPU_PROVIDERS, Skip, open_session
from tests.factories import model_info
from tests.variant_generator.tiny_bert import LAYERS, export_tiny_bert, token_inputs
from variant_generator import int8_search
from variant_generator.accuracy import ValidationSet, fidelity_score
from variant_generator.base import BuildContext
from variant_generator.int8_search import Outcome, Search, pareto
from variant_generator.int8_static import Int8Static, Int8StaticFast

ROWS = 96
# Ops that lose fidelity when their inputs are quantized: left float by the ``weights`` configurations.
FLOAT_OPS = {"Softmax", "LayerNormalization", "SkipLayerNormalization", "Add", "Erf", "Gelu", "BiasGelu"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuildContext, ValidationSet]:
    """A tiny BERT's build context (calibration rows only) and the rows variants are scored on."""
    folder = tmp_path_factory.mktemp("bert")
    source = export_tiny_bert(folder / "bert.onnx")
    checked = check_model_bytes(source.read_bytes())
    info = model_info("enc", task="embedding", inputs=[s.to_json() for s in checked.inputs], max_batch=8)
    calibration, scoring = ValidationSet(token_inputs(ROWS)).split()
    assert calibration is not None
    workdir = folder / "build"
    workdir.mkdir()
    ctx = BuildContext(replace(info, input_shapes=checked.input_shapes), source, calibration, workdir, cores=2)
    return ctx, scoring


def test_every_configuration_is_tried_and_recorded_with_its_numbers(built: tuple[BuildContext, ValidationSet]) -> None:
    ctx, _ = built
    result = int8_search.search(ctx)
    names = {o.config for o in result.outcomes}
    for method in int8_search.METHODS:  # each method measured on the transformer-optimized graph and the original
        assert {f"original/weights/{method}", f"transformer/weights/{method}"} <= names
    assert "original/all/MinMax" in names
    measured = [o for o in result.outcomes if o.status in ("front", "dominated")]
    assert len(measured) >= 2 * len(int8_search.METHODS), [o.describe() for o in result.outcomes]
    assert all(o.metric == COSINE and o.fidelity is not None and o.ms_batch1 and o.ms_batch for o in measured)
    # Every weight configuration runs its quantized MatMuls as integer kernels (``test_int8_integer_kernels``).
    assert all(o.integer_ops for o in measured if "/weights" in o.config), [o.describe() for o in measured]
    assert "integer kernels" in result.summary()
    assert result.front and all(o.artifact and Path(o.artifact).exists() for o in result.front)
    dominated = [o for o in measured if o.status == "dominated"]
    assert all(o.artifact is None or not Path(o.artifact).exists() for o in dominated)  # their files are removed
    assert int8_search.search(ctx) == result  # the second static generator reads the same record


def test_the_chosen_configuration_keeps_fidelity_and_quantizes_only_weighted_compute(
    built: tuple[BuildContext, ValidationSet],
) -> None:
    ctx, scoring = built
    artifact = Int8Static().build(ctx)
    model = onnx.load(str(artifact))
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops["QuantizeLinear"] > 0  # activations are quantized: static INT8, not weights only
    quantized_inputs = [
        node.op_type
        for node in model.graph.node
        if any(producers.get(i) == "DequantizeLinear" for i in node.input) and node.op_type not in ("MatMul", "Gemm")
    ]
    notes = Int8Static().notes(artifact, ctx)
    chosen = notes.split("; chose ")[1].split(":")[0] if notes else ""
    if "/all/" not in chosen:
        assert not set(quantized_inputs) & FLOAT_OPS, quantized_inputs
    # Scored on rows the search never saw: the configuration was chosen on held-out calibration rows.
    original = open_session(ctx.source, CPU_PROVIDERS, 1).run(None, scoring.inputs)[0]
    variant = open_session(artifact, CPU_PROVIDERS, 1).run(None, scoring.inputs)[0]
    cosine, metric = fidelity_score(variant, original, task="embedding")
    assert metric == COSINE and cosine >= 0.99
    assert notes is not None and notes.startswith("INT8: quantized ") and "tried " in notes


def test_attention_scores_and_mixing_stay_float_in_weight_configurations(
    built: tuple[BuildContext, ValidationSet],
) -> None:
    ctx, _ = built
    graph, op_types, excluded = int8_search._node_choice(ctx.source, "weights")
    assert op_types == int8_search.COMPUTE_OPS
    model = onnx.load(str(graph))
    weights = {t.name for t in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }
    activation_matmuls = {
        n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input)
    }
    assert len(activation_matmuls) == 2 * LAYERS and activation_matmuls <= set(excluded or [])
    _, _, no_gelu = int8_search._node_choice(ctx.source, "weights-no-gelu")
    assert len(set(no_gelu or []) - set(excluded or [])) == LAYERS  # each layer's feed-forward down-projection


def test_fit_and_select_rows_are_disjoint_parts_of_the_calibration_rows() -> None:
    data = ValidationSet({"x": np.arange(40, dtype=np.float32).reshape(40, 1)})
    fit, select = int8_search._split(data)
    fit_rows, select_rows = set(fit.inputs["x"][:, 0]), set(select.inputs["x"][:, 0])
    assert not fit_rows & select_rows and fit_rows | select_rows == set(range(40))
    assert len(select_rows) == 10


def _outcome(name: str, fidelity: float, ms1: float, ms8: float) -> Outcome:
    return Outcome(name, "measured", fidelity, COSINE, ms1, ms8, 8, artifact=f"/nonexistent/{name}")


def test_only_the_speed_fidelity_front_is_kept() -> None:
    marked = pareto(
        [
            _outcome("faithful", 0.999, 3.0, 10.0),
            _outcome("fast", 0.95, 1.0, 4.0),
            _outcome("worse-than-faithful", 0.99, 3.5, 10.0),
            _outcome("middle", 0.98, 2.0, 6.0),
            _outcome("fastest-but-another-model", 0.41, 0.5, 2.0),  # MiniLM's "all operators" MinMax
            Outcome("broken", "failed", reason="ValueError: x"),
        ]
    )
    status = {o.config: o.status for o in marked}
    assert status == {
        "faithful": "front",
        "middle": "front",
        "fast": "front",
        "worse-than-faithful": "dominated",
        "fastest-but-another-model": "unfaithful",
        "broken": "failed",
    }
    assert [o.config for o in marked[:3]] == ["faithful", "middle", "fast"]  # most faithful first
    search = Search(tuple(marked), 4.0, 12.0, 8, 10)
    assert Int8Static()._pick(search).config == "faithful"
    assert Int8StaticFast()._pick(search).config == "fast"
    assert "worse-than-faithful: cosine 0.9900, 3.50 / 10.00 ms at batch 1 / 8 (dominated)" in search.summary()


def test_the_fast_slot_is_skipped_when_one_configuration_is_both() -> None:
    search = Search(tuple(pareto([_outcome("only", 0.999, 1.0, 4.0)])), 4.0, 12.0, 8, 10)
    with pytest.raises(Skip, match="1.5x faster at the batcher's batch than the most faithful one"):
        Int8StaticFast()._pick(search)
    with pytest.raises(Skip, match="no static INT8 configuration could be made"):
        Int8Static()._pick(Search((Outcome("broken", "failed", reason="x"),), 4.0, 12.0, 8, 10))
