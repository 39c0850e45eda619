"""ctypes wrapper for ``libhemoseg_preprocess_host.so``: the CUDA kernel's arithmetic on the CPU.

The library is ``preprocess_kernel.cu`` compiled as plain C++ (``cmake -S . -B build &&
cmake --build build``). It is found via the ``HEMOSEG_CUDA_HOST_LIB`` environment variable, else
``<repo>/build/libhemoseg_preprocess_host.so``.

:func:`frame_layout` and :func:`check_args` are shared with :mod:`.gpu`; they mirror
``hemoseg_check_args`` in the kernel source, so bad arguments fail here with a clear message
instead of as a return code (host) or a silently unwritten tensor (GPU).
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from pathlib import Path

import numpy as np

from ..errors import HemosegError
from ..preprocess import DEFAULT_INPUT_HW
from . import ABI_VERSION, BUILD_DIR

LIB_ENV = "HEMOSEG_CUDA_HOST_LIB"
LIB_NAME = "libhemoseg_preprocess_host.so"

# HEMOSEG_ERR_* codes in preprocess_kernel.cu
_ERRORS = {
    1: "frame or output pointer is NULL",
    2: "frame width or height < 1",
    3: "channels must be 1, 3 or 4",
    4: "row pitch smaller than width * channels",
    5: "crop box not finite, empty, or outside the frame",
    6: "output size < 1 or larger than 2^30 pixels",
}


class CudaKernelError(HemosegError):
    """The preprocessing kernel library is missing, stale or was given bad arguments."""


Box = tuple[float, float, float, float]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def library_path() -> Path:
    """Where the host library is expected (env var first, then ``<repo>/build``)."""
    env = os.environ.get(LIB_ENV)
    return Path(env) if env else BUILD_DIR / LIB_NAME


def load_library(path: str | os.PathLike | None = None) -> ctypes.CDLL:
    """Load (once) and return the host library; raises :class:`CudaKernelError` if unusable."""
    global _lib
    with _lock:
        if _lib is not None and path is None:
            return _lib
        p = Path(path) if path is not None else library_path()
        if not p.is_file():
            how = f"${LIB_ENV}" if path is None and os.environ.get(LIB_ENV) else "expected at"
            raise CudaKernelError(
                f"{p}: preprocessing host library not found ({how}); build it with "
                "'cmake -S . -B build && cmake --build build'"
            )
        try:
            lib = ctypes.CDLL(str(p))
        except OSError as e:
            raise CudaKernelError(f"{p}: cannot load preprocessing host library ({e})") from None
        try:
            lib.hemoseg_preprocess_abi_version.restype = ctypes.c_int
            lib.hemoseg_preprocess_abi_version.argtypes = []
            fn = lib.hemoseg_preprocess_host
        except AttributeError:
            raise CudaKernelError(f"{p}: not a hemoseg preprocessing library") from None
        abi = lib.hemoseg_preprocess_abi_version()
        if abi != ABI_VERSION:
            raise CudaKernelError(f"{p}: ABI version {abi}, expected {ABI_VERSION}; rebuild it")
        fn.restype = ctypes.c_int
        fn.argtypes = [
            ctypes.c_void_p,  # frame
            ctypes.c_int,  # width
            ctypes.c_int,  # height
            ctypes.c_int,  # pitch (bytes)
            ctypes.c_int,  # channels
            ctypes.c_float,  # x0
            ctypes.c_float,  # y0
            ctypes.c_float,  # x1
            ctypes.c_float,  # y1
            ctypes.c_int,  # out_h
            ctypes.c_int,  # out_w
            ctypes.c_void_p,  # out
        ]
        if path is None:
            _lib = lib
        return lib


def frame_layout(frame: np.ndarray) -> tuple[np.ndarray, int, int, int, int]:
    """``(array, width, height, pitch, channels)`` for a uint8 HxW / HxWx3 / HxWx4 frame.

    Row-padded views are passed as they are (pitch = row stride); anything whose pixels are not
    interleaved bytes is copied to a contiguous array first.
    """
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        raise CudaKernelError(
            f"frame must be a uint8 numpy array, got {type(frame).__name__} "
            f"{getattr(frame, 'dtype', '')}"
        )
    if frame.ndim == 2:
        channels = 1
    elif frame.ndim == 3 and frame.shape[2] in (3, 4):
        channels = frame.shape[2]
    else:
        raise CudaKernelError(f"frame must be HxW, HxWx3 (BGR) or HxWx4 (BGRA), got {frame.shape}")
    height, width = frame.shape[:2]
    inner = frame.strides[1:] == ((channels,) if channels == 1 else (channels, 1))
    if not inner or frame.strides[0] < width * channels:
        frame = np.ascontiguousarray(frame)
    return frame, int(width), int(height), int(frame.strides[0]), channels


def check_args(
    width: int, height: int, pitch: int, channels: int, box: Box, out_hw: tuple[int, int]
) -> tuple[Box, tuple[int, int]]:
    """Validate like ``hemoseg_check_args``; returns the box as float32-rounded Python floats."""
    if len(box) != 4:
        raise CudaKernelError(f"box must be (x0, y0, x1, y1), got {box!r}")
    if len(out_hw) != 2:
        raise CudaKernelError(f"out_hw must be (H, W), got {out_hw!r}")
    x0, y0, x1, y1 = (float(np.float32(v)) for v in box)
    h, w = int(out_hw[0]), int(out_hw[1])
    if width < 1 or height < 1:
        raise CudaKernelError(f"frame size {width}x{height} is empty")
    if channels not in (1, 3, 4):
        raise CudaKernelError(f"channels must be 1, 3 or 4, got {channels}")
    if pitch < width * channels:
        raise CudaKernelError(f"pitch {pitch} < width * channels = {width * channels}")
    finite = all(math.isfinite(v) for v in (x0, y0, x1, y1))
    if not (finite and 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise CudaKernelError(
            f"crop box {tuple(box)} is empty or outside the {width}x{height} frame"
        )
    if h < 1 or w < 1 or h * w > 1 << 30:
        raise CudaKernelError(f"bad output size {(h, w)}")
    return (x0, y0, x1, y1), (h, w)


def preprocess_host(
    frame: np.ndarray,
    box: Box,
    out_hw: tuple[int, int] = DEFAULT_INPUT_HW,
    lib: ctypes.CDLL | None = None,
) -> np.ndarray:
    """Run the kernel's arithmetic on the CPU: frame + crop box -> (H, W) float32 in [0, 1].

    Equals ``preprocess.area_resample(green, box, out_hw) / 255`` up to float rounding. The box is
    passed to the kernel as float32 (integer boxes, as ``find_fov`` returns, are exact).
    """
    arr, width, height, pitch, channels = frame_layout(frame)
    (x0, y0, x1, y1), (h, w) = check_args(width, height, pitch, channels, box, out_hw)
    lib = lib or load_library()
    out = np.empty((h, w), dtype=np.float32)
    rc = lib.hemoseg_preprocess_host(
        arr.ctypes.data, width, height, pitch, channels, x0, y0, x1, y1, h, w, out.ctypes.data
    )
    if rc != 0:
        raise CudaKernelError(f"hemoseg_preprocess_host failed: {_ERRORS.get(rc, f'code {rc}')}")
    return out
