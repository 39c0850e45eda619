"""Decoding DICOM files (Ophthalmic Photography 8 bit, Secondary Capture) into BGR frames.

pydicom is an optional dependency (the ``[service]`` extra) and is imported on first use.
Accepted: PhotometricInterpretation RGB, YBR_FULL, YBR_FULL_422 (converted to RGB), MONOCHROME1/2
(grey, note ``greyscale_input``); 8 bit, or 16 bit scaled to 8 bit (note ``converted_to_8bit``);
the first frame of a multi-frame object (note ``first_frame_only``). Rows x Columns is checked
against the pixel limit on a header-only parse, before pixel data is read. Identifying
attributes go to ``LoadedImage.metadata``.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from ..errors import InputImageError, install_hint
from .base import MIN_SIDE, LoadedImage
from .codestream import frame_size

RLE_LOSSLESS = "1.2.840.10008.1.2.5"

METADATA_KEYWORDS = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "Modality",
    "SOPClassUID",
    "ImageLaterality",  # (0020,0062) R / L / U / B: the eye, for anatomy.laterality
)
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")
_GREY = ("MONOCHROME1", "MONOCHROME2")


def _pydicom(name: str):
    try:
        import pydicom
    except ImportError:
        raise InputImageError(
            f"{name}: DICOM input needs pydicom: {install_hint('service')}"
        ) from None
    return pydicom


def _read(pydicom, data: bytes, name: str, header_only: bool = False):
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=header_only)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for broken files
        raise InputImageError(f"{name}: unreadable DICOM ({type(e).__name__})") from None


def _int(ds, keyword: str, name: str) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        raise InputImageError(f"{name}: DICOM lacks {keyword}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputImageError(f"{name}: DICOM {keyword} is not a number ({value!r})") from None


def _transfer_syntax(ds):
    meta = getattr(ds, "file_meta", None)
    return getattr(meta, "TransferSyntaxUID", None) if meta is not None else None


def _pixels(pydicom, ds, name: str, photometric: str, frames: int) -> np.ndarray:
    """The first frame's pixels (``frames``: NumberOfFrames)."""
    ts = _transfer_syntax(ds)
    ts_text = f"{ts.name} ({ts})" if ts is not None else "unknown transfer syntax"
    compressed = ts is not None and ts.is_compressed
    if not compressed:
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp, bits = int(ds.SamplesPerPixel), int(ds.BitsAllocated)
        per_frame = rows * cols * spp * bits // 8
        if photometric == "YBR_FULL_422":
            per_frame = per_frame * 2 // 3
        if len(ds.PixelData) < per_frame * frames:
            raise InputImageError(
                f"{name}: truncated DICOM pixel data ({len(ds.PixelData)} of"
                f" {per_frame * frames} bytes)"
            )
    elif str(ts) != RLE_LOSSLESS:  # RLE decodes to Rows x Columns; the others carry a size
        _check_codestream(ds, name, ts_text, frames)
    one_frame = frames > 1 and hasattr(ds, "pixel_array_options")  # pydicom >= 3
    if one_frame:
        ds.pixel_array_options(index=0)  # decode the frame used, not all of them
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - decoder plugins raise anything
        msg = str(e)
        if compressed and ("missing dependencies" in msg or "No available" in msg):
            raise InputImageError(
                f"{name}: cannot decode DICOM transfer syntax {ts_text}: no decoder installed"
            ) from None
        raise InputImageError(
            f"{name}: cannot decode DICOM pixel data, transfer syntax {ts_text}"
            f" ({type(e).__name__})"
        ) from None
    if photometric in ("YBR_FULL", "YBR_FULL_422") and int(pydicom.__version__.split(".")[0]) < 3:
        from pydicom.pixel_data_handlers.util import convert_color_space  # pydicom 2.x

        if not compressed:
            arr = convert_color_space(arr, photometric, "RGB")
    arr = np.asarray(arr)
    return arr[0] if frames > 1 and not one_frame else arr


def _first_frame(ds, frames: int) -> bytes:
    try:
        from pydicom.encaps import generate_frames  # pydicom >= 3

        return next(generate_frames(ds.PixelData, number_of_frames=frames))
    except ImportError:
        from pydicom.encaps import generate_pixel_data_frame  # pydicom 2.x

        return next(generate_pixel_data_frame(ds.PixelData, frames))


