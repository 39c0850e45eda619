"""FP16 / INT8 conversion, TensorRT Q/DQ rules, engine files and the TensorRT backend's errors.

Everything except the ``gpu`` tests runs without TensorRT or a GPU (``make gpu-check`` runs
those: engines at three precisions against ONNX Runtime, and the GPU preprocessing path). The
accuracy-parity test needs the shipped FP32/FP16/INT8 models in ``engines/`` and the IDRiD test
set (``data``, ``slow``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
from conftest import REPO, data_root, make_tiny_onnx
from onnx import TensorProto, helper, numpy_helper

from hemoseg_edge.build import quantize
from hemoseg_edge.build.quantize import QdqRuleError, QuantizeError, check_trt_qdq_rules
from hemoseg_edge.errors import BackendUnavailableError, ModelError
from hemoseg_edge.model_file import engine_header as engine_file
from hemoseg_edge.model_file import proto_metadata
from hemoseg_edge.model_file.metadata import PREFIX, ModelMetadata

HW = (64, 64)
ENGINES = REPO / "engines"


def _ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def _props(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _trt_usable() -> bool:
    try:
        from hemoseg_edge.backends.tensorrt import require_tensorrt

        require_tensorrt()
    except BackendUnavailableError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# fixtures: a small real U-Net (random weights) and calibration inputs from training images
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unet_fp32() -> onnx.ModelProto:
    pytest.importorskip("keras", reason="needs keras (the [train] extra) to build the U-Net")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    from training.export import attach_metadata, keras_to_onnx
    from training.model import build_unet

    keras.utils.set_random_seed(0)
    md = ModelMetadata(
        input_height=HW[0],
        input_width=HW[1],
        version="test-unet",
        training_data="none (random weights)",
    )
    model = attach_metadata(keras_to_onnx(build_unet(HW), HW), md)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def calib() -> tuple[np.ndarray, str]:
    """Four IDRiD training images through io.load_image + preprocess_frame at 64x64, else
    seeded random inputs (no shared data)."""
    train = data_root() / "idrid" / "images" / "train"
    if train.is_dir() and any(train.glob("IDRiD_*.jpg")):
        paths = quantize.calibration_images([train], 4)
        return quantize.calibration_batch(paths, HW), "idrid-train"
    return np.random.default_rng(0).random((4, 1, *HW), dtype=np.float32), "random"


@pytest.fixture(scope="module")
def unet_fp16(unet_fp32) -> onnx.ModelProto:
    return quantize.to_fp16(unet_fp32)


@pytest.fixture(scope="module")
def unet_int8(unet_fp32, calib) -> onnx.ModelProto:
    return quantize.to_int8(unet_fp32, calib[0], calib_info={"source": calib[1]})


@pytest.fixture(scope="module")
def tiny_int8() -> onnx.ModelProto:
    """The conftest 1x1-conv model quantized (no keras needed): for the rule mutations."""
    md = ModelMetadata(input_height=HW[0], input_width=HW[1], version="tiny")
    model = onnx.load_from_string(make_tiny_onnx(HW, md))
    x = np.random.default_rng(1).random((3, 1, *HW), dtype=np.float32)
    return quantize.to_int8(model, x)


# --------------------------------------------------------------------------------------------
# FP16
# --------------------------------------------------------------------------------------------


@pytest.mark.train
def test_fp16_unet_valid_and_close_to_fp32(unet_fp32, unet_fp16, calib):
    onnx.checker.check_model(unet_fp16, full_check=True)
    quantize.check_fp16(unet_fp16)
    g = unet_fp16.graph
    assert g.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert g.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    scales = {n.input[2] for n in g.node if n.op_type == "Resize"}
    assert len(scales) == 4
    # one Cast per graph input/output and none around Resize (its data stays FP16): the reason
    # this pass is kept over onnxconverter-common (module docstring)
    assert sum(n.op_type == "Cast" for n in g.node) == 2
    types = {i.name: i.data_type for i in g.initializer}
    assert all(types[s] == TensorProto.FLOAT for s in scales)
    assert all(t == TensorProto.FLOAT16 for k, t in types.items() if k not in scales)
    p32, p16 = _props(unet_fp32), _props(unet_fp16)
    assert p16[PREFIX + "precision"] == "fp16"
    assert {k: v for k, v in p16.items() if k != PREFIX + "precision"} == {
        k: v for k, v in p32.items() if k != PREFIX + "precision"
    }
    x = calib[0]
    diff = np.abs(_ort_run(unet_fp32, x) - _ort_run(unet_fp16, x))
    assert diff.max() < 1e-2, diff.max()


def test_fp16_refuses_unknown_ops_and_non_fp32():
    md = ModelMetadata(input_height=HW[0], input_width=HW[1], version="tiny")
    model = onnx.load_from_string(make_tiny_onnx(HW, md))
    half = quantize.to_fp16(model)
    with pytest.raises(QuantizeError, match="precision is fp16"):
        quantize.to_fp16(half)
    odd = onnx.ModelProto()
    odd.CopyFrom(model)
    odd.graph.node[1].op_type = "Softmax"
    with pytest.raises(QuantizeError, match="Softmax"):
        quantize.to_fp16(odd)


# --------------------------------------------------------------------------------------------
# INT8
# --------------------------------------------------------------------------------------------


@pytest.mark.train
def test_int8_unet_follows_trt_rules_and_close_to_fp32(unet_fp32, unet_int8, calib):
    onnx.checker.check_model(unet_int8, full_check=True)
    counts = check_trt_qdq_rules(unet_int8)
    n_conv = sum(n.op_type == "Conv" for n in unet_fp32.graph.node)
    assert counts == {"conv": n_conv, "float_conv": 0, "quantize": n_conv, "dequantize": 2 * n_conv}
    assert not any(i.data_type == TensorProto.INT32 for i in unet_int8.graph.initializer)
    assert all(n.domain in ("", "ai.onnx") for n in unet_int8.graph.node)
    md = proto_metadata(unet_int8)
    assert md.precision == "int8" and md.version == "test-unet"
    assert md.extra["calibration"]["images"] == len(calib[0])
    assert md.extra["calibration"]["method"] == "ort-minmax"
    x = calib[0]
    ref, got = _ort_run(unet_fp32, x), _ort_run(unet_int8, x)
    assert np.abs(ref - got).max() < 0.05
    assert np.abs(ref - got).mean() < 0.01


def test_int8_tiny_model_rules(tiny_int8):
    assert check_trt_qdq_rules(tiny_int8)["conv"] == 1
    assert proto_metadata(tiny_int8).precision == "int8"


def _mutated(model: onnx.ModelProto, fn) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    fn(m)
    return m


def _init(m: onnx.ModelProto, suffix: str) -> onnx.TensorProto:
    return next(i for i in m.graph.initializer if i.name.endswith(suffix))


def _set(m: onnx.ModelProto, suffix: str, arr: np.ndarray) -> None:
    t = _init(m, suffix)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))


def _weight_dq(m: onnx.ModelProto) -> onnx.NodeProto:
    return next(
        n
        for n in m.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized")
    )


def _set_attr(n: onnx.NodeProto, name: str, value: int) -> None:
    kept = [a for a in n.attribute if a.name != name]
    del n.attribute[:]
    n.attribute.extend([*kept, helper.make_attribute(name, value)])


def _act_scale(m: onnx.ModelProto) -> str:
    return next(n.input[1] for n in m.graph.node if n.op_type == "QuantizeLinear")


def _act_zp(m: onnx.ModelProto) -> str:
    return next(n.input[2] for n in m.graph.node if n.op_type == "QuantizeLinear")


def _add_int32_bias_dq(m: onnx.ModelProto) -> None:
    m.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.int32), "b_q"))
    m.graph.initializer.append(numpy_helper.from_array(np.ones(1, np.float32), "b_s"))
    m.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.int32), "b_z"))
    m.graph.node.insert(0, helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b_dq"]))


MUTATIONS = {
    "nonzero zero point": (
        lambda m: _set(m, _act_zp(m), np.array(3, np.int8)),
        "zero point is not 0",
    ),
    "uint8 zero point": (lambda m: _set(m, _act_zp(m), np.array(0, np.uint8)), "not int8"),
    "vector activation scale": (
        lambda m: (
            _set(m, _act_scale(m), np.array([0.01], np.float32)),
            _set(m, _act_zp(m), np.array([0], np.int8)),
        ),
        "not a scalar",
    ),
    "weight scale axis 1": (lambda m: _set_attr(_weight_dq(m), "axis", 1), "per-channel on axis 0"),
    "per-tensor weight scale": (
        lambda m: (
            _set(m, _weight_dq(m).input[1], np.array(0.1, np.float32)),
            _set(m, _weight_dq(m).input[2], np.array(0, np.int8)),
        ),
        "per-channel on axis 0",
    ),
    "float weight": (
        lambda m: next(n for n in m.graph.node if n.op_type == "Conv").input.__setitem__(1, "w2"),
        "weight is not from DequantizeLinear",
    ),
    "int32 bias dequantize": (_add_int32_bias_dq, "quantized bias"),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_qdq_rules_reject(tiny_int8, name):
    fn, match = MUTATIONS[name]
    bad = _mutated(tiny_int8, fn)
    if name == "float weight":
        bad.graph.initializer.append(
            numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w2")
        )
    with pytest.raises(QdqRuleError, match=match) as e:
        check_trt_qdq_rules(bad)
    assert "\n" not in str(e.value)


def test_to_int8_checks_calibration_shape(tiny_int8):
    md = ModelMetadata(input_height=HW[0], input_width=HW[1], version="tiny")
    model = onnx.load_from_string(make_tiny_onnx(HW, md))
    with pytest.raises(QuantizeError, match="calibration data"):
        quantize.to_int8(model, np.zeros((2, 1, 32, 32), np.float32))
    with pytest.raises(QuantizeError, match="precision is int8"):
        quantize.to_int8(tiny_int8, np.zeros((2, 1, *HW), np.float32))


# --------------------------------------------------------------------------------------------
# calibration images and the CLI
# --------------------------------------------------------------------------------------------


def _fundus(path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = np.zeros((300, 400, 3), np.uint8)
    cv2.circle(img, (200, 150), 140, (40, 90, 160), -1)
    img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), img)


def test_calibration_images_spread_and_refuse_test_folders(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    for i in range(10):
        _fundus(train / f"im{i:02d}.jpg", i)
    picked = quantize.calibration_images([train], 4)
    assert [p.name for p in picked] == ["im00.jpg", "im02.jpg", "im05.jpg", "im07.jpg"]
    assert len(quantize.calibration_images([train], 0)) == 10
    batch = quantize.calibration_batch(picked[:2], HW)
    assert batch.shape == (2, 1, *HW) and batch.dtype == np.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    test = tmp_path / "images" / "test"
    test.mkdir(parents=True)
    _fundus(test / "IDRiD_55.jpg", 0)
    with pytest.raises(QuantizeError, match="not test images"):
        quantize.calibration_images([train, test], 4)
    with pytest.raises(QuantizeError, match="no such"):
        quantize.calibration_images([tmp_path / "missing"], 4)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hemoseg_edge.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_quantize_fp16_and_int8(tmp_path):
    md = ModelMetadata(input_height=HW[0], input_width=HW[1], version="tiny")
    src = tmp_path / "tiny.onnx"
    src.write_bytes(make_tiny_onnx(HW, md))
    train = tmp_path / "train"
    train.mkdir()
    for i in range(3):
        _fundus(train / f"im{i}.png", i)
    p = _cli("quantize", str(src), "--precision", "fp16", "--out", str(tmp_path / "h.onnx"))
    assert p.returncode == 0, p.stderr
    assert proto_metadata(onnx.load(tmp_path / "h.onnx")).precision == "fp16"
    p = _cli(
        "quantize",
        str(src),
        "--precision",
        "int8",
        "--out",
        str(tmp_path / "q.onnx"),
        "--calib",
        str(train),
        "--calib-count",
        "2",
    )
    assert p.returncode == 0, p.stderr
    q = onnx.load(tmp_path / "q.onnx")
    check_trt_qdq_rules(q)
    assert proto_metadata(q).extra["calibration"]["images"] == 2
    p = _cli("quantize", str(src), "--precision", "int8", "--out", str(tmp_path / "r.onnx"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    p = _cli(
        "quantize",
        str(tmp_path / "h.onnx"),
        "--precision",
        "fp16",
        "--out",
        str(tmp_path / "hh.onnx"),
    )
    assert p.returncode == 1 and "precision is fp16" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# engine files (no TensorRT needed)
# --------------------------------------------------------------------------------------------


def _header(**over) -> dict:
    md = ModelMetadata(version="test-engine", precision="int8")
    h = {
        "metadata": md.to_props(),
        "tensorrt_version": "10.3.0",
        "gpu_name": "Orin",
        "compute_capability": "8.7",
        "precision": "int8",
        "onnx_sha256": "0" * 64,
    }
    h.update(over)
    return h


def test_engine_header_round_trip():
    plan = bytes(range(256)) * 10
    data = engine_file.pack(_header(), plan)
    assert engine_file.is_engine(data)
    header, got = engine_file.split(data, "m.engine")
    assert got == plan
    assert header["gpu_name"] == "Orin" and header["precision"] == "int8"
    assert ModelMetadata.from_props(header["metadata"]).version == "test-engine"
    with pytest.raises(ValueError, match="lacks"):
        engine_file.pack({"metadata": {}}, plan)


@pytest.mark.parametrize("cut", ["magic", "length", "header", "plan", "flip", "json", "key"])
def test_corrupt_engine_one_line(cut):
    plan = b"\x01" * 1000
    data = engine_file.pack(_header(), plan)
    n = len(engine_file.MAGIC)
    bad = {
        "magic": b"NOTANENG" + data[n:],
        "length": data[: n + 2],
        "header": data[: n + 4 + 10],
        "plan": data[:-10],
        "flip": data[:-1] + b"\x02",
        "json": data[:n] + data[n : n + 4] + b"{" * 20 + data[n + 24 :],
        "key": engine_file.MAGIC + engine_file._LEN.pack(2) + b"{}" + plan,
    }[cut]
    with pytest.raises(ModelError) as e:
        engine_file.split(bad, "m.engine")
    msg = str(e.value)
    assert msg.startswith("m.engine: ") and "\n" not in msg


def test_check_compatible_messages():
    h = _header()
    engine_file.check_compatible(h, "10.3.0", "Orin", "8.7", "m.engine")
    with pytest.raises(ModelError, match=r"TensorRT 10\.3\.0, this is 11\.0\.0.*build-engine"):
        engine_file.check_compatible(h, "11.0.0", "Orin", "8.7", "m.engine")
    with pytest.raises(ModelError, match=r"built for Orin \(sm 8\.7\), this is .*sm 9\.0"):
        engine_file.check_compatible(h, "10.3.0", "NVIDIA H100", "9.0", "m.engine")
    with pytest.raises(ModelError) as e:
        engine_file.check_compatible(h, "10.3.0", "Orin", "7.2", "m.engine")
    assert "\n" not in str(e.value) and "rebuild" in str(e.value)


def test_engine_cache_path_names(tmp_path):
    from hemoseg_edge.model_file import engine_cache_path

    p = engine_cache_path(tmp_path / "hemoseg_unet_v1.onnx", "Orin (nvgpu)", "10.3.0.30")
    assert p == tmp_path / "hemoseg_unet_v1.orin-nvgpu.10.3.0.30.engine"


@pytest.mark.skipif(_trt_usable(), reason="TensorRT is installed: the error path cannot be hit")
def test_segmenter_engine_without_tensorrt_one_line(tmp_path):
    from hemoseg_edge.segmenter import Segmenter

    path = tmp_path / "m.engine"
    path.write_bytes(engine_file.pack(_header(), b"plan"))
    with pytest.raises(BackendUnavailableError) as e:
        Segmenter.from_engine(path)
    assert "\n" not in str(e.value) and "TensorRT" in str(e.value)
    with pytest.raises(BackendUnavailableError):
        Segmenter.from_engine(path, backend="onnxruntime")  # an engine always needs TensorRT
    p = _cli("build-engine", str(path), "--out", str(tmp_path / "x.engine"))
    assert p.returncode == 3 and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(_trt_usable(), reason="TensorRT is installed: the error path cannot be hit")
def test_tensorrt_backend_on_onnx_without_tensorrt(tiny_model):
    from hemoseg_edge.segmenter import Segmenter

    with pytest.raises(BackendUnavailableError) as e:
        Segmenter.from_engine(tiny_model, backend="tensorrt")
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------
# on a GPU with TensorRT and pycuda
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.train
def test_tensorrt_engine_builds_and_matches_ort(unet_fp32, unet_fp16, unet_int8, calib, tmp_path):
    if not _trt_usable() or importlib.util.find_spec("pycuda") is None:
        pytest.skip("needs TensorRT and pycuda on an NVIDIA GPU")
    from hemoseg_edge.backends.tensorrt import TensorRtBackend
    from hemoseg_edge.build.trt_engine import build_engine_file
    from hemoseg_edge.segmenter import Segmenter

    x = calib[0]
    for name, model, tol in (
        ("fp32", unet_fp32, 1e-3),
        ("fp16", unet_fp16, 2e-2),
        ("int8", unet_int8, 0.1),
    ):
        src = tmp_path / f"{name}.onnx"
        onnx.save(model, src)
        out = build_engine_file(src, tmp_path / f"{name}.engine", workspace_mb=256)
        header, _ = engine_file.split(out.read_bytes())
        assert header["precision"] == name
        seg = Segmenter.from_engine(out)
        assert isinstance(seg.backend, TensorRtBackend)
        got = seg.backend.run(x)
        assert np.abs(got - _ort_run(unet_fp32, x)).max() < tol, name
        seg.backend.close()
    seg = Segmenter.from_engine(tmp_path / "fp32.onnx", backend="tensorrt")  # builds + caches
    assert list(tmp_path.glob("fp32.*.engine"))


def _trt_or_skip() -> None:
    if not _trt_usable() or importlib.util.find_spec("pycuda") is None:
        pytest.skip("needs TensorRT and pycuda on an NVIDIA GPU")


def _read_input_binding(backend) -> np.ndarray:
    """The TensorRT backend's input binding (device) as it stands, copied to the host."""
    out = np.empty(backend.input_spec.shape, np.float32)
    backend._ctx.push()
    try:
        backend._cuda.memcpy_dtoh(out, backend._dev_in)
    finally:
        backend._ctx.pop()
    return out


