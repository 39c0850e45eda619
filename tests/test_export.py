"""training/export.py: Keras U-Net -> ONNX, checked against Keras with ONNX Runtime."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")  # training-side dependency
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from keras import layers  # noqa: E402

from hemoseg_edge.model_file.metadata import ModelMetadata  # noqa: E402
from training import export as ex  # noqa: E402
from training.model import build_unet  # noqa: E402

pytestmark = pytest.mark.train

HW = (64, 64)
TOL = 1e-4


def randomise(model: keras.Model, seed: int = 0) -> keras.Model:
    """Random conv biases and BatchNorm parameters/moving statistics, so that every BN really
    transforms its input (fresh BN stats are mean 0, var 1: nearly the identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D) and layer.use_bias:
            layer.bias.assign(rng.normal(0, 0.05, layer.bias.shape).astype(np.float32))
        if isinstance(layer, layers.BatchNormalization):
            c = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0.3, 0.2, c).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, c).astype(np.float32))
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.1, c).astype(np.float32))
    return model


def images(n: int, hw=HW, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *hw), dtype=np.float32)


def ort_run(proto: onnx.ModelProto, x_nchw: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": x_nchw})[0]


@pytest.fixture(scope="module")
def unet():
    return randomise(build_unet(HW))


@pytest.fixture(scope="module")
def proto(unet):
    return ex.keras_to_onnx(unet, HW)


def test_checker_and_parity_with_keras(unet, proto):
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["probability"]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, *HW]
    assert proto.opset_import[0].version == 17
    x = images(3)
    ref = np.concatenate(
        [
            keras.ops.convert_to_numpy(unet.predict_on_batch(x[i : i + 1, ..., None]))
            for i in range(3)
        ]
    )
    got = np.concatenate([ort_run(proto, x[i : i + 1, None]) for i in range(3)])
    assert got.shape == (3, 1, *HW)
    assert got.dtype == np.float32
    diff = float(np.max(np.abs(got[:, 0] - ref[..., 0])))
    assert diff <= TOL, diff
    assert ref.std() > 0.01, "outputs saturated: parity would be vacuous"
    assert ex.check_parity(unet, proto, x) == pytest.approx(diff, abs=1e-6)


def test_batchnorm_statistics_matter(unet, proto):
    """Guard against a vacuous parity test: the BN stats change the output, and the ONNX model
    carries them (with default stats the output would be far away)."""
    x = images(1)[:, None]
    plain = ex.keras_to_onnx(randomise(build_unet(HW), seed=0), HW)
    bn = next(i for i in plain.graph.initializer if i.name == "enc1_bn1/moving_mean")
    bn.CopyFrom(onnx.numpy_helper.from_array(np.zeros(32, np.float32), bn.name))
    assert np.max(np.abs(ort_run(plain, x) - ort_run(proto, x))) > 1e-3


def test_non_square_and_batch():
    """H != W catches an NHWC/NCHW mix-up that a square input hides; batch > 1 and dynamic."""
    hw = (32, 48)
    model = randomise(build_unet(hw), seed=3)
    x = images(2, hw)
    for batch in (2, None):
        p = ex.keras_to_onnx(model, hw, batch=batch)
        onnx.checker.check_model(p, full_check=True)
        dims = p.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value or d.dim_param for d in dims] == [batch or "N", 1, *hw]
        assert ex.check_parity(model, p.SerializeToString(), x) <= TOL
    with pytest.raises(ValueError, match="width"):
        ex.keras_to_onnx(model, (32, 32))


