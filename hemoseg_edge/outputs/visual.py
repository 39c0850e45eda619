"""The visual report: the file a grader opens for one photograph.

Three panels of the same size — the photograph as it is; the same with every lesion outlined,
the largest ones numbered as in the JSON's ``lesions`` list, the field-of-view centre and the
quadrant lines, the optic disc (green circle) and the fovea estimate (green cross); the model's
probability as a heat map with its colour scale and the operating point — under a header panel
that carries the verdict and score, burden, lesion and quadrant counts, the eye and the
DR-grade hint from hemorrhages (caveated), the flags, the model's identity and "research software,
not a medical device", and a red "NOT GRADABLE" banner where the photograph is ungradable. Text
is drawn on the panels, never on the photograph, so it is readable on any fundus.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..result import QUADRANTS, SCORE_DECIMALS, SegmentationResult
from .overlay import sample_mask

PANEL_SIDE = 900  # longest side of each image panel, px
MAX_NUMBERED = 40  # lesions numbered (largest first); the rest are outlined only
DISCLAIMER = "Research software - not a medical device. Not for diagnosis."
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK = (30, 30, 30)
_RED = (40, 40, 210)
_OUTLINE = (255, 255, 0)  # cyan in BGR
_LABEL = (0, 255, 255)  # yellow
_ANATOMY = (80, 220, 80)  # green: optic disc circle, fovea cross


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    s = side / max(h, w)
    if abs(s - 1) < 1e-6:
        return image.copy()
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interp)


def _text(img, text, org, scale, colour=_INK, thick=1) -> None:
    # Hershey fonts draw ASCII only, and OpenCV crashes on a str holding surrogates (a file
    # name that is not UTF-8): escape everything else
    safe = text.encode("ascii", "backslashreplace").decode("ascii")
    cv2.putText(img, safe, org, _FONT, scale, colour, thick, cv2.LINE_AA)


def _annotate(panel: np.ndarray, result: SegmentationResult, scale: float) -> np.ndarray:
    """Outlines of every lesion, numbers on the largest, FOV centre and quadrant lines."""
    h, w = panel.shape[:2]
    out = panel.copy()
    g = result.geometry
    cx, cy = g.fov_center[0] * scale, g.fov_center[1] * scale
    r = g.fov_radius * scale
    line = max(1, round(max(h, w) / 900))
    if "no_fov_found" not in result.flags:  # quadrant lines through the FOV centre
        for dx, dy in ((1, 0), (0, 1)):
            p0 = (round(cx - dx * r), round(cy - dy * r))
            p1 = (round(cx + dx * r), round(cy + dy * r))
            cv2.line(out, p0, p1, (200, 200, 200), line, cv2.LINE_AA)
        cv2.drawMarker(out, (round(cx), round(cy)), (255, 255, 255), cv2.MARKER_CROSS, 18, 2)
    _anatomy_marks(out, result, scale, line)
    if not result.gradable:
        fs = 1.6 * w / 900
        (tw, th), _ = cv2.getTextSize("NOT GRADABLE", _FONT, fs, 4)
        org = ((w - tw) // 2, (h + th) // 2)
        cv2.rectangle(
            out,
            (org[0] - 12, org[1] - th - 12),
            (org[0] + tw + 12, org[1] + 12),
            (255, 255, 255),
            -1,
        )
        cv2.putText(out, "NOT GRADABLE", org, _FONT, fs, _RED, 4, cv2.LINE_AA)
        return out
    m = sample_mask(result.mask_windows, (h, w))
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, _OUTLINE, line, lineType=cv2.LINE_AA)
    fs = 0.45 * max(h, w) / 900
    for i, les in enumerate(result.lesions[:MAX_NUMBERED]):
        x, y, bw, _ = les.bbox
        org = (round((x + bw) * scale) + 2, max(12, round(y * scale) - 2))
        cv2.putText(out, str(i + 1), org, _FONT, fs, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, str(i + 1), org, _FONT, fs, _LABEL, 1, cv2.LINE_AA)
    return out


def _anatomy_marks(out: np.ndarray, result: SegmentationResult, scale: float, line: int) -> None:
    """The optic disc (green circle, nominal radius) and the fovea estimate (green cross)."""
    a = result.anatomy
    if not a.found or a.disc_center is None or not a.disc_radius:
        return
    c = (round(a.disc_center[0] * scale), round(a.disc_center[1] * scale))
    cv2.circle(out, c, max(2, round(a.disc_radius * scale)), _ANATOMY, line + 1, cv2.LINE_AA)
    if a.fovea is not None:
        f = (round(a.fovea[0] * scale), round(a.fovea[1] * scale))
        cv2.drawMarker(out, f, _ANATOMY, cv2.MARKER_TILTED_CROSS, 22, line + 1, cv2.LINE_AA)


def _anatomy_line(result: SegmentationResult) -> str:
    a = result.anatomy
    if not a.found:
        return "optic disc not found: no fovea, eye from DICOM only" + (
            f" ({a.laterality} eye)" if a.laterality else ""
        )
    eye = f"{a.laterality} eye (from {a.laterality_source})" if a.laterality else "eye unknown"
    macular = sum(1 for les in result.lesions if les.macular)
    fov = (
        f"; {macular} lesion{'' if macular == 1 else 's'} within 1 disc diameter of the fovea "
        "estimate"
        if a.fovea is not None and result.gradable
        else "; no fovea estimate"
    )
    return f"{eye}{fov}"


def _heatmap(panel: np.ndarray, result: SegmentationResult, scale: float) -> np.ndarray:
    """The probability map (model grid) over a dimmed grey photograph, TURBO colours."""
    h, w = panel.shape[:2]
    grey = cv2.cvtColor(cv2.cvtColor(panel, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    out = (grey * 0.45).astype(np.uint8)
    x0, y0, x1, y1 = (v * scale for v in result.geometry.box)
    bx0, by0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    bx1, by1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
    if bx1 <= bx0 or by1 <= by0:
        return out
    prob = np.clip(np.asarray(result.probability, np.float32), 0, 1)
    p = cv2.resize(prob, (bx1 - bx0, by1 - by0), interpolation=cv2.INTER_LINEAR)
    colours = cv2.applyColorMap((p * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    alpha = np.clip(p / 0.2, 0, 1)[..., None] * 0.85  # faint where the model is sure of nothing
    region = out[by0:by1, bx0:bx1].astype(np.float32)
    out[by0:by1, bx0:bx1] = (region * (1 - alpha) + colours * alpha).astype(np.uint8)
    return out


def _colour_bar(width: int, threshold: float) -> np.ndarray:
    """A horizontal 0..1 TURBO scale with ticks and the operating point marked."""
    h = 46
    bar = np.full((h, width, 3), 255, np.uint8)
    x0, x1 = 40, width - 40
    ramp = np.linspace(0, 255, x1 - x0).astype(np.uint8)[None, :]
    bar[6:22, x0:x1] = cv2.applyColorMap(np.repeat(ramp, 16, axis=0), cv2.COLORMAP_TURBO)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = round(x0 + v * (x1 - x0 - 1))
        cv2.line(bar, (x, 22), (x, 27), _INK, 1)
        _text(bar, f"{v:g}", (x - 8, 40), 0.4)
    xt = round(x0 + threshold * (x1 - x0 - 1))
    cv2.line(bar, (xt, 2), (xt, 26), (0, 0, 0), 2)
    _text(bar, f"threshold {threshold:.2f}", (min(xt + 4, width - 120), 16), 0.4)
    return bar


def _header(width: int, result: SegmentationResult) -> np.ndarray:
    k = max(1.0, width / 1800)  # text grows with the report
    lines: list[tuple[str, tuple[int, int, int], float, int]] = []
    if not result.gradable:
        why = ", ".join(result.ungradable_reasons)
        lines.append((f"NOT GRADABLE ({why}): no findings reported", _RED, 0.8, 2))
    else:
        verdict = {True: "HEMORRHAGE DETECTED", False: "no hemorrhage detected", None: ""}
        v = verdict[result.hemorrhage_detected]
        op = (
            f" (operating point {result.image_threshold:.{SCORE_DECIMALS}g})"
            if result.image_threshold
            else ""
        )
        colour = _RED if result.hemorrhage_detected else _INK
        lines.append(
            (
                f"{v}  image score {result.image_score:.{SCORE_DECIMALS}f}{op}".strip(),
                colour,
                0.75,
                2,
            )
        )
        q = result.quadrant_counts
        quads = ", ".join(f"{k.replace('_', ' ')} {q[k]}" for k in QUADRANTS)
        lines.append(
            (
                f"burden {result.burden_percent:.2f}% of the field of view; "
                f"{len(result.lesions)} lesions ({quads})",
                _INK,
                0.55,
                1,
            )
        )
        aq = result.anatomical_quadrant_counts
        if aq is not None:
            named = ", ".join(f"{k} {n}" for k, n in aq.items())
            lines.append((f"{_anatomy_line(result)}; {named}", _INK, 0.5, 1))
        else:
            lines.append((_anatomy_line(result), _INK, 0.5, 1))
        hint = result.dr_hint
        if hint is not None:
            lines.append((f"DR hint (hemorrhages only): {hint['text']}", _RED, 0.6, 2))
            lines.append(
                (
                    "not a grade: microaneurysms and exudates are not assessed; "
                    "counts are automated",
                    (90, 90, 90),
                    0.45,
                    1,
                )
            )
    m = result.model
    ident = f"model {m.get('source', '?')} {m.get('version', '')} {m.get('precision', '')}"
    lines.append(
        (
            f"{ident} on {m.get('backend', '?')}; pixel threshold {result.threshold:.2f}",
            _INK,
            0.5,
            1,
        )
    )
    if result.flags:
        lines.append((f"flags: {', '.join(result.flags)}", _INK, 0.5, 1))
    lines.append((f"{result.source}", (90, 90, 90), 0.45, 1))
    lines.append((DISCLAIMER, (90, 90, 90), 0.45, 1))
    lines = [(t, c, s * k, thick) for t, c, s, thick in lines]
    h = 16 + sum(round(32 * s / 0.55) for _, _, s, _ in lines)
    head = np.full((h, width, 3), 255, np.uint8)
    if not result.gradable:
        head[:, :] = (225, 225, 255)
    y = 8
    for text, colour, s, thick in lines:
        y += round(32 * s / 0.55)
        _text(head, text[:160], (14, y - 8), s, colour, thick)
    return head


def _caption(width: int, text: str) -> np.ndarray:
    cap = np.full((30, width, 3), 255, np.uint8)
    _text(cap, text, (10, 21), 0.55)
    return cap


def render_visual_report(photo_bgr: np.ndarray, result: SegmentationResult) -> np.ndarray:
    """The report as one BGR image (``photo_bgr``: the photograph, any size; it is resized)."""
    panel = _fit(photo_bgr, PANEL_SIDE)
    scale = panel.shape[1] / result.geometry.original_hw[1]
    annotated = _annotate(panel, result, scale)
    heat = _heatmap(panel, result, scale)
    gap = np.full((panel.shape[0], 8, 3), 255, np.uint8)
    row = np.hstack([panel, gap, annotated, gap, heat])
    w = row.shape[1]
    pw = panel.shape[1]
    n = len(result.lesions)
    numbered = min(n, MAX_NUMBERED) if result.gradable else 0
    more = f"; {n - numbered} smaller ones outlined only" if n > numbered else ""
    captions = np.hstack(
        [
            _caption(pw, "photograph"),
            np.full((30, 8, 3), 255, np.uint8),
            _caption(
                pw,
                f"lesions 1-{numbered} = JSON lesions[0..]{more}"
                if numbered
                else "lesions (none numbered)",
            ),
            np.full((30, 8, 3), 255, np.uint8),
            _caption(pw, "hemorrhage probability"),
        ]
    )
    bar = np.full((46, w, 3), 255, np.uint8)
    bar[:, w - pw :] = _colour_bar(pw, result.threshold)
    legend = np.full((46, w - pw, 3), 255, np.uint8)
    cv2.line(legend, (14, 18), (44, 18), _OUTLINE, 2)
    _text(legend, "lesion outline", (52, 23), 0.5)
    _text(legend, "7", (190, 23), 0.5, (0, 160, 200), 2)
    _text(legend, "lesion number", (210, 23), 0.5)
    cv2.drawMarker(legend, (370, 18), (120, 120, 120), cv2.MARKER_CROSS, 14, 2)
    _text(legend, "field-of-view centre; lines: quadrants", (384, 23), 0.5)
    cv2.circle(legend, (720, 18), 8, _ANATOMY, 2, cv2.LINE_AA)
    cv2.drawMarker(legend, (745, 18), _ANATOMY, cv2.MARKER_TILTED_CROSS, 14, 2)
    _text(legend, "optic disc; fovea (estimate)", (760, 23), 0.5)
    bar[:, : w - pw] = legend
    return np.vstack([_header(w, result), captions, row, bar])
