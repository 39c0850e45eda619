"""Datasets: IDRiD (official split + a fixed validation carve-out) and DIARETDB1.

Every image goes through ``hemoseg_edge``'s one preprocessing truth (``io.load_image`` +
``preprocess.preprocess_frame``); masks through ``preprocess.preprocess_mask`` on the same box.
Preprocessed arrays are cached as ``.npz`` outside git (``HEMOSEG_CACHE`` or
``~/.cache/hemoseg-edge``), keyed by input size and the preprocessing spec hash.

Data decisions:
- Official split: train = IDRiD_01..54, test = IDRiD_55..81.
- IDRiD_43 has no HE mask (as in the official release). "No file" might not mean "no
  hemorrhage", so it is left out of HE training and validation entirely.
- Validation: 8 train images spread over hemorrhage burden (the 53 with masks sorted by HE pixel
  count, ranks 3, 10, 17, 24, 31, 38, 45, 51): VAL_IDS. Never test images.
- DIARETDB1: hemorrhage map >= 189 of 255 (confidence >= 0.75, the official protocol); for
  cross-dataset checks only, never for training or tuning.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hemoseg_edge.inputs import load_image
from hemoseg_edge.preprocess import (
    DEFAULT_INPUT_HW,
    Geometry,
    preprocess_frame,
    preprocess_mask,
    spec_sha256,
)

VAL_IDS = (
    "IDRiD_02",
    "IDRiD_20",
    "IDRiD_21",
    "IDRiD_30",
    "IDRiD_31",
    "IDRiD_34",
    "IDRiD_40",
    "IDRiD_50",
)
NO_HE_MASK = ("IDRiD_43",)
DDB1_HE_THRESHOLD = 189


def data_root() -> Path:
    """``HEMOSEG_DATA`` or ``../shared/data`` next to the repository."""
    env = os.environ.get("HEMOSEG_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def cache_root() -> Path:
    return Path(os.environ.get("HEMOSEG_CACHE", Path.home() / ".cache" / "hemoseg-edge"))


@dataclass(frozen=True)
class Item:
    id: str
    image: Path
    mask: Path | None
    split: str  # train | val | test | ddb1


# a packed data root (``training.pack``: preprocessed train + val, no photographs) lists its
# items here instead of holding images
PACK_INDEX = "pack.json"


def idrid_items(split: str, root: Path | None = None) -> list[Item]:
    """``split`` in {"train", "val", "test", "train_all"}; train excludes VAL_IDS and IDRiD_43."""
    root = (root or data_root()) / "idrid"
    if not (root / "images").exists() and (root / PACK_INDEX).exists():
        return _packed_items(root, split)
    folder = "test" if split == "test" else "train"
    items = []
    for img in sorted((root / "images" / folder).glob("IDRiD_*.jpg")):
        iid = img.stem
        mask = root / "masks" / "HE" / folder / f"{iid}_HE.tif"
        if iid in NO_HE_MASK or not mask.exists():
            continue
        is_val = iid in VAL_IDS
        if split == "train" and is_val or split == "val" and not is_val:
            continue
        items.append(Item(iid, img, mask, "val" if is_val else folder))
    return items


def _packed_items(root: Path, split: str) -> list[Item]:
    wanted = {"train": ("train",), "val": ("val",), "train_all": ("train", "val")}.get(split, ())
    entries = json.loads((root / PACK_INDEX).read_text())["items"]
    return [
        Item(e["id"], root / f"{e['id']}_x.png", root / f"{e['id']}_y.png", e["split"])
        for e in sorted(entries, key=lambda e: e["id"])
        if e["split"] in wanted
    ]


def ddb1_items(root: Path | None = None) -> list[Item]:
    root = (root or data_root()) / "diaretdb1"
    items = []
    for img in sorted((root / "ddb1_fundusimages").glob("image*.png")):
        gt = root / "ddb1_groundtruth" / "hemorrhages" / img.name
        items.append(Item(img.stem, img, gt if gt.exists() else None, "ddb1"))
    return items


def read_mask(item: Item, any_grader: bool = False) -> np.ndarray:
    """Full-resolution boolean hemorrhage mask for an item; DIARETDB1 at the official
    confidence >= 0.75, or (``any_grader``) wherever any expert marked hemorrhage."""
    if item.mask is None:
        raise FileNotFoundError(f"{item.id}: no mask")
    arr = np.array(Image.open(item.mask))
    if arr.ndim == 3:
        arr = arr[..., 0]
    if item.split == "ddb1":
        return arr > 0 if any_grader else arr >= DDB1_HE_THRESHOLD
    return arr > 0


@dataclass
class Example:
    id: str
    x: np.ndarray  # (H, W) float32 in [0, 1]
    y: np.ndarray  # (H, W) float32 lesion coverage in [0, 1]
    geometry: Geometry


def prepare(item: Item, model_hw: tuple[int, int] = DEFAULT_INPUT_HW) -> Example:
    img = load_image(item.image, model_hw)
    pre = preprocess_frame(img.frame, img.original_hw, model_hw)
    y = preprocess_mask(read_mask(item), pre.geometry)
    return Example(item.id, pre.tensor[0, 0], np.clip(y, 0.0, 1.0), pre.geometry)


def cache_folder(model_hw: tuple[int, int]) -> Path:
    """Where ``load_cached`` keeps the examples of one input size and preprocessing spec."""
    return cache_root() / f"pre_{model_hw[0]}x{model_hw[1]}_{spec_sha256()[:12]}"


def cache_entry(model_hw: tuple[int, int], split: str, item_id: str) -> Path:
    return cache_folder(model_hw) / f"{split}_{item_id}.npz"


def geometry_record(g: Geometry) -> dict:
    """A geometry's fields but the model size, as plain numbers: what the cache (``.npz``) and
    a pack (``pack.json``) store beside each example."""
    return {
        "original_hw": [int(v) for v in g.original_hw],
        "frame_hw": [int(v) for v in g.frame_hw],
        "box": [float(v) for v in g.box],
        "fov_center": [float(v) for v in g.fov_center],
        "fov_radius": float(g.fov_radius),
    }


def save_cached(path: Path, x: np.ndarray, y_u8: np.ndarray, geometry: dict) -> None:
    """One cache entry, written whole or not at all (a stop mid-write leaves no half file)."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=x, y=y_u8, **geometry)
    os.replace(tmp, path)


