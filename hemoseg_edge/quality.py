"""Cheap checks that an image is a usable fundus photograph; they only raise flags."""

from __future__ import annotations

import cv2
import numpy as np

from .preprocess import Fov


def assess(
    frame: np.ndarray, fov: Fov, green_stats: tuple[float, float], colour: bool = True
) -> list[str]:
    """Flags: ``no_fov_found``, ``non_fundus_suspected``, ``low_quality``.

    ``colour=False`` (greyscale input) skips the red-dominance test.
    """
    flags: list[str] = []
    if not fov.found:
        flags.append("no_fov_found")
    x0, y0, x1, y1 = fov.box
    crop = np.ascontiguousarray(frame[y0:y1:4, x0:x1:4])
    # channel means (OpenCV sums exactly; 3x cheaper than numpy on the strided crop)
    b, g, r = cv2.mean(crop)[:3] if crop.size and crop.ndim == 3 else (0.0, 0.0, 0.0)
    mean_g, std_g = green_stats
    disc_like = fov.found and fov.fill_ratio >= 0.85 and fov.frame_fraction <= 0.97
    red_dominant = not colour or (r > 1.15 * b and r > g)
    if fov.found and (not disc_like or not red_dominant) or not fov.found and r + g + b > 60:
        flags.append("non_fundus_suspected")
    if mean_g < 12 or mean_g > 235 or std_g < 3:
        flags.append("low_quality")
    return flags