@pytest.mark.gpu
def test_tensorrt_preprocesses_on_the_gpu(tmp_path, sample_image):
    """``Segmenter`` on a TensorRT engine takes the device path: the kernel fills the engine's
    input binding (read back: equal to the CPU tensor within float rounding, for BGR, grey,
    BGRA and row-padded frames), and the results match ONNX Runtime's CPU path on the same
    model (the tiny 1x1-conv model at the default input size; no keras needed)."""
    _trt_or_skip()
    from hemoseg_edge.backends.tensorrt import TensorRtBackend
    from hemoseg_edge.build.trt_engine import build_engine_file
    from hemoseg_edge.inputs import load_image
    from hemoseg_edge.preprocess import preprocess_frame
    from hemoseg_edge.segmenter import Segmenter

    md = ModelMetadata(version="test-tiny", threshold=0.5, training_data="none (test model)")
    src = tmp_path / "tiny.onnx"
    src.write_bytes(make_tiny_onnx(metadata=md))
    engine = build_engine_file(src, tmp_path / "tiny.engine", workspace_mb=256)
    seg = Segmenter.from_engine(engine)
    be = seg.backend
    try:
        assert isinstance(be, TensorRtBackend) and be.takes_frames
        assert be.providers[-1].startswith("preprocess: CUDA kernel")
        image = load_image(sample_image, seg.metadata.input_hw)
        pre = preprocess_frame(image.frame, image.original_hw, seg.metadata.input_hw)
        box = tuple(float(v) for v in pre.fov.box)
        frame = image.frame
        padded = np.zeros((frame.shape[0], frame.shape[1] + 24, 3), np.uint8)
        padded[:, : frame.shape[1]] = frame
        bgra = np.concatenate([frame, np.full(frame.shape[:2] + (1,), 9, np.uint8)], axis=2)
        variants = {
            "bgr": frame,
            "grey": np.ascontiguousarray(frame[:, :, 1]),
            "bgra": bgra,
            "padded": padded[:, : frame.shape[1]],
        }
        for name, variant in variants.items():
            prob = be.run_frame(variant, box)
            binding = _read_input_binding(be)
            assert np.abs(binding - pre.tensor).max() <= 1e-5, name
            assert prob.shape == pre.tensor.shape and prob.dtype == np.float32
        # the same engine on the CPU-made tensor: the inputs differ only by float rounding
        assert np.abs(be.run(pre.tensor) - be.run_frame(frame, box)).max() <= 1e-2
        cpu = Segmenter.from_engine(src, backend="onnxruntime")
        got, want = seg.segment(image), cpu.segment(image)
        assert got.geometry == want.geometry
        assert np.abs(got.probability - want.probability).max() <= 2e-2
        assert np.mean(got.mask != want.mask) <= 1e-3
        results = list(seg.segment_batch([image, image]))
        assert all(np.array_equal(r.probability, got.probability) for _, r in results)
    finally:
        be.close()


