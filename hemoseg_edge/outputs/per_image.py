"""The files written for one image: mask PNG (original size, 1-bit), overlay JPEG and JSON.

``segment``, ``watch`` and the DICOM receiver all name and render them here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..files import atomic_write_bytes
from ..result import SegmentationResult
from .encode import encode_jpeg, encode_png_mask
from .overlay import load_overlay_frame, render_overlay

OUTPUT_KINDS = ("mask", "overlay", "json")


def output_names(stem: str) -> tuple[str, str, str]:
    """Mask, overlay and JSON file names for one input."""
    return f"{stem}_mask.png", f"{stem}_overlay.jpg", f"{stem}.json"


def summary_line(result: SegmentationResult) -> str:
    """The one line printed on the overlay: verdict, score, burden, lesions, flags."""
    verdict = {True: "hemorrhage detected", False: "no hemorrhage detected", None: "score"}
    return (
        f"{verdict[result.hemorrhage_detected]} ({result.image_score:.2f}); "
        f"{result.burden_percent:.2f}% of FOV, {len(result.lesions)} lesions"
    ) + (f"  [{', '.join(result.flags)}]" if result.flags else "")


def render_outputs(
    result: SegmentationResult,
    path: str | os.PathLike,
    stem: str,
    overlay_max_side: int,
    extra: dict | None = None,
) -> dict[str, bytes]:
    """Mask PNG, overlay JPEG and JSON as ``{file name: bytes}``, in that order; ``extra``
    (e.g. ``{"dicom": {...}}``) is merged into the JSON's top level."""
    names = output_names(stem)
    mask_png = encode_png_mask(result.mask_windows)  # no full-size mask is built
    colour = load_overlay_frame(path, result, overlay_max_side)
    overlay = encode_jpeg(
        render_overlay(colour, result.mask_windows, summary_line(result), inplace=True)
    )
    d = result.to_dict()
    d["input"] = str(path)
    d["outputs"] = {"mask": names[0], "overlay": names[1]}
    d.update(extra or {})
    data = (mask_png, overlay, (json.dumps(d, indent=2) + "\n").encode())
    return dict(zip(names, data, strict=True))


def write_outputs(
    result: SegmentationResult,
    path: str | os.PathLike,
    out_dir: Path,
    stem: str,
    overlay_max_side: int,
    extra: dict | None = None,
) -> dict[str, str]:
    """Render and write the three files, each atomically, JSON last; ``{kind: path}``."""
    files = render_outputs(result, path, stem, overlay_max_side, extra)
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
    return dict(zip(OUTPUT_KINDS, (str(out_dir / n) for n in files), strict=True))
