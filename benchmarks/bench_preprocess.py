"""Decoding and preprocessing of a full-size fundus JPEG: the CPU reference (group
"preprocess-cpu") and the CUDA kernel (group "preprocess-cuda", only with a GPU)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from benchlib import HW, forget_caches, kernels, rounds

from hemoseg_edge.files import read_bytes
from hemoseg_edge.inputs import load_image
from hemoseg_edge.preprocess import find_fov, preprocess_frame

CPU = "preprocess-cpu"


@pytest.fixture(scope="module")
def loaded(images):
    return load_image(images[0], HW)


def _info(benchmark, images, **kw) -> None:
    benchmark.extra_info.update(image=images[0].name, **kw)


def bench_decode_full_resolution(benchmark, images):
    """Reference point: OpenCV decodes the whole 12 Mpx JPEG."""
    data = np.frombuffer(read_bytes(images[0]), np.uint8)
    benchmark.group = CPU
    frame = benchmark.pedantic(cv2.imdecode, args=(data, cv2.IMREAD_COLOR), rounds=rounds(20, 5))
    _info(benchmark, images, frame_hw=list(frame.shape[:2]))


def bench_decode(benchmark, images):
    """What the runtime does: checked load, JPEG DCT-domain reduction to >= the model size."""
    benchmark.group = CPU
    li = benchmark.pedantic(load_image, args=(images[0], HW), rounds=rounds(20, 5))
    _info(benchmark, images, frame_hw=list(li.frame.shape[:2]), original_hw=list(li.original_hw))


@pytest.mark.parametrize("native_on", [True, False], ids=["native", "reference"])
def bench_find_fov(benchmark, images, loaded, native_on):
    """Wall time: OpenCV's resize (the reference) spreads over every core, the native kernel
    runs on one; what a busy pipeline pays is CPU time (group "cpu-budget")."""
    benchmark.group = CPU
    with kernels(native_on) as variant:
        benchmark.pedantic(find_fov, args=(loaded.frame,), rounds=rounds(30, 5))
    _info(benchmark, images, variant=variant)


@pytest.mark.parametrize("native_on", [True, False], ids=["native", "reference"])
def bench_preprocess(benchmark, images, loaded, native_on):
    """FOV, crop, green, exact area resampling, /255 (``preprocess_frame``), as for a new
    photograph (per-geometry caches emptied before each round)."""
    benchmark.group = CPU
    with kernels(native_on) as variant:
        pre = benchmark.pedantic(
            preprocess_frame,
            args=(loaded.frame, loaded.original_hw, HW),
            setup=forget_caches,
            rounds=rounds(30, 5),
        )
    assert pre.tensor.shape == (1, 1, *HW)
    _info(benchmark, images, variant=variant)


def bench_decode_and_preprocess(benchmark, images):
    """JPEG file -> model tensor, the CPU path's first stage."""

    def run():
        li = load_image(images[0], HW)
        return preprocess_frame(li.frame, li.original_hw, HW)

    benchmark.group = CPU
    benchmark.pedantic(run, setup=forget_caches, rounds=rounds(20, 5))
    _info(benchmark, images)


@pytest.fixture(scope="module")
def cuda_runner():
    from hemoseg_edge.cuda.gpu import NoGpuError, open_context

    try:
        cuda, ctx = open_context()
    except NoGpuError as e:
        pytest.skip(f"{e} (no GPU group)")
    try:
        from hemoseg_edge.cuda.gpu import GpuPreprocessor

        yield cuda, GpuPreprocessor()
    finally:
        ctx.pop()


def bench_cuda_kernel(benchmark, images, loaded, cuda_runner):
    """Upload the decoded frame, run the kernel into a device tensor, synchronise."""
    cuda, runner = cuda_runner
    box = preprocess_frame(loaded.frame, loaded.original_hw, HW).fov.box
    out = cuda.mem_alloc(HW[0] * HW[1] * 4)

    def run():
        runner.run(loaded.frame, box, int(out), HW)
        cuda.Context.synchronize()

    benchmark.group = "preprocess-cuda"
    benchmark.pedantic(run, rounds=rounds(50, 10), warmup_rounds=2)
    _info(benchmark, images, kernel=runner.source)
    out.free()
