"""Benchmark fixtures and the machine description stored in ``--benchmark-json``."""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as hemoseg_edge sets it: before numpy

import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from importlib import metadata as importlib_metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from benchlib import (  # noqa: E402
    BF16_FLAGS,
    FP32,
    HW,
    MODELS_DIR,
    QUICK,
    ModelSet,
    fundus_images,
    make_fallback_model,
)

FLAG_SUBSET = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    *sorted(BF16_FLAGS),
    "amx_int8",
    "amx_tile",
    "avx512_fp16",
)
ENV_KEYS = ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
PACKAGES = (
    "hemoseg-edge",
    "numpy",
    "opencv-python-headless",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "nncf",
    "tensorrt",
    "pycuda",
    "pytest-benchmark",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def _gpu() -> str | None:
    try:
        proc = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return []


def pytest_benchmark_update_machine_info(config, machine_info):
    import psutil
    from benchlib import cpu_flags

    flags = cpu_flags()
    machine_info["hemoseg"] = {
        "cpu_model": _cpu_model(),
        "cpu_flags": {f: f in flags for f in FLAG_SUBSET},
        "all_cpu_flags": sorted(flags),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": _gpu(),
        "versions": _versions(),
        "load_average_at_end": _load(),
    }


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["hemoseg"] = {
        "quick": QUICK,
        "models_dir": str(MODELS_DIR),
        "real_model": (MODELS_DIR / FP32).is_file(),
        "note": os.environ.get("HEMOSEG_BENCH_NOTE", ""),
        "load_average_at_start": config._hemoseg_load_at_start,
        "argv": sys.argv[1:],
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
    }


def pytest_configure(config):
    config._hemoseg_load_at_start = _load()


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> ModelSet:
    if (MODELS_DIR / FP32).is_file():
        return ModelSet(MODELS_DIR, real=True)
    fallback = make_fallback_model(tmp_path_factory.mktemp("models"))
    return ModelSet(MODELS_DIR, real=False, fallback=fallback)


@pytest.fixture(scope="session")
def images() -> list[Path]:
    imgs = fundus_images()
    if not imgs:
        pytest.skip("no fundus image: neither the shared IDRiD data nor examples/IDRiD_55.jpg")
    return imgs


@pytest.fixture(scope="session")
def model_input(images) -> np.ndarray:
    """A real preprocessed tensor (1, 1, 560, 576) of the first test image."""
    from hemoseg_edge.inputs import load_image
    from hemoseg_edge.preprocess import preprocess_frame

    li = load_image(images[0], HW)
    return preprocess_frame(li.frame, li.original_hw, HW).tensor
