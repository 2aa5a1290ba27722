"""Registration over REST: the happy path, and every bad input gets a 4xx and leaves nothing behind."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from infaas.config import Settings
from infaas.jobs.runner import JobRunner
from infaas.scratch import make_scratch
from infaas.services import Services
from tests.factories import mlp_model, npy_bytes, upload_model, write_validation
from tests.shaped_models import fixed_size_model, strided_concat_model


def _nothing_stored(services: Services, name: str = "mlp") -> None:
    assert services.metadata.get_model(name) is None
    assert services.store.list(f"models/{name}/") == []


def test_register_list_describe_delete(
    client: TestClient, services: Services, mlp_path: Path, validation_path: Path
) -> None:
    response = upload_model(
        client, "mlp", mlp_path.read_bytes(), validation=validation_path.read_bytes(), accuracy="0.8", max_batch="8"
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["inputs"] == [{"name": "x", "dtype": "float32", "shape": [-1, 8]}]
    assert body["outputs"] == [{"name": "y", "dtype": "float32", "shape": [-1, 3]}]
    assert body["opset"] == 17 and body["declared_accuracy"] == 0.8 and body["max_batch"] == 8
    assert body["status"] == "pending" and body["owner"] == "local"
    assert services.store.exists("models/mlp/model.onnx")
    assert services.store.exists("models/mlp/validation.npz")

    assert [m["name"] for m in client.get("/v1/models").json()] == ["mlp"]
    assert client.get("/v1/models/mlp").json()["task"] == "tabular-classification"

    assert client.delete("/v1/models/mlp").json() == {"deleted": "mlp"}
    _nothing_stored(services)
    assert client.get("/v1/models/mlp").status_code == 404


def test_register_records_and_queues_the_variant_build(client: TestClient, services: Services, mlp_path: Path) -> None:
    delivered: list[tuple[str, dict]] = []

    class Recorder(JobRunner):
        def submit(self, task_name: str, **kwargs: object) -> None:
            delivered.append((task_name, kwargs))

    services.settings.build_variants = True
    assert services.jobs is not None
    services.jobs.transport = Recorder()
    assert upload_model(client, "mlp", mlp_path.read_bytes()).status_code == 201
    [item] = services.metadata.list_work_items()
    assert (item.task, item.kwargs, item.state) == ("build_variants", {"model_name": "mlp"}, "pending")
    assert delivered == [("work_item", {"item_id": item.id})]  # recorded with the registration, then handed over


def test_not_onnx_rejected(client: TestClient, services: Services) -> None:
    response = upload_model(client, "mlp", b"this is plainly a text file, not a protobuf")
    assert response.status_code == 400
    assert "not an ONNX model" in response.json()["detail"]
    _nothing_stored(services)


def test_corrupt_onnx_rejected(client: TestClient, services: Services, mlp_path: Path) -> None:
    data = mlp_path.read_bytes()
    response = upload_model(client, "mlp", data[: len(data) // 2])
    assert response.status_code == 400
    _nothing_stored(services)


def test_model_onnx_runtime_cannot_load(client: TestClient, services: Services) -> None:
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"], domain="com.example.missing")],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.missing", 1)]
    )
    response = upload_model(client, "mlp", model.SerializeToString())
    assert response.status_code == 400
    assert "ONNX Runtime cannot load" in response.json()["detail"]
    _nothing_stored(services)


def test_checker_rejects_invalid_graph(client: TestClient, services: Services) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["undefined_input"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    response = upload_model(client, "mlp", model.SerializeToString())
    assert response.status_code == 400
    assert "checker" in response.json()["detail"]
    _nothing_stored(services)


def test_duplicate_name_rejected_and_original_kept(
    client: TestClient, services: Services, mlp_path: Path, tmp_path: Path
) -> None:
    assert upload_model(client, "mlp", mlp_path.read_bytes()).status_code == 201
    other = tmp_path / "other.onnx"
    onnx.save(mlp_model(in_dim=4), other)
    response = upload_model(client, "mlp", other.read_bytes())
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]
    assert services.metadata.get_model("mlp").inputs[0].shape == (-1, 8)
    assert services.store.get_bytes("models/mlp/model.onnx") == mlp_path.read_bytes()


@pytest.mark.parametrize("missing", ["name", "task"])
def test_missing_required_field(client: TestClient, services: Services, mlp_path: Path, missing: str) -> None:
    data = {"name": "mlp", "task": "t"}
    del data[missing]
    response = client.post("/v1/models", data=data, files={"model": ("m.onnx", mlp_path.read_bytes())})
    assert response.status_code == 422
    assert missing in str(response.json()["detail"])
    _nothing_stored(services)


def test_missing_model_file(client: TestClient, services: Services) -> None:
    response = client.post("/v1/models", data={"name": "mlp", "task": "t"})
    assert response.status_code == 422
    assert "model" in str(response.json()["detail"])
    _nothing_stored(services)


def test_upload_over_size_limit(client: TestClient, services: Services, mlp_path: Path) -> None:
    services.settings.max_upload_mb = 0.0005  # 500 bytes; the route reads the limit per request
    response = upload_model(client, "mlp", mlp_path.read_bytes() + b"\0" * 2000)
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    _nothing_stored(services)


def test_validation_shape_mismatch(client: TestClient, services: Services, mlp_path: Path, tmp_path: Path) -> None:
    bad = write_validation(tmp_path / "bad.npz", in_dim=5)
    response = upload_model(client, "mlp", mlp_path.read_bytes(), validation=bad.read_bytes())
    assert response.status_code == 400
    assert "shape" in response.json()["detail"] and "[N, 8]" in response.json()["detail"]
    _nothing_stored(services)


def test_validation_dtype_and_name_mismatch(
    client: TestClient, services: Services, mlp_path: Path, tmp_path: Path
) -> None:
    wrong_dtype = tmp_path / "d.npz"
    np.savez(wrong_dtype, x=np.zeros((4, 8), dtype=np.float64))
    response = upload_model(client, "mlp", mlp_path.read_bytes(), validation=wrong_dtype.read_bytes())
    assert response.status_code == 400 and "dtype" in response.json()["detail"]
    wrong_name = tmp_path / "n.npz"
    np.savez(wrong_name, features=np.zeros((4, 8), dtype=np.float32))
    response = upload_model(client, "mlp", mlp_path.read_bytes(), validation=wrong_name.read_bytes())
    assert response.status_code == 400 and "no array 'x'" in response.json()["detail"]
    _nothing_stored(services)


def test_validation_bombs_refused_from_their_headers(
    client: TestClient, services: Services, mlp_path: Path, tmp_path: Path
) -> None:
    """Issue 14, item 2: what a validation set expands to is decided from its headers (INFAAS_MAX_ARRAY_MB)."""
    services.settings.max_array_mb = 1.0  # the route reads the limit per request
    bomb = tmp_path / "bomb.npz"  # x fits the model; 'labels' hides 4 MB of zeros in a few KB
    np.savez_compressed(bomb, x=np.zeros((4, 8), np.float32), labels=np.zeros(2**20, np.int32))
    assert bomb.stat().st_size < 20_000
    response = upload_model(client, "mlp", mlp_path.read_bytes(), validation=bomb.read_bytes())
    assert response.status_code == 413, response.text
    assert response.json()["detail"].startswith("array 'labels' is 4.0 MB uncompressed (int32[1048576])")
    forged = tmp_path / "forged.npz"  # the .npy header says 4 x 8 floats, the member holds 8 MB
    with zipfile.ZipFile(forged, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", npy_bytes(np.zeros((4, 8), np.float32)) + bytes(8 * 2**20))
    response = upload_model(client, "mlp", mlp_path.read_bytes(), validation=forged.read_bytes())
    assert response.status_code == 400 and "the file is corrupt or forged" in response.json()["detail"], response.text
    _nothing_stored(services)


def test_validation_inputs_alias_for_single_input(
    client: TestClient, services: Services, mlp_path: Path, tmp_path: Path
) -> None:
    alias = write_validation(tmp_path / "alias.npz", input_name="inputs")
    assert upload_model(client, "mlp", mlp_path.read_bytes(), validation=alias.read_bytes()).status_code == 201


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "../escape", "name must be"),
        ("accuracy", "1.5", "between 0 and 1"),
        ("max_batch", "0", "max_batch"),
    ],
)
def test_bad_field_values(
    client: TestClient, services: Services, mlp_path: Path, field: str, value: str, message: str
) -> None:
    fields = {"name": "mlp", field: value}
    response = upload_model(client, fields.pop("name"), mlp_path.read_bytes(), **fields)
    assert response.status_code == 400
    assert message in response.json()["detail"]
    _nothing_stored(services)


@pytest.mark.parametrize(("model_bytes", "expected"), [(None, 201), (b"not an onnx model", 400)])
def test_the_upload_lands_in_the_homes_scratch_folder_and_is_gone_after_the_request(
    client: TestClient,
    services: Services,
    mlp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model_bytes: bytes | None,
    expected: int,
) -> None:
    """A killed front-end's uploads must be where the start-up sweep looks (``infaas.scratch``)."""
    import api.routes.models as routes

    made: list[Path] = []

    def recording(settings: Settings, prefix: str) -> Path:
        made.append(make_scratch(settings, prefix))
        return made[-1]

    monkeypatch.setattr(routes, "make_scratch", recording)
    response = upload_model(client, "mlp", model_bytes or mlp_path.read_bytes())
    assert response.status_code == expected, response.text
    [workdir] = made
    assert workdir.parent == services.settings.scratch_dir
    assert not workdir.exists()
    assert list(services.settings.scratch_dir.iterdir()) == []  # the sandboxed check's folder went too


