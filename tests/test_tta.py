"""Flip test-time augmentation in the graph (hemoseg_edge.build.tta), run on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import REPO
from onnx import TensorProto, helper, numpy_helper

from hemoseg_edge.build import quantize
from hemoseg_edge.build.tta import TtaError, with_flip_tta
from hemoseg_edge.errors import ModelError
from hemoseg_edge.model_file import proto_metadata
from hemoseg_edge.model_file.metadata import ModelMetadata

HW = (32, 48)


def asymmetric_model() -> onnx.ModelProto:
    """Conv with a 3x3 kernel that no flip maps onto itself, then a sigmoid: its output on a
    mirrored image is not the mirrored output, so averaging the views changes the result."""
    kernel = np.array([[1.0, 0.0, -2.0], [0.5, 1.0, 0.0], [0.0, -1.0, 3.0]], np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["z"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["z"], ["probability"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "asymmetric",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, *HW])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [1, 1, *HW])],
        [
            numpy_helper.from_array(kernel.reshape(1, 1, 3, 3), "w"),
            numpy_helper.from_array(np.array([0.1], np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    md = ModelMetadata(input_height=HW[0], input_width=HW[1], version="tta-test")
    helper.set_model_props(model, md.to_props())
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).random((1, 1, *HW), dtype=np.float32)


@pytest.mark.parametrize("flips", [("hflip",), ("hflip", "vflip")])
def test_tta_is_the_mean_of_the_unflipped_views(image, flips):
    plain = asymmetric_model()
    axes = {"hflip": 3, "vflip": 2}
    views = [run(plain, image)]
    for f in flips:
        a = axes[f]
        views.append(np.flip(run(plain, np.ascontiguousarray(np.flip(image, a))), a))
    expected = np.mean(views, axis=0)
    got = run(with_flip_tta(plain, flips), image)
    assert got.shape == views[0].shape
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.abs(got - views[0]).max() > 1e-3  # the views differ: the mean is not a no-op


def test_tta_metadata_names_the_views_and_keeps_the_rest():
    plain = asymmetric_model()
    md = proto_metadata(with_flip_tta(plain, ("hflip", "vflip")))
    assert md.tta == "hflip,vflip"
    assert md.version == "tta-test" and md.input_hw == HW
    assert proto_metadata(plain).tta == "none"


def test_tta_refuses_bad_requests():
    plain = asymmetric_model()
    for flips in [(), ("rotate",), ("hflip", "hflip")]:
        with pytest.raises(TtaError, match="choose distinct"):
            with_flip_tta(plain, flips)
    with pytest.raises(TtaError, match="already has"):
        with_flip_tta(with_flip_tta(plain), ("vflip",))
    with pytest.raises(ModelError, match="unknown test-time augmentation"):
        ModelMetadata(tta="rotate").validate()


def test_tta_graph_converts_to_fp16_and_int8(image):
    tta = with_flip_tta(asymmetric_model())
    reference = run(tta, image)
    half = quantize.to_fp16(tta)
    assert proto_metadata(half).tta == "hflip" and proto_metadata(half).precision == "fp16"
    assert np.abs(run(half, image) - reference).max() < 5e-3
    calib = np.random.default_rng(1).random((3, 1, *HW), dtype=np.float32)
    q = quantize.to_int8(tta, calib)
    counts = quantize.check_trt_qdq_rules(q)
    assert counts["float_conv"] == 0  # both views' convolutions quantized
    assert np.abs(run(q, image) - reference).max() < 0.05
    # the original nodes keep their names, the mirrored view's are prefixed
    kept = quantize.to_int8(tta, calib, keep_float=["conv", "tta0/conv"])
    assert quantize.check_trt_qdq_rules(kept, allow_float_convs=True)["float_conv"] == 2


def test_shipped_default_model_carries_its_tta():
    from hemoseg_edge.model_file.shipped import DEFAULT_MODEL

    path = REPO / "engines" / DEFAULT_MODEL
    if not path.is_file():
        pytest.skip(f"{DEFAULT_MODEL} not in engines/")
    md = proto_metadata(onnx.load(str(path), load_external_data=False))
    assert md.tta == "hflip"
    for suffix in ("_fp16", "_int8"):
        variant = path.with_name(path.stem + suffix + ".onnx")
        assert proto_metadata(onnx.load(str(variant))).tta == "hflip"


@pytest.mark.parametrize("flips", [(), ("hflip",), ("hflip", "vflip")])
def test_compute_counted_in_the_graph_grows_with_the_views(flips):
    """hemoseg_edge.build.flops counts what the file computes: the asymmetric model's one 3x3
    conv is 2 * 9 multiply-adds per output pixel, and each view is one more pass."""
    from hemoseg_edge.build.flops import conv_gflop

    model = with_flip_tta(asymmetric_model(), flips) if flips else asymmetric_model()
    assert conv_gflop(model) * 1e9 == pytest.approx((1 + len(flips)) * 2 * 9 * HW[0] * HW[1])
