"""Cheap checks that an image is a usable fundus photograph, and which of their flags make it
ungradable (a screening outcome of its own: the patient is recalled, never "no disease").

Evidence for the rules: ``training/degradation.py`` (``engines/degradation_v2.json``,
summarised in docs/results.md).
"""

from __future__ import annotations

import cv2
import numpy as np

from .preprocess import Fov

# flags after which no result may be read as a finding: the model saw no (usable) retina
UNGRADABLE_FLAGS = frozenset(
    {"no_fov_found", "non_fundus_suspected", "low_quality", "low_resolution", "blurred"}
)
# Field of view narrower than this (in the photograph's own pixels): "low_resolution". On the
# validation images, model v2 keeps its pooled Dice and 95 % of its lesion-level sensitivity
# down to a 384 px field of view, and loses 11.5 % of the lesions it finds at 256 px.
MIN_FOV_DIAMETER_PX = 384
# Mean green (0-255) in the field of view below this: "low_quality" (too dark). Darkened x0.3
# (mean ~21) the validation images lose 35 % of their Dice, x0.2 (~14) 58 %; the darkest
# training photograph has 34, DIARETDB1's 24.
MIN_MEAN_GREEN = 20.0
# Below this, still gradable but flagged "dark_image": darkened x0.5 (mean 18-38) the model
# loses 16 % of its Dice and 30 % of its lesion hits.
DARK_MEAN_GREEN = 30.0
# ``sharpness`` below this: "blurred". Training/validation photographs: 0.39-0.96; blurred by
# a Gaussian of 2 model pixels (lesion hits -13 %): 0.16-0.33; of 4 (Dice -40 %): <= 0.19;
# DIARETDB1 (another camera, never trained on): >= 0.47.
MIN_SHARPNESS = 0.25
SHARPNESS_WIDTH = 512  # px across the field of view where sharpness is measured


def assess(
    frame: np.ndarray,
    fov: Fov,
    green_stats: tuple[float, float],
    colour: bool = True,
    fov_diameter_px: float | None = None,
) -> list[str]:
    """Flags: ``no_fov_found``, ``non_fundus_suspected``, ``low_quality``, ``low_resolution``,
    ``blurred`` (all ungradable) and ``dark_image`` (gradable, less reliable).

    ``colour=False`` (greyscale input) skips the red-dominance test. ``fov_diameter_px``: the
    field of view's diameter in the photograph's own pixels (the frame may be decoded at a
    reduced scale); default: measured on ``frame``.
    """
    flags: list[str] = []
    if not fov.found:
        flags.append("no_fov_found")
    x0, y0, x1, y1 = fov.box
    # the FOV's extent (a strip or a crop is as narrow as its shorter side)
    diameter = min(2 * fov.radius, x1 - x0, y1 - y0)
    if fov_diameter_px is not None:
        diameter = fov_diameter_px
    if diameter < MIN_FOV_DIAMETER_PX:
        flags.append("low_resolution")
    crop = np.ascontiguousarray(frame[y0:y1:4, x0:x1:4])
    # channel means (OpenCV sums exactly; 3x cheaper than numpy on the strided crop)
    b, g, r = cv2.mean(crop)[:3] if crop.size and crop.ndim == 3 else (0.0, 0.0, 0.0)
    mean_g, std_g = green_stats
    if fov.found and sharpness(frame, fov) < MIN_SHARPNESS:
        flags.append("blurred")
    disc_like = fov.found and fov.fill_ratio >= 0.85 and fov.frame_fraction <= 0.97
    red_dominant = not colour or (r > 1.15 * b and r > g)
    if fov.found and (not disc_like or not red_dominant) or not fov.found and r + g + b > 60:
        flags.append("non_fundus_suspected")
    if mean_g < MIN_MEAN_GREEN or mean_g > 235 or std_g < 3:
        flags.append("low_quality")
    elif mean_g < DARK_MEAN_GREEN and fov.found:
        flags.append("dark_image")
    return flags


def sharpness(frame: np.ndarray, fov: Fov) -> float:
    """Mean |Laplacian| over the green standard deviation inside the field of view, measured
    with the field of view resampled to ``SHARPNESS_WIDTH`` px (so the same for any camera's
    resolution): vessel edges keep it high; defocus blur drives it towards 0."""
    x0, y0, x1, y1 = fov.box
    green = frame[y0:y1, x0:x1, 1] if frame.ndim == 3 else frame[y0:y1, x0:x1]
    if green.size == 0 or x1 - x0 < 8:
        return 0.0
    s = SHARPNESS_WIDTH / (x1 - x0)
    h = max(1, round((y1 - y0) * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    small = cv2.resize(np.ascontiguousarray(green), (SHARPNESS_WIDTH, h), interpolation=interp)
    small = small.astype(np.float32)
    yy, xx = np.ogrid[:h, :SHARPNESS_WIDTH]
    r = 0.9 * fov.radius * s  # inside the rim, whose edge is not retina
    disc = (xx - (fov.cx - x0) * s) ** 2 + (yy - (fov.cy - y0) * s) ** 2 <= r * r
    if disc.sum() < 64:
        return 0.0
    lap = cv2.Laplacian(small, cv2.CV_32F, ksize=3)
    return float(np.abs(lap[disc]).mean() / (small[disc].std() + 1e-6))
