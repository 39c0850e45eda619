"""CuPy runner for ``preprocess_kernel.cu``: the same kernel, loaded through CuPy.

For machines where pycuda cannot be built (it compiles against a local CUDA toolkit) but a CuPy
wheel installs: ``tools/gpu_check.py`` and the ``gpu`` tests fall back to it to check the kernel
against the CPU reference and to time it. The TensorRT backend does not use it (it runs on
pycuda, ``gpu.GpuPreprocessor``).

The module comes from the fatbin (``$HEMOSEG_CUDA_FATBIN`` or ``build/hemoseg_preprocess.fatbin``,
``cupy.RawModule(path=...)``, which the driver loads like a cubin); if that fails (missing, or
no code for this GPU), from the ``.cu`` source compiled by nvcc (``backend="nvcc"``: the source
includes C headers that NVRTC does not provide).

**Not run on a GPU here**, nor with CuPy installed: written against CuPy's documented
``RawModule`` / ``RawKernel`` API on a machine without a GPU; cupy is imported lazily.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

from ..preprocess import DEFAULT_INPUT_HW
from . import KERNEL_NAME, KERNEL_SOURCE
from .gpu import NoGpuError, fatbin_path
from .host import Box, CudaKernelError, check_args, frame_layout


def import_cupy() -> Any:
    """``cupy`` with at least one usable device; ``NoGpuError`` with the reason otherwise."""
    try:
        cp = importlib.import_module("cupy")
    except ImportError as e:
        raise NoGpuError(f"cupy not installed ({e})") from None
    try:
        count = int(cp.cuda.runtime.getDeviceCount())
    except Exception as e:  # noqa: BLE001 - CUDARuntimeError, missing driver libraries
        raise NoGpuError(f"no usable CUDA device for cupy ({e})") from None
    if count == 0:
        raise NoGpuError("no CUDA device")
    return cp


class CupyPreprocessor:
    """``hemoseg_preprocess`` launched by CuPy on its current device and stream; the same
    arguments and results as ``gpu.GpuPreprocessor`` (one thread per output pixel)."""

    def __init__(
        self,
        fatbin: str | os.PathLike | None = None,
        block: tuple[int, int] = (32, 8),
        allow_source_fallback: bool = True,
    ) -> None:
        cp = import_cupy()
        self._cp = cp
        self.block = (int(block[0]), int(block[1]), 1)
        self.source = ""
        errors = []
        path = fatbin_path() if fatbin is None else fatbin
        fn = None
        if os.path.isfile(path):
            try:  # RawModule loads lazily: get_function is what loads the module
                fn = cp.RawModule(path=str(path)).get_function(KERNEL_NAME)
                self.source = f"cupy fatbin:{path}"
            except Exception as e:  # noqa: BLE001 - CUDADriverError (e.g. no code for this GPU)
                errors.append(f"{path}: {e}")
        else:
            errors.append(f"{path}: not found")
        if fn is None and allow_source_fallback:
            try:
                module = cp.RawModule(
                    code=KERNEL_SOURCE.read_text(), options=("-O3", "-std=c++14"), backend="nvcc"
                )
                fn = module.get_function(KERNEL_NAME)
                self.source = f"cupy source:{KERNEL_SOURCE}"
            except Exception as e:  # noqa: BLE001 - CompileException, missing nvcc
                errors.append(f"{KERNEL_SOURCE}: nvcc compile through cupy failed: {e}")
        if fn is None:
            raise CudaKernelError("cannot load the preprocessing kernel: " + "; ".join(errors))
        self._fn = fn

    def upload(self, frame: np.ndarray) -> Any:
        """A host frame as a contiguous device array (tight rows)."""
        arr, *_ = frame_layout(frame)
        return self._cp.asarray(np.ascontiguousarray(arr))

    def run(self, frame: Any, box: Box, out: Any, out_hw: tuple[int, int] = DEFAULT_INPUT_HW):
        """Write the tensor for ``frame`` (a host array, or a device array from ``upload``)
        into ``out``, a C-contiguous float32 cupy array of H * W elements. Asynchronous on
        CuPy's current stream."""
        dev = self.upload(frame) if isinstance(frame, np.ndarray) else frame
        if dev.dtype != np.uint8 or dev.ndim not in (2, 3) or not dev.flags.c_contiguous:
            raise CudaKernelError("a device frame must be a C-contiguous uint8 HxW or HxWxC array")
        height, width = int(dev.shape[0]), int(dev.shape[1])
        channels = 1 if dev.ndim == 2 else int(dev.shape[2])
        pitch = width * channels
        (x0, y0, x1, y1), (h, w) = check_args(width, height, pitch, channels, box, out_hw)
        if out.dtype != np.float32 or out.size != h * w or not out.flags.c_contiguous:
            raise CudaKernelError(f"out must be a contiguous float32 array of {h}x{w}")
        i32, f32 = np.int32, np.float32
        bx, by, _ = self.block
        grid = ((w + bx - 1) // bx, (h + by - 1) // by, 1)
        ints = (i32(width), i32(height), i32(pitch), i32(channels))
        floats = (f32(x0), f32(y0), f32(x1), f32(y1))
        self._fn(grid, self.block, (dev, *ints, *floats, i32(h), i32(w), out))

    def run_to_host(
        self, frame: np.ndarray, box: Box, out_hw: tuple[int, int] = DEFAULT_INPUT_HW
    ) -> np.ndarray:
        """Run and copy the (H, W) float32 result back (tests, ``tools/gpu_check.py``)."""
        out = self._cp.empty((int(out_hw[0]), int(out_hw[1])), dtype=np.float32)
        self.run(frame, box, out, out_hw)
        return self._cp.asnumpy(out)  # synchronizes with the stream

    def close(self) -> None:
        """Nothing to free explicitly (CuPy's memory pool owns the buffers); for parity with
        ``GpuPreprocessor.close``."""
