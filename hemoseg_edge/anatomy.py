"""Optic disc, fovea and laterality: a classical detector on the field of view, plus what the
result derives from them (the lesions' distance to the fovea, the macular flag).

Method (every parameter chosen on the IDRiD training images, official train split only;
``training/anatomy_eval.py`` reports the error on the test images):

1. **Work image.** The FOV box of the decoded frame is resampled (``cv2.INTER_AREA``) so that
   the FOV diameter is ``WORK_DIAMETER`` px.
2. **Optic disc.** Brightness ``max(R, G)`` (the disc is the brightest compact region; the
   red channel separates it from yellow exudates better than green does), with the outside of
   the FOV filled by the FOV's mean, smoothed by a Gaussian of ``DISC_SIGMA`` disc radii; the
   disc centre is its maximum within ``SEARCH_FRACTION`` of the FOV radius. ``disc_score``:
   that maximum in standard deviations above the FOV's mean; the disc is ``found`` when it is
   at least ``MIN_DISC_SCORE``.
3. **Disc radius: nominal**, ``DISC_RADIUS_FRACTION`` of the FOV radius (the median of the
   IDRiD training masks; their 10th-90th percentiles are 0.140-0.172): not measured per image.
4. **Laterality.** DICOM ``ImageLaterality`` (``R``/``L``) where given; else the disc's side
   for a macula-centred photograph: a disc more than ``SIDE_MARGIN`` FOV radii right of the
   FOV centre (as displayed) is a right eye's, left of it a left eye's; nearer the centre
   (a disc-centred photograph) the eye is not known.
5. **Fovea (estimate; no ground truth here).** The darkest point of the green channel,
   smoothed by ``FOVEA_SIGMA`` disc radii, in a window centred ``FOVEA_DD`` disc diameters
   temporal of the disc centre on the horizontal through it (``FOVEA_WINDOW_DD`` half-sizes),
   inside the FOV. Temporal is away from the disc's (nasal) side; without laterality there is
   no fovea estimate.

``MACULAR_DD``: a lesion is ``macular`` when its centroid lies within 1 disc diameter of the
fovea estimate — the ETDRS grid's central and inner rings (3 mm across, about 1 DD in radius),
the zone used for clinically significant macular edema.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from .preprocess import Fov, Geometry
from .result import LATERALITIES, Anatomy, Lesion

WORK_DIAMETER = 256  # FOV diameter in the work image, px
DISC_RADIUS_FRACTION = 0.153  # disc radius / FOV radius, median of the IDRiD training masks
DISC_SIGMA = 0.5  # Gaussian sigma for the disc's brightness, in disc radii
SEARCH_FRACTION = 0.95  # the disc centre lies within this fraction of the FOV radius
MIN_DISC_SCORE = 1.0  # disc peak, standard deviations above the FOV's mean brightness
SIDE_MARGIN = 0.2  # disc this far (FOV radii) off the vertical through the FOV centre: a side
FOVEA_DD = 2.0  # fovea: disc diameters temporal of the disc centre (nominal disc diameter)
FOVEA_WINDOW_DD = (0.8, 0.5)  # half-width, half-height of its search window, disc diameters
FOVEA_BELOW_DD = 0.1  # the window's centre is this far below the disc centre's horizontal
FOVEA_SIGMA = 1.0  # Gaussian sigma for the fovea's darkness, in disc radii
FOVEA_BACKGROUND_SIGMA = 4.0  # ... and for the illumination subtracted from it
MACULAR_DD = 1.0  # "macular": within this many disc diameters of the fovea

_VESSEL_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
_DICOM_LATERALITY = {"R": "right", "L": "left"}


def dicom_laterality(metadata: dict) -> str | None:
    """``"right"``/``"left"`` from DICOM ImageLaterality (``R``/``L``); None otherwise (absent,
    ``U`` unpaired, ``B`` both)."""
    value = str(metadata.get("ImageLaterality", "")).strip().upper()
    return _DICOM_LATERALITY.get(value)


def _work_image(frame: np.ndarray, fov: Fov) -> tuple[np.ndarray, float, float, float]:
    """The FOV box resampled to a FOV diameter of ``WORK_DIAMETER``: (BGR image, scale (work
    px per frame px), FOV centre x, y in work px)."""
    x0, y0, x1, y1 = fov.box
    # an integer stride first (every smoothing below is far wider than it), then area
    stride = max(1, int(2.0 * fov.radius / WORK_DIAMETER / 2))
    crop = frame[y0:y1:stride, x0:x1:stride]
    k = WORK_DIAMETER / (2.0 * fov.radius)
    x1, y1 = x0 + crop.shape[1] * stride, y0 + crop.shape[0] * stride
    if crop.ndim == 2:
        crop = crop[..., None]
    size = (max(1, round((x1 - x0) * k)), max(1, round((y1 - y0) * k)))
    work = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    if work.ndim == 2:
        work = work[..., None]
    return work, k, (fov.cx - x0 + 0.5) * k - 0.5, (fov.cy - y0 + 0.5) * k - 0.5


def _filled(channel: np.ndarray, inside: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """``channel`` as float32 with everything outside ``edge`` set to its mean inside
    ``inside`` (the black surround would otherwise pull smoothed values down at the rim)."""
    c = channel.astype(np.float32)
    fill = float(c[inside].mean()) if inside.any() else 0.0
    c[~edge] = fill
    return c


def locate(
    frame: np.ndarray, fov: Fov, geometry: Geometry, metadata: dict | None = None
) -> Anatomy:
    """Disc, fovea and laterality of one photograph (``frame``: the decoded BGR frame ``fov``
    was found in; the result is in ``geometry``'s original pixels)."""
    dicom = dicom_laterality(metadata or {})
    source = "dicom" if dicom else None
    if not fov.found or fov.radius <= 0:
        return Anatomy(found=False, laterality=dicom, laterality_source=source)
    work, k, cx, cy = _work_image(frame, fov)
    h, w = work.shape[:2]
    yy, xx = np.ogrid[0:h, 0:w]
    rr = np.hypot(xx - cx, yy - cy)
    radius = WORK_DIAMETER / 2.0
    inside = rr < radius * SEARCH_FRACTION
    edge = rr < radius * 0.97
    if not inside.any():
        return Anatomy(found=False, laterality=dicom, laterality_source=source)
    green = work[..., 1] if work.shape[2] >= 3 else work[..., 0]
    red = work[..., 2] if work.shape[2] >= 3 else work[..., 0]
    disc_r = DISC_RADIUS_FRACTION * radius  # work px
    bright = cv2.GaussianBlur(
        _filled(np.maximum(red, green), inside, edge), (0, 0), DISC_SIGMA * disc_r
    )
    vals = bright[inside]
    spread = float(vals.std())
    masked = np.where(inside, bright, -np.inf)
    py, px = np.unravel_index(int(np.argmax(masked)), masked.shape)
    score = (float(bright[py, px]) - float(vals.mean())) / spread if spread > 0 else 0.0

    # work px -> frame px -> original px
    fsx, fsy = geometry.frame_scale
    x0, y0 = fov.box[0], fov.box[1]

    def to_original(x: float, y: float) -> tuple[float, float]:
        fx, fy = (x + 0.5) / k - 0.5 + x0, (y + 0.5) / k - 0.5 + y0
        return (fx + 0.5) * fsx - 0.5, (fy + 0.5) * fsy - 0.5

    if score < MIN_DISC_SCORE:
        return Anatomy(found=False, disc_score=score, laterality=dicom, laterality_source=source)
    laterality, source = dicom, source
    offset = (px - cx) / radius
    if laterality is None and abs(offset) >= SIDE_MARGIN:
        laterality, source = ("right" if offset > 0 else "left"), "disc_side"
    fovea = None
    if laterality in LATERALITIES:
        temporal = -1.0 if laterality == "right" else 1.0  # a right eye's disc is on the right
        dd = 2.0 * disc_r
        fx_c, fy_c = px + temporal * FOVEA_DD * dd, py + FOVEA_BELOW_DD * dd
        hw, hh = FOVEA_WINDOW_DD[0] * dd, FOVEA_WINDOW_DD[1] * dd
        wx0, wx1 = max(0, int(fx_c - hw)), min(w, int(np.ceil(fx_c + hw)) + 1)
        wy0, wy1 = max(0, int(fy_c - hh)), min(h, int(np.ceil(fy_c + hh)) + 1)
        region = inside[wy0:wy1, wx0:wx1]
        if region.any():
            # a closing removes the dark vessels (a few work px wide), not the fovea
            g = cv2.morphologyEx(_filled(green, inside, edge), cv2.MORPH_CLOSE, _VESSEL_KERNEL)
            # local darkness: minus the illumination (vignetting would pull it to the rim)
            dark = cv2.GaussianBlur(g, (0, 0), FOVEA_SIGMA * disc_r) - cv2.GaussianBlur(
                g, (0, 0), FOVEA_BACKGROUND_SIGMA * disc_r
            )
            sub = np.where(region, dark[wy0:wy1, wx0:wx1], np.inf)
            qy, qx = np.unravel_index(int(np.argmin(sub)), sub.shape)
            fovea = to_original(float(wx0 + qx), float(wy0 + qy))
    return Anatomy(
        found=True,
        disc_center=to_original(float(px), float(py)),
        disc_radius=disc_r / k * (fsx + fsy) / 2.0,
        disc_score=score,
        fovea=fovea,
        laterality=laterality,
        laterality_source=source,
    )


def annotate_lesions(lesions: list[Lesion], anatomy: Anatomy) -> list[Lesion]:
    """Each lesion with ``distance_to_fovea_dd`` (centroid to the fovea estimate, in disc
    diameters) and ``macular`` (within ``MACULAR_DD``); unchanged without a fovea estimate."""
    dd = anatomy.disc_diameter
    if anatomy.fovea is None or not dd:
        return lesions
    fx, fy = anatomy.fovea
    out = []
    for les in lesions:
        dist = float(np.hypot(les.centroid[0] - fx, les.centroid[1] - fy)) / dd
        out.append(replace(les, distance_to_fovea_dd=round(dist, 3), macular=dist <= MACULAR_DD))
    return out
