"""Decoding raster images (JPEG, PNG, TIFF, BMP) safely; DICOM goes to ``inputs.dicom``.

``load_image`` refuses, with one line naming the file, everything that is not a usable image:
missing, empty, unreadable, unknown format (e.g. text renamed ``.jpg``), truncated or damaged
JPEG (decoded strictly: any libjpeg warning — corrupt entropy-coded data, a premature end —
is an error, where a lenient decoder hands back a frame with a grey or garbage part), truncated
PNG, too many pixels (checked from the header, before decoding: decompression bombs), too
small, undecodable. Valid but unusual images (16-bit or float, greyscale, alpha, palette, a
multi-page TIFF) are converted and carry a note in ``notes``.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings

import cv2
import numpy as np
from PIL import Image, ImageSequence

from ..errors import InputImageError
from ..files import read_bytes
from .base import MAX_PIXELS, MIN_SIDE, LoadedImage, sniff_format


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
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: our limit decides
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                mode = im.mode
                depth = _bit_depth(data, fmt, im)
                pages = _tiff_pages(im) if fmt == "tiff" else []
    except Image.DecompressionBombError:
        raise InputImageError(
            f"{name}: image dimensions too large: decompression bomb (refused before decoding)"
        ) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken headers
        header = _png_ihdr(data) if fmt == "png" else None
        if header is None:  # e.g. a PNG whose text chunk PIL will not inflate: IHDR suffices
            raise InputImageError(f"{name}: unreadable {fmt} header ({type(e).__name__})") from None
        (h, w), mode, depth = header
        pages = []
    if len(pages) > 1:
        page = max(range(len(pages)), key=lambda i: pages[i][0] * pages[i][1])
        if page != 0:  # the first page is often a thumbnail: take the full-size one
            return _decode_tiff_page(data, name, page, pages, max_pixels)
    loaded = decode_pixels(data, name, fmt, (h, w), mode, depth, model_hw, max_pixels)
    if len(pages) > 1:
        loaded.notes.append(f"tiff_page_1_of_{len(pages)}")
    return loaded


_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}


def _png_ihdr(data: bytes) -> tuple[tuple[int, int], str, int] | None:
    """((h, w), PIL-style mode, bit depth) from a PNG's IHDR chunk; None if it has none."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    w, h, depth, colour = struct.unpack(">IIBB", data[16:26])
    if colour not in _PNG_MODES or w == 0 or h == 0:
        return None
    return (h, w), _PNG_MODES[colour], depth


_PNG_TEXT = (b"tEXt", b"zTXt", b"iTXt")


def _without_png_text(data: bytes) -> bytes:
    """The PNG without its text chunks (metadata only; pixels untouched)."""
    out, pos, dropped = [data[:8]], 8, False
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 12 + n
        if data[pos + 4 : pos + 8] in _PNG_TEXT:
            dropped = True
        else:
            out.append(data[pos:end])
        pos = end
    if pos < len(data):
        out.append(data[pos:])
    return b"".join(out) if dropped else data


def _tiff_pages(im: Image.Image) -> list[tuple[int, int]]:
    """(width, height) of every page of a TIFF (one entry for a single-page file)."""
    n = getattr(im, "n_frames", 1)
    if n <= 1:
        return [im.size]
    return [frame.size for frame in ImageSequence.Iterator(im)][:64]


def _decode_tiff_page(
    data: bytes, name: str, page: int, pages: list[tuple[int, int]], max_pixels: int
) -> LoadedImage:
    w, h = pages[page]
    if h * w > max_pixels:
        raise InputImageError(
            f"{name}: page {page + 1}: {w}x{h} exceeds the {max_pixels / 1e6:.0f} Mpx limit"
        )
    if min(h, w) < MIN_SIDE:
        raise InputImageError(f"{name}: image too small ({w}x{h}); need at least {MIN_SIDE} px")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(page)
            frame = _pil_to_bgr(im)
    except Exception as e:  # noqa: BLE001
        msg = f"{name}: cannot decode TIFF page {page + 1} ({type(e).__name__})"
        raise InputImageError(msg) from None
    notes = [f"tiff_page_{page + 1}_of_{len(pages)}"]
    return LoadedImage(name, frame, (h, w), "tiff", notes)


def _pil_to_bgr(im: Image.Image) -> np.ndarray:
    """Any PIL image as 8-bit BGR; float images scaled from [0, 1] (or clipped to 255)."""
    if im.mode in ("F", "I", "I;16", "I;16B", "I;16L"):
        a = np.asarray(im, dtype=np.float32)
        top = 1.0 if im.mode == "F" and float(np.nanmax(a)) <= 1.0 else 255.0
        if im.mode.startswith("I"):
            top = 65535.0 if float(a.max()) > 255 else 255.0
        grey = np.clip(np.nan_to_num(a) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    rgb = np.asarray(im.convert("RGB"))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def decode_jpeg(data: bytes, name: str, reduction: int = 1) -> np.ndarray:
    """A JPEG as BGR uint8, at 1/``reduction`` scale in the DCT domain, decoded strictly by
    libjpeg-turbo (simplejpeg): a corrupt or cut file is an ``InputImageError``, never a frame
    with a grey part. The same bits as OpenCV's decoder, which reports damage only on stderr."""
    import simplejpeg

    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        return simplejpeg.decode_jpeg(
            data,
            colorspace="BGR",
            min_height=-(-h // reduction),
            min_width=-(-w // reduction),
            strict=True,
        )
    except ValueError as e:
        msg = " ".join(str(e).split())[:160] or "undecodable"
        raise InputImageError(f"{name}: damaged or truncated JPEG ({msg})") from None


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
    if fmt == "png" and not _png_complete(data):
        raise InputImageError(f"{name}: truncated PNG (no IEND chunk)")
    notes: list[str] = []
    k = _reduction_for((h, w), model_hw) if fmt == "jpeg" else 1
    if fmt == "jpeg":
        frame = decode_jpeg(data, name, k)
    elif fmt == "tiff" and (depth > 16 or mode in ("F", "I")):  # float/32-bit: OpenCV refuses
        decoded = _pil_tiff(data)
        if decoded is None:
            raise InputImageError(f"{name}: cannot decode {fmt} data (corrupt file)")
        frame = decoded
    else:  # IMREAD_COLOR always gives 8-bit, 3-channel BGR
        if fmt == "png":
            data = _without_png_text(data)  # libpng would warn on stderr about big text
        buf = np.frombuffer(data, dtype=np.uint8)
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if decoded is None and fmt == "tiff":
            decoded = _pil_tiff(data)
        if decoded is None:
            raise InputImageError(f"{name}: cannot decode {fmt} data (corrupt file)")
        frame = decoded
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


def _pil_tiff(data: bytes) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return _pil_to_bgr(im)
    except Exception:  # noqa: BLE001 - the caller words the refusal
        return None


def load_image(
    path: str | os.PathLike,
    model_hw: tuple[int, int] | None = None,
    max_pixels: int = MAX_PIXELS,
) -> LoadedImage:
    """Read, validate and decode an image file (see module docstring)."""
    data = read_bytes(path)
    loaded = decode_image(data, str(path), model_hw, max_pixels)
    loaded.sha256 = hashlib.sha256(data).hexdigest()
    return loaded
