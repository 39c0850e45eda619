"""The typed result of one segmentation."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np

from .preprocess import Geometry
from .quality import UNGRADABLE_FLAGS
from .version import __version__

QUADRANTS = ("upper_left", "upper_right", "lower_left", "lower_right")
# The JSON's layout (docs/results.md lists every field and the breaking changes)
SCHEMA_VERSION = 2


def _lesion_dict(les: Lesion) -> dict:
    return {
        "area_px": les.area_px,
        "centroid_xy": list(les.centroid),
        "bbox_xywh": list(les.bbox),
        "quadrant": les.quadrant,
    }


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
    input_sha256: str | None = None  # of the file's bytes (None for an array input)
    created_utc: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    @property
    def ungradable_reasons(self) -> list[str]:
        """The flags that make this photograph ungradable (``quality.UNGRADABLE_FLAGS``)."""
        return [f for f in self.flags if f in UNGRADABLE_FLAGS]

    @property
    def gradable(self) -> bool:
        return not self.ungradable_reasons

    @property
    def status(self) -> str:
        """ "ok" or "ungradable" (an input that could not be processed has no result: the
        batch APIs give its error, and reports say "failed")."""
        return "ok" if self.gradable else "ungradable"

    @property
    def hemorrhage_detected(self) -> bool | None:
        """The image-level verdict: score >= the model's operating point (chosen on
        validation for sensitivity >= 0.95); None when the model carries no operating point
        or the photograph is ungradable."""
        if self.image_threshold is None or not self.gradable:
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

    # --- outputs, Ultralytics-style: the drawing and the files live in ``hemoseg_edge.outputs``
    def plot(self, image: str | os.PathLike | np.ndarray | None = None) -> np.ndarray:
        """The visual report (``outputs.visual``) as a BGR uint8 array. ``image``: the
        photograph (a path or a BGR array; default: the file this result came from)."""
        from .outputs.overlay import load_overlay_frame
        from .outputs.visual import render_visual_report

        if image is None or not isinstance(image, np.ndarray):
            image = load_overlay_frame(self._file(image), self, 2048)
        return render_visual_report(image, self)

    def save(
        self,
        folder: str | os.PathLike,
        stem: str | None = None,
        image: str | os.PathLike | None = None,
        overlay_max_side: int = 2048,
    ) -> dict[str, str]:
        """Write mask PNG, overlay, visual report and JSON into ``folder`` (all or none);
        returns ``{kind: path}``. ``image``: the photograph's file (default: the source)."""
        from .outputs.per_image import write_outputs

        path = self._file(image)
        name = stem or os.path.splitext(os.path.basename(path))[0] or "image"
        return write_outputs(self, path, Path(folder), name, overlay_max_side)

    def _file(self, image: str | os.PathLike | None) -> str:
        path = os.fspath(image) if image is not None else self.source
        if not os.path.isfile(path):
            raise ValueError(f"{path!r} is not a file: pass the photograph (image=...)")
        return path

    def to_dict(self) -> dict:
        """JSON-ready summary (no pixel arrays). An ungradable photograph reports no burden,
        no lesion count and no verdict: null, never 0."""
        graded = self.gradable
        g = self.geometry
        return {
            "schema_version": SCHEMA_VERSION,
            "tool_version": __version__,
            "created_utc": self.created_utc,
            "source": self.source,
            "input_sha256": self.input_sha256,
            "status": self.status,
            "gradable": graded,
            "ungradable_reasons": self.ungradable_reasons,
            "image_size": {"height": g.original_hw[0], "width": g.original_hw[1]},
            "threshold": self.threshold,
            "image_score": round(self.image_score, 4) if graded else None,
            "image_threshold": self.image_threshold,
            "hemorrhage_detected": self.hemorrhage_detected,
            "burden_percent": round(self.burden_percent, 4) if graded else None,
            "lesion_count": len(self.lesions) if graded else None,
            "lesion_area_px": self.lesion_area_px if graded else None,
            "fov_area_px": self.fov_area_px,
            "quadrant_counts": self.quadrant_counts if graded else None,
            "quadrant_convention": "image quadrants around the FOV centre, as displayed",
            "lesions": [_lesion_dict(les) for les in self.lesions] if graded else [],
            "flags": list(self.flags),
            "geometry": {
                "original_hw": list(g.original_hw),
                "frame_hw": list(g.frame_hw),
                "model_hw": list(g.model_hw),
                "box_xyxy": list(g.box),
                "fov_center_xy": list(g.fov_center),
                "fov_radius_px": g.fov_radius,
            },
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "model": dict(self.model),
        }
