"""Optional native kernels (``_native.cpp``, built by ``pip install``; loaded with ctypes).

Each kernel reproduces a reference in this package bit for bit (``tests/test_native.py``), so
results do not depend on whether it is present: without a compiler, or with
``HEMOSEG_NATIVE=0`` in the environment, the numpy/OpenCV references run instead. ctypes
releases the GIL during each call, so the batch pipeline's threads run them in parallel.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
from collections.abc import Iterator
from functools import lru_cache

import numpy as np

_P = ctypes.c_void_p
_I = ctypes.c_int
_L = ctypes.c_int64
_F = ctypes.c_float
_SIGNATURES = {
    "hs_area_resample": [_P, _L, _L, _I, _P, _P, _I, _P, _P, _I, _I, _I, _P],
    "hs_components": [_P, _L, _I, _I, _P, _I],
    "hs_back_map_ge_windows": [_P, _I, _I, *[ctypes.c_double] * 4, _I, _P, _F, _P, _P, _I, _P, _P],
}


@lru_cache(maxsize=1)
def _load() -> ctypes.CDLL | None:
    if os.environ.get("HEMOSEG_NATIVE", "1") == "0":
        return None
    spec = importlib.util.find_spec("hemoseg_edge._native")  # locates the file, no import
    if spec is None or not spec.origin:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, _I
    return lib


def available() -> bool:
    """True when the native kernels are built and not disabled (``HEMOSEG_NATIVE=0``)."""
    return _load() is not None


@contextlib.contextmanager
def switched(on: bool) -> Iterator[None]:
    """Within the block the native kernels are used (where built) or not: sets
    ``HEMOSEG_NATIVE`` for the whole process, for tests and benchmarks that compare the two."""
    old = os.environ.get("HEMOSEG_NATIVE")
    os.environ["HEMOSEG_NATIVE"] = "1" if on else "0"
    _load.cache_clear()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HEMOSEG_NATIVE", None)
        else:
            os.environ["HEMOSEG_NATIVE"] = old
        _load.cache_clear()


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def area_resample_u8(
    band: np.ndarray, iy: np.ndarray, wy: np.ndarray, ix: np.ndarray, wx: np.ndarray
) -> np.ndarray | None:
    """``preprocess.area_resample`` of a uint8 band (the plane's rows and columns under the
    box; any positive strides) from its taps (``_area_taps``: offsets into the band); None
    where the native kernel does not apply."""
    lib = _load()
    if lib is None or band.dtype != np.uint8 or band.ndim != 2 or min(band.strides) <= 0:
        return None
    h, w = iy.shape[0], ix.shape[0]
    out = np.empty((h, w), np.float32)
    lib.hs_area_resample(
        _ptr(band), band.strides[0], band.strides[1], band.shape[1],
        _ptr(iy), _ptr(wy), iy.shape[1], _ptr(ix), _ptr(wx), ix.shape[1], h, w, _ptr(out),
    )  # fmt: skip
    return out


def back_map_ge_windows(
    padded: np.ndarray,
    box: tuple[float, float, float, float],
    windows: list[tuple[int, int, int, int]],
    threshold: np.float32,
    span_lo: np.ndarray,
    span_hi: np.ndarray,
    span_y0: int,
) -> list[np.ndarray] | None:
    """For each window ``(x0, y0, x1, y1)`` (original pixels): ``back_map(geometry, padded,
    window) >= threshold`` where ``span_lo[y - span_y0] <= x < span_hi[y - span_y0]``, else
    False (``box``: ``Geometry.box``; the spans cover every row of every window). One call for
    all windows; bool arrays, views of one buffer. None without the native kernel."""
    lib = _load()
    if lib is None or not padded.flags.c_contiguous:
        return None
    win = np.asarray(windows, np.int32).reshape(-1, 4)
    sizes = (win[:, 2] - win[:, 0]).astype(np.int64) * (win[:, 3] - win[:, 1])
    if (
        (sizes <= 0).any()
        or (win[:, 1] < span_y0).any()
        or (win[:, 3] - span_y0 > len(span_lo)).any()
    ):
        raise ValueError("windows must be non-empty and inside the spans' rows")
    offset = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    buf = np.empty(int(sizes.sum()), bool)
    lo = np.ascontiguousarray(span_lo, dtype=np.int64)
    hi = np.ascontiguousarray(span_hi, dtype=np.int64)
    lib.hs_back_map_ge_windows(
        _ptr(padded), padded.shape[0] - 2, padded.shape[1] - 2, *box, len(win), _ptr(win),
        float(threshold), _ptr(lo), _ptr(hi), span_y0, _ptr(buf), _ptr(offset),
    )  # fmt: skip
    ends = (offset + sizes).tolist()
    return [
        buf[o:e].reshape(y1 - y0, x1 - x0)
        for o, e, (x0, y0, x1, y1) in zip(offset.tolist(), ends, win.tolist(), strict=True)
    ]


def components(mask: np.ndarray) -> np.ndarray | None:
    """8-connected components of a 2-D bool/uint8 window (rows may be strided): an ``(n, 7)``
    int64 array of area, x0, y0, x1, y1 (inclusive), sum of x, sum of y, in window
    coordinates and no particular order; None without the native kernel."""
    lib = _load()
    if lib is None or mask.ndim != 2 or mask.itemsize != 1 or mask.strides[1] != 1:
        return None
    h, w = mask.shape
    capacity = max(1, min(-(-h // 2) * -(-w // 2), 4096))
    while True:
        stats = np.empty((capacity, 7), np.int64)
        n = lib.hs_components(_ptr(mask), mask.strides[0], h, w, _ptr(stats), capacity)
        if n >= 0:
            return stats[:n]
        capacity = -(-h // 2) * -(-w // 2)  # always enough