def test_resize_rule(unet, proto):
    ops = [n.op_type for n in proto.graph.node]
    resizes = [n for n in proto.graph.node if n.op_type == "Resize"]
    assert len(resizes) == 4 == ex.count_upsampling(unet)
    for n in resizes:
        attrs = {a.name: a.s for a in n.attribute}
        assert attrs["mode"] == b"nearest"
        assert attrs["coordinate_transformation_mode"] == b"asymmetric"
        assert attrs["nearest_mode"] == b"floor"
    assert not {"Shape", "Gather", "Tile", "Expand"} & set(ops)
    assert set(ops) == {
        "Conv",
        "Relu",
        "BatchNormalization",
        "MaxPool",
        "Resize",
        "Concat",
        "Sigmoid",
    }
    assert ex.check_resize_rule(proto, expected=4) == 4

    with pytest.raises(ValueError, match="5 UpSampling2D"):
        ex.check_resize_rule(proto, expected=5)
    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    bad.graph.node.append(onnx.helper.make_node("Shape", ["image"], ["s"]))
    with pytest.raises(ValueError, match="Shape"):
        ex.check_resize_rule(bad)
    bad.CopyFrom(proto)
    r = next(n for n in bad.graph.node if n.op_type == "Resize")
    next(a for a in r.attribute if a.name == "mode").s = b"linear"
    with pytest.raises(ValueError, match="mode"):
        ex.check_resize_rule(bad)


def test_metadata_round_trip(proto):
    md = ModelMetadata(
        input_height=64,
        input_width=64,
        threshold=0.35,
        version="t1",
        training_data="unit test",
        extra={"k": [1, 2]},
    )
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    p.metadata_props.add(key="other", value="kept")
    ex.attach_metadata(p, md)
    ex.attach_metadata(p, md)  # idempotent: no duplicate keys
    props = {m.key: m.value for m in p.metadata_props}
    assert len(props) == len(p.metadata_props)
    assert props["other"] == "kept"
    assert ModelMetadata.from_props(props) == md
    assert p.producer_name == "hemoseg-edge"
    assert "t1" in p.doc_string
    onnx.checker.check_model(p, full_check=True)
    with pytest.raises(ValueError, match="input size"):
        ex.attach_metadata(p, ModelMetadata(input_height=32, input_width=64))


@pytest.mark.parametrize(
    "make",
    [
        lambda x: layers.Dense(4, name="bad")(x),
        lambda x: layers.LeakyReLU(name="bad")(x),
        lambda x: layers.Conv2D(4, 3, padding="same", activation="tanh", name="bad")(x),
        lambda x: layers.UpSampling2D(2, interpolation="bilinear", name="bad")(x),
        lambda x: layers.MaxPooling2D(2, padding="same", name="bad")(x),
    ],
)
def test_unsupported_layer_raises(make):
    inp = keras.Input((16, 16, 1))
    x = layers.Conv2D(4, 3, padding="same")(inp)
    model = keras.Model(inp, make(x))
    with pytest.raises(ValueError, match="'bad'"):
        ex.keras_to_onnx(model, (16, 16))


def test_low_precision_weights_exported_as_float32():
    inp = keras.Input((16, 16, 1))
    x = layers.Conv2D(4, 3, padding="same", dtype="float16")(inp)
    x = layers.BatchNormalization(dtype="bfloat16", center=False, scale=False, name="bn")(x)
    out = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32")(x)
    model = keras.Model(inp, out)
    p = ex.keras_to_onnx(model, (16, 16))
    onnx.checker.check_model(p, full_check=True)
    assert {i.data_type for i in p.graph.initializer} == {onnx.TensorProto.FLOAT}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in p.graph.initializer}
    assert np.all(inits["bn/gamma"] == 1) and np.all(inits["bn/beta"] == 0)  # scale/center off
    # fp16/bf16 Keras vs fp32 ONNX: close, not bit-equal
    assert ex.check_parity(model, p, images(1, (16, 16))) < 2e-2


