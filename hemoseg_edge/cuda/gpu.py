"""pycuda runner for ``preprocess_kernel.cu``: frame -> TensorRT input binding, on the GPU.

The TensorRT backend (``backends.tensorrt.TensorRtBackend.run_frame``) runs it on its own stream
and context, straight into the engine's input binding.

**Not run on a GPU here.** This module was written and import-checked on a machine without a GPU
or pycuda; only the kernel's arithmetic (host build), the nvcc fatbin build and the staged
upload's call sequence (with a stand-in for pycuda) are tested. The ``gpu``-marked tests
(``make gpu-check``) exercise it on the first machine that has both.

Why pycuda: JetPack 6 ships CUDA 12.6, against which ``pip install pycuda`` builds on the Jetson,
and the TensorRT Python samples already use it. NVIDIA's current binding is cuda-python
(``cuda.bindings.driver``); the calls used here (module load, get function, launch, memcpy) map
one-to-one onto ``cuModuleLoad`` / ``cuModuleGetFunction`` / ``cuLaunchKernel`` /
``cuMemcpyHtoDAsync``, so it is a drop-in replacement later.

Build the fatbin with the target's own toolkit (JetPack 6: nvcc 12.6). A fatbin from a newer
major toolkit (the CUDA 13 used in development) may be refused by an older driver; the loader
then falls back to compiling the source with the local nvcc.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..preprocess import DEFAULT_INPUT_HW
from . import BUILD_DIR, KERNEL_NAME, KERNEL_SOURCE
from .host import Box, CudaKernelError, check_args, frame_layout

FATBIN_ENV = "HEMOSEG_CUDA_FATBIN"
FATBIN_NAME = "hemoseg_preprocess.fatbin"
# hemoseg_preprocess(frame, width, height, pitch, channels, x0, y0, x1, y1, out_h, out_w, out)
_ARG_FORMAT = "PiiiiffffiiP"


class NoGpuError(RuntimeError):
    """No usable CUDA device (or no pycuda); the message says which."""


def open_context() -> tuple[Any, Any]:
    """``(pycuda.driver, context)`` on device 0, pushed; raises ``NoGpuError`` with the reason."""
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise NoGpuError("pycuda not installed") from None
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            raise NoGpuError("no CUDA device")
    except cuda.Error as e:
        raise NoGpuError(f"no usable CUDA device ({e})") from None
    return cuda, cuda.Device(0).make_context()


def fatbin_path() -> Path:
    env = os.environ.get(FATBIN_ENV)
    return Path(env) if env else BUILD_DIR / FATBIN_NAME


class GpuPreprocessor:
    """Launches ``hemoseg_preprocess``: one thread per output pixel, float32 NCHW output.

    Needs a current CUDA context (e.g. ``import pycuda.autoinit``, or the context TensorRT runs
    in). The kernel comes from the fatbin (``$HEMOSEG_CUDA_FATBIN`` or
    ``build/hemoseg_preprocess.fatbin``); if it is missing or has no code for this GPU, the
    ``.cu`` source is compiled at run time with ``pycuda.compiler.SourceModule`` (needs nvcc).

    Not run on a GPU here (see the module docstring).
    """

    def __init__(
        self,
        fatbin: str | os.PathLike | None = None,
        block: tuple[int, int] = (32, 8),
        allow_source_fallback: bool = True,
    ) -> None:
        try:
            import pycuda.driver as cuda
        except ImportError as e:
            raise CudaKernelError(f"pycuda is not installed ({e}); pip install pycuda") from None
        self._cuda = cuda
        self.block = (int(block[0]), int(block[1]), 1)
        self.source = ""  # "fatbin:<path>" or "source:<path>"
        module = None
        path = Path(fatbin) if fatbin is not None else fatbin_path()
        errors = []
        if path.is_file():
            try:
                module = cuda.module_from_file(str(path))
                self.source = f"fatbin:{path}"
            except cuda.Error as e:  # e.g. no image for this GPU's architecture
                errors.append(f"{path}: {e}")
        else:
            errors.append(f"{path}: not found")
        if module is None and allow_source_fallback:
            try:
                from pycuda.compiler import SourceModule

                module = SourceModule(
                    KERNEL_SOURCE.read_text(), no_extern_c=True, options=["-O3", "-std=c++14"]
                )
                self.source = f"source:{KERNEL_SOURCE}"
            except Exception as e:  # noqa: BLE001 - CompileError, missing nvcc, driver errors
                errors.append(f"{KERNEL_SOURCE}: run-time compile failed: {e}")
        if module is None:
            raise CudaKernelError("cannot load the preprocessing kernel: " + "; ".join(errors))
        self._module = module
        self._fn = module.get_function(KERNEL_NAME)
        self._fn.prepare(_ARG_FORMAT)
        self._frame_buf: Any = None  # pycuda DeviceAllocation
        self._frame_buf_bytes = 0
        self._staging: Any = None  # page-locked uint8 staging buffer (pycuda pagelocked_empty)
        self._staged: Any = None  # pycuda Event: the last upload from ``_staging`` finished

    def _upload(self, frame: np.ndarray, stream) -> tuple[int, int, int, int, int]:
        """Copy a host frame into the reused device buffer; ``(ptr, width, height, pitch,
        channels)`` of the device copy (tight rows). On a ``stream`` the frame goes through a
        reused page-locked staging buffer, so the upload is asynchronous and at full bandwidth;
        the staging buffer is refilled only after the previous upload from it has finished."""
        cuda = self._cuda
        arr, width, height, _, channels = frame_layout(frame)
        nbytes = height * width * channels
        if nbytes > self._frame_buf_bytes:
            if self._frame_buf is not None:
                self._frame_buf.free()
            self._frame_buf = cuda.mem_alloc(nbytes)
            self._frame_buf_bytes = nbytes
        if stream is None:
            cuda.memcpy_htod(self._frame_buf, np.ascontiguousarray(arr))
        else:
            if self._staged is not None:
                self._staged.synchronize()  # the last upload from the staging buffer is done
            if self._staging is None or self._staging.nbytes < nbytes:
                self._staging = cuda.pagelocked_empty(nbytes, np.uint8)
            staging = self._staging[:nbytes]
            np.copyto(staging.reshape(arr.shape), arr)  # also packs row-padded views
            cuda.memcpy_htod_async(self._frame_buf, staging, stream)
            if self._staged is None:
                self._staged = cuda.Event()
            self._staged.record(stream)
        return int(self._frame_buf), width, height, width * channels, channels

    def run(
        self,
        frame: np.ndarray | int,
        box: Box,
        out_ptr: int,
        out_hw: tuple[int, int] = DEFAULT_INPUT_HW,
        *,
        frame_hw: tuple[int, int] | None = None,
        channels: int = 3,
        pitch: int | None = None,
        stream=None,
    ) -> None:
        """Write the (1, 1, H, W) float32 tensor for ``frame`` into device memory ``out_ptr``.

        ``frame`` is a host uint8 array (uploaded into a reused device buffer; on a ``stream``
        through a reused page-locked staging buffer) or a device pointer (int) to an
        interleaved uint8 frame described by ``frame_hw`` (H, W), ``channels`` and ``pitch``
        (bytes per row, default W * channels). ``out_ptr`` must hold H * W float32 (e.g. the
        TensorRT input binding of a float32-input engine). Asynchronous on ``stream``: the
        caller synchronizes before reading ``out_ptr`` on the host.
        """
        if isinstance(frame, np.ndarray):
            ptr, width, height, row_pitch, ch = self._upload(frame, stream)
        else:
            if frame_hw is None:
                raise CudaKernelError("a device-pointer frame needs frame_hw=(H, W)")
            ptr, ch = int(frame), int(channels)
            height, width = int(frame_hw[0]), int(frame_hw[1])
            row_pitch = int(pitch) if pitch is not None else width * ch
        (x0, y0, x1, y1), (h, w) = check_args(width, height, row_pitch, ch, box, out_hw)
        bx, by, _ = self.block
        grid = ((w + bx - 1) // bx, (h + by - 1) // by)
        args = (ptr, width, height, row_pitch, ch, x0, y0, x1, y1, h, w, int(out_ptr))
        if stream is None:
            self._fn.prepared_call(grid, self.block, *args)
        else:
            self._fn.prepared_async_call(grid, self.block, stream, *args)

    def run_to_host(
        self, frame: np.ndarray, box: Box, out_hw: tuple[int, int] = DEFAULT_INPUT_HW
    ) -> np.ndarray:
        """Convenience for tests: run and copy the (H, W) float32 result back."""
        h, w = int(out_hw[0]), int(out_hw[1])
        out = np.empty((h, w), dtype=np.float32)
        dev = self._cuda.mem_alloc(out.nbytes)
        try:
            self.run(frame, box, int(dev), (h, w))
            self._cuda.Context.synchronize()
            self._cuda.memcpy_dtoh(out, dev)
        finally:
            dev.free()
        return out

    def close(self) -> None:
        """Free the device frame buffer and the staging buffer (call with the context current)."""
        if self._staged is not None:
            self._staged.synchronize()
        if self._frame_buf is not None:
            self._frame_buf.free()
        self._frame_buf, self._frame_buf_bytes = None, 0
        self._staging = self._staged = None
