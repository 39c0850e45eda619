"""OpenVINO backend: same ONNX bytes as ONNX Runtime, same answers; precision and auto choice."""

from __future__ import annotations

import os
import platform

import numpy as np
import pytest
from conftest import make_tiny_onnx

from hemoseg_edge.backends import auto_choice, load_backend
from hemoseg_edge.backends.onnxruntime import OnnxRuntimeBackend
from hemoseg_edge.cpu import has_native_bf16
from hemoseg_edge.errors import ModelError
from hemoseg_edge.model_file.metadata import ModelMetadata
from hemoseg_edge.model_file.shipped import (
    DEFAULT_MODEL,
    INT8_MODEL,
    OPENVINO_PRECISION,
    OPENVINO_RUNS_INT8,
    PREVIOUS_MODEL,
    default_model_path,
)
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
    # bf16 where the CPU computes in it; OpenVINO compiles f32 on an AVX2-only host
    want = "bf16" if precision == "bf16" and has_native_bf16() else "f32"
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


def test_throughput_mode_runs_requests_at_once_with_the_same_answers(tmp_path):
    """Throughput tuning: ``concurrency`` requests, callable from that many threads at once,
    each answer equal to the latency-tuned backend's for the same input."""
    from concurrent.futures import ThreadPoolExecutor

    model = make_tiny_onnx((64, 64))
    lat = OpenVinoBackend(model, precision="fp32", cache_dir=tmp_path)
    thr = OpenVinoBackend(model, precision="fp32", cache_dir=tmp_path, throughput=True)
    assert lat.concurrency == 1 and thr.concurrency >= 1
    assert (thr.concurrency > 1) == thr.providers[0].endswith(f":{thr.concurrency}streams")
    xs = [_input((64, 64), s) for s in range(4 * thr.concurrency)]
    with ThreadPoolExecutor(thr.concurrency) as pool:
        got = list(pool.map(thr.run, xs))
    for x, y in zip(xs, got, strict=True):
        assert np.abs(y - lat.run(x)).max() <= 1e-6


def test_segment_batch_with_streams_equals_segment(tiny_model, sample_image, tmp_path):
    single = Segmenter.from_engine(tiny_model, backend="openvino", cache_dir=tmp_path)
    batch = Segmenter.from_engine(
        tiny_model, backend="openvino", cache_dir=tmp_path, throughput=True
    )
    ref = single.segment(sample_image)
    frames = [np.full((200, 300, 3), v, np.uint8) for v in (40, 90)]
    inputs = [sample_image, frames[0], sample_image, frames[1], sample_image]
    out = list(batch.segment_batch(inputs, prefetch=2))
    assert [i for i, _ in out] == inputs
    for (item, res), want in zip(out, inputs, strict=True):
        expect = ref if item is sample_image else single.segment(want)
        assert np.array_equal(res.mask, expect.mask)
        assert res.lesions == expect.lesions


@pytest.mark.parametrize(
    ("backend", "flags", "want"),
    [
        ("auto", {"avx2", "amx_int8"}, INT8_MODEL if X86 and OPENVINO_RUNS_INT8 else None),
        ("openvino", {"avx512_vnni"}, INT8_MODEL if OPENVINO_RUNS_INT8 else None),
        ("auto", {"avx2", "fma"}, DEFAULT_MODEL),  # no int8 dot products
        ("onnxruntime", {"amx_int8"}, DEFAULT_MODEL),  # ORT runs Q/DQ slower
    ],
)
def test_default_model_variant_follows_backend_and_cpu(monkeypatch, backend, flags, want):
    """Without a path, the shipped model's INT8 variant runs where OpenVINO has int8 dot
    products, else the FP32 model (the files are in engines/, guarded by the manifest)."""
    import hemoseg_edge.segmenter as segmod

    monkeypatch.setattr(segmod, "cpu_flags", lambda: frozenset(flags))
    seg = Segmenter.from_engine(None, backend=backend)
    assert os.path.basename(seg.source) == (want or DEFAULT_MODEL)
    assert seg.metadata.precision == ("int8" if "int8" in seg.source else "fp32")


def test_shipped_model_gets_its_parity_precision_by_any_route(monkeypatch, tmp_path):
    """The default model runs on OpenVINO at ``OPENVINO_PRECISION`` whether it is loaded as
    the default or by path (the archive's workers load a spooled copy by path): otherwise an
    AMX host would run bf16 there and the archive's rows would differ from ``segment``'s."""
    import shutil

    import hemoseg_edge.backends.openvino as ovmod

    asked: list[str] = []
    real = ovmod.choose_precision
    monkeypatch.setattr(
        ovmod, "choose_precision", lambda req, *a: asked.append(req) or real(req, *a)
    )
    spooled = tmp_path / DEFAULT_MODEL
    shutil.copy(default_model_path(), spooled)
    for path in (None, spooled):
        Segmenter.from_engine(path, backend="openvino").backend.close()
    Segmenter.from_engine(default_model_path(PREVIOUS_MODEL), backend="openvino").backend.close()
    assert asked == [OPENVINO_PRECISION, OPENVINO_PRECISION, "auto"]


