"""The optimised postprocess (window, cached FOV disc, windowed labelling) gives exactly what
the straightforward full-image computation gives; the batch pipeline equals ``segment``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import ddb1_images, idrid_images

from hemoseg_edge.errors import HemosegError
from hemoseg_edge.inputs import load_image
from hemoseg_edge.postprocess import (
    candidate_windows,
    find_lesions,
    fov_area,
    fov_box,
    fov_disc_in,
    lesion_order,
    mask_and_windows,
    quadrant_of,
    to_original_mask,
)
from hemoseg_edge.preprocess import Geometry, preprocess_frame
from hemoseg_edge.result import Lesion
from hemoseg_edge.segmenter import Segmenter

HW = (560, 576)


def reference_mask(prob: np.ndarray, g: Geometry, thr: float) -> np.ndarray:
    return (g.to_original(prob) >= thr) & g.fov_mask()


def reference_lesions(mask: np.ndarray, g: Geometry) -> list[Lesion]:
    n, _, stats, cents = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    cx, cy = g.fov_center
    out = [
        Lesion(
            area_px=int(stats[i, cv2.CC_STAT_AREA]),
            centroid=(round(float(cents[i, 0]), 1), round(float(cents[i, 1]), 1)),
            bbox=tuple(int(v) for v in stats[i, :4]),
            quadrant=quadrant_of(cents[i, 0], cents[i, 1], cx, cy),
        )
        for i in range(1, n)
    ]
    return sorted(out, key=lesion_order)


def prob_maps(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    blur = cv2.GaussianBlur(rng.random(HW).astype(np.float32), (0, 0), 2)
    blur = ((blur - blur.min()) / (blur.max() - blur.min())) ** 4
    corner = np.zeros(HW, np.float32)
    corner[:3, :3] = corner[-2:, -4:] = 0.9  # lesions touching the crop box edges
    exact = np.zeros(HW, np.float32)
    exact[rng.integers(0, HW[0], 40), rng.integers(0, HW[1], 40)] = 0.5  # exactly threshold
    return {
        "speckle": (rng.random(HW) ** 30).astype(np.float32),  # thousands of tiny lesions, ties
        "blobs": blur,
        "corners": corner,
        "exact": exact,
        "empty": np.full(HW, 0.2, np.float32),
        "full": np.full(HW, 0.8, np.float32),
    }


@pytest.fixture(scope="module")
def real_geometries(sample_image) -> list[Geometry]:
    paths = [sample_image] + idrid_images("test")[1:2] + ddb1_images()[:1]
    out = []
    for p in paths:
        li = load_image(p, HW)
        out.append(preprocess_frame(li.frame, li.original_hw, HW).geometry)
    return out


def test_optimised_equals_reference_on_real_images(real_geometries, kernels):
    for g in real_geometries:
        for name, prob in prob_maps().items():
            ref = reference_mask(prob, g, 0.5)
            mask, windows = mask_and_windows(prob, g, 0.5)
            assert np.array_equal(mask, ref), name
            assert find_lesions(mask, g, windows) == reference_lesions(ref, g), name
            assert find_lesions(mask, g) == reference_lesions(ref, g), name
        prob = prob_maps(1)["blobs"]
        assert np.array_equal(to_original_mask(prob, g, 0.3), reference_mask(prob, g, 0.3))


def test_segment_with_a_real_model_equals_reference(tiny_model, sample_image, kernels):
    seg = Segmenter.from_engine(tiny_model, backend="onnxruntime")
    res = seg.segment(sample_image)
    ref = reference_mask(res.probability, res.geometry, res.threshold)
    assert ref.any()
    assert np.array_equal(res.mask, ref)
    assert res.lesions == reference_lesions(ref, res.geometry)
    assert res.fov_area_px == int(res.geometry.fov_mask().sum())


def synthetic_geometries() -> list[Geometry]:
    return [
        Geometry((300, 400), (300, 400), HW, (13.0, 7.0, 391.0, 300.0), (200.5, 150.0), 170.0),
        Geometry((300, 400), (150, 200), HW, (0.0, 0.0, 400.0, 300.0), (-20.0, 310.0), 90.4),
        Geometry((301, 399), (301, 399), HW, (10.5, 3.25, 390.75, 299.5), (200.0, 150.0), 500.0),
        Geometry((300, 400), (300, 400), HW, (50.0, 40.0, 90.0, 80.0), (70.0, 60.0), 1.0),
    ]


def test_fov_disc_equals_fov_mask(real_geometries, kernels):
    rng = np.random.default_rng(5)
    for g in real_geometries + synthetic_geometries():
        full = g.fov_mask()
        x0, y0, x1, y1 = fov_box(g)
        assert fov_area(g) == int(full.sum())
        assert np.array_equal(fov_disc_in(g, (x0, y0, x1, y1)), full[y0:y1, x0:x1])
        outside = full.copy()
        outside[y0:y1, x0:x1] = False
        assert not outside.any()
        oh, ow = g.original_hw
        for _ in range(10):  # windows anywhere, partly outside the box too
            wx0, wy0 = int(rng.integers(0, ow - 1)), int(rng.integers(0, oh - 1))
            wx1, wy1 = int(rng.integers(wx0 + 1, ow + 1)), int(rng.integers(wy0 + 1, oh + 1))
            got = fov_disc_in(g, (wx0, wy0, wx1, wy1))
            assert np.array_equal(got, full[wy0:wy1, wx0:wx1]), (wx0, wy0, wx1, wy1)


def test_synthetic_geometries_equal_reference(kernels):
    for g in synthetic_geometries():
        for name, prob in prob_maps(2).items():
            ref = reference_mask(prob, g, 0.5)
            mask, windows = mask_and_windows(prob, g, 0.5)
            assert np.array_equal(mask, ref), name
            assert find_lesions(mask, g, windows) == reference_lesions(ref, g), name


def test_windowed_labelling_any_mask():
    rng = np.random.default_rng(4)
    g = synthetic_geometries()[0]
    for _ in range(20):
        mask = np.zeros(g.original_hw, bool)
        y0, x0 = rng.integers(0, 150, 2)
        h, w = rng.integers(1, 150, 2)
        mask[y0 : y0 + h, x0 : x0 + w] = rng.random((h, w)) > 0.7
        assert find_lesions(mask, g) == reference_lesions(mask, g)
    assert find_lesions(np.zeros(g.original_hw, bool), g) == []


def test_windows_are_disjoint_and_lesions_stay_inside(real_geometries):
    """Many separate blobs: several windows, pairwise apart, each lesion inside exactly one."""
    g = real_geometries[0]
    prob = np.zeros(HW, np.float32)
    for k, (r, c) in enumerate([(100, 100), (100, 104), (300, 300), (450, 120), (200, 500)]):
        prob[r : r + 3 + k, c : c + 2 + k] = 0.9
    windows = candidate_windows(prob, g, 0.5)
    assert 2 <= len(windows) < 5  # the two blobs 1 px apart share a window
    for i, a in enumerate(windows):
        for b in windows[i + 1 :]:
            assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (a, b)
    ref = reference_mask(prob, g, 0.5)
    mask, _ = mask_and_windows(prob, g, 0.5)
    assert np.array_equal(mask, ref)
    for les in reference_lesions(ref, g):
        x, y, w, h = les.bbox
        inside = [a for a in windows if a[0] <= x and a[1] <= y and x + w <= a[2] and y + h <= a[3]]
        assert len(inside) == 1, les


def test_window_of_the_map_equals_the_whole_map(real_geometries):
    prob = prob_maps(3)["blobs"]
    for g in real_geometries + synthetic_geometries():
        whole = g.to_original(prob)
        oh, ow = g.original_hw
        for win in [(0, 0, ow, oh), (1, 3, ow // 2 + 1, oh // 3 + 7), (ow - 5, oh - 9, ow, oh)]:
            x0, y0, x1, y1 = win
            assert np.array_equal(g.to_original(prob, window=win), whole[y0:y1, x0:x1]), win


def test_batch_equals_single_and_survives_bad_inputs(tiny_model, sample_image, tmp_path):
    seg = Segmenter.from_engine(tiny_model, backend="onnxruntime")
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    inputs = [sample_image, bad, sample_image, bad, sample_image]
    got = list(seg.segment_batch(inputs, prefetch=2))
    assert [p for p, _ in got] == inputs
    single = seg.segment(sample_image)
    for (_, res), p in zip(got, inputs, strict=True):
        if p == bad:
            assert isinstance(res, HemosegError)
        else:
            assert np.array_equal(res.mask, single.mask)
            assert res.lesions == single.lesions
            assert {"decode", "preprocess", "inference", "postprocess", "total"} <= set(
                res.timings_ms
            )


def test_batch_generator_can_be_abandoned(tiny_model, sample_image):
    seg = Segmenter.from_engine(tiny_model, backend="onnxruntime")
    gen = seg.segment_batch([sample_image] * 6, prefetch=2)
    next(gen)
    gen.close()  # pools shut down without processing the rest


def test_sample_mask_is_nearest_neighbour_of_the_full_mask(real_geometries):
    """The overlay's mask, sampled from the windows, equals sampling the full mask."""
    from hemoseg_edge.outputs.overlay import sample_mask
    from hemoseg_edge.postprocess import threshold_windows

    for g in real_geometries:
        wm = threshold_windows(prob_maps()["blobs"], g, 0.5)
        full = wm.full()
        oh, ow = g.original_hw
        for h, w in [(oh // 2, ow // 2), (1360, 2048), (oh, ow), (97, 131)]:
            ys, xs = np.arange(h) * oh // h, np.arange(w) * ow // w
            assert np.array_equal(sample_mask(wm, (h, w)), full[np.ix_(ys, xs)].view(np.uint8))


def test_image_score_needs_a_lesion_not_a_pixel():
    from hemoseg_edge.postprocess import image_score, model_fov_mask

    hw = (64, 64)
    g = Geometry((640, 640), (640, 640), hw, (0.0, 0.0, 640.0, 640.0), (320.0, 320.0), 300.0)
    fov = model_fov_mask(g)
    assert fov[32, 32] and not fov[0, 0] and not fov[63, 63]
    # the model-grid disc agrees with the full-resolution FOV mask sampled at pixel centres
    full = g.fov_mask()
    centres = full[5::10, 5::10]
    assert np.mean(centres == fov) > 0.99
    prob = np.zeros(hw, np.float32)
    assert image_score(prob, g) == 0.0
    prob[30, 30] = 1.0  # one hot pixel: a ninth of the 3x3 box
    assert image_score(prob, g) == pytest.approx(1.0 / 9.0, abs=1e-6)
    prob[30:33, 40:43] = 0.8  # a 3x3 lesion
    assert image_score(prob, g) == pytest.approx(0.8, abs=1e-6)
    prob[:] = 0.0
    prob[0:3, 0:3] = 1.0  # outside the field of view: ignored
    assert image_score(prob, g) == 0.0


def test_result_verdict_follows_the_models_operating_point(tiny_model, sample_image, tmp_path):
    from conftest import make_tiny_onnx

    from hemoseg_edge.model_file.metadata import ModelMetadata

    plain = Segmenter.from_engine(tiny_model).segment(sample_image)
    assert 0.0 < plain.image_score <= 1.0  # the tiny model marks dark pixels: some are in the FOV
    assert plain.hemorrhage_detected is None and plain.to_dict()["hemorrhage_detected"] is None
    for offset, verdict in ((-1e-3, True), (1e-3, False)):
        md = ModelMetadata(version="t", image_threshold=round(plain.image_score + offset, 6))
        path = tmp_path / f"op{verdict}.onnx"
        path.write_bytes(make_tiny_onnx(metadata=md))
        r = Segmenter.from_engine(path).segment(sample_image)
        assert r.image_score == plain.image_score
        assert r.hemorrhage_detected is verdict
        assert r.to_dict()["hemorrhage_detected"] is verdict


def test_image_threshold_is_validated():
    from hemoseg_edge.errors import ModelError
    from hemoseg_edge.model_file.metadata import ModelMetadata

    props = ModelMetadata(version="t", image_threshold=0.3).to_props()
    assert ModelMetadata.from_props(props).image_threshold == 0.3
    assert not ModelMetadata.from_props(ModelMetadata(version="t").to_props()).has_image_threshold
    props["hemoseg.image_threshold"] = "1.5"
    with pytest.raises(ModelError, match="image_threshold"):
        ModelMetadata.from_props(props)


def test_lesion_probabilities_are_those_of_its_pixels(real_geometries):
    """Each lesion's max/mean probability equals the straightforward computation over its
    pixels of the whole back-mapped map; the max reaches the threshold (that made it a lesion)."""
    from hemoseg_edge.postprocess import threshold_windows, window_lesions

    thr = 0.5
    for g in real_geometries + synthetic_geometries():
        for name, prob in prob_maps(5).items():
            lesions = window_lesions(threshold_windows(prob, g, thr), g, prob)
            ref_mask = reference_mask(prob, g, thr)
            assert lesions == reference_lesions(ref_mask, g), name  # the same lesions
            whole = g.to_original(prob)
            n, labels, stats, _ = cv2.connectedComponentsWithStats(
                ref_mask.astype(np.uint8), connectivity=8
            )
            by_box = {}
            for i in range(1, n):
                x, y, w, h = (int(v) for v in stats[i, :4])
                own = labels[y : y + h, x : x + w] == i
                by_box[(x, y, w, h)] = whole[y : y + h, x : x + w][own]
            for les in lesions:
                vals = by_box[les.bbox]
                assert les.max_probability == pytest.approx(float(vals.max()), abs=1e-4)
                assert les.mean_probability == pytest.approx(float(vals.mean()), abs=1e-4)
                assert les.max_probability >= thr - 1e-4
