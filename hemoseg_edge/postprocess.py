"""Model probability -> mask in the original geometry -> lesions, quadrants, burden."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from . import native
from .preprocess import Geometry, back_map, padded_map
from .result import Lesion, Window, WindowedMask

# Where the back-mapped probability can reach the threshold: model pixels within this margin
# of it. Bilinear interpolation is a convex combination of 4 neighbours, so any original pixel
# >= threshold has a neighbour >= threshold - margin (the margin absorbs float rounding).
_NEAR_MARGIN = 1e-3


def _span(n: int, start: int, stop: int) -> tuple[int, int]:
    """``start:stop`` on an axis of length ``n`` as numpy slicing resolves it."""
    r = range(n)[start:stop]
    return r.start, max(r.start, r.stop)


def fov_box(geometry: Geometry) -> Window:
    """The crop box in whole original pixels (outward rounding, clipped): the FOV disc of
    ``geometry.fov_mask()`` lies inside it."""
    oh, ow = geometry.original_hw
    x0, y0, x1, y1 = geometry.box
    ya, yb = _span(oh, int(np.floor(y0)), int(np.ceil(y1)))
    xa, xb = _span(ow, int(np.floor(x0)), int(np.ceil(x1)))
    return xa, ya, xb, yb


@lru_cache(maxsize=64)
def circle_halfwidths(radius: int) -> np.ndarray:
    """``hw[d]``: the filled ``cv2.circle`` of this radius (``LINE_8``, no shift) covers rows
    ``cy +- d`` from ``cx - hw[d]`` to ``cx + hw[d]`` inclusive. OpenCV's midpoint loop, which
    draws one horizontal line per octant step; rows drawn twice keep the wider line."""
    hw = [-1] * (radius + 1)  # a list: numpy item access is slow in this loop
    err, dx, dy, plus, minus = 0, radius, 0, 1, (radius << 1) - 1
    while dx >= dy:
        hw[dy] = max(hw[dy], dx)
        hw[dx] = max(hw[dx], dy)
        dy += 1
        err += plus
        plus += 2
        mask = (err <= 0) - 1  # 0 or -1, as in OpenCV
        err -= minus & mask
        dx += mask
        minus -= mask & 2
    out = np.array(hw, np.int64)
    out.setflags(write=False)
    return out


def disc_spans(geometry: Geometry, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns ``[lo[k], hi[k])`` of ``geometry.fov_mask()`` in row ``y0 + k`` (the FOV disc,
    clipped to the crop box: one span per row; empty rows have ``lo == hi``)."""
    cx, cy = geometry.fov_center
    cxr, cyr, r = round(cx), round(cy), max(1, round(geometry.fov_radius))
    xa, ya, xb, yb = fov_box(geometry)
    y = np.arange(y0, y1)
    d = np.abs(y - cyr)
    hw = np.where(d <= r, circle_halfwidths(r)[np.minimum(d, r)], -1)
    lo = np.maximum(cxr - hw, xa)
    hi = np.minimum(cxr + hw + 1, xb)
    hi[(y < ya) | (y >= yb)] = 0
    return lo, np.maximum(hi, lo)


def _spans_to_mask(lo: np.ndarray, hi: np.ndarray, x0: int, x1: int) -> np.ndarray:
    """Rows of columns ``x0..x1-1``: True where ``lo[row] <= x < hi[row]``."""
    cols = np.arange(x0, x1)
    return (cols >= lo[:, None]) & (cols < hi[:, None])


def fov_disc_in(geometry: Geometry, window: Window) -> np.ndarray:
    """``geometry.fov_mask()[y0:y1, x0:x1]`` for ``window``, built from ``disc_spans`` (no
    full-size image is drawn)."""
    x0, y0, x1, y1 = window
    return _spans_to_mask(*disc_spans(geometry, y0, y1), x0, x1)


def fov_area(geometry: Geometry) -> int:
    """Pixels in ``geometry.fov_mask()``, summed over ``disc_spans``."""
    xa, ya, xb, yb = fov_box(geometry)
    lo, hi = disc_spans(geometry, ya, yb)
    return int((hi - lo).sum())


