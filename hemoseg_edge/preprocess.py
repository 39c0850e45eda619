"""The one preprocessing truth: field of view, crop, green channel, resize, normalise.

Training, evaluation, the runtime and the CUDA kernel (``hemoseg_edge/cuda``) all use or mirror
this module. Its arithmetic, exactly:

1. **Frame.** A decoded 8-bit BGR frame (``io.load_image`` may decode a JPEG at 1/2, 1/4 or 1/8
   scale; the frame then covers the same physical area as the original file).
2. **Field of view (FOV).** On a copy shrunk to at most 512 px wide (``cv2.INTER_AREA``), the
   per-pixel maximum over B, G, R is thresholded at ``clip(0.08 * p95, 10, 20)``; after a 3x3
   opening, the largest 8-connected component is the FOV (its convex hull, so that dim,
   vignetted edges do not dent it). Its bounding box, padded by one
   small-image pixel and scaled back, is the crop box ``(x0, y0, x1, y1)`` in frame pixels
   (integers, ``x1``/``y1`` exclusive, clipped to the frame). A circle is fitted (algebraic least
   squares) to the hull's outline points that do not touch the frame's edge, so circles
   clipped at the top and bottom (IDRiD) are measured correctly.
3. **Green.** ``g = frame[:, :, 1]`` (OpenCV frames are BGR) as float32.
4. **Resize = exact area resampling.** Output pixel ``(j, i)`` of an ``H x W`` tensor is the
   area-weighted mean of the source pixels under its footprint
   ``[x0 + i*sx, x0 + (i+1)*sx) x [y0 + j*sy, y0 + (j+1)*sy)`` with ``sx = (x1-x0)/W``,
   ``sy = (y1-y0)/H``. The weight of source column ``c`` is
   ``max(0, min(b, c+1) - max(a, c)) / sx`` for the footprint ``[a, b)``, likewise for rows; the
   filter is separable: ``out = Wy @ g @ Wx.T``, float32, accumulated in float32 (rows first,
   then columns; only the non-zero taps are summed, in source order). (For shrinking
   this equals ``cv2.INTER_AREA``; unlike it, it is defined the same way for enlarging and for
   fractional boxes, which is what lets masks at full resolution share the exact geometry.)
5. **Normalise.** ``x = clip(out / 255, 0, 1)`` -> float32, tensor layout NCHW ``(1, 1, H, W)``.

Masks go through steps 4 (on the same physical box, in the mask's own pixel grid) without the
division, giving the fraction of each model pixel covered by lesion.

In code: ``preprocess_geometry`` does steps 1-2 (the FOV, the ``Geometry``, the green statistics
that the quality checks use) and ``preprocess_tensor`` steps 3-5; ``preprocess_frame`` is both.
A backend that preprocesses on its device (``Backend.takes_frames``: TensorRT with the CUDA
kernel) gets the frame and the FOV box instead of the tensor, so the CPU runs only the first.

Back-mapping (``Geometry.to_original``) is the inverse affine map, bilinear, with pixel centres
at ``+0.5``: original pixel ``(X, Y)`` samples the model map at
``((X + 0.5 - X0) / sX - 0.5, (Y + 0.5 - Y0) / sY - 0.5)``, where ``X0..`` is the box in original
pixels and ``sX = (X1 - X0) / W``. Coordinates are float64, weights float32 (``1 - f`` and
``f``), columns are blended first, then rows, in float32; model samples outside the map count
as 0 (values fade to 0 within half a model pixel beyond the box). No fixed-point rounding, so
any window of the map equals the same part of the whole map bit for bit.

``native`` (``_native.cpp``) computes the FOV shrink and step 4 for uint8 frames with the same
float operations in the same order, bit for bit (``tests/test_native.py``); this module's
numpy/OpenCV code is the reference and runs wherever the native kernels are not built.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

from . import native

DEFAULT_INPUT_HW: tuple[int, int] = (560, 576)
FOV_WORK_WIDTH = 512


@dataclass(frozen=True)
class Fov:
    """Field of view found in a frame (frame pixel coordinates)."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    cx: float
    cy: float
    radius: float
    found: bool
    fill_ratio: float  # FOV area / fitted circle area inside the frame (1.0 for a clean disc)
    frame_fraction: float  # FOV area / frame area


