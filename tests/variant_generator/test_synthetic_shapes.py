"""Synthetic validation data (and so profiling) runs at the shape registration recorded."""

from __future__ import annotations

from dataclasses import replace

from tests.factories import model_info
from variant_generator.accuracy import DEFAULT_DYNAMIC_DIM, synthetic_set

IMAGES = {"name": "images", "dtype": "float32", "shape": [-1, 3, -1, -1]}


def test_synthetic_inputs_take_the_recorded_shape() -> None:
    model = replace(model_info("detector", inputs=[IMAGES]), input_shapes={"images": (1, 3, 320, 320)})
    assert synthetic_set(model, rows=4).inputs["images"].shape == (4, 3, 320, 320)


def test_a_model_without_a_recorded_shape_keeps_the_default() -> None:
    data = synthetic_set(model_info("old", inputs=[IMAGES]), rows=2)
    assert data.inputs["images"].shape == (2, 3, DEFAULT_DYNAMIC_DIM, DEFAULT_DYNAMIC_DIM)
