"""Image-level ROC without hemorrhage-free photographs: a lesion-free proxy per labelled image.

Every labelled photograph here has hemorrhage, so the verdict's specificity cannot be measured
directly. The proxy negative of a photograph is the score ``postprocess.image_score`` gives it
with its true hemorrhages taken out: the model-grid probability map with every ground-truth
hemorrhage (dilated by ``TRUTH_DILATE_PX``), every predicted region touching one (its halo:
probability >= half the model's threshold) and a margin of ``MARGIN_PX`` set to 0. What is left
is everything else the model reacts to in that eye (exudates, microaneurysms, vessel crossings,
the fovea, the disc), i.e. the score the photograph would have if its hemorrhages were absent.

Limits, stated wherever the numbers are shown: these are diseased eyes (exudates and
microaneurysms stay in), not healthy ones, and a hemorrhage the graders did not outline counts
as a false alarm; the resampled map is the model's output on the photograph *with* its
hemorrhages. So the proxy is not a specificity on a screening population, only the best
estimate these labels allow of how often the strongest false lesion crosses the operating point.

``python -m training.image_level [--model M]`` compares candidate image scores by this proxy
ROC on the validation images (the shipped score is the strongest 3 x 3 mean probability).
"""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np

from hemoseg_edge import metrics as M
from hemoseg_edge.postprocess import image_score, model_fov_mask
from hemoseg_edge.preprocess import preprocess_mask

TRUTH_DILATE_PX = 3  # model pixels around each outlined hemorrhage (its blurred rim)
MARGIN_PX = 2  # so the score's 3 x 3 box cannot straddle a removed region's edge


def without_true_lesions(prob: np.ndarray, truth: np.ndarray, threshold: float) -> np.ndarray:
    """``prob`` (model grid) with the true hemorrhages ``truth`` (bool, model grid), the
    predicted regions touching them and a margin set to 0."""
    kernel = lambda r: np.ones((2 * r + 1, 2 * r + 1), np.uint8)  # noqa: E731
    near_truth = cv2.dilate(truth.astype(np.uint8), kernel(TRUTH_DILATE_PX)) > 0
    halo = (prob >= threshold / 2).astype(np.uint8)
    _, labels = cv2.connectedComponents(halo, connectivity=8)
    touching = np.unique(labels[near_truth & (labels > 0)])
    removed = near_truth | np.isin(labels, touching)
    removed = cv2.dilate(removed.astype(np.uint8), kernel(MARGIN_PX)) > 0
    return np.where(removed, 0.0, prob).astype(np.float32)


def lesion_free_score(result, coverage: np.ndarray) -> float:
    """The proxy negative score of one ``SegmentationResult``, given the hemorrhage coverage
    on its model grid (``preprocess_mask`` of any pixel a grader marked)."""
    prob = without_true_lesions(result.probability, coverage > 0, result.threshold)
    return image_score(prob, result.geometry)


def proxy_roc(scores: dict, proxy: dict, operating_point: float | None) -> dict:
    """ROC of the image score: each photograph as a positive (its score) and as a lesion-free
    proxy negative (``proxy``); specificity at the model's operating point where it has one."""
    pos, neg = list(scores.values()), list(proxy.values())
    out = {
        "proxy_negative_scores": proxy,
        "proxy_roc_auc": round(M.roc_auc(pos, neg), 4) if pos and neg else None,
        "proxy_specificity": None,
        "proxy_note": "negatives are each photograph with its true hemorrhages removed "
        "(training/image_level.py): diseased eyes, not healthy ones",
    }
    if operating_point is not None and neg:
        out["proxy_specificity"] = round(float(np.mean(np.asarray(neg) < operating_point)), 4)
    return out


def candidate_scores(prob: np.ndarray, result) -> dict[str, float]:
    """Image scores one could ship, on a model-grid map: the strongest box mean (3, 9, 15 model
    px) and, over the lesions the model outlines (probability >= its threshold, at least its
    minimum area), the largest lesion's probability mass, the total mass and the count."""
    g = result.geometry
    out = {f"peak{b}x{b}": image_score(prob, g, b) for b in (3, 9, 15)}
    fov = model_fov_mask(g)
    p = np.where(fov, prob, 0.0).astype(np.float32)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(
        (p >= result.threshold).astype(np.uint8), connectivity=8
    )
    mass = np.bincount(labels.ravel(), weights=p.ravel(), minlength=n)
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= result.min_lesion_model_px]
    out["largest_lesion_mass"] = float(max((mass[i] for i in keep), default=0.0))
    out["total_lesion_mass"] = float(sum(mass[i] for i in keep))
    out["lesion_count"] = float(len(keep))
    return out


def compare_scores(seg, items) -> dict:
    """Proxy ROC AUC of each candidate score over ``items`` (validation only)."""
    from training.data import read_mask

    pos: dict[str, list[float]] = {}
    neg: dict[str, list[float]] = {}
    for item in items:
        r = seg.segment(item.image)
        truth = preprocess_mask(read_mask(item), r.geometry) > 0
        free = without_true_lesions(r.probability, truth, r.threshold)
        for k, v in candidate_scores(r.probability, r).items():
            pos.setdefault(k, []).append(v)
        for k, v in candidate_scores(free, r).items():
            neg.setdefault(k, []).append(v)
    return {k: round(M.roc_auc(pos[k], neg[k]), 4) for k in pos}


def main(argv: list[str] | None = None) -> int:
    from hemoseg_edge.model_file.shipped import DEFAULT_MODEL
    from hemoseg_edge.segmenter import Segmenter
    from training.data import idrid_items

    p = argparse.ArgumentParser(prog="python -m training.image_level", description=__doc__)
    p.add_argument("--model", default=f"engines/{DEFAULT_MODEL}")
    p.add_argument("--backend", default="onnxruntime")
    args = p.parse_args(argv)
    seg = Segmenter.from_engine(args.model, backend=args.backend)
    items = idrid_items("val")
    aucs = compare_scores(seg, items)
    print(json.dumps({"model": args.model, "images": len(items), "proxy_roc_auc": aucs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