def _tiny_fp16_io_onnx(hw=HW) -> bytes:
    """The tiny model with a float16 input (Cast to float inside): an FP16-I/O engine."""
    md = ModelMetadata(input_height=hw[0], input_width=hw[1], version="tiny-fp16-io")
    weight = numpy_helper.from_array(np.full((1, 1, 1, 1), -40.0, np.float32), "w")
    bias = numpy_helper.from_array(np.array([6.0], np.float32), "b")
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "w", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_fp16_io",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT16, [1, 1, *hw])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [1, 1, *hw])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in md.to_props().items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.mark.gpu
def test_tensorrt_half_input_engine_is_refused_for_gpu_preprocessing(tmp_path, sample_image):
    """The kernel writes float32: a float16-input engine is refused with one line, and runs
    with CPU preprocessing (``gpu_preprocess=False``: tensors cast to half on the host)."""
    _trt_or_skip()
    from hemoseg_edge.build.trt_engine import build_engine_file
    from hemoseg_edge.segmenter import Segmenter

    src = tmp_path / "half_io.onnx"
    src.write_bytes(_tiny_fp16_io_onnx())
    engine = build_engine_file(src, tmp_path / "half_io.engine", workspace_mb=256)
    with pytest.raises(ModelError, match="float16") as e:
        Segmenter.from_engine(engine)
    assert "\n" not in str(e.value)
    seg = Segmenter.from_engine(engine, gpu_preprocess=False)
    try:
        assert not seg.backend.takes_frames
        assert seg.backend.providers[-1] == "preprocess: CPU"
        image = seg.load(sample_image)
        pre = seg.preprocess(image)
        assert pre.tensor is not None
        x = pre.tensor.astype(np.float16).astype(np.float32)
        want = 1.0 / (1.0 + np.exp(-(6.0 - 40.0 * x)))
        assert np.abs(seg.backend.run(pre.tensor) - want).max() <= 1e-2
        seg.segment(image)
    finally:
        seg.backend.close()