def test_export_writes_only_checked_files(unet, tmp_path):
    md = ModelMetadata(input_height=64, input_width=64, version="t2")
    weights = tmp_path / "m.weights.h5"
    unet.save_weights(weights)
    out = tmp_path / "engines" / "m.onnx"
    report = ex.export(weights, out, md, HW, parity_inputs=images(1))
    assert report.max_abs_diff <= TOL and report.n_resize == 4
    loaded = onnx.load(out)
    assert ModelMetadata.from_props({m.key: m.value for m in loaded.metadata_props}) == md
    got = ort_run(loaded, images(1)[:, None])
    ref = keras.ops.convert_to_numpy(unet(images(1)[..., None], training=False))
    assert np.max(np.abs(got[:, 0] - ref[..., 0])) <= TOL  # the weights file was really used

    failed = tmp_path / "failed.onnx"
    with pytest.raises(ValueError, match="parity"):
        ex.export(unet, failed, md, parity_inputs=images(1), tol=-1.0)
    assert not failed.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]  # no temp files left


def test_mobilenet_unet_exports_with_parity():
    """Model v2's ops: stride-2 'same' convs (asymmetric pads), depthwise convs, ReLU6 (Clip)
    and residual Adds; odd-sized strided inputs exercise the pad rule."""
    from training.model_mnv2 import build_mnv2_unet

    hw = (64, 96)
    model = randomise(build_mnv2_unet(hw), seed=5)
    p = ex.keras_to_onnx(model, hw)
    onnx.checker.check_model(p, full_check=True)
    ops = {n.op_type for n in p.graph.node}
    assert {"Clip", "Add", "Conv"} <= ops
    assert any(a.name == "group" and a.i > 1 for n in p.graph.node for a in n.attribute)
    ex.check_resize_rule(p, expected=ex.count_upsampling(model))
    x = images(2, hw, seed=4)
    assert ex.check_parity(model, p, x) <= TOL


@pytest.mark.parametrize("size,stride", [(7, 2), (8, 2), (9, 3)])
def test_strided_same_padding_matches_keras(size, stride):
    inp = keras.Input((size, size, 1))
    x = layers.Conv2D(3, 3, strides=stride, padding="same", name="c")(inp)
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", name="d")(x)
    model = randomise(keras.Model(inp, x))
    p = ex.keras_to_onnx(model, (size, size))
    assert ex.check_parity(model, p, images(1, (size, size))) <= TOL


@pytest.mark.parametrize("arch", ["unet", "mnv2"])
def test_onnx_weights_load_back_exactly(arch, tmp_path):
    """training.onnx_weights inverts the exporter: a fresh network takes every variable back
    bit for bit (v1 has no committed .h5; fine-tuning starts from its ONNX), depthwise kernels
    and BatchNorm statistics included."""
    from training.model_mnv2 import build_mnv2_unet
    from training.onnx_weights import load_onnx_weights

    build, hw = (build_unet, HW) if arch == "unet" else (build_mnv2_unet, (64, 96))
    model = randomise(build(hw), seed=7)
    path = tmp_path / "m.onnx"
    onnx.save(ex.keras_to_onnx(model, hw), str(path))
    fresh = build(hw)
    n = load_onnx_weights(fresh, path)
    assert n == sum(1 for layer in model.layers if layer.weights)
    for a, b in zip(model.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_onnx_weights_refuse_what_they_cannot_invert(unet, proto, tmp_path):
    from onnx import numpy_helper

    from training.onnx_weights import OnnxWeightsError, load_onnx_weights

    half = onnx.ModelProto()
    half.CopyFrom(proto)
    for t in half.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    onnx.save(half, str(tmp_path / "half.onnx"))
    before = [w.copy() for w in unet.get_weights()]
    with pytest.raises(OnnxWeightsError, match="float16"):
        load_onnx_weights(unet, tmp_path / "half.onnx")
    missing = onnx.ModelProto()
    missing.CopyFrom(proto)
    keep = [t for t in missing.graph.initializer if t.name != "dec4_bn2/moving_variance"]
    del missing.graph.initializer[:]
    missing.graph.initializer.extend(keep)
    onnx.save(missing, str(tmp_path / "missing.onnx"))
    with pytest.raises(OnnxWeightsError, match="dec4_bn2/moving_variance"):
        load_onnx_weights(unet, tmp_path / "missing.onnx")
    for a, b in zip(before, unet.get_weights(), strict=True):  # nothing half-loaded
        np.testing.assert_array_equal(a, b)