def _bilinear_taps(start: int, stop: int, box0: float, scale: float, n: int):
    """For original pixels ``start..stop-1`` on one axis: the two model samples (indices into
    the map padded by one zero on each side) and their float32 weights, from
    ``u = (X + 0.5 - box0) / scale - 0.5`` in float64 (pixel centres at +0.5)."""
    u = (np.arange(start, stop, dtype=np.float64) + 0.5 - box0) / scale - 0.5
    lo = np.floor(u)
    frac = u - lo
    i0 = np.clip(lo.astype(np.int64) + 1, 0, n + 1)
    i1 = np.clip(lo.astype(np.int64) + 2, 0, n + 1)
    return i0, i1, (1.0 - frac).astype(np.float32), frac.astype(np.float32)


@dataclass(frozen=True)
class Geometry:
    """Everything needed to map between the original image and the model tensor."""

    original_hw: tuple[int, int]
    frame_hw: tuple[int, int]
    model_hw: tuple[int, int]
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in original pixels
    fov_center: tuple[float, float]  # cx, cy in original pixels
    fov_radius: float  # in original pixels

    @property
    def frame_scale(self) -> tuple[float, float]:
        """(sx, sy): original pixels per frame pixel."""
        return (
            self.original_hw[1] / self.frame_hw[1],
            self.original_hw[0] / self.frame_hw[0],
        )

    def to_original(
        self,
        model_map: np.ndarray,
        out: np.ndarray | None = None,
        window: tuple[int, int, int, int] | None = None,
    ) -> np.ndarray:
        """Bilinearly map a model-resolution float map onto the original pixel grid.

        ``window`` ``(x0, y0, x1, y1)`` (original pixels, exclusive ends) computes only that
        part; every pixel's value depends on its own coordinates alone, so a window equals the
        same part of the whole map bit for bit. ``out``: a float32 array of the result's shape.
        """
        return back_map(self, padded_map(model_map, self.model_hw), window, out)

    def fov_mask(self) -> np.ndarray:
        """Boolean FOV disc (clipped to the crop box) on the original pixel grid."""
        oh, ow = self.original_hw
        x0, y0, x1, y1 = self.box
        mask = np.zeros((oh, ow), dtype=np.uint8)
        cx, cy = self.fov_center
        cv2.circle(mask, (round(cx), round(cy)), max(1, round(self.fov_radius)), 1, thickness=-1)
        box = np.zeros_like(mask)
        box[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = 1
        return (mask & box).astype(bool)

    def to_dict(self) -> dict:
        return asdict(self)


def padded_map(model_map: np.ndarray, model_hw: tuple[int, int]) -> np.ndarray:
    """The model map (float32) with one zero row/column on every side, for ``back_map``."""
    h, w = model_hw
    if model_map.shape != (h, w):
        raise ValueError(f"map shape {model_map.shape} != model size {(h, w)}")
    padded = np.zeros((h + 2, w + 2), np.float32)
    padded[1:-1, 1:-1] = model_map
    return padded


def back_map(
    geometry: Geometry,
    padded: np.ndarray,
    window: tuple[int, int, int, int] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``Geometry.to_original`` on a ``padded_map`` (pad once, map many windows)."""
    h, w = geometry.model_hw
    oh, ow = geometry.original_hw
    wx0, wy0, wx1, wy1 = window if window is not None else (0, 0, ow, oh)
    bx0, by0, bx1, by1 = geometry.box
    cols = _bilinear_taps(wx0, wx1, bx0, (bx1 - bx0) / w, w)
    rows = _bilinear_taps(wy0, wy1, by0, (by1 - by0) / h, h)
    shape = (wy1 - wy0, wx1 - wx0)
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {shape}")
    # columns first, on the few model rows the window needs; then rows (contiguous gathers)
    lo, hi = int(rows[0].min(initial=0)), int(rows[1].max(initial=0)) + 1
    part = padded[lo:hi]
    c = part[:, cols[0]] * cols[2]
    c += part[:, cols[1]] * cols[3]
    r0, r1 = rows[0] - lo, rows[1] - lo
    step = max(1, (1 << 20) // max(1, shape[1]))  # ~1 Mpx of temporaries at a time
    for a in range(0, shape[0], step):
        b = min(shape[0], a + step)
        np.multiply(c[r0[a:b]], rows[2][a:b, None], out=out[a:b])
        out[a:b] += c[r1[a:b]] * rows[3][a:b, None]
    return out


@dataclass(frozen=True)
class Preprocessed:
    """The model input tensor plus what is needed to undo the geometry.

    ``tensor`` is None when only the geometry was computed (``preprocess_geometry``: the device
    path, where the backend turns the frame into its input itself); ``preprocess_frame``
    always sets it."""

    tensor: np.ndarray | None  # (1, 1, H, W) float32 in [0, 1]; None on the device path
    geometry: Geometry
    fov: Fov
    green_stats: tuple[float, float]  # mean, std of green (0-255) inside the FOV box


def _fit_circle(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, float] | None:
    """Algebraic (Kasa) least-squares circle fit; None when degenerate."""
    if xs.size < 8:
        return None
    a = np.column_stack([xs, ys, np.ones_like(xs)])
    b = xs**2 + ys**2
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = sol[0] / 2.0, sol[1] / 2.0
    r2 = sol[2] + cx**2 + cy**2
    if not np.isfinite(r2) or r2 <= 0:
        return None
    return float(cx), float(cy), float(np.sqrt(r2))


def _densify(poly: np.ndarray, step: float = 2.0) -> np.ndarray:
    """Points every ``step`` px along a closed polygon (hull vertices are sparse on lines):
    on the edge from ``a`` to ``b`` with ``n = max(1, int(|b - a| / step))`` points, the
    points ``a + (k / n) * (b - a)``, ``k = 0..n-1``."""
    d = np.roll(poly, -1, axis=0) - poly
    n = np.maximum(1, (np.hypot(d[:, 0], d[:, 1]) / step).astype(np.int64))
    edge = np.repeat(np.arange(len(poly)), n)
    k = np.arange(edge.size) - np.repeat(np.cumsum(n) - n, n)
    t = (k / n[edge])[:, None]
    return poly[edge] + t * d[edge]


def _percentile_u8(v: np.ndarray, q: float) -> float:
    """``np.percentile(v, q)`` of a uint8 array, read off its histogram where all order
    statistics around the position are equal (numpy interpolates two of them: the result is
    then that value exactly); otherwise numpy's own."""
    n = v.size
    pos = (n - 1) * (q / 100.0)  # numpy's index, up to rounding: take one more on each side
    lo, hi = max(0, int(np.floor(pos)) - 1), min(n - 1, int(np.ceil(pos)) + 1)
    if n < 1 << 24:  # OpenCV's float32 counts are exact, and faster than np.bincount
        hist = cv2.calcHist([v], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    else:
        hist = np.bincount(v.ravel(), minlength=256)
    cum = np.cumsum(hist)
    a, b = np.searchsorted(cum, [lo + 1, hi + 1], side="left")  # lo-th, hi-th smallest values
    return float(a) if a == b else float(np.percentile(v, q))


def _largest_component(binary: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """The largest 8-connected component of a 0/1 uint8 image (the first in raster order on a
    tie, as OpenCV labels): its 0/1 mask and bounding box ``(x, y, w, h)``; None if empty.
    A fundus mask is nearly always one component: the native labelling then only confirms it
    (the mask is the image itself), faster than OpenCV's labels."""
    stats = native.components(binary)
    if stats is not None and len(stats) <= 1:
        if len(stats) == 0:
            return None
        _, x0, y0, x1, y1, _, _ = stats[0].tolist()
        return binary, (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
    n, labels, cc, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return None
    k = 1 + int(np.argmax(cc[1:, cv2.CC_STAT_AREA]))
    return (labels == k).astype(np.uint8), tuple(int(v) for v in cc[k, :4])


def find_fov(frame: np.ndarray) -> Fov:
    """Locate the circular field of view in a BGR (or grey) uint8 frame."""
    fh, fw = frame.shape[:2]
    scale = min(1.0, FOV_WORK_WIDTH / fw)
    sw, sh = max(1, round(fw * scale)), max(1, round(fh * scale))
    small = cv2.resize(frame, (sw, sh), interpolation=cv2.INTER_AREA) if scale < 1 else frame
    if small.ndim == 3 and small.shape[2] == 3:  # = small.max(axis=2), without a reduction
        v = np.maximum(np.maximum(small[..., 0], small[..., 1]), small[..., 2])
    else:
        v = small.max(axis=2) if small.ndim == 3 else small
    thr = float(np.clip(0.08 * _percentile_u8(v, 95), 10, 20))
    binary = (v > thr).astype(np.uint8)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    whole = Fov((0, 0, fw, fh), fw / 2, fh / 2, float(np.hypot(fw, fh) / 2), False, 0.0, 0.0)
    found = _largest_component(binary)
    if found is None:
        return whole
    comp, (bx, by, bw, bh) = found
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    hull = cv2.convexHull(np.concatenate(contours))  # dim, vignetted edges dent the outline
    filled = np.zeros_like(comp)
    cv2.drawContours(filled, [hull], -1, 1, thickness=-1)
    area = cv2.countNonZero(filled)
    if area < 0.1 * sw * sh:
        return whole
    pts = _densify(hull.reshape(-1, 2).astype(np.float64))
    inner = (pts[:, 0] > 0) & (pts[:, 0] < sw - 1) & (pts[:, 1] > 0) & (pts[:, 1] < sh - 1)
    fit = _fit_circle(pts[inner, 0], pts[inner, 1])
    if fit is None or not (0.25 * max(bw, bh) < fit[2] < 2.0 * max(bw, bh)):
        fit = (bx + bw / 2, by + bh / 2, max(bw, bh) / 2)
    cx, cy, r = fit
    disc = np.zeros_like(comp)
    cv2.circle(disc, (round(cx), round(cy)), max(1, round(r)), 1, thickness=-1)
    disc_area = cv2.countNonZero(disc)
    fill_ratio = cv2.countNonZero(filled & disc) / disc_area if disc_area else 0.0
    # back to frame pixels, one small-pixel margin, outward rounding
    inv = 1.0 / scale
    x0 = max(0, int(np.floor((bx - 1) * inv)))
    y0 = max(0, int(np.floor((by - 1) * inv)))
    x1 = min(fw, int(np.ceil((bx + bw + 1) * inv)))
    y1 = min(fh, int(np.ceil((by + bh + 1) * inv)))
    return Fov(
        box=(x0, y0, x1, y1),
        cx=(cx + 0.5) * inv - 0.5,
        cy=(cy + 0.5) * inv - 0.5,
        radius=r * inv,
        found=True,
        fill_ratio=fill_ratio,
        frame_fraction=area / float(sw * sh),
    )


@lru_cache(maxsize=64)
def area_weights(start: float, stop: float, dst_len: int) -> tuple[int, np.ndarray]:
    """Exact area-resampling weights for source interval ``[start, stop)`` -> ``dst_len`` pixels.

    Returns ``(first, w)``: ``w[j, c]`` is the weight of source pixel ``first + c`` in output
    ``j``; each row sums to 1.
    """
    s, first, last, a, b = _footprints(start, stop, dst_len)
    w = _overlap(a, b, np.arange(first, last, dtype=np.float64)[None, :], s).astype(np.float32)
    w.setflags(write=False)  # cached: shared by every caller
    return first, w


def _footprints(
    start: float, stop: float, dst_len: int
) -> tuple[float, int, int, np.ndarray, np.ndarray]:
    """``(s, first, last, a, b)``: footprint width, the source pixels ``first..last-1`` under
    ``[start, stop)``, and each output's footprint ``[a[j], b[j])`` (a column, float64)."""
    if not stop > start or dst_len < 1:
        raise ValueError(f"bad resample interval [{start}, {stop}) -> {dst_len}")
    s = (stop - start) / dst_len
    first, last = int(np.floor(start)), int(np.ceil(stop))
    a = start + s * np.arange(dst_len, dtype=np.float64)[:, None]
    return s, first, last, a, a + s


def _overlap(a: np.ndarray, b: np.ndarray, c: np.ndarray, s: float) -> np.ndarray:
    """The weight of source pixel ``[c, c + 1)`` in footprint ``[a, b)`` of width ``s``."""
    return np.clip(np.minimum(b, c + 1.0) - np.maximum(a, c), 0.0, None) / s


@lru_cache(maxsize=64)
def _area_taps(start: float, stop: float, dst_len: int) -> tuple[int, int, np.ndarray, np.ndarray]:
    """``area_weights`` as taps: ``(first, n, idx, w)``: ``n`` source pixels from ``first``,
    ``idx[j, k]`` the source offsets and ``w[j, k]`` the weights of output ``j`` (zero-weight
    padding where a row has fewer). Computed from the same float64 formula as
    ``area_weights``, on the few source pixels under each footprint only (a dense matrix per
    axis is costly, and every image's FOV box is new)."""
    s, first, last, a, b = _footprints(start, stop, dst_len)

    def weight(c: np.ndarray) -> np.ndarray:  # area_weights' formula; 0 outside its columns
        return np.where((c >= first) & (c < last), _overlap(a, b, c, s), 0.0).astype(np.float32)

    cand = np.floor(a) + np.arange(int(np.ceil(s)) + 2)  # covers [floor(a), ceil(b))
    nonzero = weight(cand) > 0
    lo = (cand[:, 0] + nonzero.argmax(axis=1) - first).astype(np.int64)
    hi = (cand[:, 0] + nonzero.shape[1] - nonzero[:, ::-1].argmax(axis=1) - first).astype(np.int64)
    k = int((hi - lo).max())
    want = lo[:, None] + np.arange(k)
    idx = np.minimum(want, last - first - 1)
    w = np.where(want < hi[:, None], weight((idx + first).astype(np.float64)), np.float32(0))
    w = w.astype(np.float32, copy=False)
    for arr in (idx, w):  # cached: shared by every caller
        arr.setflags(write=False)
    return first, last - first, idx, w


def area_resample(
    plane: np.ndarray, box: tuple[float, float, float, float], out_hw: tuple[int, int]
) -> np.ndarray:
    """Resample ``plane[box]`` to ``out_hw`` by exact area weighting (float32 result).

    Rows first, then columns, each a sum over the few source pixels under the footprint
    (``Wy @ g @ Wx.T`` without the zeros)."""
    x0, y0, x1, y1 = box
    h, w = out_hw
    fy, ny, iy, wy = _area_taps(float(y0), float(y1), int(h))
    fx, nx, ix, wx = _area_taps(float(x0), float(x1), int(w))
    band = plane[fy : fy + ny, fx : fx + nx]
    if band.shape != (ny, nx):
        raise ValueError(f"box {box} exceeds plane of shape {plane.shape}")
    out = native.area_resample_u8(band, iy, wy, ix, wx)  # the same bits, for uint8 planes
    if out is not None:
        return out
    band = band.astype(np.float32, copy=False)
    rows = band[iy[:, 0]] * wy[:, :1]
    for k in range(1, iy.shape[1]):
        rows += band[iy[:, k]] * wy[:, k : k + 1]
    out = rows[:, ix[:, 0]] * wx[:, 0]
    for k in range(1, ix.shape[1]):
        out += rows[:, ix[:, k]] * wx[:, k]
    return out


def _check_frame(frame: np.ndarray) -> None:
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 HxW or HxWx3 frame, got {frame.dtype} {frame.shape}")


def preprocess_geometry(
    frame: np.ndarray,
    original_hw: tuple[int, int] | None = None,
    model_hw: tuple[int, int] = DEFAULT_INPUT_HW,
    fov: Fov | None = None,
) -> Preprocessed:
    """Everything of ``preprocess_frame`` except the tensor (steps 1-2 and the green statistics):
    the FOV, the ``Geometry`` and the green mean/std inside the FOV box; ``tensor`` is None.

    This is what postprocessing and the quality checks need. The device path uses it alone: a
    backend that takes frames (``Backend.takes_frames``) computes steps 3-5 itself from the
    frame and ``fov.box``; ``preprocess_tensor`` is the CPU version of those steps."""
    _check_frame(frame)
    fh, fw = frame.shape[:2]
    oh, ow = original_hw or (fh, fw)
    fov = fov or find_fov(frame)
    green = frame[:, :, 1] if frame.ndim == 3 else frame
    x0, y0, x1, y1 = fov.box
    crop = green[y0:y1, x0:x1]
    sx, sy = ow / fw, oh / fh
    geometry = Geometry(
        original_hw=(oh, ow),
        frame_hw=(fh, fw),
        model_hw=(int(model_hw[0]), int(model_hw[1])),
        box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy),
        fov_center=((fov.cx + 0.5) * sx - 0.5, (fov.cy + 0.5) * sy - 0.5),
        fov_radius=fov.radius * sx,
    )
    if crop.size:  # population mean and std, as numpy's, without numpy's temporaries
        mean, std = cv2.meanStdDev(np.ascontiguousarray(crop))
        stats = (float(mean[0, 0]), float(std[0, 0]))
    else:
        stats = (0.0, 0.0)
    return Preprocessed(None, geometry, fov, stats)


def preprocess_tensor(
    frame: np.ndarray,
    box: tuple[float, float, float, float],
    model_hw: tuple[int, int] = DEFAULT_INPUT_HW,
) -> np.ndarray:
    """Steps 3-5 on the CPU: green of ``frame[box]`` (``Fov.box``, frame pixels) -> area
    resampled to ``model_hw`` -> /255, clipped -> (1, 1, H, W) float32. The CUDA kernel
    (``hemoseg_edge/cuda``) implements the same arithmetic for the GPU (equal up to float
    rounding: it sums in another order)."""
    _check_frame(frame)
    green = frame[:, :, 1] if frame.ndim == 3 else frame
    out = area_resample(green, box, model_hw)
    out *= np.float32(1.0 / 255.0)
    np.clip(out, 0.0, 1.0, out=out)  # float rounding can give 1.0000001
    return out[None, None]


def preprocess_frame(
    frame: np.ndarray,
    original_hw: tuple[int, int] | None = None,
    model_hw: tuple[int, int] = DEFAULT_INPUT_HW,
    fov: Fov | None = None,
) -> Preprocessed:
    """Frame (BGR or grey uint8) -> model tensor (1, 1, H, W) and its geometry:
    ``preprocess_geometry`` plus ``preprocess_tensor`` on its FOV box."""
    pre = preprocess_geometry(frame, original_hw, model_hw, fov)
    return replace(pre, tensor=preprocess_tensor(frame, pre.fov.box, model_hw))


def preprocess_mask(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Full-resolution binary mask -> lesion coverage fraction per model pixel (float32, HxW)."""
    if mask.shape[:2] != geometry.original_hw:
        raise ValueError(f"mask shape {mask.shape[:2]} != image shape {geometry.original_hw}")
    return area_resample((mask > 0).astype(np.float32), geometry.box, geometry.model_hw)


# Bump when any arithmetic in this module changes; models record the sha of this string.
PREPROCESS_SPEC = (
    "hemoseg-preprocess/1: fov=max(BGR)>clip(0.08*p95,10,20) on <=512px, open3, largest cc, "
    "bbox+1px; green; exact separable area resampling of box -> HxW; /255; NCHW float32"
)


def spec_sha256() -> str:
    """Fingerprint of the preprocessing arithmetic, stored in model metadata."""
    return hashlib.sha256(PREPROCESS_SPEC.encode()).hexdigest()
