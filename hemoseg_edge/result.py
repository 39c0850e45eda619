"""The typed result of one segmentation."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property

import numpy as np

from .preprocess import Geometry
from .quality import UNGRADABLE_FLAGS
from .version import __version__

QUADRANTS = ("upper_left", "upper_right", "lower_left", "lower_right")
# with the eye known: superior = upper (fundus photographs are displayed upright), nasal = the
# optic disc's side (a right eye's disc is on the right of the image as displayed)
ANATOMICAL_QUADRANTS = ("superotemporal", "superonasal", "inferotemporal", "inferonasal")
LATERALITIES = ("right", "left")
# DR-grade hint from hemorrhages alone (``SegmentationResult.dr_hint``)
SEVERE_HEMORRHAGES_PER_QUADRANT = 20
# Decimals the image score is reported with (JSON, CSV, report): it crowds just under 1
# (0.9998-1.0 for most photographs) and operating points sit there, so 4 would show a score
# equal to a point it is under
SCORE_DECIMALS = 6
DR_HINT_CAVEAT = (
    "Hint from hemorrhages alone: microaneurysms, exudates, venous beading, IRMA and new "
    "vessels are not assessed, and lesion counts come from an automated segmentation (false "
    "positives, merged or split lesions). Not a DR grade; research software, not a medical "
    "device."
)
# The JSON's layout (docs/results.md lists every field and the breaking changes)
SCHEMA_VERSION = 2


def anatomical_quadrant(quadrant: str, laterality: str) -> str:
    """An image quadrant (``QUADRANTS``) as superior/inferior and temporal/nasal for a
    ``"right"`` or ``"left"`` eye: the nasal half is the disc's side, right for a right eye."""
    vertical, side = quadrant.split("_")
    nasal_side = "right" if laterality == "right" else "left"
    return ("supero" if vertical == "upper" else "infero") + (
        "nasal" if side == nasal_side else "temporal"
    )


def _lesion_dict(les: Lesion, laterality: str | None = None) -> dict:
    return {
        "area_px": les.area_px,
        "centroid_xy": list(les.centroid),
        "bbox_xywh": list(les.bbox),
        "quadrant": les.quadrant,
        "anatomical_quadrant": (
            anatomical_quadrant(les.quadrant, laterality) if laterality else None
        ),
        "distance_to_fovea_dd": les.distance_to_fovea_dd,
        "macular": les.macular,
        "max_probability": les.max_probability,
        "mean_probability": les.mean_probability,
    }


