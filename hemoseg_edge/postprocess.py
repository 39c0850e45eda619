"""Model probability -> mask in the original geometry -> lesions, quadrants, burden."""

from __future__ import annotations

import cv2
import numpy as np

from .preprocess import Geometry
from .result import Lesion


def to_original_mask(prob: np.ndarray, geometry: Geometry, threshold: float) -> np.ndarray:
    """Threshold the back-mapped probability inside the field of view (bool, original size)."""
    full = geometry.to_original(prob)
    return (full >= threshold) & geometry.fov_mask()


def quadrant_of(x: float, y: float, cx: float, cy: float) -> str:
    return ("upper" if y < cy else "lower") + "_" + ("left" if x < cx else "right")


def find_lesions(mask: np.ndarray, geometry: Geometry) -> list[Lesion]:
    """8-connected components of the mask, largest first."""
    n, _, stats, cents = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    cx, cy = geometry.fov_center
    lesions = [
        Lesion(
            area_px=int(stats[i, cv2.CC_STAT_AREA]),
            centroid=(round(float(cents[i, 0]), 1), round(float(cents[i, 1]), 1)),
            bbox=tuple(int(v) for v in stats[i, :4]),
            quadrant=quadrant_of(cents[i, 0], cents[i, 1], cx, cy),
        )
        for i in range(1, n)
    ]
    return sorted(lesions, key=lambda les: -les.area_px)


def render_overlay(
    bgr: np.ndarray, mask: np.ndarray, summary: str | None = None
) -> np.ndarray:
    """Colour image with lesion outlines (mask is resized to the image if needed)."""
    h, w = bgr.shape[:2]
    m = mask.astype(np.uint8)
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) if m.any() else np.zeros((h, w), np.uint8)
    out = bgr.copy()
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thick = max(1, round(max(h, w) / 700))
    cv2.drawContours(out, contours, -1, (255, 255, 0), thick, lineType=cv2.LINE_AA)
    if summary:
        scale = max(0.5, max(h, w) / 1500)
        org = (int(12 * scale), int(30 * scale))
        cv2.putText(out, summary, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 4 * thick, cv2.LINE_AA)
        cv2.putText(out, summary, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out