@pytest.mark.train
def test_nncf_int8_runs_on_openvino(unet_onnx, tmp_path):
    """``quantize --method nncf``: Q/DQ on the convolutions but the head, OpenVINO runs it."""
    pytest.importorskip("nncf")
    import onnx

    from hemoseg_edge.build.quantize import to_int8

    calib = np.random.default_rng(1).random((4, 1, 64, 64), dtype=np.float32)
    model = onnx.load_from_string(unet_onnx)
    q = to_int8(model, calib, method="nncf", source="u.onnx")
    producer = {o: n for n in q.graph.node for o in n.output}
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    weights = [producer.get(c.input[1]) for c in convs]  # NNCF puts activation Q/DQ upstream
    assert all(p is not None and p.op_type == "DequantizeLinear" for p in weights[:-1])
    assert weights[-1] is None or weights[-1].op_type != "DequantizeLinear"  # head: float
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    props = {p.key: p.value for p in q.metadata_props}
    assert props["hemoseg.precision"] == "int8" and "nncf" in props["hemoseg.extra"]
    be = OpenVinoBackend(q.SerializeToString(), cache_dir=tmp_path)
    out = be.run(calib[:1])
    assert out.shape == (1, 1, 64, 64) and np.isfinite(out).all()
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_run_after_close_raises_instead_of_waiting(tmp_path):
    from hemoseg_edge.errors import BackendUnavailableError

    be = OpenVinoBackend(make_tiny_onnx((32, 32)), cache_dir=tmp_path, throughput=True)
    be.run(_input((32, 32)))
    be.close()
    with pytest.raises(BackendUnavailableError, match="after close"):
        be.run(_input((32, 32)))


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize(
    ("fp32", "variant"),
    [
        # what the default CPU path runs on OpenVINO (v3: its FP32 file, OPENVINO_RUNS_INT8;
        # the INT8 files on OpenVINO are host-dependent: on a 2-core AMD EPYC (AVX512-VNNI, no
        # AMX) v2's lost 0.028 Dice on these 3 images, v3's 0.066 on validation)
        (DEFAULT_MODEL, None),
    ],
)
def test_shipped_openvino_path_keeps_dice(fp32, variant):
    """A shipped model as OpenVINO runs it vs its FP32 file on ONNX Runtime: pooled Dice on 3
    IDRiD test images within the INT8 tolerance (all 27: ``make bench``, parity)."""
    from conftest import data_root, idrid_images, require_data
    from PIL import Image

    from hemoseg_edge.metrics import Counts, confusion, dice
    from hemoseg_edge.model_file.shipped import default_model_path

    require_data()
    masks = data_root() / "idrid" / "masks" / "HE" / "test"
    images = idrid_images("test")[:3]
    if len(images) < 3 or not masks.is_dir():
        pytest.skip("IDRiD test images and HE masks not in the shared data")
    ov = (
        Segmenter.default_model("openvino")
        if variant is None
        else Segmenter.from_engine(default_model_path(variant), backend="openvino")
    )
    runs = {
        "fp32": Segmenter.from_engine(default_model_path(fp32), backend="onnxruntime"),
        "openvino": ov,
    }
    scores = {}
    for name, seg in runs.items():
        total = Counts(0, 0, 0, 0)
        for path, res in seg.segment_batch(images):
            truth = np.asarray(Image.open(masks / f"{path.stem}_HE.tif")) > 0
            total = total + confusion(res.mask, truth if truth.ndim == 2 else truth.any(axis=2))
        scores[name] = dice(total)
    assert scores["fp32"] > 0.3, scores  # the model finds hemorrhages at all
    assert abs(scores["openvino"] - scores["fp32"]) <= 0.01, scores


FIRST_INFERENCE_RACE = """
import sys, threading
import numpy as np
sys.path.insert(0, {tests!r})
from conftest import make_tiny_onnx
from hemoseg_edge.backends.openvino import OpenVinoBackend
be = OpenVinoBackend(make_tiny_onnx(hw=(64, 64)), throughput=True)
x = np.zeros((1, 1, 64, 64), np.float32)
start = threading.Barrier(4)
def first_inference():
    start.wait()
    be.run(x)
threads = [threading.Thread(target=first_inference) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("done")
"""


@pytest.mark.slow
def test_first_inferences_from_several_threads_do_not_deadlock(tmp_path):
    """Four threads making a fresh backend's first numpy conversions at once deadlocked in
    pybind11's lazy numpy-API initialisation (8 of 15 fresh processes hung without the
    warm-up in the constructor, 0 of 15 with it). Each try is a fresh process: the race is only
    on the first conversion."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "race.py"
    script.write_text(FIRST_INFERENCE_RACE.format(tests=str(Path(__file__).parent)))
    for attempt in range(6):
        try:
            p = subprocess.run(
                [sys.executable, str(script)], capture_output=True, text=True, timeout=60
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"attempt {attempt + 1}: first inferences deadlocked (60 s)")
        assert p.returncode == 0 and "done" in p.stdout, p.stderr[-1500:]
