"""The overlay: the colour photograph (at a bounded size) with the lesion outlines drawn on it."""

from __future__ import annotations

import os

import cv2
import numpy as np

from ..files import read_bytes
from ..inputs import decode_image, sniff_format
from ..inputs.raster import decode_jpeg
from ..result import SegmentationResult, WindowedMask


def sample_mask(mask: WindowedMask, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a windowed mask to ``hw`` (uint8 0/1): output pixel
    ``(r, c)`` takes original pixel ``(r * H // h, c * W // w)``; only the windows are read."""
    h, w = hw
    oh, ow = mask.shape
    ys, xs = np.arange(h) * oh // h, np.arange(w) * ow // w
    out = np.zeros((h, w), np.uint8)
    for (x0, y0, x1, y1), part in zip(mask.windows, mask.parts, strict=True):
        r0, r1 = np.searchsorted(ys, [y0, y1])
        c0, c1 = np.searchsorted(xs, [x0, x1])
        if r0 < r1 and c0 < c1:
            out[r0:r1, c0:c1] = part[np.ix_(ys[r0:r1] - y0, xs[c0:c1] - x0)]
    return out


def render_overlay(
    bgr: np.ndarray,
    mask: np.ndarray | WindowedMask,
    summary: str | None = None,
    inplace: bool = False,
) -> np.ndarray:
    """Colour image with lesion outlines (the mask is resampled to the image if needed);
    ``inplace``: drawn on ``bgr`` itself rather than on a copy."""
    h, w = bgr.shape[:2]
    if isinstance(mask, WindowedMask):
        m = sample_mask(mask, (h, w))
    else:
        m = mask.astype(np.uint8)
    if m.shape != (h, w):
        m = (
            cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
            if m.any()
            else np.zeros((h, w), np.uint8)
        )
    out = bgr if inplace else bgr.copy()
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thick = max(1, round(max(h, w) / 700))
    cv2.drawContours(out, contours, -1, (255, 255, 0), thick, lineType=cv2.LINE_AA)
    if summary:
        summary = summary.encode("ascii", "backslashreplace").decode("ascii")  # see visual._text
        scale = max(0.5, max(h, w) / 1500)
        org = (int(12 * scale), int(30 * scale))
        cv2.putText(
            out, summary, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 4 * thick, cv2.LINE_AA
        )
        cv2.putText(
            out, summary, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA
        )
    return out


def load_overlay_frame(
    path: str | os.PathLike, result: SegmentationResult, max_side: int = 2048
) -> np.ndarray:
    """The colour image to draw an overlay on: longest side ``max_side`` (0 = original)."""
    h, w = result.geometry.original_hw
    data = read_bytes(path)
    fmt = sniff_format(data)
    k = 1
    if fmt == "jpeg" and max_side:
        for cand in (8, 4, 2):
            if max(h, w) / cand >= max_side:
                k = cand
                break
    if fmt == "jpeg":
        frame = decode_jpeg(data, str(path), k)
    else:  # the same decoder as the input (a TIFF's full-size page, float samples, DICOM)
        frame = decode_image(data, str(path)).frame
    fh, fw = frame.shape[:2]
    if max_side and max(fh, fw) > max_side:
        s = max_side / max(fh, fw)
        # the DCT scale did most of the shrinking; a mild rest (> 1/2) needs no area filter
        interp = cv2.INTER_AREA if s < 0.5 else cv2.INTER_LINEAR
        frame = cv2.resize(frame, (round(fw * s), round(fh * s)), interpolation=interp)
    return frame
