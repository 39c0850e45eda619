"""OpenVINO backend: same ONNX bytes as ONNX Runtime, same answers; precision and auto choice."""

from __future__ import annotations

import os
import platform

import numpy as np
import pytest
from conftest import make_tiny_onnx

from hemoseg_edge.backends import auto_choice, load_backend
from hemoseg_edge.backends.onnxruntime import OnnxRuntimeBackend
from hemoseg_edge.errors import ModelError
from hemoseg_edge.metadata import ModelMetadata
from hemoseg_edge.segmenter import Segmenter

ov = pytest.importorskip("openvino")

from hemoseg_edge.backends.openvino import (  # noqa: E402
    OpenVinoBackend,
    choose_precision,
    cpu_flags,
)

X86 = platform.machine().lower() in ("x86_64", "amd64")


def _input(hw, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 1, *hw), dtype=np.float32)


@pytest.fixture(scope="module")
def unet_onnx() -> bytes:
    """A real (small) U-Net export: build_unet((64, 64)) with random weights and BN stats."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    pytest.importorskip("keras")
    from test_export import randomise

    from training.export import attach_metadata, keras_to_onnx
    from training.model import build_unet

    model = randomise(build_unet((64, 64)))
    md = ModelMetadata(input_height=64, input_width=64, version="test-unet64")
    return attach_metadata(keras_to_onnx(model, (64, 64)), md).SerializeToString()


@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-5), ("bf16", 2e-2)])
def test_tiny_model_matches_onnxruntime(tmp_path, precision, tol):
    model = make_tiny_onnx()
    x = _input((560, 576))
    ref = OnnxRuntimeBackend(model).run(x)
    be = OpenVinoBackend(model, precision=precision, cache_dir=tmp_path)
    got = be.run(x)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.abs(got - ref).max() <= tol
    assert be.input_spec.shape == (1, 1, 560, 576)
    want = "f32" if precision == "fp32" else "bf16"
    assert be.providers == [f"CPU:{want}"] or not X86


@pytest.mark.train
@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-4), ("bf16", 5e-2)])
def test_small_unet_matches_onnxruntime(unet_onnx, tmp_path, precision, tol):
    x = np.random.default_rng(3).random((2, 1, 64, 64), dtype=np.float32)
    ref = OnnxRuntimeBackend(unet_onnx).run(x)  # static batch 1: image by image
    got = OpenVinoBackend(unet_onnx, precision=precision, cache_dir=tmp_path).run(x)
    assert got.shape == ref.shape == (2, 1, 64, 64)
    assert np.abs(got - ref).max() <= tol


@pytest.mark.train
def test_segmenter_on_real_unet_reports_backend(unet_onnx, tmp_path):
    p = tmp_path / "u.onnx"
    p.write_bytes(unet_onnx)
    seg = Segmenter.from_engine(p, backend="openvino", precision="fp32", cache_dir=tmp_path)
    frame = np.full((200, 300, 3), 60, np.uint8)
    res = seg.segment(frame)
    assert res.model["backend"] == "openvino"
    assert res.model["providers"] == "CPU:f32"
    assert seg.info()["providers"] == ["CPU:f32"]


def test_qdq_int8_model_loads_and_runs(tmp_path):
    """A Q/DQ INT8 ONNX (as ORT's static quantizer writes them) runs through OpenVINO."""
    q = pytest.importorskip("onnxruntime.quantization")
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    src.write_bytes(make_tiny_onnx((64, 64)))

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"image": _input((64, 64), s)} for s in range(2)])

        def get_next(self):
            return next(self.it, None)

    q.quantize_static(str(src), str(dst), Reader(), quant_format=q.QuantFormat.QDQ)
    data = dst.read_bytes()
    x = _input((64, 64), 5)
    ref = OnnxRuntimeBackend(data).run(x)
    got = OpenVinoBackend(data, precision="fp32", cache_dir=tmp_path).run(x)
    assert np.abs(got - ref).max() < 0.05


def test_bad_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="OpenVINO cannot load"):
        OpenVinoBackend(b"not an onnx model", "bad.onnx", cache_dir=tmp_path)


def test_cache_dir_is_used_and_can_be_turned_off(tmp_path):
    cache = tmp_path / "cache"
    OpenVinoBackend(make_tiny_onnx((64, 64)), cache_dir=cache)
    assert any(cache.iterdir())
    OpenVinoBackend(make_tiny_onnx((32, 32)), cache_dir="")  # no cache: still works


def test_auto_picks_openvino_on_x86(tiny_model):
    seg = Segmenter.from_engine(tiny_model, backend="auto")
    assert seg.backend.name == ("openvino" if X86 else "onnxruntime")
    res = seg.segment(np.full((200, 300, 3), 60, np.uint8))
    assert res.model["backend"] == seg.backend.name
    assert res.model["providers"] == ",".join(seg.backend.providers)


def test_auto_choice_pure():
    both = ["onnxruntime", "openvino"]
    assert auto_choice(both, "x86_64") == "openvino"
    assert auto_choice(both, "AMD64") == "openvino"
    assert auto_choice(both, "aarch64") == "onnxruntime"
    assert auto_choice(["onnxruntime"], "x86_64") == "onnxruntime"
    assert auto_choice(["onnxruntime", "openvino", "tensorrt"], "aarch64") == "onnxruntime"


def test_auto_falls_back_to_onnxruntime_when_openvino_fails(monkeypatch):
    import hemoseg_edge.backends.openvino as ovb

    def broken(*a, **k):
        raise ModelError("simulated OpenVINO failure")

    monkeypatch.setattr(ovb, "OpenVinoBackend", broken)
    be = load_backend("auto", make_tiny_onnx((64, 64)), precision="bf16")
    assert be.name == "onnxruntime"


@pytest.mark.parametrize(
    ("flags", "caps", "want"),
    [
        ({"avx2", "fma"}, ["FP32", "BF16"], "f32"),  # flags win over OpenVINO's emulated BF16
        ({"avx512f", "avx512_bf16"}, [], "bf16"),
        ({"avx512f", "amx_bf16", "amx_tile"}, [], "bf16"),
        ({"asimd", "fphp"}, [], "f32"),
        (None, ["FP32", "BF16"], "bf16"),
        (None, ["FP32"], "f32"),
    ],
)
def test_choose_precision_auto(flags, caps, want):
    assert choose_precision("auto", flags, caps) == want


def test_choose_precision_explicit():
    assert choose_precision("fp32", {"amx_bf16"}) == "f32"
    assert choose_precision("BF16", set()) == "bf16"
    assert choose_precision("fp16") == "f16"
    with pytest.raises(ValueError, match="unknown precision"):
        choose_precision("int4")


def test_cpu_flags_parsing(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(str(f)) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) is None


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    from hemoseg_edge.backends.openvino import CACHE_ENV, default_cache_dir

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "envcache"))
    OpenVinoBackend(make_tiny_onnx((48, 48)))
    assert any((tmp_path / "envcache").iterdir())
    monkeypatch.setenv(CACHE_ENV, "")
    assert default_cache_dir() is None