@dataclass(frozen=True)
class Lesion:
    area_px: int  # original-image pixels
    centroid: tuple[float, float]  # x, y in original pixels
    bbox: tuple[int, int, int, int]  # x, y, width, height in original pixels
    quadrant: str
    # ``anatomy.annotate_lesions``: centroid to the fovea estimate in disc diameters, and
    # whether that is within ``anatomy.MACULAR_DD``; None without a fovea estimate. Not part
    # of equality: two lesions are the same lesion whatever the anatomy around them
    distance_to_fovea_dd: float | None = field(default=None, compare=False)
    macular: bool | None = field(default=None, compare=False)
    # ``postprocess.window_lesions`` with the probability map: the highest and the mean
    # back-mapped probability over the lesion's pixels (what was thresholded); None without it
    max_probability: float | None = field(default=None, compare=False)
    mean_probability: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Anatomy:
    """Optic disc, fovea and laterality (``anatomy.locate``), in original pixels.

    ``found``: the disc was located (a bright compact peak inside a field of view).
    ``disc_radius`` is nominal (a fixed fraction of the FOV radius, ``anatomy``), not measured.
    ``fovea`` is an estimate (darkest region temporal of the disc), None where the temporal
    side is unknown. ``laterality``: ``"right"``/``"left"`` or None; ``laterality_source``:
    ``"dicom"`` (ImageLaterality), ``"disc_side"`` or None."""

    found: bool
    disc_center: tuple[float, float] | None = None
    disc_radius: float | None = None
    disc_score: float = 0.0  # peak contrast, in standard deviations of the FOV's brightness
    fovea: tuple[float, float] | None = None
    laterality: str | None = None
    laterality_source: str | None = None

    @property
    def disc_diameter(self) -> float | None:
        return 2.0 * self.disc_radius if self.disc_radius else None

    def to_dict(self) -> dict:
        def pt(p: tuple[float, float] | None) -> list[float] | None:
            return [round(p[0], 1), round(p[1], 1)] if p is not None else None

        return {
            "found": self.found,
            "disc_center_xy": pt(self.disc_center),
            "disc_radius_px": round(self.disc_radius, 1) if self.disc_radius else None,
            "disc_radius_source": "nominal" if self.disc_radius else None,
            "disc_score": round(self.disc_score, 2),
            "fovea_xy": pt(self.fovea),
            "laterality": self.laterality,
            "laterality_source": self.laterality_source,
        }


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
    # lesions below this area (model-input pixels) were dropped (``ModelMetadata``)
    min_lesion_model_px: float = 0.0
    input_sha256: str | None = None  # of the file's bytes (None for an array input)
    anatomy: Anatomy = field(default_factory=lambda: Anatomy(found=False))
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

    @property
    def laterality(self) -> str | None:
        return self.anatomy.laterality

    @property
    def anatomical_quadrant_counts(self) -> dict[str, int] | None:
        """``quadrant_counts`` as superotemporal/superonasal/inferotemporal/inferonasal (the
        same quadrants around the FOV centre, renamed); None when the eye is not known."""
        lat = self.anatomy.laterality
        if lat is None:
            return None
        counts = dict.fromkeys(ANATOMICAL_QUADRANTS, 0)
        for q, n in self.quadrant_counts.items():
            counts[anatomical_quadrant(q, lat)] += n
        return counts

    @property
    def dr_hint(self) -> dict | None:
        """A DR-grade hint from hemorrhages alone (``text``, ``rule``, ``caveat``); None when
        ungradable. Hemorrhage present: the image-level verdict where the model has an
        operating point, else any lesion. Present -> "at least moderate NPDR"; at least
        ``SEVERE_HEMORRHAGES_PER_QUADRANT`` lesions in each of the 4 quadrants -> "severe NPDR
        suspected" (the 4-2-1 rule's hemorrhage arm)."""
        if not self.gradable:
            return None
        present = self.hemorrhage_detected
        if present is None:
            present = bool(self.lesions)
        counts = self.quadrant_counts
        if present and min(counts.values()) >= SEVERE_HEMORRHAGES_PER_QUADRANT:
            text = "severe NPDR suspected (4-2-1 rule, hemorrhage arm)"
            rule = f">= {SEVERE_HEMORRHAGES_PER_QUADRANT} hemorrhages in each of the 4 quadrants"
        elif present:
            text = "at least moderate NPDR"
            rule = "any hemorrhage"
        else:
            text = "no hemorrhage found: DR not excluded"
            rule = "no hemorrhage"
        return {"text": text, "rule": rule, "caveat": DR_HINT_CAVEAT}

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
            "min_lesion_model_px": self.min_lesion_model_px,
            "image_score": round(self.image_score, SCORE_DECIMALS) if graded else None,
            "image_threshold": self.image_threshold,
            "hemorrhage_detected": self.hemorrhage_detected,
            "burden_percent": round(self.burden_percent, 4) if graded else None,
            "lesion_count": len(self.lesions) if graded else None,
            "lesion_area_px": self.lesion_area_px if graded else None,
            "fov_area_px": self.fov_area_px,
            "quadrant_counts": self.quadrant_counts if graded else None,
            "quadrant_convention": "image quadrants around the FOV centre, as displayed",
            "anatomical_quadrant_counts": self.anatomical_quadrant_counts if graded else None,
            "lesions": [_lesion_dict(les, self.laterality) for les in self.lesions]
            if graded
            else [],
            "flags": list(self.flags),
            "geometry": {
                "original_hw": list(g.original_hw),
                "frame_hw": list(g.frame_hw),
                "model_hw": list(g.model_hw),
                "box_xyxy": list(g.box),
                "fov_center_xy": list(g.fov_center),
                "fov_radius_px": g.fov_radius,
            },
            "anatomy": self.anatomy.to_dict(),
            "dr_hint": self.dr_hint,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "model": dict(self.model),
        }
