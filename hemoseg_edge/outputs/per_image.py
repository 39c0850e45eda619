"""The files written for one image: mask PNG (original size, 1-bit), overlay JPEG, the visual
report JPEG (``visual``) and JSON.

``segment``, ``watch`` and the DICOM receiver all name and render them here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..files import atomic_write_all, printable_path
from ..result import SCORE_DECIMALS, SegmentationResult
from .encode import encode_jpeg, encode_png_mask
from .overlay import load_overlay_frame, render_overlay
from .visual import render_visual_report

OUTPUT_KINDS = ("mask", "overlay", "report", "json")  # the JSON is written last


def output_names(stem: str) -> tuple[str, str, str, str]:
    """Mask, overlay, visual report and JSON file names for one input."""
    return f"{stem}_mask.png", f"{stem}_overlay.jpg", f"{stem}_report.jpg", f"{stem}.json"


def summary_line(result: SegmentationResult) -> str:
    """The one line printed on the overlay: verdict, score, burden, lesions, flags."""
    if not result.gradable:
        return f"NOT GRADABLE ({', '.join(result.ungradable_reasons)})"
    verdict = {True: "hemorrhage detected", False: "no hemorrhage detected", None: "score"}
    return (
        f"{verdict[result.hemorrhage_detected]} ({result.image_score:.{SCORE_DECIMALS}f}); "
        f"{result.burden_percent:.2f}% of FOV, {len(result.lesions)} lesions"
    ) + (f"  [{', '.join(result.flags)}]" if result.flags else "")


def render_outputs(
    result: SegmentationResult,
    path: str | os.PathLike,
    stem: str,
    overlay_max_side: int,
    extra: dict | None = None,
) -> dict[str, bytes]:
    """Mask PNG, overlay JPEG, visual report JPEG and JSON as ``{file name: bytes}``, in that
    order; ``extra`` (e.g. ``{"dicom": {...}}``) is merged into the JSON's top level."""
    names = output_names(stem)
    mask_png = encode_png_mask(result.mask_windows)  # no full-size mask is built
    colour = load_overlay_frame(path, result, overlay_max_side)
    report = encode_jpeg(render_visual_report(colour, result))
    overlay = encode_jpeg(
        render_overlay(colour, result.mask_windows, summary_line(result), inplace=True)
    )
    d = result.to_dict()
    d["input"] = printable_path(path)
    d["outputs"] = {k: printable_path(n) for k, n in zip(OUTPUT_KINDS[:3], names[:3], strict=True)}
    d.update(extra or {})
    data = (mask_png, overlay, report, (json.dumps(d, indent=2) + "\n").encode())
    return dict(zip(names, data, strict=True))


def write_outputs(
    result: SegmentationResult,
    path: str | os.PathLike,
    out_dir: Path,
    stem: str,
    overlay_max_side: int,
    extra: dict | None = None,
) -> dict[str, str]:
    """Render and write the three files, all or none (JSON last); ``{kind: path}``."""
    files = render_outputs(result, path, stem, overlay_max_side, extra)
    written = atomic_write_all(out_dir, files)
    return dict(zip(OUTPUT_KINDS, (printable_path(p) for p in written), strict=True))


def plot(
    result: SegmentationResult, image: str | os.PathLike | np.ndarray | None = None
) -> np.ndarray:
    """The visual report as a BGR uint8 array. ``image``: the photograph (a path or a BGR
    array; default: the file the result came from)."""
    if image is None or not isinstance(image, np.ndarray):
        image = load_overlay_frame(_photo_file(result, image), result, 2048)
    return render_visual_report(image, result)


def save(
    result: SegmentationResult,
    folder: str | os.PathLike,
    stem: str | None = None,
    image: str | os.PathLike | None = None,
    overlay_max_side: int = 2048,
) -> dict[str, str]:
    """Write mask PNG, overlay, visual report and JSON into ``folder`` (all or none);
    ``{kind: path}``. ``image``: the photograph's file (default: the result's source)."""
    path = _photo_file(result, image)
    name = stem or os.path.splitext(os.path.basename(path))[0] or "image"
    return write_outputs(result, path, Path(folder), name, overlay_max_side)


def _photo_file(result: SegmentationResult, image: str | os.PathLike | None) -> str:
    path = os.fspath(image) if image is not None else result.source
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a file: pass the photograph (image=...)")
    return path
