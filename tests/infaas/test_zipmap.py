"""The ZipMap rewrite on its own: class labels in column order, and the tensor equals scikit-learn's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_digits, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from infaas.onnx_check import ModelCheckError, check_model_bytes
from infaas.runtime import create_session


def test_labels_that_are_not_column_numbers_are_listed_and_columns_follow_them() -> None:
    features, digits = load_digits(return_X_y=True)
    features, labels = features[:300].astype(np.float32), 100 + 10 * digits[:300]  # classes 100, 110, ..., 190
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(features, labels)
    upload = to_onnx(forest, features[:1]).SerializeToString()

    checked = check_model_bytes(upload)

    assert checked.rewrites == (
        "ZipMap output 'output_probability' (seq(map(int64, tensor(float)))) is served as its probability tensor "
        f"float32 [N, 10]; columns are classes {', '.join(str(c) for c in range(100, 200, 10))}",
    )
    assert checked.artifact is not None and checked.artifact != upload
    label, probabilities = create_session(checked.artifact).run(None, {"X": features})
    np.testing.assert_allclose(probabilities, forest.predict_proba(features), atol=1e-5)
    np.testing.assert_array_equal(label, forest.predict(features))


def test_a_model_without_zipmap_is_stored_as_uploaded() -> None:
    features, digits = load_digits(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=2, random_state=0).fit(features[:100], digits[:100])
    upload = to_onnx(forest, features[:1].astype(np.float32), options={id(forest): {"zipmap": False}})
    checked = check_model_bytes(upload.SerializeToString())
    assert checked.rewrites == () and checked.artifact is None
    assert [(o.name, o.shape) for o in checked.outputs] == [("label", (-1,)), ("probabilities", (-1, 10))]


def test_string_class_labels_are_refused_by_name_with_the_fix() -> None:
    """skl2onnx gives string classes a tensor(string) label output, which infaas cannot serve."""
    features, digits = load_digits(return_X_y=True)
    names = np.array([f"digit-{d}" for d in digits[:100]])
    forest = RandomForestClassifier(n_estimators=2, random_state=0).fit(features[:100], names)
    with pytest.raises(ModelCheckError) as refused:
        check_model_bytes(to_onnx(forest, features[:1].astype(np.float32)).SerializeToString())
    assert str(refused.value).startswith("output 'output_label' is a tensor(string), which infaas does not serve")
    assert "LabelEncoder" in str(refused.value)


def test_the_rewritten_graph_converts_to_fp16_like_a_zipmap_free_export() -> None:
    """The CUDA FP16 variant's conversion (run here on the CPU) loads and keeps the classes: with an Identity
    left in the ZipMap's place, ONNX Runtime refused the converted graph (float16 into a float output)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16  # the cuda-fp16 generator's converter

    features, species = load_iris(return_X_y=True)
    features = features.astype(np.float32)
    classifier = LogisticRegression(max_iter=500).fit(features, species)
    checked = check_model_bytes(to_onnx(classifier, features[:1]).SerializeToString())
    assert checked.artifact is not None
    assert "ZipMap" not in {node.op_type for node in onnx.load_model_from_string(checked.artifact).graph.node}
    half = convert_float_to_float16(onnx.load_model_from_string(checked.artifact), keep_io_types=True)
    label, probabilities = create_session(half.SerializeToString()).run(None, {"X": features})
    np.testing.assert_allclose(probabilities, classifier.predict_proba(features), atol=5e-3)
    assert np.mean(label == classifier.predict(features)) == 1.0