def load_cached(items: list[Item], model_hw: tuple[int, int] = DEFAULT_INPUT_HW) -> list[Example]:
    """Preprocess (or read from the on-disk cache) every item."""
    cache_folder(model_hw).mkdir(parents=True, exist_ok=True)
    out = []
    for item in items:
        f = cache_entry(model_hw, item.split, item.id)
        if f.exists():
            z = np.load(f)
            geo = Geometry(
                original_hw=tuple(z["original_hw"]),
                frame_hw=tuple(z["frame_hw"]),
                model_hw=tuple(model_hw),
                box=tuple(float(v) for v in z["box"]),
                fov_center=tuple(float(v) for v in z["fov_center"]),
                fov_radius=float(z["fov_radius"]),
            )
            out.append(Example(item.id, z["x"], z["y"].astype(np.float32) / 255.0, geo))
            continue
        if item.mask is not None and item.mask.name.endswith("_y.png"):  # a packed item
            raise FileNotFoundError(
                f"{f} missing: fill the cache from the pack first (python -m training.pack "
                f"--unpack, the pack's input size must be {model_hw[0]} {model_hw[1]})"
            )
        ex = prepare(item, model_hw)
        y_u8 = np.round(ex.y * 255).astype(np.uint8)
        save_cached(f, ex.x, y_u8, geometry_record(ex.geometry))
        out.append(ex)
    return out
