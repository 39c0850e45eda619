"""How well ``hemoseg_edge.anatomy`` finds the optic disc, and whether suppressing predicted
lesions at the fovea helps, one command:

    python -m training.anatomy_eval --out engines/anatomy_eval.json --val-suppression

- Disc (``--split``, default ``test``: the 27 official IDRiD test images; ``train`` for the
  training images the parameters were chosen on): each image is decoded as the runtime
  decodes it for the shipped model (``load_image`` with its input size), ``preprocess_geometry``
  finds the FOV and ``anatomy.locate`` the disc. Against the IDRiD optic-disc mask: the
  distance from the detected centre to the mask's centroid in original pixels and in disc
  radii (radius ``sqrt(area / pi)`` of the mask), median and 90th percentile; the detection
  rate (detected centre inside the mask); the nominal radius against the mask's; the time of
  ``locate`` per image (``time.perf_counter``).
- Fovea: IDRiD's segmentation set has no fovea ground truth (the "C. Localization" subset is
  not in ``shared/data``): only where the estimate lies is reported (distance from the FOV
  centre in disc diameters, for these macula-centred photographs).
- ``--val-suppression``: on the 8 validation images (``VAL_IDS``, never test) with the shipped
  model, pooled Dice, lesion-level hits and false-positive lesions per image with the
  predicted lesions whose centroid lies within R disc diameters of the fovea estimate removed,
  for several R, against none removed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from hemoseg_edge import anatomy
from hemoseg_edge import metrics as M
from hemoseg_edge.inputs import load_image
from hemoseg_edge.preprocess import preprocess_geometry
from training.data import VAL_IDS, data_root, idrid_items, read_mask
from training.evaluate import lesion_level

MODEL_HW = (1120, 1152)  # the shipped model v2's input: the runtime's decode scale for it
SUPPRESSION_DD = (0.25, 0.5, 1.0)


def od_mask(image: Path) -> np.ndarray | None:
    split = image.parent.name
    path = image.parents[2] / "masks" / "OD" / split / f"{image.stem}_OD.tif"
    if not path.exists():
        return None
    arr = np.array(Image.open(path))
    return (arr[..., 0] if arr.ndim == 3 else arr) > 0


def images(split: str) -> list[Path]:
    folder = data_root() / "idrid" / "images" / ("test" if split == "test" else "train")
    paths = sorted(folder.glob("IDRiD_*.jpg"))
    if split == "val":
        paths = [p for p in paths if p.stem in VAL_IDS]
    return paths


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def evaluate_disc(split: str) -> dict:
    per_image = {}
    err_px, err_r, radius_ratio, times, fovea_from_centre = [], [], [], [], []
    hits = found = 0
    for path in images(split):
        mask = od_mask(path)
        if mask is None:
            continue
        loaded = load_image(path, MODEL_HW)
        pre = preprocess_geometry(loaded.frame, loaded.original_hw, MODEL_HW)
        t = time.perf_counter()
        anat = anatomy.locate(loaded.frame, pre.fov, pre.geometry, loaded.metadata)
        times.append(1000 * (time.perf_counter() - t))
        ys, xs = np.nonzero(mask)
        true_c = (float(xs.mean()), float(ys.mean()))
        true_r = float(np.sqrt(mask.sum() / np.pi))
        row: dict = {"found": anat.found, "true_center_xy": [round(v, 1) for v in true_c]}
        row["true_radius_px"] = round(true_r, 1)
        row["laterality"] = anat.laterality
        if anat.found and anat.disc_center is not None and anat.disc_radius:
            found += 1
            x, y = anat.disc_center
            e = float(np.hypot(x - true_c[0], y - true_c[1]))
            xi, yi = round(x), round(y)
            inside = 0 <= yi < mask.shape[0] and 0 <= xi < mask.shape[1] and bool(mask[yi, xi])
            hits += inside
            err_px.append(e)
            err_r.append(e / true_r)
            radius_ratio.append(anat.disc_radius / true_r)
            row.update(
                center_xy=[round(x, 1), round(y, 1)],
                error_px=round(e, 1),
                error_disc_radii=round(e / true_r, 3),
                inside_disc=inside,
                nominal_radius_px=round(anat.disc_radius, 1),
            )
            if anat.fovea is not None:
                cx, cy = pre.geometry.fov_center
                d = float(np.hypot(anat.fovea[0] - cx, anat.fovea[1] - cy))
                fovea_from_centre.append(d / (2 * anat.disc_radius))
                row["fovea_xy"] = [round(v, 1) for v in anat.fovea]
        else:  # not found: counted as a miss, with no error
            row["inside_disc"] = False
        per_image[path.stem] = row
    n = len(per_image)
    return {
        "split": split,
        "images": n,
        "found": found,
        "detection_rate": round(hits / n, 4) if n else None,
        "detected_inside_disc": hits,
        "center_error_px": {"median": _pct(err_px, 50), "p90": _pct(err_px, 90)},
        "center_error_disc_radii": {"median": _pct(err_r, 50), "p90": _pct(err_r, 90)},
        "nominal_radius_over_true": {
            "median": _pct(radius_ratio, 50),
            "p10": _pct(radius_ratio, 10),
            "p90": _pct(radius_ratio, 90),
        },
        "fovea": {
            "ground_truth": None,
            "note": "no fovea ground truth in the IDRiD segmentation subset",
            "estimated": len(fovea_from_centre),
            "distance_from_fov_centre_dd": {
                "median": _pct(fovea_from_centre, 50),
                "p90": _pct(fovea_from_centre, 90),
            },
        },
        "locate_ms": {"median": _pct(times, 50), "p90": _pct(times, 90)},
        "per_image": per_image,
    }


def _without(
    mask: np.ndarray, fovea: tuple[float, float] | None, dd: float, radius_dd: float
) -> np.ndarray:
    """``mask`` without the 8-connected components whose centroid is within ``radius_dd``
    disc diameters of ``fovea``."""
    if fovea is None or radius_dd <= 0:
        return mask
    n, labels, _, cents = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    dist = np.hypot(cents[:, 0] - fovea[0], cents[:, 1] - fovea[1]) / dd
    drop = np.flatnonzero(dist <= radius_dd)
    drop = drop[drop > 0]
    if drop.size == 0:
        return mask
    return mask & ~np.isin(labels, drop)


def evaluate_suppression(model: str | None) -> dict:
    from hemoseg_edge.segmenter import Segmenter

    seg = Segmenter.from_engine(model, backend="onnxruntime")
    radii = (0.0, *SUPPRESSION_DD)
    counts = {r: M.Counts(0, 0, 0, 0) for r in radii}
    lesion = {r: {"regions": 0, "hit": 0, "false_positive": 0} for r in radii}
    removed = dict.fromkeys(radii, 0)
    items = idrid_items("val")
    no_fovea = []
    for item in items:
        res = seg.segment(item.image)
        truth = read_mask(item)
        pred = res.mask
        anat = res.anatomy
        if anat.fovea is None:
            no_fovea.append(item.id)
        for r in radii:
            p = _without(pred, anat.fovea, anat.disc_diameter or 1.0, r)
            counts[r] = counts[r] + M.confusion(p, truth)
            ll = lesion_level(p, truth)
            for k in lesion[r]:
                lesion[r][k] += ll[k]
            removed[r] += lesion_level(pred, truth)["false_positive"] - ll["false_positive"]
    out = {}
    for r in radii:
        lv = lesion[r]
        out[f"{r:g}"] = {
            "pooled_dice": round(M.dice(counts[r]), 4),
            "lesion_sensitivity": round(lv["hit"] / lv["regions"], 4) if lv["regions"] else None,
            "false_positive_lesions_per_image": round(lv["false_positive"] / len(items), 2),
            "false_positive_lesions_removed": removed[r],
        }
    return {
        "images": [i.id for i in items],
        "model": seg.source,
        "rule": "remove predicted lesions whose centroid is within R disc diameters of the fovea",
        "by_radius_dd": out,
        "images_without_fovea_estimate": no_fovea,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.anatomy_eval", description=__doc__)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--val-suppression", action="store_true")
    p.add_argument("--model", default=None, help="default: the shipped model")
    args = p.parse_args(argv)
    report: dict = {"disc": evaluate_disc(args.split)}
    if args.val_suppression:
        report["fovea_suppression_val"] = evaluate_suppression(args.model)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    summary = {k: v for k, v in report["disc"].items() if k != "per_image"}
    print(json.dumps(summary, indent=2))
    if "fovea_suppression_val" in report:
        print(json.dumps(report["fovea_suppression_val"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
