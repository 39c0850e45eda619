"""A corpus of bad and odd inputs for the service, generated at test time (nothing binary is
checked in). ``build(in_dir, sources)`` writes the files and returns what each should become."""

from __future__ import annotations

import io
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG2000 = "1.2.840.10008.1.2.4.91"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LS = "1.2.840.10008.1.2.4.80"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Case:
    name: str  # file name in IN_DIR (str; non-UTF-8 bytes as surrogates)
    expect: str  # "done", "failed" or "either"
    why: str
    flags: tuple[str, ...] = ()  # flags the JSON must contain (done)
    reason: str = ""  # text the reason file must contain (failed), case-insensitive
    status: str = ""  # the JSON's status (done): "ok" or "ungradable"; "" = not checked
    late: Callable[[Path], None] | None = None  # writes the file while the service runs
    dicom: bool = False  # the JSON must carry DICOM identifiers


# --- images ------------------------------------------------------------------------------------
def small_copy(path: Path, width: int = 800) -> np.ndarray:
    """A real image downscaled to ``width`` px (fast to process)."""
    img = cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_4)
    if img is None:
        raise FileNotFoundError(path)
    h, w = img.shape[:2]
    return cv2.resize(img, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)


def synthetic_fundus(h: int = 530, w: int = 800, seed: int = 0) -> np.ndarray:
    """An orange disc on black with a few dark blobs (a stand-in when no real image is at hand)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (w // 2, h // 2), int(h * 0.47), (40, 90, 190), -1)
    for _ in range(6):
        c = (int(rng.integers(w // 3, 2 * w // 3)), int(rng.integers(h // 3, 2 * h // 3)))
        cv2.circle(img, c, int(rng.integers(4, 12)), (10, 20, 60), -1)
    return img


def textured_scene(h: int = 530, w: int = 800, seed: int = 1) -> np.ndarray:
    """A non-fundus photo stand-in: sky gradient, ground, coloured boxes, noise; fills the frame."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = np.linspace([230, 180, 120], [200, 140, 60], h // 2).astype(np.uint8)[:, None]
    img[h // 2 :] = (60, 120, 80)
    for _ in range(25):
        x, y = int(rng.integers(0, w - 60)), int(rng.integers(h // 3, h - 40))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(img, (x, y), (x + int(rng.integers(20, 80)), y + 40), colour, -1)
    noise = rng.integers(-20, 20, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def pil_bytes(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def with_marker(jpg: bytes, marker: str) -> bytes:
    """The same JPEG with a COM segment carrying ``marker`` (distinguishes identical images)."""
    payload = marker.encode()
    return jpg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpg[2:]


def read_marker(data: bytes) -> str | None:
    if data[2:4] != b"\xff\xfe":
        return None
    n = struct.unpack(">H", data[4:6])[0]
    return data[6 : 4 + n].decode()


def huge_png_header(w: int = 30000, h: int = 30000) -> bytes:
    """A valid-looking PNG that claims ``w x h`` pixels but is a few KB (decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * (3 * w) * 1, 9)  # one row of a huge image
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --- DICOM -------------------------------------------------------------------------------------
def make_dicom(
    pixels: np.ndarray | None,
    photometric: str = "RGB",
    sop_class: str = OP_8BIT,
    transfer_syntax: str = EXPLICIT_LE,
    raw: bytes | None = None,
    patient_id: str = "TEST-0001",
):
    """A pydicom ``Dataset`` (with file meta) holding ``pixels`` (RGB/grey, 8 or 16 bit).
    ``raw`` replaces the pixel bytes (e.g. encapsulated junk); ``pixels=None``: no Pixel Data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, generate_uid

    ds = Dataset()
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "Test^Fundus"
    ds.Modality = "OP" if sop_class == OP_8BIT else "OT"
    ds.Laterality = "R"
    if pixels is None and raw is None:
        return ds
    shape = pixels.shape if pixels is not None else (600, 800, 3)
    ds.Rows, ds.Columns = shape[:2]
    colour = photometric not in ("MONOCHROME1", "MONOCHROME2")
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    bits = 16 if pixels is not None and pixels.dtype == np.uint16 else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    if colour:
        ds.PlanarConfiguration = 0
    ds.PixelData = raw if raw is not None else np.ascontiguousarray(pixels).tobytes()
    return ds


def dicom_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ybr422(rgb: np.ndarray) -> bytes:
    """Native YBR_FULL_422 bytes (Y1 Y2 Cb Cr per pixel pair) of an RGB image (even width)."""
    from pydicom.pixels import convert_color_space

    ybr = convert_color_space(rgb, "RGB", "YBR_FULL").astype(np.float32)
    out = np.empty((rgb.shape[0], rgb.shape[1] // 2, 4), np.uint8)
    out[..., 0] = ybr[:, 0::2, 0]
    out[..., 1] = ybr[:, 1::2, 0]
    out[..., 2] = np.round((ybr[:, 0::2, 1] + ybr[:, 1::2, 1]) / 2)
    out[..., 3] = np.round((ybr[:, 0::2, 2] + ybr[:, 1::2, 2]) / 2)
    return out.tobytes()


# --- the corpus --------------------------------------------------------------------------------
def slow_writer(data: bytes, chunk: int = 8192, pause: float = 0.04, stall: float = 0.9):
    """Writes ``data`` in chunks, stalling once mid-way for longer than the service's settle
    time (only the open-for-writing check can tell the file is incomplete then)."""

    def write(path: Path) -> None:
        with open(path, "wb") as f:
            for i in range(0, len(data), chunk):
                f.write(data[i : i + chunk])
                f.flush()
                time.sleep(stall if i == chunk * 4 else pause)

    return write


def build(in_dir: Path, sources: list[Path]) -> list[Case]:
    """Write every case into ``in_dir``; ``sources`` are real fundus photos (may be empty)."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels import convert_color_space

    real = [small_copy(p) for p in sources] or [synthetic_fundus()]
    base = real[0]
    base_jpg, base_png = jpeg(base), png(base)
    rgb = np.ascontiguousarray(base[:, :, ::-1])
    rgb = rgb[:, : rgb.shape[1] // 2 * 2]
    grey = cv2.cvtColor(base, cv2.COLOR_BGR2GRAY)
    good_dcm = dicom_bytes(make_dicom(rgb))
    cases: list[Case] = []

    def put(name: str | bytes, data: bytes, *args, **kw) -> None:
        fname = os.fsdecode(name)
        (in_dir / fname).write_bytes(data)
        cases.append(Case(fname, *args, **kw))

    put("zero_bytes.jpg", b"", "failed", "empty file", reason="empty")
    put("truncated.jpg", base_jpg[: len(base_jpg) // 2], "failed", "cut JPEG", reason="truncated")
    put(
        "truncated_png.png", base_png[: len(base_png) // 2], "failed", "cut PNG", reason="truncated"
    )
    put(
        "truncated_dicom.dcm",
        good_dcm[: len(good_dcm) - 5000],
        "failed",
        "cut DICOM",
        reason="trunc",
    )
    put("header_only.dcm", good_dcm[:300], "failed", "DICOM cut in header", reason="dicom")
    put("text_renamed.jpg", b"just some text\n" * 50, "failed", "text", reason="not a supported")
    put("png_named.jpg", base_png, "done", "PNG with .jpg name: content decides")
    put(
        "sixteen_bit.png",
        png(base.astype(np.uint16) * 257),
        "done",
        "16-bit RGB PNG",
        flags=("converted_to_8bit",),
    )
    put("grey.png", png(grey), "done", "greyscale PNG", flags=("greyscale_input",))
    rgba = Image.fromarray(cv2.cvtColor(base, cv2.COLOR_BGR2RGBA))
    put("rgba.png", pil_bytes(rgba, "PNG"), "done", "alpha channel", flags=("alpha_dropped",))
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
    put("palette.png", pil_bytes(pal, "PNG"), "done", "palette PNG", flags=("palette_converted",))
    put("tiny_20x20.png", png(base[:20, :20]), "failed", "20x20", reason="too small")
    put("huge_30000.png", huge_png_header(), "failed", "30000x30000 header", reason="too large")
    put(
        "all_black.png",
        png(np.zeros_like(base)),
        "done",
        "black frame",
        flags=("low_quality",),
        status="ungradable",
    )
    put("all_white.png", png(np.full_like(base, 255)), "done", "white frame")
    put(
        "non_fundus.jpg",
        jpeg(textured_scene()),
        "done",
        "a street-like scene",
        flags=("non_fundus_suspected",),
    )
    put(
        "no_pixels.dcm",
        dicom_bytes(make_dicom(None)),
        "failed",
        "DICOM without image",
        reason="no pixel data",
    )
    junk = encapsulate([b"\x00\x01junk-not-a-codestream" * 40])
    put(
        "jpeg2000_junk.dcm",
        dicom_bytes(make_dicom(None, transfer_syntax=JPEG2000, raw=junk)),
        "failed",
        "JPEG 2000 with junk data",
        reason="JPEG 2000",
    )
    put(
        "jpegls_no_decoder.dcm",
        dicom_bytes(make_dicom(None, transfer_syntax=JPEG_LS, raw=junk)),
        "failed",
        "JPEG-LS: no decoder installed",
        reason="JPEG-LS",
    )
    base_jpg_frame = encapsulate([cv2.imencode(".jpg", base)[1].tobytes()])
    jpeg_dcm = make_dicom(None, "YBR_FULL_422", transfer_syntax=JPEG_BASELINE, raw=base_jpg_frame)
    jpeg_dcm.Rows, jpeg_dcm.Columns = base.shape[:2]
    put("op_jpeg.dcm", dicom_bytes(jpeg_dcm), "done", "JPEG baseline OP", dicom=True)
    # a frame whose own header declares 8000 x 8000 (64 Mpx, a 3 KB JPEG) under a 600 x 800
    # header: refused from the codestream's SOF before any decoder allocates for it
    blank = cv2.imencode(".jpg", np.zeros((8000, 8000), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 5])
    bomb = make_dicom(
        None, "YBR_FULL_422", transfer_syntax=JPEG_BASELINE, raw=encapsulate([blank[1].tobytes()])
    )
    put(
        "jpeg_frame_bomb.dcm",
        dicom_bytes(bomb),
        "failed",
        "JPEG frame far larger than Rows x Columns",
        reason="refused before decoding",
    )
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, 40000, 40000, 0, 0, 40000, 40000, 0, 0, 3)
    j2k = b"\xff\x4f\xff\x51" + siz + b"\x07\x01\x01" * 3 + b"\x00" * 64
    put(
        "j2k_frame_bomb.dcm",
        dicom_bytes(make_dicom(None, transfer_syntax=JPEG2000, raw=encapsulate([j2k]))),
        "failed",
        "JPEG 2000 codestream claiming 40000 x 40000",
        reason="refused before decoding",
    )
    huge = make_dicom(rgb[:70, :70])
    huge.Rows, huge.Columns = 60000, 60000  # claims 3.6 Gpx, holds 15 KB
    put("huge_dims.dcm", dicom_bytes(huge), "failed", "DICOM bomb header", reason="exceeds")
    put(
        "no_preamble.dcm",
        good_dcm[132:],
        "failed",
        "DICOM without the DICM preamble",
        reason="not a supported",
    )
    put("op_rgb.dcm", good_dcm, "done", "Ophthalmic Photography 8 bit RGB", dicom=True)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    put("op_ybr_full.dcm", dicom_bytes(make_dicom(ybr, "YBR_FULL")), "done", "YBR_FULL", dicom=True)
    ds422 = make_dicom(rgb, "YBR_FULL_422", raw=ybr422(rgb))
    put("op_ybr_422.dcm", dicom_bytes(ds422), "done", "YBR_FULL_422 (native)", dicom=True)
    put(
        "sc_mono.dcm",
        dicom_bytes(make_dicom(grey, "MONOCHROME2", SECONDARY_CAPTURE)),
        "done",
        "Secondary Capture greyscale",
        flags=("greyscale_input",),
        dicom=True,
    )
    g16 = grey.astype(np.uint16) * 257
    put(
        "op_16bit.dcm",
        dicom_bytes(make_dicom(g16, "MONOCHROME2")),
        "done",
        "16-bit DICOM",
        flags=("converted_to_8bit",),
        dicom=True,
    )
    put("IM000123", good_dcm, "done", "DICOM without a suffix", dicom=True)
    put("good.tif", cv2.imencode(".tif", base)[1].tobytes(), "done", "TIFF")
    cmyk = pil_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG")
    put("cmyk.jpg", cmyk, "either", "CMYK JPEG")
    mid = bytearray(base_jpg)
    mid[len(mid) // 3 : len(mid) // 3 + 2000] = os.urandom(2000)
    put("corrupt_middle.jpg", bytes(mid), "failed", "garbage inside a JPEG", reason="damaged")
    _damage_cases(put, base, base_jpg, good_dcm, rgb)
    put("name with spaces.jpg", base_jpg, "done", "spaces in the name")
    put("fündus 日本語.jpg", base_jpg, "done", "unicode name")
    put(b"latin1_\xe9.jpg", base_jpg, "done", "name that is not UTF-8")
    for i, img in enumerate(real):
        put(f"real_{i}.jpg", jpeg(img), "done", "real fundus photo")

    def special(name: str, make: Callable[[Path], None], *args, **kw) -> None:
        make(in_dir / name)
        cases.append(Case(name, *args, **kw))

    special("loop.jpg", lambda p: os.symlink(p.name, p), "failed", "symlink to itself")
    special(
        "dangling.jpg",
        lambda p: os.symlink("does-not-exist.jpg", p),
        "failed",
        "dangling symlink",
        reason="no such file",
    )
    special("fifo.jpg", lambda p: os.mkfifo(p), "failed", "named pipe", reason="regular file")

    def unreadable(p: Path) -> None:
        p.write_bytes(base_jpg)
        p.chmod(0)

    # root reads a chmod 000 file anyway: then it is simply a good image
    special(
        "unreadable.jpg",
        unreadable,
        "done" if IS_ROOT else "failed",
        "chmod 000",
        reason="" if IS_ROOT else "cannot read",
    )
    cases.append(
        Case(
            "slow_writer.jpg",
            "done",
            "written slowly while the service runs",
            late=slow_writer(jpeg(real[-1], 98)),
        )
    )
    return cases


def _damage_cases(put, base: np.ndarray, base_jpg: bytes, good_dcm: bytes, rgb: np.ndarray):
    """Damaged pixels (refused), photographs no result may be read from (ungradable) and
    valid files that look odd (decoded right)."""
    import pydicom

    flipped = bytearray(base_jpg)
    for i in range(len(flipped) // 3, len(flipped) // 3 + 3000, 97):
        flipped[i] ^= 0x55
    put("flipped_bits.jpg", bytes(flipped), "failed", "bit errors in a JPEG", reason="damaged")
    cut_eoi = base_jpg[: len(base_jpg) // 2] + b"\xff\xd9"
    put("cut_with_eoi.jpg", cut_eoi, "failed", "cut JPEG + end marker", reason="damaged")
    put("trailer.jpg", base_jpg + b"maker data" * 100, "done", "bytes after the end marker")
    ungradable = "ungradable"
    thumb = cv2.resize(base, (96, 64), interpolation=cv2.INTER_AREA)
    put(
        "thumb_96x64.jpg",
        jpeg(thumb),
        "done",
        "a 96x64 thumbnail",
        flags=("low_resolution",),
        status=ungradable,
    )
    strip = cv2.resize(base, (2000, 64), interpolation=cv2.INTER_AREA)
    put(
        "strip_2000x64.png",
        png(strip),
        "done",
        "a strip",
        flags=("low_resolution",),
        status=ungradable,
    )
    blurred = cv2.GaussianBlur(base, (0, 0), 8)
    put("blurred.jpg", jpeg(blurred), "done", "defocused", flags=("blurred",), status=ungradable)
    dark = cv2.convertScaleAbs(base, alpha=0.15)
    put("dark.jpg", jpeg(dark), "done", "underexposed", flags=("low_quality",), status=ungradable)
    pages = io.BytesIO()
    small = Image.fromarray(cv2.cvtColor(cv2.resize(base, (120, 80)), cv2.COLOR_BGR2RGB))
    full = Image.fromarray(cv2.cvtColor(base, cv2.COLOR_BGR2RGB))
    small.save(pages, "TIFF", save_all=True, append_images=[full])
    put(
        "thumb_first.tif",
        pages.getvalue(),
        "done",
        "TIFF: thumbnail page first",
        flags=("tiff_page_2_of_2",),
        status="ok",
    )
    f32 = io.BytesIO()
    grey = cv2.cvtColor(base, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255
    Image.fromarray(grey, mode="F").save(f32, "TIFF")
    put("float32.tif", f32.getvalue(), "done", "float TIFF", flags=("converted_to_8bit",))
    text = png(base)
    payload = b"Comment\x00\x00" + zlib.compress(b"x" * (8 << 20))
    body = b"zTXt" + payload
    chunk = struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))
    put("big_text_chunk.png", text[:33] + chunk + text[33:], "done", "8 MB of zTXt")
    ds = pydicom.dcmread(io.BytesIO(good_dcm))
    ds.NumberOfFrames = 3  # claims 3 frames, holds 1
    put(
        "frames_short.dcm", dicom_bytes(ds), "failed", "frames shorter than claimed", reason="DICOM"
    )
    ds = pydicom.dcmread(io.BytesIO(good_dcm))
    ds.Rows = ds.Rows + 7  # pixel data no longer matches Rows x Columns
    put(
        "rows_mismatch.dcm",
        dicom_bytes(ds),
        "failed",
        "Rows disagrees with the data",
        reason="DICOM",
    )
    ds = pydicom.dcmread(io.BytesIO(good_dcm))
    ds.SamplesPerPixel = 4
    put("bad_samples.dcm", dicom_bytes(ds), "failed", "SamplesPerPixel 4", reason="DICOM")
    ds = pydicom.dcmread(io.BytesIO(good_dcm))
    ds.BitsAllocated = 12
    put("bits12.dcm", dicom_bytes(ds), "failed", "BitsAllocated 12", reason="DICOM")
    put("zeros.jpg", b"\xff\xd8\xff" + bytes(5000), "failed", "JPEG magic then zeros")
    put("png_header_only.png", png(base)[:40], "failed", "PNG cut after IHDR", reason="PNG")
    put("good_bmp.bmp", cv2.imencode(".bmp", base)[1].tobytes(), "done", "BMP")
    grey_jpg = cv2.imencode(".jpg", cv2.cvtColor(base, cv2.COLOR_BGR2GRAY))[1].tobytes()
    put("grey_jpeg.jpg", grey_jpg, "done", "greyscale JPEG", flags=("greyscale_input",))
    prog = cv2.imencode(".jpg", base, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    put("progressive.jpg", prog, "done", "progressive JPEG", status="ok")
    exif = io.BytesIO()
    im = Image.fromarray(cv2.cvtColor(base, cv2.COLOR_BGR2RGB))
    ex = Image.Exif()
    ex[0x0112] = 6  # Orientation: rotate 90 CW to display; the mask stays in stored orientation
    im.save(exif, "JPEG", exif=ex.tobytes())
    put("exif_rotated.jpg", exif.getvalue(), "done", "EXIF orientation 6", status="ok")
    put("jpeg_q15.jpg", jpeg(base, 15), "done", "heavily compressed JPEG")
    noise = np.random.default_rng(3).integers(0, 256, base.shape, dtype=np.uint8)
    put("noise.png", png(noise), "done", "random noise", status=ungradable)
    del rgb


IGNORED = (".hidden.jpg", "upload.jpg.part", "download.tmp", "folder.jpg")


def write_ignored(in_dir: Path) -> None:
    """Entries the service must leave alone: hidden, temp/partial names, a directory."""
    for name in IGNORED[:-1]:
        (in_dir / name).write_bytes(b"\xff\xd8\xff not really")
    (in_dir / IGNORED[-1]).mkdir()


def start_late_writers(in_dir: Path, cases: list[Case]) -> list[threading.Thread]:
    threads = [
        threading.Thread(target=c.late, args=(in_dir / c.name,), daemon=True)
        for c in cases
        if c.late is not None
    ]
    for t in threads:
        t.start()
    return threads
