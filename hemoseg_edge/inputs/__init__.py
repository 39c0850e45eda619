"""Inputs: image files and bytes -> ``LoadedImage`` (a validated BGR frame plus what the file
said). Raster formats in ``raster``, DICOM in ``dicom`` (pydicom, optional); both return the
``base.LoadedImage``."""

from .base import IMAGE_SUFFIXES, MAX_PIXELS, MIN_SIDE, LoadedImage, sniff_format
from .raster import decode_image, load_image

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "MIN_SIDE",
    "LoadedImage",
    "decode_image",
    "load_image",
    "sniff_format",
]
