"""``hemoseg_edge.inputs``: damaged pixels are refused, unusual but valid files are decoded
right (the largest TIFF page, float samples, big PNG text chunks, bytes after the JPEG end)."""

from __future__ import annotations

import io
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from hemoseg_edge.errors import InputImageError
from hemoseg_edge.inputs import decode_image, load_image
from hemoseg_edge.inputs.raster import decode_jpeg


@pytest.fixture(scope="module")
def photo(sample_image) -> np.ndarray:
    """The sample fundus photograph at 1/4 size (decodes fast, still a real image)."""
    return load_image(sample_image, (560, 576)).frame[::2, ::2].copy()


def _jpeg(img: np.ndarray, quality: int = 92) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def test_jpeg_decoder_gives_opencvs_bits_at_every_scale(sample_image):
    data = sample_image.read_bytes()
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
    for k, flag in flags.items():
        ref = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
        assert np.array_equal(decode_jpeg(data, "x", k), ref), k


def _damaged(data: bytes) -> dict[str, bytes]:
    mid = bytearray(data)
    third = len(mid) // 3
    for i in range(third, third + 3000, 97):  # flipped bits in the entropy-coded data
        mid[i] ^= 0x55
    garbage = bytearray(data)
    garbage[third : third + 2000] = np.random.default_rng(0).bytes(2000)
    return {
        "cut_then_end_marker": data[: len(data) // 2] + b"\xff\xd9",
        "flipped_bits": bytes(mid),
        "random_block": bytes(garbage),
        "cut_no_end_marker": data[: len(data) // 2],
    }


@pytest.mark.parametrize(
    "case", ["cut_then_end_marker", "flipped_bits", "random_block", "cut_no_end_marker"]
)
def test_damaged_jpeg_is_refused_not_half_grey(photo, case):
    """libjpeg recovers from these with a grey or garbage band and a stderr warning; the
    strict decoder turns that warning into a one-line refusal."""
    data = _damaged(_jpeg(photo))[case]
    with pytest.raises(InputImageError, match="damaged or truncated JPEG") as e:
        decode_image(data, "bad.jpg")
    assert "\n" not in str(e.value)


def test_bytes_after_the_jpeg_end_are_fine(photo):
    data = _jpeg(photo)
    img = decode_image(data + b"camera maker trailer" * 50, "trailer.jpg")
    assert np.array_equal(img.frame, decode_image(data, "plain.jpg").frame)


def test_multipage_tiff_takes_the_full_size_page_not_the_thumbnail(photo):
    thumb = Image.fromarray(cv2.cvtColor(cv2.resize(photo, (160, 106)), cv2.COLOR_BGR2RGB))
    full = Image.fromarray(cv2.cvtColor(photo, cv2.COLOR_BGR2RGB))
    buf = io.BytesIO()
    thumb.save(buf, "TIFF", save_all=True, append_images=[full])
    img = decode_image(buf.getvalue(), "two_pages.tif")
    assert img.original_hw == photo.shape[:2]
    assert np.array_equal(img.frame, photo)
    assert "tiff_page_2_of_2" in img.notes


def test_float_tiff_is_converted_not_called_corrupt(photo):
    grey = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    buf = io.BytesIO()
    Image.fromarray(grey, mode="F").save(buf, "TIFF")
    img = decode_image(buf.getvalue(), "float.tif")
    assert img.frame.shape[:2] == grey.shape
    assert np.abs(img.frame[..., 1].astype(int) - np.rint(grey * 255)).max() <= 1
    assert "converted_to_8bit" in img.notes


def _png_with_text(img: np.ndarray, text_bytes: int) -> bytes:
    png = cv2.imencode(".png", img)[1].tobytes()
    payload = b"Comment\x00\x00" + zlib.compress(b"x" * text_bytes)
    body = b"zTXt" + payload
    chunk = struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))
    return png[:33] + chunk + png[33:]  # after IHDR


def test_png_with_a_huge_text_chunk_decodes(photo):
    data = _png_with_text(photo, 64 * 1024 * 1024)  # PIL refuses to inflate > 1 MB of text
    img = decode_image(data, "text.png")
    assert np.array_equal(img.frame, photo)


def test_decode_warnings_never_reach_stderr(photo, capfd):
    for data in _damaged(_jpeg(photo)).values():
        with pytest.raises(InputImageError):
            decode_image(data, "bad.jpg")
    assert capfd.readouterr().err == ""


def test_non_utf8_name_is_kept(tmp_path, photo):
    name = os.fsdecode(b"latin1_\xe9.jpg")
    p = tmp_path / name
    p.write_bytes(_jpeg(photo))
    assert load_image(p).path == str(p)
