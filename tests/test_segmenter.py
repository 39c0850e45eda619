"""``Segmenter``: untrusted model output, per-image failures, the inference watchdog, the
threshold override and the identities (sha256) a result carries."""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import onnx
import pytest
from conftest import make_tiny_onnx
from onnx import TensorProto, helper, numpy_helper

from hemoseg_edge import Segmenter
from hemoseg_edge.backends.onnxruntime import OnnxRuntimeBackend
from hemoseg_edge.errors import HemosegError, ModelError
from hemoseg_edge.model_file.metadata import ModelMetadata
from hemoseg_edge.segmenter import StalledInferenceError

MD = ModelMetadata(version="t", threshold=0.5)
HW = MD.input_hw


def _model(tail: str) -> bytes:
    """The tiny model with its output bent: "nan", "range" (up to 2) or "shape" (half size)."""
    m = onnx.load_from_string(make_tiny_onnx(metadata=MD))
    g = m.graph
    g.node[-1].output[0] = "p"
    if tail == "nan":
        g.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "zero"))
        g.node.extend([helper.make_node("Mul", ["p", "zero"], ["z0"])])
        g.node.extend([helper.make_node("Div", ["z0", "z0"], ["probability"])])  # 0/0
    elif tail == "range":
        g.initializer.append(numpy_helper.from_array(np.full(1, 2.0, np.float32), "two"))
        g.node.extend([helper.make_node("Mul", ["p", "two"], ["probability"])])
    else:
        g.node.extend(
            [
                helper.make_node(
                    "MaxPool", ["p"], ["probability"], kernel_shape=[2, 2], strides=[2, 2]
                )
            ]
        )
        del g.output[:]
        out = helper.make_tensor_value_info(
            "probability", TensorProto.FLOAT, [1, 1, HW[0] // 2, HW[1] // 2]
        )
        g.output.append(out)
    return m.SerializeToString()


@pytest.mark.parametrize(
    "tail, words",
    [("nan", "not finite"), ("range", "not a probability"), ("shape", "output shape")],
)
def test_model_output_is_checked_on_every_run(tmp_path, sample_image, tail, words):
    path = tmp_path / f"{tail}.onnx"
    path.write_bytes(_model(tail))
    seg = Segmenter.from_engine(path, backend="onnxruntime")
    with pytest.raises(ModelError, match=words):
        seg.segment(sample_image)
    [(_, res)] = list(seg.segment_batch([sample_image]))
    assert isinstance(res, ModelError) and "\n" not in str(res)


class _Exploding(OnnxRuntimeBackend):
    """A real ONNX Runtime session whose second call raises what a buggy runtime might."""

    calls = 0

    def run(self, batch):
        type(self).calls += 1
        if type(self).calls == 2:
            raise RuntimeError("bad things\nacross lines")
        return super().run(batch)


def test_any_exception_is_one_image_failure_not_the_batch(sample_image):
    backend = _Exploding(make_tiny_onnx(metadata=MD), "tiny")
    seg = Segmenter(backend, MD, "tiny")
    got = list(seg.segment_batch([sample_image] * 3, prefetch=1))
    kinds = [type(r).__name__ for _, r in got]
    assert kinds[0] == kinds[2] == "SegmentationResult"
    assert isinstance(got[1][1], HemosegError)
    assert "internal error: RuntimeError: bad things across lines" in str(got[1][1])


class _Stalling(OnnxRuntimeBackend):
    """A runtime that never returns on its second image (the deadlock class of bug)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls, self.release = 0, threading.Event()

    def run(self, batch):
        self.calls += 1
        if self.calls == 2:
            self.release.wait(60)
        return super().run(batch)


def test_watchdog_turns_a_stalled_stream_into_failures(sample_image):
    backend = _Stalling(make_tiny_onnx(metadata=MD), "tiny")
    seg = Segmenter(backend, MD, "tiny")
    t0 = time.monotonic()
    got = list(seg.segment_batch([sample_image] * 5, prefetch=1, timeout=3))
    took = time.monotonic() - t0
    backend.release.set()
    assert len(got) == 5 and took < 30
    assert not isinstance(got[0][1], HemosegError)
    assert all(isinstance(r, StalledInferenceError) for _, r in got[1:])
    assert "stalled" in str(got[1][1]) and StalledInferenceError.exit_code == 75


def test_threshold_override_and_identities(tiny_model, sample_image):
    default = Segmenter.from_engine(tiny_model, backend="onnxruntime")
    low = Segmenter.from_engine(tiny_model, backend="onnxruntime", threshold=0.2)
    a, b = default.segment(sample_image), low.segment(sample_image)
    assert (a.threshold, b.threshold) == (0.5, 0.2)
    assert b.lesion_area_px > a.lesion_area_px
    d = a.to_dict()
    assert d["input_sha256"] == hashlib.sha256(sample_image.read_bytes()).hexdigest()
    assert d["model"]["sha256"] == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert d["schema_version"] == 2 and d["created_utc"].endswith("+00:00")
    with pytest.raises(HemosegError, match="outside"):
        Segmenter.from_engine(tiny_model, backend="onnxruntime", threshold=1.5)


def test_minimum_lesion_area_drops_only_small_lesions(sample_image):
    """The shipped model's minimum lesion area (metadata, chosen on validation) and its
    override: with it, the lesions are exactly those of the plain run at or above the area in
    photograph pixels, mask and burden agreeing; 0 keeps every lesion."""
    from hemoseg_edge.postprocess import min_lesion_px

    shipped = Segmenter.from_engine(backend="onnxruntime")
    plain = Segmenter.from_engine(backend="onnxruntime", min_lesion_model_px=0)
    big = Segmenter.from_engine(backend="onnxruntime", min_lesion_model_px=8)
    assert shipped.min_lesion_model_px == shipped.metadata.min_lesion_model_px
    a, b = plain.segment(sample_image), big.segment(sample_image)
    px = min_lesion_px(b.geometry, 8)
    assert px > 1 and b.to_dict()["min_lesion_model_px"] == 8
    assert b.lesions == [les for les in a.lesions if les.area_px >= px]
    assert len(b.lesions) < len(a.lesions)  # the sample has lesions below 8 model px
    assert int(b.mask.sum()) == b.lesion_area_px < a.lesion_area_px
    with pytest.raises(HemosegError, match="minimum lesion area"):
        Segmenter.from_engine(backend="onnxruntime", min_lesion_model_px=-1)
