"""The typed result of one segmentation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np

from .preprocess import Geometry

QUADRANTS = ("upper_left", "upper_right", "lower_left", "lower_right")


@dataclass(frozen=True)
class Lesion:
    area_px: int  # original-image pixels
    centroid: tuple[float, float]  # x, y in original pixels
    bbox: tuple[int, int, int, int]  # x, y, width, height in original pixels
    quadrant: str


Window = tuple[int, int, int, int]  # x0, y0, x1, y1 in original pixels (x1, y1 exclusive)


@dataclass(frozen=True)
class WindowedMask:
    """A full-size boolean mask kept as disjoint windows, all False outside them: hemorrhages
    cover a few percent of a photograph, so a 12 Mpx mask is ~1 MB of windows instead of
    12 MB. ``full()`` builds the array."""

    shape: tuple[int, int]
    windows: tuple[Window, ...] = ()
    parts: tuple[np.ndarray, ...] = ()  # bool, one per window, of the window's shape

    def full(self) -> np.ndarray:
        mask = np.zeros(self.shape, dtype=bool)
        for (x0, y0, x1, y1), part in zip(self.windows, self.parts, strict=True):
            mask[y0:y1, x0:x1] = part
        return mask


@dataclass
class SegmentationResult:
    """Everything one image gave.

    ``mask`` is in the original image's geometry (same height and width as the file), built
    on first use from ``mask_windows`` (the batch path never needs the full array).
    ``probability`` is the model's map at model resolution; ``geometry.to_original`` maps it.
    Quadrants are image quadrants around the FOV centre as the image is displayed (upper/lower,
    left/right); without laterality they are not nasal/temporal.
    """

    source: str
    probability: np.ndarray
    mask_windows: WindowedMask
    geometry: Geometry
    threshold: float
    lesions: list[Lesion]
    fov_area_px: int
    flags: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    model: dict[str, str] = field(default_factory=dict)
    # image level: ``postprocess.image_score`` (the strongest lesion's probability, [0, 1]) and
    # the model's operating point on it (``image_threshold``; None when the model has none)
    image_score: float = 0.0
    image_threshold: float | None = None

    @property
    def hemorrhage_detected(self) -> bool | None:
        """The image-level verdict: score >= the model's operating point (chosen on
        validation for sensitivity >= 0.95); None when the model carries no operating point."""
        if self.image_threshold is None:
            return None
        return self.image_score >= self.image_threshold

    @cached_property
    def mask(self) -> np.ndarray:
        """Boolean hemorrhage mask, shape ``geometry.original_hw``."""
        return self.mask_windows.full()

    @property
    def lesion_area_px(self) -> int:
        return int(sum(les.area_px for les in self.lesions))

    @property
    def burden_percent(self) -> float:
        """Hemorrhage area as a percentage of the field of view."""
        return 100.0 * self.lesion_area_px / self.fov_area_px if self.fov_area_px else 0.0

    @property
    def quadrant_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(QUADRANTS, 0)
        for les in self.lesions:
            counts[les.quadrant] += 1
        return counts

    def to_dict(self) -> dict:
        """JSON-ready summary (no pixel arrays)."""
        return {
            "source": self.source,
            "image_size": {
                "height": self.geometry.original_hw[0],
                "width": self.geometry.original_hw[1],
            },
            "threshold": self.threshold,
            "image_score": round(self.image_score, 4),
            "image_threshold": self.image_threshold,
            "hemorrhage_detected": self.hemorrhage_detected,
            "hemorrhage_burden_percent_of_fov": round(self.burden_percent, 4),
            "lesion_count": len(self.lesions),
            "lesion_area_px": self.lesion_area_px,
            "fov_area_px": self.fov_area_px,
            "quadrant_counts": self.quadrant_counts,
            "quadrant_convention": "image quadrants around the FOV centre, as displayed",
            "lesions": [asdict(les) for les in self.lesions],
            "flags": list(self.flags),
            "geometry": self.geometry.to_dict(),
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "model": dict(self.model),
        }