def _model_to_windows(geometry: Geometry, groups: np.ndarray) -> np.ndarray:
    """Original-pixel windows ``(x0, y0, x1, y1)`` whose bilinear samples can touch model
    pixels ``c0..c1`` x ``r0..r1`` (inclusive; one row of ``groups`` each); generous by one
    model pixel plus two original pixels per side."""
    h, w = geometry.model_hw
    x0, y0, x1, y1 = geometry.box
    sx, sy = (x1 - x0) / w, (y1 - y0) / h
    c0, r0, c1, r1 = groups.T
    # original pixel X samples model coordinate u = (X + 0.5 - x0) / sx - 0.5; it depends on
    # model pixels floor(u) and floor(u) + 1 only
    return np.stack(
        [
            np.floor(x0 + (c0 - 1.5) * sx - 2.5),
            np.floor(y0 + (r0 - 1.5) * sy - 2.5),
            np.ceil(x0 + (c1 + 2.5) * sx + 2.5),
            np.ceil(y0 + (r1 + 2.5) * sy + 2.5),
        ],
        axis=1,
    ).astype(np.int64)


# Grouping works on cells of _CELL x _CELL model pixels, grown by _GROW cells. Near pixels of
# two groups are then >= 2 * _CELL * _GROW + _CELL + 1 = 13 model pixels apart along some axis,
# while a window reaches at most 5 model pixels beyond its near pixels (``_model_to_windows``,
# scale >= 1): windows of different groups never touch.
_CELL, _GROW = 4, 1


def _groups(near: np.ndarray) -> np.ndarray:
    """Boxes ``(c0, r0, c1, r1)`` (inclusive, model pixels; an ``(n, 4)`` int64 array) of
    groups of near pixels: any two near pixels at most 2 apart share a group, and different
    groups' windows never touch."""
    # max over each cell: a dilation anchored at the cell's corner, sampled every _CELL pixels
    cells = cv2.dilate(near, np.ones((_CELL, _CELL), np.uint8), anchor=(0, 0))[::_CELL, ::_CELL]
    grown = cv2.dilate(cells, np.ones((2 * _GROW + 1, 2 * _GROW + 1), np.uint8))
    while True:  # fill each component's bounding box until the components are rectangles
        n, _, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
        boxes = np.zeros_like(grown)
        for bx, by, bw, bh, _ in stats[1:]:
            boxes[by : by + bh, bx : bx + bw] = 1
        if np.array_equal(boxes, grown):
            break
        grown = boxes
    out = np.empty((n - 1, 4), np.int64)
    for k, (bx, by, bw, bh, _) in enumerate(stats[1:]):  # near pixels' box in each group
        x0, y0 = bx * _CELL, by * _CELL
        x, y, w, h = cv2.boundingRect(near[y0 : y0 + bh * _CELL, x0 : x0 + bw * _CELL])
        out[k] = x0 + x, y0 + y, x0 + x + w - 1, y0 + y + h - 1
    return out


def candidate_windows(prob: np.ndarray, geometry: Geometry, threshold: float) -> list[Window]:
    """Disjoint original-pixel windows, inside the FOV box, outside which the back-mapped
    ``prob`` stays below ``threshold``; no 8-connected lesion crosses a window's edge.

    Any original pixel >= threshold has a "near" model neighbour (>= threshold - margin: the
    bilinear value is a convex combination of its 4 samples). Two 8-adjacent original pixels
    sample model pixels at most 2 apart when the map is enlarged (scale >= 1), so each lesion
    lies in the window of one group of near pixels (``_groups``). When shrinking (scale < 1)
    there is one window around everything.
    """
    near = (prob >= threshold - _NEAR_MARGIN).view(np.uint8)
    rows = np.flatnonzero(near.any(axis=1))
    if rows.size == 0:
        return []
    h, w = geometry.model_hw
    x0, y0, x1, y1 = geometry.box
    box = fov_box(geometry)
    if (x1 - x0) >= w and (y1 - y0) >= h:
        groups = _groups(near)
    else:
        cols = np.flatnonzero(near.any(axis=0))
        groups = np.array([[cols[0], rows[0], cols[-1], rows[-1]]], np.int64)
    win = _model_to_windows(geometry, groups)
    np.maximum(win[:, :2], box[:2], out=win[:, :2])  # intersect with the FOV box
    np.minimum(win[:, 2:], box[2:], out=win[:, 2:])
    keep = (win[:, 2] > win[:, 0]) & (win[:, 3] > win[:, 1])
    return sorted(map(tuple, win[keep].tolist()))


