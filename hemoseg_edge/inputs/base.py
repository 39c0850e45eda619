"""What every input decoder returns (``LoadedImage``), the limits they share, and the
format sniffing that routes bytes to a decoder (magic numbers, never the file name)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_PIXELS = 60_000_000  # 4288x2848 is 12.2 Mpx; 60 Mpx leaves room for any fundus camera
MIN_SIDE = 64
# the file names a folder is expanded to, and that calibration takes
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm"})

_MAGIC = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"BM": "bmp",
}


@dataclass
class LoadedImage:
    """A decoded frame plus what we know about the file it came from."""

    path: str
    frame: np.ndarray  # BGR uint8, possibly decoded at reduced scale
    original_hw: tuple[int, int]  # the file's own height, width
    format: str
    notes: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    sha256: str | None = None  # of the file's bytes (None for an array)

    @property
    def reduction(self) -> float:
        return self.original_hw[1] / self.frame.shape[1]


def sniff_format(data: bytes) -> str | None:
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    if len(data) > 132 and data[128:132] == b"DICM":
        return "dicom"
    return None