# --------------------------------------------------------------------------------------------
# accuracy parity of the shipped models (the lead ships them into engines/)
# --------------------------------------------------------------------------------------------

SHIPPED_FAMILIES = {
    family: {
        k: ENGINES / f"{family}{s}.onnx"
        for k, s in (("fp32", ""), ("fp16", "_fp16"), ("int8", "_int8"))
    }
    for family in (
        "hemoseg_mnv2_v7",
        "hemoseg_mnv2_v6",
        "hemoseg_mnv2_v4",
        "hemoseg_mnv2_v3",
        "hemoseg_mnv2_v2",
        "hemoseg_unet_v5",
        "hemoseg_unet_v1",
    )
}
MAX_DICE_DROP = {"fp16": 0.005, "int8": 0.01}


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(SHIPPED_FAMILIES))
def test_shipped_quantized_models_keep_dice(family):
    shipped = SHIPPED_FAMILIES[family]
    missing = [p.name for p in shipped.values() if not p.is_file()]
    if missing:
        pytest.skip(f"shipped models not in engines/ yet: {', '.join(missing)}")
    masks = data_root() / "idrid" / "masks" / "HE" / "test"
    if not masks.is_dir():
        pytest.skip(f"IDRiD test masks not found under {data_root()} (set HEMOSEG_DATA)")
    from training.data import idrid_items
    from training.quantize_report import evaluate

    items = idrid_items("test", data_root())[:3]
    assert len(items) == 3
    report = evaluate(shipped, items)
    models = report["models"]
    for k, drop in MAX_DICE_DROP.items():
        assert models[k]["precision"] == k
        assert abs(models[k]["dice"] - models["fp32"]["dice"]) <= drop, json.dumps(models)


def test_int8_keep_float_leaves_the_named_conv_in_float():
    md = ModelMetadata(input_height=HW[0], input_width=HW[1], version="tiny")
    model = onnx.load_from_string(make_tiny_onnx(HW, md))
    model.graph.node[0].name = "only_conv"
    x = np.random.default_rng(1).random((3, 1, *HW), dtype=np.float32)
    q = quantize.to_int8(model, x, keep_float=["only_conv"])
    assert not any(n.op_type == "DequantizeLinear" for n in q.graph.node)
    assert proto_metadata(q).extra["calibration"]["float_nodes"] == ["only_conv"]
    assert check_trt_qdq_rules(q, allow_float_convs=True)["float_conv"] == 1
    full = quantize.to_int8(model, x)
    assert any(n.op_type == "DequantizeLinear" for n in full.graph.node)
    with pytest.raises(QuantizeError, match="no Conv node"):
        quantize.to_int8(model, x, keep_float=["nope"])
