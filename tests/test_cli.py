"""The CLI end to end with a real ONNX Runtime model: good images and every bad input."""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, idrid_images, make_tiny_onnx, require_data, run_cli
from PIL import Image

from hemoseg_edge.model_file.metadata import ModelMetadata

EXIT_OK, EXIT_INPUT, EXIT_MODEL, EXIT_FLAGGED = 0, 1, 3, 4


def assert_clean(proc: subprocess.CompletedProcess) -> None:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out


def synthetic_fundus(h: int = 712, w: int = 1072) -> np.ndarray:
    """A disc on black, reddish, with vessel-like lines and a few dark blobs: enough to
    exercise the pipeline."""
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (w // 2, h // 2), int(h * 0.6), (30, 80, 170), -1)
    rng = np.random.default_rng(7)
    for _ in range(40):  # vessel-like lines: a flat disc would be (rightly) "blurred"
        p0 = tuple(int(v) for v in rng.integers((w // 4, h // 8), (3 * w // 4, 7 * h // 8)))
        p1 = tuple(int(v) for v in rng.integers((w // 4, h // 8), (3 * w // 4, 7 * h // 8)))
        cv2.line(img, p0, p1, (20, 50, 120), 2)
    for x, y in ((w // 3, h // 3), (2 * w // 3, h // 2)):
        cv2.circle(img, (x, y), 12, (10, 25, 60), -1)
    return img


def png_header_only(w: int, h: int) -> bytes:
    """A few-hundred-byte PNG that claims w x h pixels (a decompression bomb)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (path, fragment expected in the one-line message)."""
    d = tmp_path_factory.mktemp("bad")
    good = synthetic_fundus()
    cases: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes, expect: str) -> None:
        p = d / name
        p.write_bytes(data)
        cases[name] = (p, expect)

    ok, jpg = cv2.imencode(".jpg", good)
    ok, png = cv2.imencode(".png", good)
    cases["missing.jpg"] = (d / "missing.jpg", "no such file")
    put("empty.jpg", b"", "empty file")
    put("truncated.jpg", jpg.tobytes()[: len(jpg) // 2], "truncated JPEG")
    put("truncated.png", png.tobytes()[: len(png) // 2], "truncated PNG")
    put("text.jpg", b"this is not an image\n" * 20, "not a supported image")
    put("bomb.png", png_header_only(30000, 30000), "refused before decoding")
    tiny = cv2.imencode(".png", good[:20, :20])[1].tobytes()
    put("tiny.png", tiny, "too small")
    return cases


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Valid images that must come back flagged (exit 4) rather than fail."""
    d = tmp_path_factory.mktemp("odd")
    good = synthetic_fundus()
    cases = {}
    p = d / "sixteen_bit.png"
    cv2.imwrite(str(p), good.astype(np.uint16) * 257)
    cases["sixteen_bit.png"] = (p, "converted_to_8bit")
    p = d / "grey.png"
    cv2.imwrite(str(p), cv2.cvtColor(good, cv2.COLOR_BGR2GRAY))
    cases["grey.png"] = (p, "greyscale_input")
    p = d / "rgba.png"
    cv2.imwrite(str(p), cv2.cvtColor(good, cv2.COLOR_BGR2BGRA))
    cases["rgba.png"] = (p, "alpha_dropped")
    p = d / "black.png"
    cv2.imwrite(str(p), np.zeros((600, 800, 3), np.uint8))
    cases["black.png"] = (p, "no_fov_found")
    p = d / "street.jpg"  # a non-fundus photo: a textured scene that fills the frame
    rng = np.random.default_rng(1)
    scene = cv2.resize(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8), (900, 600))
    scene[:200] = (200, 160, 90)  # sky-ish band
    cv2.imwrite(str(p), scene)
    cases["street.jpg"] = (p, "non_fundus_suspected")
    return cases


def test_good_image_writes_mask_overlay_json(tiny_model, sample_image, tmp_path):
    proc = run_cli("segment", str(sample_image), "--model", str(tiny_model), "--out", str(tmp_path))
    assert_clean(proc)
    assert proc.returncode in (EXIT_OK, EXIT_FLAGGED), proc.stderr
    stem = sample_image.stem
    h, w = Image.open(sample_image).size[::-1]
    mask = cv2.imread(str(tmp_path / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
    overlay = cv2.imread(str(tmp_path / f"{stem}_overlay.jpg"))
    assert overlay is not None and overlay.shape[2] == 3
    d = json.loads((tmp_path / f"{stem}.json").read_text())
    assert d["image_size"] == {"height": h, "width": w}
    assert d["lesion_count"] == len(d["lesions"]) and d["model"]["version"] == "test-tiny"
    rows = list(csv.DictReader(open(tmp_path / "report.csv")))
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert not list(tmp_path.glob("*.tmp*")), "temporary files left behind"


@pytest.mark.data
def test_idrid_test_image_and_no_tensorflow(tiny_model, tmp_path):
    require_data()
    img = idrid_images("test")[0]
    code = (
        "import sys; from hemoseg_edge.cli import main; "
        f"rc = main(['segment', {str(img)!r}, '--model', {str(tiny_model)!r}, '--out', "
        f"{str(tmp_path)!r}, '-q']); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert_clean(proc)
    assert proc.returncode in (EXIT_OK, EXIT_FLAGGED), proc.stderr
    mask = cv2.imread(str(tmp_path / f"{img.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (2848, 4288)


@pytest.mark.parametrize(
    "name",
    [
        "missing.jpg",
        "empty.jpg",
        "truncated.jpg",
        "truncated.png",
        "text.jpg",
        "bomb.png",
        "tiny.png",
    ],
)
def test_bad_input_one_line_nonzero(tiny_model, bad_inputs, tmp_path, name):
    path, expect = bad_inputs[name]
    proc = run_cli("segment", str(path), "--model", str(tiny_model), "--out", str(tmp_path))
    assert_clean(proc)
    assert proc.returncode == EXIT_INPUT
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and str(path) in errors[0] and expect in errors[0], proc.stderr
    assert not list(tmp_path.glob(f"{path.stem}*")), "no output for a failed input"
    rows = list(csv.DictReader(open(tmp_path / "report.csv")))
    assert rows[0]["status"] == "failed" and expect in rows[0]["error"]


@pytest.mark.parametrize(
    "name", ["sixteen_bit.png", "grey.png", "rgba.png", "black.png", "street.jpg"]
)
def test_odd_image_flagged(tiny_model, odd_images, tmp_path, name):
    path, flag = odd_images[name]
    proc = run_cli("segment", str(path), "--model", str(tiny_model), "--out", str(tmp_path))
    assert_clean(proc)
    assert proc.returncode == EXIT_FLAGGED, proc.stderr
    d = json.loads((tmp_path / f"{path.stem}.json").read_text())
    assert flag in d["flags"]
    mask = cv2.imread(str(tmp_path / f"{path.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]


def test_batch_one_bad_file_does_not_stop_the_others(tiny_model, bad_inputs, tmp_path):
    good = tmp_path / "in" / "good.png"
    good.parent.mkdir()
    cv2.imwrite(str(good), synthetic_fundus())
    bad = bad_inputs["truncated.jpg"][0]
    out = tmp_path / "out"
    proc = run_cli(
        "segment", str(bad), str(good.parent), "--model", str(tiny_model), "--out", str(out)
    )
    assert_clean(proc)
    assert proc.returncode == EXIT_INPUT
    rows = {Path(r["input"]).name: r for r in csv.DictReader(open(out / "report.csv"))}
    assert rows["truncated.jpg"]["status"] == "failed"
    assert rows["good.png"]["status"] == "ok" and (out / "good_mask.png").exists()


@pytest.mark.parametrize("kind", ["truncated", "garbage", "no_metadata", "missing", "empty"])
def test_bad_model_one_line(kind, tmp_path, sample_image):
    model = tmp_path / f"{kind}.onnx"
    data = make_tiny_onnx(metadata=None if kind == "no_metadata" else ModelMetadata())
    if kind == "truncated":
        model.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        model.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "no_metadata":
        model.write_bytes(data)
    elif kind == "empty":
        model.write_bytes(b"")
    for cmd in (["segment", str(sample_image), "--out", str(tmp_path / "o")], ["info"]):
        proc = run_cli(
            *([*cmd, "--model", str(model)] if cmd[0] == "segment" else [*cmd, str(model)])
        )
        assert_clean(proc)
        assert proc.returncode == EXIT_MODEL, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and str(model) in lines[0], proc.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_no_metadata_model_runs_with_explicit_defaults(tmp_path, sample_image):
    model = tmp_path / "plain.onnx"
    model.write_bytes(make_tiny_onnx(metadata=None))
    proc = run_cli(
        "segment",
        str(sample_image),
        "--model",
        str(model),
        "--assume-defaults",
        "--out",
        str(tmp_path),
    )
    assert_clean(proc)
    assert proc.returncode in (EXIT_OK, EXIT_FLAGGED), proc.stderr


def test_info_prints_metadata(tiny_model):
    proc = run_cli("info", str(tiny_model))
    assert_clean(proc)
    assert proc.returncode == EXIT_OK, proc.stderr
    d = json.loads(proc.stdout)
    assert d["metadata"]["hemoseg.version"] == "test-tiny"
    assert d["checks"]["test_inference"] == "ok"


def test_mask_png_reads_back_exactly():
    """``encode_png_mask`` writes a valid 1-bit PNG: OpenCV and PIL read the mask back."""
    import io as bio

    from hemoseg_edge.outputs.encode import encode_png_mask

    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (7, 13), (64, 64), (301, 999)]:
        mask = rng.random((h, w)) < 0.3
        data = encode_png_mask(mask)
        back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert back.dtype == np.uint8 and np.array_equal(back, mask * np.uint8(255))
        with Image.open(bio.BytesIO(data)) as im:
            assert im.mode == "1" and np.array_equal(np.asarray(im), mask)


def test_mask_png_from_windows_equals_full_mask():
    """A ``WindowedMask`` is packed window by window (windows at odd offsets, two sharing a
    byte, one at the right edge): the same PNG bytes as its full mask."""
    from hemoseg_edge.outputs.encode import encode_png_mask
    from hemoseg_edge.result import WindowedMask

    rng = np.random.default_rng(1)
    h, w = 40, 61
    windows = ((3, 2, 11, 9), (11, 2, 14, 30), (20, 10, 37, 12), (50, 0, 61, 40))
    parts = tuple(rng.random((y1 - y0, x1 - x0)) < 0.5 for x0, y0, x1, y1 in windows)
    wm = WindowedMask((h, w), windows, parts)
    assert encode_png_mask(wm) == encode_png_mask(wm.full())
    assert encode_png_mask(WindowedMask((h, w))) == encode_png_mask(np.zeros((h, w), bool))


def test_runtime_out_of_memory_is_a_failed_image_and_exit_3(
    tiny_model, sample_image, tmp_path, monkeypatch, capsys
):
    """An allocation failure inside the runtime (ONNX Runtime's words, raised on the second
    image) fails that image with a one-line reason, the batch goes on, and the exit code is 3
    (the model cannot run here as configured), not 70."""
    import onnxruntime

    from hemoseg_edge.cli import main

    real, calls = onnxruntime.InferenceSession.run, []

    def run(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError(
                "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned "
                "while running Conv node. Failed to allocate memory for requested buffer of "
                "size 1179648000"
            )
        return real(self, *args, **kwargs)

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", run)
    images = [tmp_path / f"{i}.jpg" for i in range(3)]
    for p in images:
        p.write_bytes(sample_image.read_bytes())
    code = main(
        [
            "segment",
            *map(str, images),
            "--out",
            str(tmp_path / "out"),
            "--model",
            str(tiny_model),
            "--backend",
            "onnxruntime",
            "--prefetch",
            "1",
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert code == 3, err
    assert "could not allocate memory during inference" in err and "Traceback" not in err
    rows = list(csv.DictReader(open(tmp_path / "out" / "report.csv")))
    assert [r["status"] for r in rows].count("failed") == 1 and len(rows) == 3
