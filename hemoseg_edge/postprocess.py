"""Model probability -> mask in the original geometry -> lesions, quadrants, burden."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from .preprocess import Geometry
from .result import Lesion

Window = tuple[int, int, int, int]  # x0, y0, x1, y1 in original pixels (x1, y1 exclusive)

# Where the back-mapped probability can reach the threshold: model pixels within this margin
# of it. Bilinear interpolation is a convex combination of 4 neighbours, so any original pixel
# >= threshold has a neighbour >= threshold - margin (the margin absorbs float rounding).
_NEAR_MARGIN = 1e-3


def _span(n: int, start: int, stop: int) -> tuple[int, int]:
    """``start:stop`` on an axis of length ``n`` as numpy slicing resolves it."""
    r = range(n)[start:stop]
    return r.start, max(r.start, r.stop)


@lru_cache(maxsize=4)  # ~10 MB each at 12 Mpx
def fov_disc(geometry: Geometry) -> tuple[Window, np.ndarray, int]:
    """``geometry.fov_mask()`` as (its box, the mask inside the box, its area), cached per
    geometry (images from one camera share it); equal to the full-size mask pixel for pixel."""
    oh, ow = geometry.original_hw
    x0, y0, x1, y1 = geometry.box
    ya, yb = _span(oh, int(np.floor(y0)), int(np.ceil(y1)))
    xa, xb = _span(ow, int(np.floor(x0)), int(np.ceil(x1)))
    disc = np.zeros((yb - ya, xb - xa), dtype=np.uint8)
    cx, cy = geometry.fov_center
    centre = (round(cx) - xa, round(cy) - ya)  # integer shift: the same rasterised disc
    cv2.circle(disc, centre, max(1, round(geometry.fov_radius)), 1, thickness=-1)
    disc = disc.astype(bool)
    disc.setflags(write=False)
    return (xa, ya, xb, yb), disc, int(np.count_nonzero(disc))


def _candidate_window(prob: np.ndarray, geometry: Geometry, threshold: float) -> Window | None:
    """Original-pixel window outside which the back-mapped ``prob`` stays below ``threshold``
    (None: nowhere); generous by one model pixel plus two original pixels on every side."""
    near = prob >= threshold - _NEAR_MARGIN
    rows = np.flatnonzero(near.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(near.any(axis=0))
    h, w = geometry.model_hw
    x0, y0, x1, y1 = geometry.box
    sx, sy = (x1 - x0) / w, (y1 - y0) / h
    # original pixel X samples model coordinate u = (X + 0.5 - x0) / sx - 0.5; it depends on
    # model pixels floor(u) and floor(u) + 1 only
    wx0 = int(np.floor(x0 + (cols[0] - 1.5) * sx - 2.5))
    wx1 = int(np.ceil(x0 + (cols[-1] + 2.5) * sx + 2.5))
    wy0 = int(np.floor(y0 + (rows[0] - 1.5) * sy - 2.5))
    wy1 = int(np.ceil(y0 + (rows[-1] + 2.5) * sy + 2.5))
    return wx0, wy0, wx1, wy1


def _intersect(a: Window, b: Window) -> Window | None:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def mask_and_window(
    prob: np.ndarray, geometry: Geometry, threshold: float, scratch: np.ndarray | None = None
) -> tuple[np.ndarray, Window | None]:
    """``to_original_mask`` plus a window (even x0, y0) outside which the mask is all False.

    Only the window is thresholded; an image with no model pixel near the threshold skips the
    full-resolution warp. ``scratch``: a reusable float32 array of the original size.
    """
    oh, ow = geometry.original_hw
    mask = np.zeros((oh, ow), dtype=bool)
    box, disc, _ = fov_disc(geometry)
    cand = _candidate_window(prob, geometry, threshold)
    win = _intersect(cand, box) if cand is not None else None
    if win is None:
        return mask, None
    # the warp always covers the whole image: OpenCV's fixed-point sampling positions depend on
    # the output origin and width, so a cropped warp could differ in the last bit
    full = geometry.to_original(prob, out=scratch)
    x0, y0, x1, y1 = win
    sub = mask[y0:y1, x0:x1]
    np.greater_equal(full[y0:y1, x0:x1], threshold, out=sub)
    sub &= disc[y0 - box[1] : y1 - box[1], x0 - box[0] : x1 - box[0]]
    # even start: connected-component labelling scans 2x2 blocks, keep their alignment
    return mask, (x0 - x0 % 2, y0 - y0 % 2, x1, y1)


def to_original_mask(
    prob: np.ndarray, geometry: Geometry, threshold: float, scratch: np.ndarray | None = None
) -> np.ndarray:
    """Threshold the back-mapped probability inside the field of view (bool, original size).

    Equal, pixel for pixel, to ``(geometry.to_original(prob) >= threshold) &
    geometry.fov_mask()``; see ``mask_and_window``.
    """
    return mask_and_window(prob, geometry, threshold, scratch)[0]


def quadrant_of(x: float, y: float, cx: float, cy: float) -> str:
    return ("upper" if y < cy else "lower") + "_" + ("left" if x < cx else "right")


def _bounding_window(mask: np.ndarray) -> Window | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    x0, y0 = int(cols[0]), int(rows[0])
    return x0 - x0 % 2, y0 - y0 % 2, int(cols[-1]) + 1, int(rows[-1]) + 1


def find_lesions(
    mask: np.ndarray, geometry: Geometry, window: Window | None | bool = True
) -> list[Lesion]:
    """8-connected components of the mask, largest first.

    ``window``: the mask is all False outside it (``mask_and_window``); ``True``: find it;
    ``None``: empty mask. Labelling only the window gives the same lesions, in the same order,
    as labelling the whole mask (x0, y0 even; centroids recomputed from exact pixel sums).
    """
    if window is True:
        window = _bounding_window(mask)
    if window is None:
        return []
    x0, y0, x1, y1 = window
    if x0 % 2 or y0 % 2:
        raise ValueError(f"window {window} must start at even coordinates")
    sub = mask[y0:y1, x0:x1]
    sub = sub.view(np.uint8) if sub.dtype == bool else sub.astype(np.uint8)
    n, _, stats, cents = cv2.connectedComponentsWithStats(sub, connectivity=8)
    cx, cy = geometry.fov_center
    lesions = []
    for i in range(1, n):
        area = int(stats[i, cv2.CC_STAT_AREA])
        # OpenCV's centroid is double(sum of coordinates) / area: rebuild the whole-image sums
        ux = (round(float(cents[i, 0]) * area) + area * x0) / area
        uy = (round(float(cents[i, 1]) * area) + area * y0) / area
        bx, by, bw, bh = (int(v) for v in stats[i, :4])
        lesions.append(
            Lesion(
                area_px=area,
                centroid=(round(ux, 1), round(uy, 1)),
                bbox=(bx + x0, by + y0, bw, bh),
                quadrant=quadrant_of(ux, uy, cx, cy),
            )
        )
    return sorted(lesions, key=lambda les: -les.area_px)


def render_overlay(bgr: np.ndarray, mask: np.ndarray, summary: str | None = None) -> np.ndarray:
    """Colour image with lesion outlines (mask is resized to the image if needed)."""
    h, w = bgr.shape[:2]
    m = mask.astype(np.uint8)
    if m.shape != (h, w):
        m = (
            cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
            if m.any()
            else np.zeros((h, w), np.uint8)
        )
    out = bgr.copy()
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thick = max(1, round(max(h, w) / 700))
    cv2.drawContours(out, contours, -1, (255, 255, 0), thick, lineType=cv2.LINE_AA)
    if summary:
        scale = max(0.5, max(h, w) / 1500)
        org = (int(12 * scale), int(30 * scale))
        cv2.putText(
            out, summary, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 4 * thick, cv2.LINE_AA
        )
        cv2.putText(
            out, summary, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA
        )
    return out
