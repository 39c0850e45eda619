"""Optic disc, fovea, laterality, anatomical quadrants and the DR-grade hint (``anatomy``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import corpus
import cv2
import numpy as np
import pytest
from conftest import data_root, require_data
from PIL import Image

from hemoseg_edge import anatomy
from hemoseg_edge.inputs import load_image
from hemoseg_edge.outputs import plot
from hemoseg_edge.preprocess import Geometry, preprocess_geometry
from hemoseg_edge.result import (
    DR_HINT_CAVEAT,
    Anatomy,
    Lesion,
    SegmentationResult,
    WindowedMask,
    anatomical_quadrant,
)

MODEL_HW = (1120, 1152)


def _od(image: Path) -> tuple[np.ndarray, tuple[float, float], float]:
    p = image.parents[2] / "masks" / "OD" / image.parent.name / f"{image.stem}_OD.tif"
    if not p.exists():
        pytest.skip(f"no optic-disc mask {p}")
    m = np.array(Image.open(p))
    m = (m[..., 0] if m.ndim == 3 else m) > 0
    ys, xs = np.nonzero(m)
    return m, (float(xs.mean()), float(ys.mean())), float(np.sqrt(m.sum() / np.pi))


def _locate(path: Path, metadata: dict | None = None) -> tuple[Anatomy, Geometry]:
    loaded = load_image(path, MODEL_HW)
    pre = preprocess_geometry(loaded.frame, loaded.original_hw, MODEL_HW)
    return anatomy.locate(loaded.frame, pre.fov, pre.geometry, metadata or loaded.metadata), (
        pre.geometry
    )


@pytest.mark.parametrize("iid", ["IDRiD_01", "IDRiD_02", "IDRiD_22", "IDRiD_33"])
def test_disc_on_real_train_images(iid):
    require_data()
    path = data_root() / "idrid" / "images" / "train" / f"{iid}.jpg"
    mask, centre, radius = _od(path)
    anat, geometry = _locate(path)
    assert anat.found and anat.disc_center is not None and anat.disc_radius
    err = np.hypot(anat.disc_center[0] - centre[0], anat.disc_center[1] - centre[1])
    assert err < 0.5 * radius, (iid, err, radius)
    assert mask[round(anat.disc_center[1]), round(anat.disc_center[0])]
    assert 0.75 < anat.disc_radius / radius < 1.33
    # IDRiD photographs are macula-centred: the disc's side gives the eye, and the fovea
    # estimate lies on the other side of the disc, inside the field of view
    right = centre[0] > geometry.fov_center[0]
    assert anat.laterality == ("right" if right else "left")
    assert anat.laterality_source == "disc_side"
    assert anat.fovea is not None
    assert (anat.fovea[0] < anat.disc_center[0]) == right
    fx, fy = anat.fovea
    cx, cy = geometry.fov_center
    assert np.hypot(fx - cx, fy - cy) < geometry.fov_radius


def test_example_image_has_a_disc():
    """``examples/IDRiD_55.jpg`` is a test image: its mask is in the shared data."""
    example = Path(__file__).resolve().parents[1] / "examples" / "IDRiD_55.jpg"
    if not example.exists():
        pytest.skip("examples/IDRiD_55.jpg absent")
    require_data()
    mask, centre, radius = _od(data_root() / "idrid" / "images" / "test" / "IDRiD_55.jpg")
    anat, _ = _locate(example)
    assert anat.found and anat.disc_center is not None
    err = np.hypot(anat.disc_center[0] - centre[0], anat.disc_center[1] - centre[1])
    assert err < radius


def _fundus_with_disc(side: str, h: int = 600, w: int = 800) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (w // 2, h // 2), int(h * 0.47), (40, 90, 190), -1)
    dx = int(h * 0.28) * (1 if side == "right" else -1)
    cv2.circle(img, (w // 2 + dx, h // 2), int(h * 0.47 * 0.15), (150, 220, 255), -1)
    return img


def test_synthetic_disc_side_gives_laterality():
    for side in ("right", "left"):
        img = _fundus_with_disc(side)
        pre = preprocess_geometry(img, img.shape[:2], MODEL_HW)
        anat = anatomy.locate(img, pre.fov, pre.geometry)
        assert anat.found and anat.disc_center is not None
        assert (anat.disc_center[0] > img.shape[1] / 2) == (side == "right")
        assert (anat.laterality, anat.laterality_source) == (side, "disc_side")
        assert anat.fovea is not None
        assert (anat.fovea[0] < anat.disc_center[0]) == (side == "right")


def test_laterality_from_dicom_image_laterality(tmp_path):
    pytest.importorskip("pydicom")
    img = _fundus_with_disc("right")  # the disc says "right"; the DICOM attribute wins
    ds = corpus.make_dicom(np.ascontiguousarray(img[..., ::-1]))  # RGB pixels
    ds.ImageLaterality = "L"
    p = tmp_path / "eye.dcm"
    p.write_bytes(corpus.dicom_bytes(ds))
    loaded = load_image(p, MODEL_HW)
    assert loaded.metadata["ImageLaterality"] == "L"
    pre = preprocess_geometry(loaded.frame, loaded.original_hw, MODEL_HW)
    anat = anatomy.locate(loaded.frame, pre.fov, pre.geometry, loaded.metadata)
    assert (anat.laterality, anat.laterality_source) == ("left", "dicom")
    assert anatomy.dicom_laterality({"ImageLaterality": "R"}) == "right"
    assert anatomy.dicom_laterality({"ImageLaterality": "U"}) is None
    assert anatomy.dicom_laterality({}) is None


def test_no_fov_no_disc():
    black = np.zeros((400, 600, 3), np.uint8)
    pre = preprocess_geometry(black, black.shape[:2], MODEL_HW)
    anat = anatomy.locate(black, pre.fov, pre.geometry, {"ImageLaterality": "R"})
    assert not anat.found and anat.disc_center is None and anat.fovea is None
    assert (anat.laterality, anat.laterality_source) == ("right", "dicom")


def test_quadrant_renaming_both_eyes():
    right = {q: anatomical_quadrant(q, "right") for q in ("upper_left", "upper_right")}
    assert right == {"upper_left": "superotemporal", "upper_right": "superonasal"}
    assert anatomical_quadrant("lower_left", "right") == "inferotemporal"
    assert anatomical_quadrant("lower_right", "right") == "inferonasal"
    assert anatomical_quadrant("upper_left", "left") == "superonasal"
    assert anatomical_quadrant("upper_right", "left") == "superotemporal"
    assert anatomical_quadrant("lower_left", "left") == "inferonasal"
    assert anatomical_quadrant("lower_right", "left") == "inferotemporal"


GEOMETRY = Geometry((1000, 1000), (1000, 1000), (560, 576), (0, 0, 1000, 1000), (500, 500), 480)


def _lesion(x: float, y: float) -> Lesion:
    quadrant = ("upper" if y < 500 else "lower") + "_" + ("left" if x < 500 else "right")
    return Lesion(10, (x, y), (int(x) - 2, int(y) - 2, 5, 5), quadrant)


def _result(lesions, flags=(), anat: Anatomy | None = None, image_threshold=None):
    return SegmentationResult(
        source="<test>",
        probability=np.zeros((560, 576), np.float32),
        mask_windows=WindowedMask((1000, 1000)),
        geometry=GEOMETRY,
        threshold=0.5,
        lesions=list(lesions),
        fov_area_px=700000,
        flags=list(flags),
        anatomy=anat or Anatomy(found=False),
        image_score=0.9 if lesions else 0.0,
        image_threshold=image_threshold,
    )


def _grid(per_quadrant: int) -> list[Lesion]:
    out = []
    for cx, cy in ((250, 250), (750, 250), (250, 750), (750, 750)):
        out += [_lesion(cx + (i % 10) * 5, cy + (i // 10) * 5) for i in range(per_quadrant)]
    return out


def test_dr_hint_rules():
    none = _result([]).dr_hint
    assert none is not None and "not excluded" in none["text"]
    one = _result([_lesion(300, 300)]).dr_hint
    assert one is not None and one["text"] == "at least moderate NPDR"
    assert one["caveat"] == DR_HINT_CAVEAT and "microaneurysms" in one["caveat"]
    assert _result(_grid(19)).dr_hint["text"] == "at least moderate NPDR"  # type: ignore[index]
    severe = _result(_grid(20)).dr_hint
    assert severe is not None
    assert severe["text"] == "severe NPDR suspected (4-2-1 rule, hemorrhage arm)"
    # 20 in three quadrants only: not severe
    three = [les for les in _grid(20) if les.quadrant != "lower_right"]
    assert _result(three).dr_hint["text"] == "at least moderate NPDR"  # type: ignore[index]
    # with an operating point, the image-level verdict decides "present"
    below = _result([_lesion(300, 300)], image_threshold=0.95).dr_hint
    assert below is not None and "not excluded" in below["text"]


def test_ungradable_gets_no_hint():
    res = _result(_grid(20), flags=["low_quality"])
    assert not res.gradable and res.dr_hint is None
    d = res.to_dict()
    assert d["dr_hint"] is None and d["anatomical_quadrant_counts"] is None


def test_lesion_distance_macular_and_json():
    anat = Anatomy(
        found=True,
        disc_center=(800.0, 500.0),
        disc_radius=50.0,
        disc_score=4.0,
        fovea=(500.0, 520.0),
        laterality="right",
        laterality_source="disc_side",
    )
    lesions = anatomy.annotate_lesions([_lesion(550, 520), _lesion(200, 200)], anat)
    assert lesions[0].distance_to_fovea_dd == pytest.approx(0.5)
    assert lesions[0].macular is True and lesions[1].macular is False
    res = _result(lesions, anat=anat)
    d = res.to_dict()
    assert d["anatomy"]["laterality"] == "right"
    assert d["anatomy"]["disc_center_xy"] == [800.0, 500.0]
    assert d["anatomy"]["fovea_xy"] == [500.0, 520.0]
    assert d["anatomical_quadrant_counts"] == {
        "superotemporal": 1,
        "superonasal": 0,
        "inferotemporal": 0,
        "inferonasal": 1,
    }
    assert d["lesions"][0]["anatomical_quadrant"] == "inferonasal"
    assert d["lesions"][0]["macular"] is True
    assert d["dr_hint"]["text"] == "at least moderate NPDR"
    # without a fovea estimate the lesions are unchanged (distance and flag None)
    plain = anatomy.annotate_lesions(lesions[:1], replace(anat, fovea=None))
    assert plain[0].macular is True  # unchanged: still the annotated lesion
    bare = anatomy.annotate_lesions([_lesion(550, 520)], replace(anat, fovea=None))
    assert bare[0].distance_to_fovea_dd is None and bare[0].macular is None
    assert _result([_lesion(1, 1)]).to_dict()["lesions"][0]["macular"] is None


def test_segmenter_result_carries_anatomy(tiny_model, sample_image):
    from hemoseg_edge.segmenter import Segmenter

    seg = Segmenter.from_engine(tiny_model, backend="onnxruntime")
    res = seg.segment(sample_image)
    assert "anatomy" in res.timings_ms
    d = res.to_dict()
    assert set(d["anatomy"]) >= {"found", "disc_center_xy", "fovea_xy", "laterality"}
    if res.gradable:
        assert d["dr_hint"] is not None
    report = plot(res, np.zeros((*res.geometry.original_hw, 3), np.uint8))
    assert report.ndim == 3