def _check_codestream(ds, name: str, ts_text: str, frames: int) -> None:
    """The first frame's own header must declare the size the DICOM header does: a decoder
    allocates for the codestream's size, which nothing else has checked (``codestream``)."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    try:
        size = frame_size(_first_frame(ds, frames))
    except Exception:  # noqa: BLE001 - a malformed encapsulation raises anything
        size = None
    if size is None:
        raise InputImageError(
            f"{name}: compressed DICOM frame without a readable image header ({ts_text})"
        )
    if size != (rows, cols):
        raise InputImageError(
            f"{name}: compressed frame is {size[1]}x{size[0]} but the header says {cols}x{rows}"
            f" ({ts_text}; refused before decoding)"
        )


def _to_uint8(arr: np.ndarray, bits_stored: int, notes: list[str]) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    notes.append("converted_to_8bit")
    a = arr.astype(np.float32)
    if arr.dtype.kind == "i":  # signed: shift to the data's own range
        a -= a.min()
        top = float(a.max()) or 1.0
    else:
        top = float(2 ** max(1, min(bits_stored, 16)) - 1)
    return np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)


def _check_size(rows: int, cols: int, max_pixels: int, name: str) -> None:
    if rows * cols > max_pixels:
        raise InputImageError(
            f"{name}: {cols}x{rows} = {rows * cols / 1e6:.0f} Mpx exceeds the"
            f" {max_pixels / 1e6:.0f} Mpx limit (refused before reading pixel data)"
        )
    if min(rows, cols) < MIN_SIDE:
        raise InputImageError(
            f"{name}: image too small ({cols}x{rows}); need at least {MIN_SIDE} px"
        )


def decode_dicom(
    data: bytes,
    name: str = "<bytes>",
    model_hw: tuple[int, int] | None = None,
    max_pixels: int = 60_000_000,
) -> LoadedImage:
    """Validate and decode a DICOM file's first frame as BGR uint8 (see module docstring).
    ``model_hw`` is accepted for symmetry with ``decode_image``; DICOM frames are not reduced.
    Anything malformed is an ``InputImageError`` (pydicom and numpy raise many types for
    inconsistent headers: a bad NumberOfFrames, a 3-byte Rows, frames shorter than Rows x
    Columns); pydicom's warnings never reach stderr."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _decode_dicom(data, name, max_pixels)
    except InputImageError:
        raise
    except MemoryError:
        raise InputImageError(f"{name}: DICOM pixel data too large to decode") from None
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        msg = " ".join(str(e).split())[:120]
        raise InputImageError(f"{name}: malformed DICOM ({type(e).__name__}: {msg})") from None


def _decode_dicom(data: bytes, name: str, max_pixels: int) -> LoadedImage:
    pydicom = _pydicom(name)
    import cv2

    header = _read(pydicom, data, name, header_only=True)
    if header.get("Rows") is not None and header.get("Columns") is not None:
        _check_size(_int(header, "Rows", name), _int(header, "Columns", name), max_pixels, name)
    ds = _read(pydicom, data, name)
    if "PixelData" not in ds or not ds.PixelData:
        raise InputImageError(f"{name}: DICOM has no pixel data")
    rows, cols = _int(ds, "Rows", name), _int(ds, "Columns", name)
    _check_size(rows, cols, max_pixels, name)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    spp = _int(ds, "SamplesPerPixel", name)
    bits = _int(ds, "BitsAllocated", name)
    if photometric not in _COLOUR + _GREY:
        raise InputImageError(
            f"{name}: unsupported DICOM PhotometricInterpretation {photometric!r}"
        )
    if spp != (3 if photometric in _COLOUR else 1):
        raise InputImageError(f"{name}: DICOM {photometric} with SamplesPerPixel {spp}")
    if bits not in (8, 16):
        raise InputImageError(f"{name}: unsupported DICOM BitsAllocated {bits} (need 8 or 16)")
    frames = int(ds.get("NumberOfFrames") or 1)
    arr = _pixels(pydicom, ds, name, photometric, frames)
    notes: list[str] = ["first_frame_only"] if frames > 1 else []
    arr = _to_uint8(arr, int(ds.get("BitsStored") or bits), notes)
    if photometric in _GREY:
        grey = arr[..., 0] if arr.ndim == 3 else arr
        if photometric == "MONOCHROME1":
            grey = 255 - grey
        frame = cv2.cvtColor(np.ascontiguousarray(grey), cv2.COLOR_GRAY2BGR)
        notes.append("greyscale_input")
    else:
        frame = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2BGR)
    if frame.shape[:2] != (rows, cols):
        raise InputImageError(
            f"{name}: decoded DICOM size {frame.shape[1]}x{frame.shape[0]} != {cols}x{rows}"
        )
    metadata = {k: str(ds.get(k)) for k in METADATA_KEYWORDS if ds.get(k) not in (None, "")}
    return LoadedImage(name, frame, (rows, cols), "dicom", notes, metadata)
