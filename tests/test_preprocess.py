"""The preprocessing truth on real images: FOV, crop, resampling arithmetic, geometry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import data_root, ddb1_images, idrid_images, require_data
from PIL import Image

from hemoseg_edge.inputs import load_image
from hemoseg_edge.preprocess import (
    area_resample,
    area_weights,
    find_fov,
    preprocess_frame,
    preprocess_mask,
)

MODEL_HW = (560, 576)


def all_shared_images():
    return idrid_images() + ddb1_images()


@pytest.mark.data
def test_fov_crop_on_every_shared_image():
    require_data()
    images = all_shared_images()
    assert len(images) >= 81
    for path in images:
        img = load_image(path, MODEL_HW)
        pre = preprocess_frame(img.frame, img.original_hw, MODEL_HW)
        fov = pre.fov
        assert fov.found, path.name
        x0, y0, x1, y1 = fov.box
        # the crop contains the whole FOV: nothing bright is left outside the box
        outside = np.ones(img.frame.shape[:2], bool)
        outside[y0:y1, x0:x1] = False
        bright_outside = (img.frame.max(axis=2)[outside] > 40).mean() if outside.any() else 0.0
        assert bright_outside < 1e-3, f"{path.name}: {bright_outside:.4f} of outside is bright"
        # and is tight: the box is not much wider than the fitted disc
        fw = img.frame.shape[1]
        assert (x1 - x0) <= min(fw, 2 * fov.radius + 16), path.name
        assert 0.9 < fov.fill_ratio <= 1.0, path.name
        t = pre.tensor
        assert t.shape == (1, 1, *MODEL_HW) and t.dtype == np.float32
        assert 0.0 <= t.min() and t.max() <= 1.0
        mapped = pre.geometry.to_original(t[0, 0])
        assert mapped.shape == img.original_hw


@pytest.mark.data
def test_geometry_round_trip_on_real_mask():
    """A real HE mask, resampled to model size and mapped back, lands where it came from."""
    require_data()
    root = data_root() / "idrid"
    img = load_image(root / "images/train/IDRiD_03.jpg", MODEL_HW)
    mask = np.array(Image.open(root / "masks/HE/train/IDRiD_03_HE.tif")) > 0
    pre = preprocess_frame(img.frame, img.original_hw, MODEL_HW)
    cov = preprocess_mask(mask, pre.geometry)
    back = pre.geometry.to_original(cov) >= 0.5
    inter = np.count_nonzero(back & mask)
    dice = 2 * inter / (back.sum() + mask.sum())
    assert dice > 0.8, dice
    # a one-model-pixel shift is clearly worse: the geometry is aligned, not approximately so
    shifted = pre.geometry.to_original(np.roll(cov, 1, axis=1)) >= 0.5
    dice_shift = 2 * np.count_nonzero(shifted & mask) / (shifted.sum() + mask.sum())
    assert dice > dice_shift + 0.05


def test_area_weights_rows_sum_to_one_and_match_opencv():
    first, w = area_weights(0.0, 1072.0, 576)
    assert first == 0 and np.allclose(w.sum(axis=1), 1.0, atol=1e-5)
    rng = np.random.default_rng(0)
    plane = rng.integers(0, 256, (712, 1072)).astype(np.float32)
    ours = area_resample(plane, (0, 0, 1072, 712), (356, 536))  # exact 2x shrink
    ref = cv2.resize(plane, (536, 356), interpolation=cv2.INTER_AREA)
    assert np.abs(ours - ref).max() < 1e-3
    ours = area_resample(plane, (0, 0, 1072, 712), (560, 576))  # fractional shrink
    ref = cv2.resize(plane, (576, 560), interpolation=cv2.INTER_AREA)
    assert np.abs(ours - ref).max() < 1e-2


def test_fractional_box_and_enlarging():
    plane = np.arange(100, dtype=np.float32).reshape(10, 10)
    out = area_resample(plane, (2.5, 0.0, 4.5, 10.0), (10, 4))
    # columns 2.5..4.5 in steps of 0.5: each output covers half a source column
    assert np.allclose(out[0], [2, 3, 3, 4])
    up = area_resample(plane, (0, 0, 10, 10), (20, 20))
    assert np.allclose(up[::2, ::2], plane)


def test_synthetic_disc_found_with_clipped_top_and_bottom():
    frame = np.zeros((600, 900, 3), np.uint8)
    cv2.circle(frame, (450, 300), 340, (40, 90, 180), -1)  # clipped at top and bottom
    fov = find_fov(frame)
    assert fov.found
    assert abs(fov.cx - 450) < 6 and abs(fov.cy - 300) < 6 and abs(fov.radius - 340) < 8
    x0, y0, x1, y1 = fov.box
    assert x0 <= 110 and x1 >= 790 and y0 == 0 and y1 == 600


def test_blank_frame_has_no_fov():
    fov = find_fov(np.zeros((400, 500, 3), np.uint8))
    assert not fov.found and fov.box == (0, 0, 500, 400)


@pytest.mark.data
def test_reduced_jpeg_decode_matches_full_decode():
    """Decoding at 1/4 scale (fast path) gives nearly the tensor of a full decode."""
    require_data()
    path = idrid_images("train")[0]
    fast = load_image(path, MODEL_HW)
    full = load_image(path, None)
    assert fast.frame.shape[1] * 4 == full.frame.shape[1]
    a = preprocess_frame(fast.frame, fast.original_hw, MODEL_HW)
    b = preprocess_frame(full.frame, full.original_hw, MODEL_HW)
    assert np.allclose(a.geometry.box, b.geometry.box, atol=8)
    if a.geometry.box == b.geometry.box:
        assert np.abs(a.tensor - b.tensor).mean() < 0.01
