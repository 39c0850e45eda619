"""The image size a compressed frame's own header declares, read before any decoder runs.

A DICOM's Rows x Columns is checked against the pixel limit before decoding, but a compressed
frame carries its own size, and a decoder allocates for that one: a 2 MB file can claim 64 x 64
and decode to gigapixels. JPEG (baseline, extended, lossless: SOFn), JPEG-LS (SOF55) and JPEG
2000 (the SIZ marker of a raw codestream or of the ``jp2c`` box of a JP2 file) are parsed;
anything else gives None.
"""

from __future__ import annotations

import struct

# SOF markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC); F7 is JPEG-LS's SOF55
_SOF = {m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)} | {0xF7}
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"


def frame_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG, JPEG-LS or JPEG 2000 frame's header; None if unreadable."""
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    start = data.find(_J2K_SOC_SIZ, 0, 4096)  # a raw codestream, or inside a JP2 container
    if start >= 0:
        return _j2k_size(data, start + 4)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length field
            i += 2
            continue
        (length,) = struct.unpack_from(">H", data, i + 2)
        if marker in _SOF:
            if i + 9 > n:
                return None
            height, width = struct.unpack_from(">HH", data, i + 5)
            return height, width
        if marker in (0xD9, 0xDA) or length < 2:  # end of image, start of scan: no SOF seen
            return None
        i += 2 + length
    return None


def _j2k_size(data: bytes, siz: int) -> tuple[int, int] | None:
    # SIZ: Lsiz(2) Rsiz(2) Xsiz(4) Ysiz(4) XOsiz(4) YOsiz(4)
    if siz + 20 > len(data):
        return None
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", data, siz + 4)
    if xo > xsiz or yo > ysiz:
        return None
    return ysiz - yo, xsiz - xo