def threshold_windows(prob: np.ndarray, geometry: Geometry, threshold: float) -> WindowedMask:
    """``to_original_mask`` as a ``WindowedMask``: only the disjoint ``candidate_windows`` are
    back-mapped and thresholded; the mask is all False outside them."""
    windows = candidate_windows(prob, geometry, threshold)
    if not windows:
        return WindowedMask(geometry.original_hw)
    padded = padded_map(prob, geometry.model_hw)
    thr = np.float32(threshold)  # numpy compares a float32 map with a Python float in float32
    _, ya, _, yb = fov_box(geometry)  # every window lies in it
    lo, hi = disc_spans(geometry, ya, yb)
    parts = native.back_map_ge_windows(padded, geometry.box, windows, thr, lo, hi, ya)
    if parts is None:
        parts = []
        for win in windows:
            x0, y0, x1, y1 = win
            part = back_map(geometry, padded, win) >= thr
            part &= _spans_to_mask(lo[y0 - ya : y1 - ya], hi[y0 - ya : y1 - ya], x0, x1)
            parts.append(part)
    return WindowedMask(geometry.original_hw, tuple(windows), tuple(parts))


def mask_and_windows(
    prob: np.ndarray, geometry: Geometry, threshold: float
) -> tuple[np.ndarray, list[Window]]:
    """``to_original_mask`` plus the disjoint windows outside which the mask is all False
    (``threshold_windows``, as a full array)."""
    wm = threshold_windows(prob, geometry, threshold)
    return wm.full(), list(wm.windows)


def to_original_mask(prob: np.ndarray, geometry: Geometry, threshold: float) -> np.ndarray:
    """Threshold the back-mapped probability inside the field of view (bool, original size).

    Equal, pixel for pixel, to ``(geometry.to_original(prob) >= threshold) &
    geometry.fov_mask()``; see ``mask_and_windows``.
    """
    return mask_and_windows(prob, geometry, threshold)[0]


def min_lesion_px(geometry: Geometry, min_model_px: float) -> int:
    """The smallest lesion kept, in photograph pixels, for a minimum in model-input pixels:
    one model pixel covers (box width / model width) x (box height / model height) of them."""
    if min_model_px <= 0:
        return 0
    h, w = geometry.model_hw
    x0, y0, x1, y1 = geometry.box
    return max(1, int(np.ceil(min_model_px * (x1 - x0) / w * (y1 - y0) / h - 1e-9)))


def drop_small_lesions(mask: WindowedMask, min_area_px: int) -> WindowedMask:
    """The mask without its 8-connected components of fewer than ``min_area_px`` pixels."""
    if min_area_px <= 1:
        return mask
    parts = []
    for part in mask.parts:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(part.view(np.uint8), connectivity=8)
        small = stats[:, cv2.CC_STAT_AREA] < min_area_px
        small[0] = False  # the background
        parts.append(part & ~small[labels] if small.any() else part)
    return WindowedMask(mask.shape, mask.windows, tuple(parts))


def quadrant_of(x: float, y: float, cx: float, cy: float) -> str:
    return ("upper" if y < cy else "lower") + "_" + ("left" if x < cx else "right")


def _bounding_window(mask: np.ndarray) -> Window | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def lesion_order(lesion: Lesion) -> tuple:
    """Largest first; ties by bounding box, then centroid (independent of labelling order)."""
    return (-lesion.area_px, lesion.bbox[1], lesion.bbox[0], lesion.bbox[2:], lesion.centroid)


def find_lesions(
    mask: np.ndarray, geometry: Geometry, windows: list[Window] | None = None
) -> list[Lesion]:
    """8-connected components of the mask, in ``lesion_order``.

    ``windows``: disjoint boxes outside which the mask is all False and that no component
    crosses (``mask_and_windows``); ``None``: the mask's bounding box. Labelling windows gives
    the same lesions as labelling the whole mask (centroids rebuilt from exact pixel sums).
    """
    if windows is None:
        bounding = _bounding_window(mask)
        windows = [bounding] if bounding is not None else []
    parts = [mask[y0:y1, x0:x1] for x0, y0, x1, y1 in windows]
    return window_lesions(WindowedMask(mask.shape[:2], tuple(windows), tuple(parts)), geometry)


