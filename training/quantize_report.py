"""Accuracy of the FP32 / FP16 / INT8 models on the IDRiD official test set, for the model card.

``python -m training.quantize_report --fp32 A.onnx --fp16 B.onnx --int8 C.onnx [--limit N]``

Every model runs through ``Segmenter`` (the deployed path: full-resolution image in, mask at the
original resolution out) on the same decoded images; pooled Dice and IoU come from the summed
pixel confusion counts (``hemoseg_edge.metrics``) against the IDRiD HE masks. Also reported per
model: the change in Dice against the first model, the fraction of pixels whose mask differs
from the first model's, and the max / mean absolute difference of the model-resolution
probability maps against the first model's. Prints (and with ``--out`` writes) one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from hemoseg_edge.inputs import load_image
from hemoseg_edge.metrics import Counts, confusion, dice, iou
from hemoseg_edge.segmenter import Segmenter
from training.data import Item, idrid_items, read_mask


def evaluate(
    models: dict[str, str | os.PathLike],
    items: list[Item],
    backend: str = "onnxruntime",
    progress: bool = False,
) -> dict:
    """Pooled Dice/IoU of each model over ``items``; the first model is the reference."""
    if not models or not items:
        raise ValueError("need at least one model and one image")
    segs = {k: Segmenter.from_engine(p, backend=backend) for k, p in models.items()}
    hws = {s.metadata.input_hw for s in segs.values()}
    if len(hws) != 1:
        raise ValueError(f"models disagree on the input size: {sorted(hws)}")
    (input_hw,) = hws
    ref = next(iter(segs))
    counts = {k: Counts(0, 0, 0, 0) for k in segs}
    differ = dict.fromkeys(segs, 0)
    prob_max = dict.fromkeys(segs, 0.0)
    prob_sum = dict.fromkeys(segs, 0.0)
    prob_px = 0
    seconds = dict.fromkeys(segs, 0.0)
    pixels = 0
    for n, item in enumerate(items, 1):
        truth = read_mask(item)
        image = load_image(item.image, input_hw)
        masks: dict[str, np.ndarray] = {}
        probs: dict[str, np.ndarray] = {}
        for k, seg in segs.items():
            t = time.perf_counter()
            result = seg.segment(image)
            seconds[k] += time.perf_counter() - t
            masks[k], probs[k] = result.mask, result.probability
            counts[k] = counts[k] + confusion(masks[k], truth)
            differ[k] += int(np.count_nonzero(masks[k] != masks[ref]))
            d = np.abs(probs[k].astype(np.float64) - probs[ref])
            prob_max[k] = max(prob_max[k], float(d.max()))
            prob_sum[k] += float(d.sum())
        pixels += truth.size
        prob_px += probs[ref].size
        if progress:
            print(f"[{n}/{len(items)}] {item.id}", file=sys.stderr, flush=True)
    ref_dice = dice(counts[ref])
    table = {}
    for k, seg in segs.items():
        c = counts[k]
        table[k] = {
            "path": str(models[k]),
            "precision": seg.metadata.precision,
            "dice": round(dice(c), 5),
            "iou": round(iou(c), 5),
            "dice_delta_vs_" + ref: round(dice(c) - ref_dice, 5),
            "mask_pixels_differing_vs_" + ref: round(differ[k] / pixels, 7),
            "prob_max_abs_diff_vs_" + ref: round(prob_max[k], 5),
            "prob_mean_abs_diff_vs_" + ref: round(prob_sum[k] / prob_px, 6),
            "tp": c.tp,
            "fp": c.fp,
            "fn": c.fn,
            "seconds_per_image": round(seconds[k] / len(items), 2),
        }
    return {
        "dataset": "IDRiD official test set (HE masks), full resolution, pooled over images",
        "images": len(items),
        "ids": [i.id for i in items],
        "backend": backend,
        "reference": ref,
        "models": table,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.quantize_report", description=__doc__.split("\n")[0]
    )
    p.add_argument("--fp32", type=Path, required=True)
    p.add_argument("--fp16", type=Path)
    p.add_argument(
        "--int8",
        type=Path,
        action="append",
        default=[],
        help="INT8 model (repeat to compare quantizers)",
    )
    p.add_argument("--limit", type=int, default=0, help="first N test images only (0: all 27)")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    models: dict[str, str | os.PathLike] = {"fp32": args.fp32}
    if args.fp16:
        models["fp16"] = args.fp16
    for i, m in enumerate(args.int8):
        models["int8" if i == 0 else f"int8_{i + 1}"] = m
    items = idrid_items("test")
    if not items:
        print("error: no IDRiD test images found (set HEMOSEG_DATA)", file=sys.stderr)
        return 2
    if args.limit:
        items = items[: args.limit]
    report = evaluate(models, items, args.backend, progress=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
