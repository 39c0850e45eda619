"""Preprocessed training data small enough to travel to a lent GPU machine.

A lent GPU machine has no ``../shared/data`` and takes at most 64 MiB of files, so the train
and validation images go there already through the one preprocessing truth, at the model's
input size: per image one PNG of the model input stored as round(255 x) (within 0.5 / 255 of
the float reference, far below the photographs' JPEG noise) and one of the hemorrhage coverage
as ``load_cached`` stores it, with the geometry in ``idrid/pack.json``; about 0.66 MB an image
at 1280 x 1312. Test images are never packed.

    python -m training.pack --input-hw 1280 1312 --out .gpu/data    # here, with the data
    HEMOSEG_DATA=.gpu/data HEMOSEG_CACHE=/tmp/cache \\
        python -m training.pack --unpack                             # there: fills the cache

``idrid_items`` lists a packed root's items from its ``pack.json``; ``--unpack`` writes them
into ``load_cached``'s cache, so ``training.train`` runs there unchanged. A pack made with
another preprocessing spec is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from hemoseg_edge.preprocess import spec_sha256
from training.data import (
    PACK_INDEX,
    cache_entry,
    cache_folder,
    data_root,
    geometry_record,
    idrid_items,
    load_cached,
    save_cached,
)


def pack(out: Path, input_hw: tuple[int, int], ids: list[str] | None = None) -> dict:
    """Write train + validation examples (or only ``ids`` of them) at ``input_hw`` under
    ``out/idrid``."""
    folder = out / "idrid"
    folder.mkdir(parents=True, exist_ok=True)
    items = [i for i in idrid_items("train_all") if ids is None or i.id in ids]
    index = {"input_hw": list(input_hw), "preprocess_sha256": spec_sha256(), "items": []}
    for item, ex in zip(items, load_cached(items, input_hw), strict=True):
        x = np.round(ex.x * 255.0).astype(np.uint8)
        y = np.round(ex.y * 255.0).astype(np.uint8)
        for name, arr in ((f"{item.id}_x.png", x), (f"{item.id}_y.png", y)):
            if not cv2.imwrite(str(folder / name), arr, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
                raise OSError(f"could not write {folder / name}")
        index["items"].append({"id": item.id, "split": item.split, **geometry_record(ex.geometry)})
    (folder / PACK_INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return index


def unpack(root: Path) -> int:
    """Write a pack's examples into ``load_cached``'s cache; the number written."""
    folder = root / "idrid"
    index = json.loads((folder / PACK_INDEX).read_text())
    if index["preprocess_sha256"] != spec_sha256():
        raise ValueError(
            f"{folder / PACK_INDEX}: made with another preprocessing spec "
            f"({index['preprocess_sha256'][:12]} != {spec_sha256()[:12]}); pack it again"
        )
    hw = tuple(index["input_hw"])
    cache_folder(hw).mkdir(parents=True, exist_ok=True)
    for e in index["items"]:
        x = cv2.imread(str(folder / f"{e['id']}_x.png"), cv2.IMREAD_UNCHANGED)
        y = cv2.imread(str(folder / f"{e['id']}_y.png"), cv2.IMREAD_UNCHANGED)
        if x is None or y is None or x.shape != hw or y.shape != hw:
            raise ValueError(f"{folder}: {e['id']}'s PNGs are missing or not {hw}")
        geometry = {k: v for k, v in e.items() if k not in ("id", "split")}
        x = x.astype(np.float32) / 255.0
        save_cached(cache_entry(hw, e["split"], e["id"]), x, y, geometry)
    return len(index["items"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.pack", description=__doc__)
    p.add_argument("--input-hw", type=int, nargs=2, default=(1280, 1312), metavar=("H", "W"))
    p.add_argument("--out", type=Path, default=Path(".gpu/data"))
    p.add_argument(
        "--unpack", action="store_true", help="fill the cache from the pack at HEMOSEG_DATA"
    )
    args = p.parse_args(argv)
    try:
        if args.unpack:
            n = unpack(data_root())
            print(f"unpacked {n} examples into {cache_folder(_pack_hw(data_root()))}")
        else:
            idx = pack(args.out, tuple(args.input_hw))
            size = sum(f.stat().st_size for f in (args.out / "idrid").iterdir())
            print(f"packed {len(idx['items'])} examples into {args.out} ({size / 1e6:.1f} MB)")
    except (OSError, ValueError, KeyError) as exc:
        print(f"training.pack: {exc}", file=sys.stderr)
        return 1
    return 0


def _pack_hw(root: Path) -> tuple[int, int]:
    return tuple(json.loads((root / "idrid" / PACK_INDEX).read_text())["input_hw"])


if __name__ == "__main__":
    raise SystemExit(main())