def window_lesions(
    mask: WindowedMask, geometry: Geometry, prob: np.ndarray | None = None
) -> list[Lesion]:
    """``find_lesions`` of a ``WindowedMask``: each window labelled on its own. With ``prob``
    (the model map the mask was thresholded from), each lesion also gets the highest and the
    mean back-mapped probability over its pixels."""
    cx, cy = geometry.fov_center
    padded = padded_map(prob, geometry.model_hw) if prob is not None else None
    lesions = []
    for win, sub in zip(mask.windows, mask.parts, strict=True):
        x0, y0 = win[0], win[1]
        sub = sub.view(np.uint8) if sub.dtype == bool else sub.astype(np.uint8)
        comps = native.components(sub) if padded is None else None
        if comps is not None:  # exact integer sums: the same centroids
            for area, bx0, by0, bx1, by1, sx, sy in comps.tolist():
                ux, uy = (sx + area * x0) / area, (sy + area * y0) / area
                lesions.append(
                    Lesion(
                        area_px=area,
                        centroid=(round(ux, 1), round(uy, 1)),
                        bbox=(bx0 + x0, by0 + y0, bx1 - bx0 + 1, by1 - by0 + 1),
                        quadrant=quadrant_of(ux, uy, cx, cy),
                    )
                )
            continue
        n, labels, stats, cents = cv2.connectedComponentsWithStats(sub, connectivity=8)
        peak = mean = None
        if padded is not None and n > 1:
            peak, mean = _label_probabilities(labels, n, back_map(geometry, padded, win))
        for i in range(1, n):
            area = int(stats[i, cv2.CC_STAT_AREA])
            # OpenCV's centroid is double(sum of coordinates) / area: rebuild whole-image sums
            ux = (round(float(cents[i, 0]) * area) + area * x0) / area
            uy = (round(float(cents[i, 1]) * area) + area * y0) / area
            bx, by, bw, bh = (int(v) for v in stats[i, :4])
            lesions.append(
                Lesion(
                    area_px=area,
                    centroid=(round(ux, 1), round(uy, 1)),
                    bbox=(bx + x0, by + y0, bw, bh),
                    quadrant=quadrant_of(ux, uy, cx, cy),
                    max_probability=None if peak is None else round(float(peak[i]), 4),
                    mean_probability=None if mean is None else round(float(mean[i]), 4),
                )
            )
    return sorted(lesions, key=lesion_order)


def _label_probabilities(
    labels: np.ndarray, n: int, probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per label 1..n-1 of a component image: the highest and the mean of ``probs``."""
    inside = labels > 0
    lab, p = labels[inside], probs[inside].astype(np.float64)
    counts = np.bincount(lab, minlength=n)
    mean = np.bincount(lab, weights=p, minlength=n) / np.maximum(counts, 1)
    peak = np.zeros(n, np.float64)
    np.maximum.at(peak, lab, p)
    return peak, mean


# Side (model pixels) of the box the image-level score averages over: ~11 px of a 4288 px
# IDRiD photograph at model v2's 1120 x 1152 input, the size of a small blot hemorrhage, so one
# hot pixel cannot make a photograph "positive".
SCORE_BOX = 3


def model_fov_mask(geometry: Geometry) -> np.ndarray:
    """Boolean FOV disc on the model grid (model pixel centres mapped to original pixels)."""
    h, w = geometry.model_hw
    x0, y0, x1, y1 = geometry.box
    xs = x0 + (np.arange(w) + 0.5) * (x1 - x0) / w
    ys = y0 + (np.arange(h) + 0.5) * (y1 - y0) / h
    cx, cy = geometry.fov_center
    return (ys[:, None] - cy) ** 2 + (xs[None, :] - cx) ** 2 <= geometry.fov_radius**2


def image_score(prob: np.ndarray, geometry: Geometry, box: int = SCORE_BOX) -> float:
    """Image-level hemorrhage score in [0, 1]: the highest mean probability over any
    ``box`` x ``box`` model-pixel square inside the field of view (the strongest lesion's
    probability, robust to single pixels). 0.0 when no field of view is on the model grid."""
    fov = model_fov_mask(geometry)
    if not fov.any():
        return 0.0
    p = np.where(fov, np.asarray(prob, np.float32), 0.0).astype(np.float32)
    mean = cv2.boxFilter(p, -1, (box, box), normalize=True, borderType=cv2.BORDER_CONSTANT)
    return float(np.clip(mean[fov].max(), 0.0, 1.0))
