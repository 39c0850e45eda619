"""``hemoseg_edge.outputs`` and gradability: an ungradable photograph is its own outcome (no
burden, no count, no verdict: null, never 0), the visual report, all-or-none writes."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_cli

from hemoseg_edge import Segmenter
from hemoseg_edge.inputs import load_image
from hemoseg_edge.outputs import plot, save
from hemoseg_edge.quality import MIN_FOV_DIAMETER_PX

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seg(tiny_model) -> Segmenter:
    return Segmenter.from_engine(tiny_model, backend="onnxruntime")


@pytest.fixture(scope="module")
def photo(sample_image) -> np.ndarray:
    return load_image(sample_image).frame


def _fov_diameter(seg: Segmenter, frame: np.ndarray) -> float:
    return 2 * seg.preprocess(seg.load(frame)).geometry.fov_radius


def _shrunk(frame: np.ndarray, fov_px: float, seg: Segmenter) -> np.ndarray:
    s = fov_px / _fov_diameter(seg, frame)
    size = (round(frame.shape[1] * s), round(frame.shape[0] * s))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def test_a_sharp_full_size_photo_is_gradable(seg, photo):
    r = seg.segment(photo)
    assert r.gradable and r.status == "ok" and r.ungradable_reasons == []
    d = r.to_dict()
    assert d["status"] == "ok" and d["lesion_count"] == len(r.lesions)


@pytest.mark.parametrize(
    "name, make, reason",
    [
        ("black", lambda f, s: np.zeros_like(f), "no_fov_found"),
        ("thumbnail", lambda f, s: _shrunk(f, 0.6 * MIN_FOV_DIAMETER_PX, s), "low_resolution"),
        ("blurred", lambda f, s: cv2.GaussianBlur(f, (0, 0), 4 * f.shape[1] / 1152), "blurred"),
        ("dark", lambda f, s: cv2.convertScaleAbs(f, alpha=0.15), "low_quality"),
        ("strip", lambda f, s: cv2.resize(f, (4000, 64)), "low_resolution"),
    ],
)
def test_ungradable_photo_reports_no_findings(seg, photo, name, make, reason):
    r = seg.segment(make(photo, seg))
    assert not r.gradable and r.status == "ungradable", r.flags
    assert reason in r.ungradable_reasons
    assert r.hemorrhage_detected is None
    d = r.to_dict()
    for key in (
        "burden_percent",
        "lesion_count",
        "lesion_area_px",
        "image_score",
        "quadrant_counts",
        "hemorrhage_detected",
    ):
        assert d[key] is None, key
    assert d["status"] == "ungradable" and d["lesions"] == []


def test_resolution_above_the_floor_is_not_flagged(seg, photo):
    r = seg.segment(_shrunk(photo, 1.4 * MIN_FOV_DIAMETER_PX, seg))
    assert "low_resolution" not in r.flags


def test_visual_report_layout(seg, sample_image, photo):
    ok = seg.segment(sample_image)
    img = plot(ok)
    assert img.dtype == np.uint8 and img.ndim == 3
    assert img.shape[1] > 2.5 * img.shape[0] * 0.8  # three panels side by side
    assert (img[5, 5] == 255).all()  # a white header panel
    bad = seg.segment(np.zeros_like(photo[:800, :1000]))
    report = plot(bad, np.zeros((800, 1000, 3), np.uint8))
    assert tuple(report[5, 5]) == (225, 225, 255)  # the header turns pink
    head = report[:120]
    red_text = (head[..., 2] > 180) & (head[..., 0] < 120) & (head[..., 1] < 120)
    assert red_text.sum() > 200  # the NOT GRADABLE line


def test_save_writes_four_files_or_none(seg, sample_image, tmp_path):
    r = seg.segment(sample_image)
    files = save(r, tmp_path / "out")
    assert set(files) == {"mask", "overlay", "report", "json"}
    assert all(Path(p).is_file() for p in files.values())
    assert json.loads(Path(files["json"]).read_text())["outputs"]["report"].endswith("_report.jpg")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):
        pytest.skip("running as root: a read-only folder is still writable")
    with pytest.raises(OSError):
        save(r, ro)
    assert list(ro.iterdir()) == []


def test_cli_csv_marks_ungradable_and_keeps_odd_names(tiny_model, sample_image, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "black.png").write_bytes(cv2.imencode(".png", np.zeros((600, 800, 3), np.uint8))[1])
    latin1 = src / os.fsdecode(b"photo_\xe9.jpg")
    latin1.write_bytes(sample_image.read_bytes())
    out = tmp_path / "out"
    proc = run_cli("segment", str(src), "--out", str(out), "--model", str(tiny_model), "-q")
    assert proc.returncode == 4, proc.stderr  # processed, one ungradable
    assert "Traceback" not in proc.stderr
    rows = {Path(r["input"]).name: r for r in csv.DictReader((out / "report.csv").open())}
    black = rows["black.png"]
    assert black["status"] == "ungradable" and "no_fov_found" in black["error"]
    assert black["burden_percent"] == "" and black["lesion_count"] == ""
    odd = rows["photo_\\xe9.jpg"]
    assert odd["status"] == "ok" and float(odd["burden_percent"]) >= 0


def test_cli_unwritable_output_folder_is_one_line_exit_2(tiny_model, sample_image, tmp_path):
    out = tmp_path / "not_a_folder"
    out.write_text("a file where the folder should be")
    proc = run_cli(
        "segment", str(sample_image), "--out", str(out / "sub"), "--model", str(tiny_model)
    )
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "cannot write to output folder" in lines[0], proc.stderr
