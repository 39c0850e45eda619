"""The native kernels (``hemoseg_edge/_native.cpp``) equal their references bit for bit: OpenCV's
INTER_AREA shrink, ``preprocess.area_resample``, the numpy percentile and densify, OpenCV's
filled circle, and the whole preprocessing of real IDRiD/DIARETDB1 images.

(``tests/test_postprocess.py`` runs the back-mapping tests with and without them.)"""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from conftest import ddb1_images, idrid_images

from hemoseg_edge import native
from hemoseg_edge.inputs import load_image
from hemoseg_edge.postprocess import circle_halfwidths
from hemoseg_edge.preprocess import (
    _area_taps,
    _densify,
    _percentile_u8,
    area_resample,
    area_weights,
    find_fov,
    preprocess_frame,
)

HW = (560, 576)


@pytest.fixture
def needs_native():
    native._load.cache_clear()
    if not native.available():
        pytest.skip("native kernels off: not built (needs a C++ compiler) or HEMOSEG_NATIVE=0")


def real_frames() -> list[np.ndarray]:
    paths = idrid_images("test")[:4] + idrid_images("train")[:2] + ddb1_images()[:2]
    if not paths:
        pytest.skip("shared data not found (set HEMOSEG_DATA)")
    return [load_image(p, HW).frame for p in paths]


def test_built_where_required():
    """``make test`` sets HEMOSEG_REQUIRE_NATIVE=1: a silently failed build would otherwise
    only skip tests."""
    if os.environ.get("HEMOSEG_REQUIRE_NATIVE") == "1":
        assert native.available()


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("HEMOSEG_NATIVE", "0")
    native._load.cache_clear()
    assert not native.available()  # the numpy/OpenCV references then run
    native._load.cache_clear()


def test_area_resample_equals_reference(needs_native):
    rng = np.random.default_rng(1)
    planes = [f[:, :, 1] for f in real_frames()]  # strided green planes, as preprocess uses
    sizes = rng.integers(5, 900, (20, 2))
    planes += [rng.integers(0, 256, (int(h), int(w)), np.uint8) for h, w in sizes]
    for plane in planes:
        ph, pw = plane.shape
        for out_hw in [HW, (int(rng.integers(1, 700)), int(rng.integers(1, 700)))]:
            x0, y0 = int(rng.integers(0, pw - 1)), int(rng.integers(0, ph - 1))
            box = (x0, y0, int(rng.integers(x0 + 1, pw + 1)), int(rng.integers(y0 + 1, ph + 1)))
            ref = area_resample(plane.astype(np.float32), box, out_hw)  # numpy: float plane
            fy, ny, iy, wy = _area_taps(float(box[1]), float(box[3]), out_hw[0])
            fx, nx, ix, wx = _area_taps(float(box[0]), float(box[2]), out_hw[1])
            got = native.area_resample_u8(plane[fy : fy + ny, fx : fx + nx], iy, wy, ix, wx)
            assert got is not None and np.array_equal(got, ref), (plane.shape, box, out_hw)
            assert np.array_equal(area_resample(plane, box, out_hw), ref)  # dispatches to it


def test_preprocess_with_and_without_native_is_identical(needs_native):
    frames = real_frames()
    with_native = [preprocess_frame(f, None, HW) for f in frames]
    with native.switched(False):
        for f, a in zip(frames, with_native, strict=True):
            b = preprocess_frame(f, None, HW)
            assert np.array_equal(a.tensor, b.tensor)
            assert (a.geometry, a.fov, a.green_stats) == (b.geometry, b.fov, b.green_stats)
            assert find_fov(f) == a.fov


def test_percentile_u8_equals_numpy():
    rng = np.random.default_rng(2)
    arrays = [f.max(axis=2) for f in real_frames()]
    for _ in range(300):
        n, k = int(rng.integers(1, 3000)), int(rng.integers(1, 256))
        arrays.append(rng.integers(0, k, (1, n), dtype=np.uint8))
        arrays.append(np.full((3, n), k - 1, np.uint8))  # ties everywhere: the histogram path
    for a in arrays:
        assert _percentile_u8(a, 95) == float(np.percentile(a, 95))


def test_densify_equals_the_edge_loop():
    rng = np.random.default_rng(3)
    for _ in range(200):
        poly = rng.integers(0, 600, (int(rng.integers(3, 60)), 2)).astype(np.float64)
        ref = []
        for a, b in zip(poly, np.roll(poly, -1, axis=0), strict=True):
            n = max(1, int(np.hypot(*(b - a)) / 2.0))
            ref.append(a + (np.arange(n)[:, None] / n) * (b - a))
        assert np.array_equal(_densify(poly), np.concatenate(ref))


def test_circle_halfwidths_draw_what_opencv_draws():
    rng = np.random.default_rng(4)
    for r in [1, 2, 3, 1700] + [int(v) for v in rng.integers(1, 400, 150)]:
        size = 2 * r + 11
        cx, cy = r + 5 + int(rng.integers(-3, 4)), r + 5 + int(rng.integers(-3, 4))
        ref = np.zeros((size, size), np.uint8)
        cv2.circle(ref, (cx, cy), r, 1, thickness=-1)
        hw = circle_halfwidths(r)
        got = np.zeros_like(ref)
        for d, half in enumerate(hw):
            got[cy - d, cx - half : cx + half + 1] = 1
            got[cy + d, cx - half : cx + half + 1] = 1
        assert np.array_equal(got, ref), r


def test_components_equal_opencv(needs_native):
    rng = np.random.default_rng(5)
    masks = []
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 300, 2))
        masks.append(rng.random((h, w)) < rng.uniform(0.05, 0.7))  # spirals of merges, speckle
    big = rng.random((400, 500)) < 0.5
    masks += [big[13:301, 7:401], np.ones((5, 9), bool), np.zeros((6, 4), bool)]  # strided
    for m in masks:
        got = native.components(m.view(np.uint8))
        n, _, stats, cents = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
        # OpenCV's centroid is (sum of coordinates) / area: recover the integer sums
        ref = sorted(
            (int(a), int(x), int(y), int(x + w - 1), int(y + h - 1), round(cx * a), round(cy * a))
            for (x, y, w, h, a), (cx, cy) in zip(stats[1:], cents[1:], strict=True)
        )
        assert sorted(tuple(r) for r in got.tolist()) == ref


def test_area_taps_equal_the_dense_weights():
    """``_area_taps`` (computed on each footprint) = the non-zero run of each ``area_weights``
    row, the definition."""
    rng = np.random.default_rng(6)
    cases = [(0.0, 1072.0, 576), (13.0, 851.0, 560), (0.5, 3.25, 560), (10.25, 11.0, 7)]
    for i in range(300):
        a = float(rng.integers(0, 2000)) + (0.25 if i % 2 else 0.0)
        cases.append((a, a + float(rng.uniform(0.1, 3000)) * (1 if i % 3 else 0.01), 1 + i))
    for start, stop, n in cases:
        area_weights.cache_clear()
        first, dense = area_weights(start, stop, n)
        f, width, idx, w = _area_taps(start, stop, n)
        assert (f, width) == (first, dense.shape[1])
        rebuilt = np.zeros_like(dense)
        np.add.at(rebuilt, (np.arange(n)[:, None], idx), w)  # padding taps add 0
        assert np.array_equal(rebuilt, dense)
        assert w.dtype == np.float32 and (w > 0).sum() == (dense > 0).sum()
