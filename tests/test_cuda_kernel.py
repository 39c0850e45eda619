"""The CUDA preprocessing kernel (hemoseg_edge/cuda) against the NumPy reference.

* The kernel source compiled as C++ (``libhemoseg_preprocess_host.so``) must reproduce
  ``preprocess.preprocess_frame`` on every shared fundus image, and the reference resampler on
  fractional / enlarging boxes, within float rounding (asserted <= 1/255, observed ~1e-7).
* The nvcc fatbin build (sm_87, sm_90, compute_90 PTX) runs where nvcc exists; it only compiles.
* ``gpu``-marked tests launch the kernel through pycuda (else CuPy, where pycuda cannot be
  built); they skip without a GPU. ``make gpu-check`` (``tools/gpu_check.py``) runs them.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import data_root, ddb1_images, idrid_images

from hemoseg_edge.cuda import KERNEL_SOURCE, REPO_ROOT
from hemoseg_edge.inputs import load_image
from hemoseg_edge.preprocess import DEFAULT_INPUT_HW, area_resample, preprocess_frame

TOL = 1.0 / 255.0
HOST_SOURCES = (
    KERNEL_SOURCE,
    KERNEL_SOURCE.with_name("host_build.cpp"),
    REPO_ROOT / "CMakeLists.txt",
)
REPO_LIB = REPO_ROOT / "build" / "libhemoseg_preprocess_host.so"


def _cmake_build(build_dir: Path, *args: str, target: str | None = None) -> None:
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed: cannot build the kernel libraries")
    if (
        shutil.which("c++") is None
        and shutil.which("g++") is None
        and shutil.which("clang++") is None
    ):
        pytest.skip("no C++ compiler installed: cannot build the host library")
    cfg = subprocess.run(
        ["cmake", "-S", str(REPO_ROOT), "-B", str(build_dir), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cfg.returncode == 0, f"cmake configure failed:\n{cfg.stdout}\n{cfg.stderr}"
    cmd = ["cmake", "--build", str(build_dir), "-j2"]
    if target:
        cmd += ["--target", target]
    bld = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert bld.returncode == 0, f"cmake build failed:\n{bld.stdout}\n{bld.stderr}"


def load_host_lib(tmp_path_factory):
    """The host library: $HEMOSEG_CUDA_HOST_LIB, a fresh build/ one, else a temp cmake build
    (also used by tests/test_device_preprocess.py)."""
    from hemoseg_edge.cuda import host

    env = os.environ.get(host.LIB_ENV)
    if env:
        return host.load_library(env)
    newest_source = max(p.stat().st_mtime for p in HOST_SOURCES)
    if REPO_LIB.is_file() and REPO_LIB.stat().st_mtime >= newest_source:
        return host.load_library(REPO_LIB)
    build_dir = tmp_path_factory.mktemp("hemoseg_host_build")
    _cmake_build(build_dir, "-DHEMOSEG_ENABLE_CUDA=OFF")
    return host.load_library(build_dir / host.LIB_NAME)


@pytest.fixture(scope="session")
def host_lib(tmp_path_factory):
    return load_host_lib(tmp_path_factory)


def _reference_plane(frame: np.ndarray, box, out_hw) -> np.ndarray:
    green = frame[:, :, 1] if frame.ndim == 3 else frame
    out = area_resample(green, box, out_hw) * np.float32(1.0 / 255.0)
    return np.clip(out, 0.0, 1.0)


def _dataset_images(name: str) -> list[Path]:
    paths = idrid_images() if name == "idrid" else ddb1_images()
    if not paths:
        pytest.skip(f"no {name} images under {data_root()} (set HEMOSEG_DATA)")
    return paths


@pytest.mark.data
@pytest.mark.parametrize("dataset", ["idrid", "diaretdb1"])
def test_host_kernel_matches_reference_on_every_shared_image(host_lib, dataset):
    from hemoseg_edge.cuda.host import preprocess_host

    paths = _dataset_images(dataset)
    worst, worst_path = 0.0, None
    for path in paths:
        loaded = load_image(path, DEFAULT_INPUT_HW)
        pre = preprocess_frame(loaded.frame, loaded.original_hw)
        got = preprocess_host(loaded.frame, pre.fov.box, DEFAULT_INPUT_HW, lib=host_lib)
        ref = pre.tensor[0, 0]
        assert got.shape == ref.shape and got.dtype == np.float32
        diff = float(np.abs(got - ref).max())
        assert diff <= TOL, f"{path.name}: max |kernel - reference| = {diff:.3g} > 1/255"
        if diff >= worst:
            worst, worst_path = diff, path.name
    print(
        f"\n{dataset}: {len(paths)} images, max |kernel - reference| = {worst:.3g} ({worst_path})"
    )


def _synthetic_frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "box, out_hw",
    [
        ((10.25, 7.5, 200.75, 150.125), (37, 53)),  # fractional box, shrinking
        ((3.5, 4.25, 20.75, 13.5), (64, 96)),  # fractional box, enlarging (~3.7x, ~6.9x)
        ((0.0, 0.0, 240.0, 160.0), (160, 240)),  # identity
        ((0.0, 0.0, 240.0, 160.0), (7, 480)),  # shrink one axis, enlarge the other
        ((100.0, 50.0, 101.0, 51.0), (5, 5)),  # a single source pixel
    ],
)
def test_host_kernel_matches_reference_on_synthetic_boxes(host_lib, box, out_hw):
    from hemoseg_edge.cuda.host import preprocess_host

    frame = _synthetic_frame(160, 240)
    box = tuple(float(np.float32(v)) for v in box)  # the kernel takes float32 boxes
    got = preprocess_host(frame, box, out_hw, lib=host_lib)
    ref = _reference_plane(frame, box, out_hw)
    assert got.shape == out_hw
    assert float(np.abs(got - ref).max()) <= 1e-5  # rounding only; well inside 1/255


def test_host_kernel_layouts(host_lib):
    """Grey frames, BGRA frames and row-padded (pitched) views give the same numbers."""
    from hemoseg_edge.cuda.host import preprocess_host

    frame = _synthetic_frame(90, 130, seed=1)
    box, out_hw = (5.0, 3.0, 120.0, 88.0), (31, 45)
    want = _reference_plane(frame, box, out_hw)
    padded = np.zeros((90, 150, 3), np.uint8)
    padded[:, :130] = frame
    bgra = np.concatenate([frame, np.full((90, 130, 1), 7, np.uint8)], axis=2)
    grey = np.ascontiguousarray(frame[:, :, 1])
    for variant in (frame, padded[:, :130], bgra, grey, np.asfortranarray(grey)):
        got = preprocess_host(variant, box, out_hw, lib=host_lib)
        assert float(np.abs(got - want).max()) <= 1e-5


def test_host_kernel_rejects_bad_arguments(host_lib):
    from hemoseg_edge.cuda.host import CudaKernelError, check_args, preprocess_host

    frame = _synthetic_frame(40, 50)
    for box in [(0, 0, 51, 40), (-1, 0, 10, 10), (10, 0, 10, 10), (0, 0, float("nan"), 10)]:
        with pytest.raises(CudaKernelError, match="box"):
            preprocess_host(frame, box, (8, 8), lib=host_lib)
    with pytest.raises(CudaKernelError, match="output size"):
        preprocess_host(frame, (0, 0, 50, 40), (0, 8), lib=host_lib)
    with pytest.raises(CudaKernelError, match="frame must be"):
        preprocess_host(frame.astype(np.float32), (0, 0, 50, 40), (8, 8), lib=host_lib)
    with pytest.raises(CudaKernelError, match="pitch"):
        check_args(50, 40, 100, 3, (0, 0, 50, 40), (8, 8))
    # the C entry point checks on its own, too (the Python checks are a mirror, not the guard)
    out = np.empty((8, 8), np.float32)
    rc = host_lib.hemoseg_preprocess_host(
        frame.ctypes.data, 50, 40, 150, 3, 0.0, 0.0, 51.0, 40.0, 8, 8, out.ctypes.data
    )
    assert rc == 5  # HEMOSEG_ERR_BOX
    rc = host_lib.hemoseg_preprocess_host(
        frame.ctypes.data, 50, 40, 149, 3, 0.0, 0.0, 50.0, 40.0, 8, 8, out.ctypes.data
    )
    assert rc == 4  # HEMOSEG_ERR_PITCH
    assert host_lib.hemoseg_preprocess_host(None, 50, 40, 150, 3, 0, 0, 50, 40, 8, 8, None) == 1


def test_missing_library_error_names_the_path(tmp_path):
    from hemoseg_edge.cuda.host import CudaKernelError, load_library

    with pytest.raises(CudaKernelError, match="not found"):
        load_library(tmp_path / "nope.so")


def _fatbin_entries(data: bytes) -> set[tuple[str, int]]:
    """(kind, sm) of every image in a fatbin container (no cuobjdump needed)."""
    magic, _version, header_size, body_size = struct.unpack_from("<IHHQ", data, 0)
    assert magic == 0xBA55ED50, "not a fatbin"
    entries, off = set(), header_size
    while off < header_size + body_size:
        kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, off)
        (arch,) = struct.unpack_from("<I", data, off + 28)
        entries.add(({1: "ptx", 2: "elf"}.get(kind, str(kind)), arch))
        off += entry_header + payload
    return entries


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_nvcc_fatbin_build(tmp_path):
    """cmake builds build/hemoseg_preprocess.fatbin with sm_87, sm_90 and compute_90 PTX."""
    _cmake_build(tmp_path / "build", target="hemoseg_preprocess_fatbin")
    fatbin = tmp_path / "build" / "hemoseg_preprocess.fatbin"
    assert fatbin.is_file(), "cmake found no CUDA compiler although nvcc is on PATH"
    assert _fatbin_entries(fatbin.read_bytes()) >= {("elf", 87), ("elf", 90), ("ptx", 90)}


@pytest.fixture
def gpu_runner():
    """The kernel on the GPU: pycuda's ``GpuPreprocessor`` in a fresh context, else CuPy's
    ``CupyPreprocessor`` (where pycuda cannot be built); skips with both reasons."""
    from hemoseg_edge.cuda.gpu import GpuPreprocessor, NoGpuError, open_context

    try:
        _cuda, ctx = open_context()
    except NoGpuError as e:
        pycuda_reason = str(e)
    else:
        runner = None
        try:
            runner = GpuPreprocessor()
            yield runner
        finally:
            if runner is not None:
                runner.close()
            ctx.pop()
            ctx.detach()
        return
    from hemoseg_edge.cuda.cupy_gpu import CupyPreprocessor

    try:
        cupy_runner = CupyPreprocessor()
    except NoGpuError as e:
        pytest.skip(f"{pycuda_reason}; {e}")
    yield cupy_runner


@pytest.mark.gpu
def test_gpu_kernel_matches_reference(gpu_runner):
    frame = _synthetic_frame(712, 1072, seed=2)
    for box, out_hw in [
        ((30.0, 0.0, 1050.0, 712.0), DEFAULT_INPUT_HW),
        ((10.25, 7.5, 200.75, 150.125), (560, 576)),
    ]:
        got = gpu_runner.run_to_host(frame, box, out_hw)
        ref = _reference_plane(frame, box, out_hw)
        assert float(np.abs(got - ref).max()) <= 1e-5, gpu_runner.source


@pytest.mark.gpu
def test_gpu_kernel_staged_uploads_on_a_stream(gpu_runner):
    """pycuda: frames uploaded through the page-locked staging buffer on a stream, back to back
    (the second refills the buffer only after the first upload finished), a row-padded view
    packed on the way; each result equals the reference."""
    from hemoseg_edge.cuda.gpu import GpuPreprocessor

    if not isinstance(gpu_runner, GpuPreprocessor):
        pytest.skip("the staged upload is pycuda's (GpuPreprocessor)")
    import pycuda.driver as cuda

    stream = cuda.Stream()
    a = _synthetic_frame(300, 400, seed=3)
    padded = np.zeros((320, 440, 3), np.uint8)
    padded[:300, :400] = _synthetic_frame(300, 400, seed=4)
    b = padded[:300, :400]
    box, hw = (12.0, 5.0, 390.0, 296.0), (120, 160)
    outs = [np.empty(hw, np.float32) for _ in range(2)]
    devs = [cuda.mem_alloc(o.nbytes) for o in outs]
    try:
        for frame, dev in zip((a, b), devs, strict=True):
            gpu_runner.run(frame, box, int(dev), hw, stream=stream)
        stream.synchronize()
        for out, dev in zip(outs, devs, strict=True):
            cuda.memcpy_dtoh(out, dev)
    finally:
        for dev in devs:
            dev.free()
    for frame, out in zip((a, b), outs, strict=True):
        assert float(np.abs(out - _reference_plane(frame, box, hw)).max()) <= 1e-5


@pytest.mark.gpu
@pytest.mark.data
def test_gpu_kernel_matches_reference_on_shared_images(gpu_runner):
    for path in _dataset_images("idrid")[:5] + _dataset_images("diaretdb1")[:5]:
        loaded = load_image(path, DEFAULT_INPUT_HW)
        pre = preprocess_frame(loaded.frame, loaded.original_hw)
        got = gpu_runner.run_to_host(loaded.frame, pre.fov.box, DEFAULT_INPUT_HW)
        assert float(np.abs(got - pre.tensor[0, 0]).max()) <= TOL, path.name
