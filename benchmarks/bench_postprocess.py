"""Full-resolution postprocess (group "postprocess": the runtime's and a straightforward
reference, which give identical masks) and the CLI's output files (group "outputs")."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from benchlib import FP32, forget_caches, kernels, rounds

from hemoseg_edge import quality
from hemoseg_edge.postprocess import min_lesion_px, quadrant_of
from hemoseg_edge.segmenter import Segmenter


@pytest.fixture(scope="module")
def case(models, images):
    """(segmenter, loaded image, preprocessed, probability) for the first test image."""
    seg = Segmenter.from_engine(models.path(FP32), backend="auto")
    image = seg.load(images[0])
    pre = seg.preprocess(image)
    prob = seg.backend.run(pre.tensor)[0, 0]
    return seg, image, pre, prob


def reference_postprocess(prob, pre, image, thr, min_px=0):
    """The straightforward version: map to 12 Mpx, threshold, FOV disc, label everything,
    drop the components under the minimum lesion area (``min_px`` photograph pixels)."""
    g = pre.geometry
    mask = (g.to_original(prob) >= thr) & g.fov_mask()
    n, labels, stats, cents = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8
    )
    if min_px > 1:
        small = stats[:, 4] < min_px
        small[0] = False
        mask &= ~small[labels]
        n, _, stats, cents = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    lesions = sorted(
        (
            (int(stats[i, 4]), quadrant_of(cents[i, 0], cents[i, 1], *g.fov_center))
            for i in range(1, n)
        ),
        key=lambda t: -t[0],
    )
    fov_area = int(g.fov_mask().sum())
    flags = quality.assess(image.frame, pre.fov, pre.green_stats, True)
    return mask, lesions, fov_area, flags


@pytest.mark.parametrize("native_on", [True, False], ids=["native", "numpy"])
def bench_postprocess(benchmark, case, models, native_on):
    """As for a new photograph: per-geometry caches emptied before each round."""
    seg, image, pre, prob = case
    benchmark.group = "postprocess"
    with kernels(native_on) as kernel:
        res = benchmark.pedantic(
            seg.postprocess, args=(prob, pre, image, {}), setup=forget_caches, rounds=rounds(20, 5)
        )
    benchmark.extra_info.update(
        variant=f"optimised (per-lesion-group windows, FOV disc spans), {kernel}",
        lesions=len(res.lesions),
        mask_fraction=round(float(res.mask.mean()), 6),
        real_model=models.real,
    )


def bench_postprocess_reference(benchmark, case, models):
    seg, image, pre, prob = case
    benchmark.group = "postprocess"
    mask, *_ = benchmark.pedantic(
        reference_postprocess,
        args=(
            prob,
            pre,
            image,
            seg.metadata.threshold,
            min_lesion_px(pre.geometry, seg.min_lesion_model_px),
        ),
        rounds=rounds(10, 3),
    )
    optimised = seg.postprocess(prob, pre, image, {})
    assert np.array_equal(mask, optimised.mask)
    benchmark.extra_info.update(variant="straightforward reference", real_model=models.real)


def bench_write_outputs(benchmark, case, images, tmp_path):
    """Mask PNG (12 Mpx), overlay JPEG (2048 px), JSON, each written atomically (CLI)."""
    from hemoseg_edge.outputs import write_outputs

    seg, image, pre, prob = case
    res = seg.postprocess(prob, pre, image, {})
    benchmark.group = "outputs"
    benchmark.pedantic(
        write_outputs, args=(res, images[0], tmp_path, "bench", 2048), rounds=rounds(10, 3)
    )
    benchmark.extra_info.update(files=sorted(p.name for p in tmp_path.iterdir()))
