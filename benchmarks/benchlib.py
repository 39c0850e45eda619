"""Shared helpers for the benchmark suite: settings from the environment, model variants, images.

Environment:
  HEMOSEG_BENCH_QUICK=1     few images and rounds (CI); default: full mode
  HEMOSEG_BENCH_MODELS=DIR  where the shipped default model's FP32/FP16/INT8 files live
                            (hemoseg_edge.model_file.shipped names them; default: engines/)
  HEMOSEG_DATA=DIR          shared datasets (default: ../shared/data)
  HEMOSEG_BENCH_NOTE=TEXT   free text stored in the JSON (e.g. "background jobs paused")
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from hemoseg_edge.cpu import BF16_FLAGS
from hemoseg_edge.cpu import cpu_flags as read_cpu_flags
from hemoseg_edge.model_file.shipped import (
    DEFAULT_MODEL,
    FP16_MODEL,
    INT8_MODEL,
    OPENVINO_INT8_MODEL,
)

REPO = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("HEMOSEG_BENCH_QUICK", "").lower() in ("1", "true", "yes", "on")
MODELS_DIR = Path(os.environ.get("HEMOSEG_BENCH_MODELS") or REPO / "engines")
FP32, FP16, INT8 = DEFAULT_MODEL, FP16_MODEL, INT8_MODEL


def _model_hw() -> tuple[int, int]:
    """The shipped default model's input size (from its metadata), else v1's."""
    from hemoseg_edge.preprocess import DEFAULT_INPUT_HW

    try:
        import onnx

        from hemoseg_edge.model_file.metadata import ModelMetadata

        proto = onnx.load(str(MODELS_DIR / FP32), load_external_data=False)
        return ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props}).input_hw
    except Exception:  # noqa: BLE001 - no model here: the fallback's size
        return DEFAULT_INPUT_HW


HW = _model_hw()


def _tests_conftest():
    """``tests/conftest.py`` as a plain module (its name clashes with this folder's conftest)."""
    path = REPO / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("hemoseg_tests_conftest", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


TESTS = _tests_conftest()


def rounds(full: int, quick: int) -> int:
    return quick if QUICK else full


def n_images(full: int, quick: int) -> int:
    return quick if QUICK else full


def cpu_flags() -> set[str]:
    return set(read_cpu_flags() or ())


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def fundus_images() -> list[Path]:
    """IDRiD official test JPEGs (4288x2848), else the bundled example."""
    imgs = TESTS.idrid_images("test")
    if imgs:
        return imgs
    example = REPO / "examples" / "IDRiD_55.jpg"
    return [example] if example.exists() else []


def he_mask_path(image: Path) -> Path:
    return TESTS.data_root() / "idrid" / "masks" / "HE" / "test" / f"{image.stem}_HE.tif"


@dataclass(frozen=True)
class Variant:
    """One backend x precision to benchmark; ``throughput``: the backend tuned for many images
    (OpenVINO streams, ``Backend.concurrency`` requests in flight) instead of one at a time."""

    backend: str
    precision: str
    file: str
    options: dict = field(default_factory=dict)
    throughput: bool = False

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.precision}" + ("-throughput" if self.throughput else "")


VARIANTS = (
    Variant("onnxruntime", "fp32", FP32),
    Variant("onnxruntime", "fp16", FP16),
    Variant("onnxruntime", "int8", INT8),
    Variant("openvino", "fp32", FP32, {"precision": "fp32"}),
    Variant("openvino", "bf16", FP32, {"precision": "bf16"}),
    Variant("openvino", "int8", INT8, {"precision": "auto"}),
    Variant("openvino", "bf16", FP32, {"precision": "bf16"}, throughput=True),
    Variant("openvino", "int8", INT8, {"precision": "auto"}, throughput=True),
    # TensorRT builds (and caches) an engine from each ONNX; precision follows the ONNX types
    Variant("tensorrt", "fp32", FP32),
    Variant("tensorrt", "fp16", FP16),
    Variant("tensorrt", "int8", INT8),
)
REFERENCE = VARIANTS[0]
# memory and parity do not depend on latency vs throughput tuning
ONE_AT_A_TIME = tuple(v for v in VARIANTS if not v.throughput)


@dataclass
class ModelSet:
    """Where each model file is; ``real`` is False when the tiny fallback stands in."""

    dir: Path
    real: bool
    fallback: Path | None = None

    def path(self, name: str) -> Path | None:
        if self.real:
            p = self.dir / name
            return p if p.is_file() else None
        return self.fallback if name == FP32 else None


def skip_reason(v: Variant, models: ModelSet) -> str | None:
    """Why ``v`` cannot run here (None: it can)."""
    import importlib.util as iu

    if models.path(v.file) is None:
        where = models.dir if models.real else "the tiny fallback"
        return f"{v.file} not in {where}"
    if v.backend == "openvino" and iu.find_spec("openvino") is None:
        return "openvino not installed (pip install 'hemoseg-edge[openvino]')"
    if v.backend == "openvino" and v.precision == "bf16" and not (BF16_FLAGS & cpu_flags()):
        return "CPU has no native bf16 (AMX/AVX512-BF16)"
    gpu_stack = iu.find_spec("tensorrt") is not None and iu.find_spec("pycuda") is not None
    if v.backend == "tensorrt" and not gpu_stack:
        return "TensorRT/pycuda not installed (NVIDIA GPU only)"
    return None


def load_or_skip(v: Variant, path: Path):
    """The backend for ``v``, or a pytest skip naming why it cannot load here."""
    import pytest

    from hemoseg_edge.backends import load_backend
    from hemoseg_edge.errors import BackendUnavailableError

    try:
        return load_backend(
            v.backend, path.read_bytes(), str(path), throughput=v.throughput, **v.options
        )
    except BackendUnavailableError as e:
        pytest.skip(str(e))


def forget_caches() -> None:
    """Empty the per-geometry caches (resampling taps, FOV circle spans). Every new photograph
    has its own FOV box, so a round that reuses the same N images would otherwise time cache
    hits that a camera never gets."""
    from hemoseg_edge.postprocess import circle_halfwidths
    from hemoseg_edge.preprocess import _area_taps, area_weights

    for cached in (_area_taps, area_weights, circle_halfwidths):
        cached.cache_clear()


@contextlib.contextmanager
def kernels(native_on: bool):
    """Run with the native kernels (``hemoseg_edge/_native.cpp``) on or off; both give the same
    bits, so only the speed differs."""
    import pytest

    from hemoseg_edge import native

    with native.switched(native_on):
        if native_on and not native.available():
            pytest.skip("native kernels not built")
        yield "native" if native_on else "numpy/OpenCV reference"


def default_segmenter(
    models: ModelSet,
    throughput: bool,
    fp32_name: str = DEFAULT_MODEL,
    int8_name: str | None = OPENVINO_INT8_MODEL,
    **backend_options,
):
    """What ``hemoseg-edge segment`` loads without ``--model``: the shipped model in the
    variant ``Segmenter.default_model`` picks for this CPU (the tiny fallback when the real
    models are absent); ``throughput`` as the CLI sets it for several images. ``fp32_name`` /
    ``int8_name``: another shipped model's files, picked the same way."""
    from hemoseg_edge.segmenter import Segmenter

    if not models.real:
        return Segmenter.from_engine(
            models.fallback, backend="auto", throughput=throughput, **backend_options
        )
    os.environ["HEMOSEG_ENGINES"] = str(models.dir)  # searched first by default_model
    return Segmenter.default_model(
        "auto",
        throughput=throughput,
        fp32_name=fp32_name,
        int8_name=int8_name,
        **backend_options,
    )


def make_fallback_model(folder: Path) -> Path:
    """The tiny real ONNX model from tests/conftest.py (1x1 conv + sigmoid) with metadata."""
    from hemoseg_edge.model_file.metadata import ModelMetadata

    md = ModelMetadata(version="bench-tiny-fallback", training_data="none (benchmark stand-in)")
    p = folder / "tiny_fallback.onnx"
    p.write_bytes(TESTS.make_tiny_onnx(HW, metadata=md))
    return p


def add_timing_args(ap) -> None:
    """``--threads`` and ``--clock`` for the side-by-side comparison scripts."""
    ap.add_argument("--threads", type=int, default=0, help="inference threads (0: the runtime's)")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: latency as deployed; cpu: process CPU time (with --threads 1: the work, "
        "insensitive to other processes on the host)",
    )