def test_a_model_with_dynamic_spatial_dims_registers_and_shows_its_shape(client: TestClient) -> None:
    """Fails at 1x1 like NudeNet's YOLOv8n: registered at the metadata's size, shown on the model."""
    model = strided_concat_model({"imgsz": "[320, 320]"}).SerializeToString()
    response = upload_model(client, "detector", model)
    assert response.status_code == 201, response.text
    assert response.json()["input_shapes"] == {"images": [1, 3, 320, 320]}
    described = client.get("/v1/models/detector").json()
    assert described["inputs"] == [{"name": "images", "dtype": "float32", "shape": [-1, 3, -1, -1]}]
    assert described["input_shapes"] == {"images": [1, 3, 320, 320]}


def test_the_input_shape_field_is_used_and_recorded(client: TestClient) -> None:
    response = upload_model(
        client, "fixed", fixed_size_model(100, 100).SerializeToString(), input_shape="images=1,3,100,100"
    )
    assert response.status_code == 201, response.text
    assert client.get("/v1/models/fixed").json()["input_shapes"] == {"images": [1, 3, 100, 100]}


def test_no_working_shape_is_a_400_naming_the_field(client: TestClient, services: Services) -> None:
    response = upload_model(client, "fixed", fixed_size_model(100, 100).SerializeToString())
    assert response.status_code == 400
    assert "input_shape" in response.json()["detail"] and "images=1,3,640,640" in response.json()["detail"]
    _nothing_stored(services, "fixed")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("images=1,3,abc,320", "must be integers"),
        ("images=1,3,0,320", "must be positive"),
        ("pixels=1,3,320,320", "no input 'pixels'; its inputs are 'images'"),
        ("images=1,3,320", "has 4 dimensions"),
        ("images=1,1,320,320", "fixes dimension 1 to 3"),
        ("images=1,3,2,2", "the given input shape (images=1,3,2,2) failed"),
    ],
)
def test_bad_input_shape_values_say_what_to_fix(
    client: TestClient, services: Services, value: str, message: str
) -> None:
    response = upload_model(client, "detector", strided_concat_model().SerializeToString(), input_shape=value)
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]
    _nothing_stored(services, "detector")
