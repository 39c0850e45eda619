"""How the shipped model's accuracy falls with image resolution, blur and darkness: the evidence
behind the gradability rules (``hemoseg_edge.quality``).

``python -m training.degradation --out engines/degradation_v3.json`` (the default model's)

On the validation images only (never the test set): each photograph is downscaled so that its
field of view is D pixels across, blurred with a Gaussian of sigma S (in model-input pixels of
the full image), or darkened by a factor; the result goes through ``Segmenter`` (the default
path), its mask is brought back to the photograph's full size (nearest neighbour) and scored
against the full-size ground truth: pooled Dice and lesion-level sensitivity (ground-truth
regions hit), so lesions that vanish in the downscale count as missed. Each relative to the
undamaged images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from hemoseg_edge import Segmenter, quality
from hemoseg_edge import metrics as M
from hemoseg_edge.inputs import load_image
from training.data import idrid_items
from training.evaluate import regions_hit

FOV_DIAMETERS = (0, 2048, 1536, 1152, 1024, 768, 640, 512, 384, 256)  # 0: as shipped
BLUR_SIGMAS = (1.0, 2.0, 4.0, 8.0)  # in pixels of the model's input grid
DARKEN = (0.5, 0.3, 0.2, 0.1, 0.05)  # factor on every channel


def _score(seg: Segmenter, frame: np.ndarray, truth: np.ndarray):
    res = seg.segment(frame)
    pre = seg.preprocess(seg.load(frame))
    measures = (quality.sharpness(frame, pre.fov), pre.green_stats[0])
    pred = res.mask
    if pred.shape != truth.shape:
        up = cv2.resize(pred.astype(np.uint8), truth.shape[::-1], interpolation=cv2.INTER_NEAREST)
        pred = up > 0
    regions, hit = regions_hit(pred, truth)
    return M.confusion(pred, truth), regions, hit, list(res.flags), measures


def run(limit: int | None = None) -> dict:
    seg = Segmenter.from_engine()
    items = idrid_items("val")[:limit]
    model_w = seg.metadata.input_width
    images = []
    for it in items:
        frame = load_image(it.image).frame
        truth = cv2.imread(str(it.mask), cv2.IMREAD_GRAYSCALE) > 0
        images.append((it.id, frame, truth))
    conditions: dict[str, dict] = {}

    def record(name: str, make) -> None:
        total, regions, hits, flags, sharp, green = M.Counts(0, 0, 0, 0), 0, 0, {}, [], []
        for _iid, frame, truth in images:
            c, r, h, f, (sh, g) = _score(seg, make(frame), truth)
            total, regions, hits = total + c, regions + r, hits + h
            sharp.append(round(sh, 4))
            green.append(round(g, 1))
            for x in f:
                flags[x] = flags.get(x, 0) + 1
        sens = hits / regions if regions else 0.0
        conditions[name] = {
            "dice": M.dice(total),
            "lesion_sensitivity": sens,
            "flags": flags,
            "sharpness": sharp,
            "mean_green": green,
        }
        print(f"{name:>28}: Dice {M.dice(total):.4f}  lesions hit {sens:.3f}  {flags}", flush=True)

    base_fov = []
    for _iid, frame, _truth in images:
        fov = seg.preprocess(seg.load(frame)).geometry
        base_fov.append(2 * fov.fov_radius)

    for d in FOV_DIAMETERS:

        def shrink(frame, d=d):
            s = d / (2 * seg.preprocess(seg.load(frame)).geometry.fov_radius) if d else 1.0
            if s >= 1:
                return frame
            hw = (round(frame.shape[0] * s), round(frame.shape[1] * s))
            return cv2.resize(frame, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)

        record(f"fov_diameter_{d or 'full'}", shrink)
    for sigma in BLUR_SIGMAS:

        def blur(frame, sigma=sigma):
            px = sigma * frame.shape[1] / model_w  # model pixels -> photo pixels
            return cv2.GaussianBlur(frame, (0, 0), px)

        record(f"blur_sigma_{sigma:g}_model_px", blur)
    for k in DARKEN:

        def dark(frame, k=k):
            return cv2.convertScaleAbs(frame, alpha=k)

        record(f"darken_x{k:g}", dark)

    full = conditions["fov_diameter_full"]
    for v in conditions.values():
        v["dice_relative"] = v["dice"] / full["dice"] if full["dice"] else 0.0
        base = full["lesion_sensitivity"]
        v["lesion_sensitivity_relative"] = v["lesion_sensitivity"] / base if base else 0.0
    return {
        "model": seg.source,
        "backend": seg.backend.name,
        "precision": seg.metadata.precision,
        "model_input_hw": list(seg.metadata.input_hw),
        "images": [iid for iid, _, _ in images],
        "split": "validation (training/data.py VAL_IDS); never the test set",
        "fov_diameter_px_as_shipped": [round(x) for x in base_fov],
        "conditions": conditions,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.degradation", description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--limit", type=int, default=None)
    args = p.parse_args(argv)
    t0 = time.time()
    report = run(args.limit)
    report["seconds"] = round(time.time() - t0, 1)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
