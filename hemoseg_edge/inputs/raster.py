"""Decoding raster images (JPEG, PNG, TIFF, BMP) safely; DICOM goes to ``inputs.dicom``.

``load_image`` refuses, with one line naming the file, everything that is not a usable image:
missing, empty, unreadable, unknown format (e.g. text renamed ``.jpg``), truncated JPEG/PNG
(OpenCV would silently hand back a partly decoded JPEG), too many pixels (checked from the
header, before decoding: decompression bombs), too small, undecodable. Valid but unusual images
(16-bit, greyscale, alpha, palette) are converted and carry a note in ``notes``.
"""

from __future__ import annotations

import io
import os

import cv2
import numpy as np
from PIL import Image

from ..errors import InputImageError
from ..files import read_bytes
from .base import MAX_PIXELS, MIN_SIDE, LoadedImage, sniff_format


def _jpeg_complete(data: bytes) -> bool:
    tail = data.rstrip(b"\x00\r\n \t")
    return tail.endswith(b"\xff\xd9")


def _png_complete(data: bytes) -> bool:
    return b"IEND" in data[-64:]


def _reduction_for(hw: tuple[int, int], model_hw: tuple[int, int] | None) -> int:
    """Largest JPEG DCT scale (1, 2, 4, 8) that keeps the frame at least the model's size."""
    if model_hw is None:
        return 1
    h, w = hw
    for k in (8, 4, 2):
        if -(-h // k) >= model_hw[0] and -(-w // k) >= model_hw[1]:
            return k
    return 1


REDUCED_DECODE_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def decode_image(
    data: bytes,
    name: str = "<bytes>",
    model_hw: tuple[int, int] | None = None,
    max_pixels: int = MAX_PIXELS,
) -> LoadedImage:
    """Validate and decode image bytes; JPEGs are decoded at reduced scale when ``model_hw``
    allows it (the frame still covers the whole image)."""
    fmt = sniff_format(data)
    if fmt is None:
        raise InputImageError(f"{name}: not a supported image (JPEG, PNG, TIFF, BMP, DICOM)")
    if fmt == "dicom":
        from .dicom import decode_dicom  # pydicom: optional, only for DICOM inputs

        return decode_dicom(data, name, model_hw, max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            mode = im.mode
            depth = _bit_depth(data, fmt, im)
    except Image.DecompressionBombError:
        raise InputImageError(
            f"{name}: image dimensions too large: decompression bomb (refused before decoding)"
        ) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken headers
        raise InputImageError(f"{name}: unreadable {fmt} header ({type(e).__name__})") from None
    return decode_pixels(data, name, fmt, (h, w), mode, depth, model_hw, max_pixels)


def _bit_depth(data: bytes, fmt: str, im: Image.Image) -> int:
    """Bits per sample from the header (PIL reports 16-bit RGB PNGs as plain "RGB")."""
    if fmt == "png" and len(data) > 24:
        return data[24]
    if fmt == "tiff":
        bits = getattr(im, "tag_v2", {}).get(258, 8)
        return max(bits) if isinstance(bits, tuple) else int(bits)
    return 16 if mode_is_16(im.mode) else 8


def mode_is_16(mode: str) -> bool:
    return mode.startswith("I;16") or mode.endswith("16") or mode in ("I", "F")


def decode_pixels(
    data: bytes,
    name: str,
    fmt: str,
    hw: tuple[int, int],
    mode: str,
    depth: int,
    model_hw: tuple[int, int] | None,
    max_pixels: int,
) -> LoadedImage:
    h, w = hw
    if h * w > max_pixels:
        raise InputImageError(
            f"{name}: {w}x{h} = {h * w / 1e6:.0f} Mpx exceeds the {max_pixels / 1e6:.0f} Mpx limit"
            " (refused before decoding)"
        )
    if min(h, w) < MIN_SIDE:
        raise InputImageError(f"{name}: image too small ({w}x{h}); need at least {MIN_SIDE} px")
    if fmt == "jpeg" and not _jpeg_complete(data):
        raise InputImageError(f"{name}: truncated JPEG (no end-of-image marker)")
    if fmt == "png" and not _png_complete(data):
        raise InputImageError(f"{name}: truncated PNG (no IEND chunk)")
    notes: list[str] = []
    k = _reduction_for((h, w), model_hw) if fmt == "jpeg" else 1
    buf = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_COLOR (reduced or not) always gives 8-bit, 3-channel BGR
    frame = cv2.imdecode(buf, REDUCED_DECODE_FLAGS[k] | cv2.IMREAD_IGNORE_ORIENTATION)
    if frame is None:
        raise InputImageError(f"{name}: cannot decode {fmt} data (corrupt file)")
    if depth > 8:
        notes.append("converted_to_8bit")
    if mode in ("L", "LA", "1", "I;16", "I;16B", "I;16L", "I", "F"):
        notes.append("greyscale_input")
    if mode in ("RGBA", "LA", "PA") or "A" in mode and mode != "CMYK":
        notes.append("alpha_dropped")
    if mode == "P":
        notes.append("palette_converted")
    expect = (-(-h // k), -(-w // k))
    if frame.shape[:2] != expect:
        raise InputImageError(
            f"{name}: decoded size {frame.shape[1]}x{frame.shape[0]} does not match header {w}x{h}"
        )
    return LoadedImage(name, frame, (h, w), fmt, notes)


def load_image(
    path: str | os.PathLike,
    model_hw: tuple[int, int] | None = None,
    max_pixels: int = MAX_PIXELS,
) -> LoadedImage:
    """Read, validate and decode an image file (see module docstring)."""
    data = read_bytes(path)
    return decode_image(data, str(path), model_hw, max_pixels)
