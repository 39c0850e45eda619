"""``hemoseg_edge.model_file``: an untrusted model cannot make any backend read other files,
and its metadata cannot ask for absurd buffers."""

from __future__ import annotations

import onnx
import pytest
from conftest import make_tiny_onnx

from hemoseg_edge import Segmenter
from hemoseg_edge.backends import available
from hemoseg_edge.errors import ModelError
from hemoseg_edge.model_file import onnx_metadata
from hemoseg_edge.model_file.metadata import ModelMetadata
from hemoseg_edge.model_file.reader import external_data_locations

MD = ModelMetadata(version="t", threshold=0.5)


def _with_external(location: str, where: str = "initializer") -> bytes:
    model = onnx.load_from_string(make_tiny_onnx(metadata=MD))
    if where == "initializer":
        tensor = model.graph.initializer[0]
    else:  # a Constant node's tensor attribute
        const = onnx.helper.make_tensor("c", onnx.TensorProto.FLOAT, [1], [0.0])
        node = onnx.helper.make_node("Constant", [], ["unused"], value=const)
        model.graph.node.insert(0, node)
        tensor = model.graph.node[0].attribute[0].t
    tensor.ClearField("raw_data")
    del tensor.float_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return model.SerializeToString()


@pytest.mark.parametrize("location", ["/etc/passwd", "../../secret.bin", "weights.bin"])
@pytest.mark.parametrize("where", ["initializer", "constant"])
def test_external_tensor_data_is_refused(location, where):
    data = _with_external(location, where)
    proto = onnx.ModelProto()
    proto.ParseFromString(data)
    assert list(external_data_locations(proto)) == [location]
    with pytest.raises(ModelError, match="stored outside the model file"):
        onnx_metadata(data, "evil.onnx")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_no_backend_sees_a_model_with_external_data(tmp_path, backend, monkeypatch):
    """OpenVINO follows external paths under the working directory (often / for a service):
    the refusal comes before any backend is loaded."""
    if backend not in available():
        pytest.skip(f"{backend} not installed")
    target = tmp_path / "victim.bin"
    target.write_bytes(b"\0" * 4)
    model = tmp_path / "evil.onnx"
    model.write_bytes(_with_external(target.name))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="stored outside the model file"):
        Segmenter.from_engine(model, backend=backend)


def test_metadata_input_size_is_bounded(tmp_path):
    big = ModelMetadata(version="t", input_height=16384, input_width=16384)
    with pytest.raises(ModelError, match="exceeds"):
        onnx_metadata(make_tiny_onnx(hw=(32, 32), metadata=big), "big.onnx")


def test_shipped_models_are_self_contained():
    from hemoseg_edge.model_file import default_model_path

    for name in (
        "hemoseg_mnv2_v7.onnx",
        "hemoseg_mnv2_v6.onnx",
        "hemoseg_unet_v5.onnx",
        "hemoseg_mnv2_v4.onnx",
        "hemoseg_mnv2_v3.onnx",
        "hemoseg_mnv2_v2.onnx",
        "hemoseg_unet_v1.onnx",
    ):
        data = default_model_path(name).read_bytes()
        assert onnx_metadata(data, name).version in ("v1", "v2", "v3", "v4", "v5", "v6", "v7")


def test_minimum_lesion_area_metadata_is_optional_and_checked():
    from hemoseg_edge.model_file.metadata import ModelMetadata

    props = ModelMetadata(version="t").to_props()
    assert ModelMetadata.from_props(props).min_lesion_model_px == 0.0
    older = {k: v for k, v in props.items() if not k.endswith("min_lesion_model_px")}
    assert ModelMetadata.from_props(older).min_lesion_model_px == 0.0  # a file older than it
    props["hemoseg.min_lesion_model_px"] = "4"
    assert ModelMetadata.from_props(props).min_lesion_model_px == 4.0
    props["hemoseg.min_lesion_model_px"] = "-1"
    with pytest.raises(ModelError, match="min_lesion_model_px"):
        ModelMetadata.from_props(props)
