"""Ship trained weights as ``engines/hemoseg_unet_v1.onnx`` — only when they beat what is there.

    python -m training.ship --weights ~/.cache/hemoseg-edge/runs/cpu/best.weights.h5

1. export the weights to ONNX (parity vs Keras asserted by ``training.export``);
2. tune the decision threshold on the validation images at full resolution, through
   ``Segmenter`` (the deployed path) — never on test images;
3. compare the validation Dice with the shipped model's (recorded in ``engines/manifest.json``);
   replace the shipped file only when it is better (``--force`` to override);
4. write the tuned threshold into the model's metadata and its sha256 into the manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

ENGINES = Path(__file__).resolve().parents[1] / "engines"


def set_threshold(onnx_path: Path, threshold: float) -> None:
    import onnx

    from hemoseg_edge.io import atomic_write_bytes

    model = onnx.load(str(onnx_path))
    for prop in model.metadata_props:
        if prop.key == "hemoseg.threshold":
            prop.value = str(threshold)
    atomic_write_bytes(onnx_path, model.SerializeToString())


def update_manifest(path: Path, entry: dict) -> None:
    from hemoseg_edge.engines import MANIFEST, read_manifest, sha256_bytes
    from hemoseg_edge.io import atomic_write_bytes

    manifest = read_manifest(path.parent) or {"files": {}}
    data = path.read_bytes()
    manifest["files"][path.name] = {"sha256": sha256_bytes(data), "bytes": len(data), **entry}
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path.parent / MANIFEST, text.encode())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.ship", description=__doc__)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--name", default="hemoseg_unet_v1.onnx")
    p.add_argument("--version", default="v1")
    p.add_argument("--run-info", type=Path, default=None, help="run_info.json of the run")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")

    from hemoseg_edge.engines import read_manifest
    from hemoseg_edge.metadata import ModelMetadata
    from hemoseg_edge.segmenter import Segmenter
    from training.data import VAL_IDS, idrid_items
    from training.evaluate import tune_threshold
    from training.export import export

    run_info = json.loads(args.run_info.read_text()) if args.run_info else {}
    md = ModelMetadata(
        version=args.version,
        threshold=0.5,
        training_data=f"IDRiD train 1-54 minus IDRiD_43 and val {','.join(VAL_IDS)}",
        extra={"recipe": run_info.get("recipe", "?"), "weights": args.weights.name},
    )
    with tempfile.TemporaryDirectory() as tmp:
        cand = Path(tmp) / args.name
        parity_inputs = None
        try:
            from training.data import load_cached

            parity_inputs = np.stack([e.x for e in load_cached(idrid_items("val"))[:2]])
        except (OSError, ValueError):
            pass
        rep = export(args.weights, cand, md, (560, 576), parity_inputs=parity_inputs)
        print(f"exported: parity max abs diff {rep.max_abs_diff:.2e}", flush=True)
        tuned = tune_threshold(
            Segmenter.from_engine(cand, backend="onnxruntime"), idrid_items("val")
        )
        print(f"validation (full resolution): {json.dumps(tuned)}", flush=True)
        shipped = read_manifest(ENGINES).get("files", {}).get(args.name, {})
        old = shipped.get("val_dice", -1.0)
        if tuned["val_dice"] <= old and not args.force:
            print(f"not shipped: val Dice {tuned['val_dice']:.4f} <= shipped {old:.4f}")
            return 1
        set_threshold(cand, tuned["threshold"])
        dest = ENGINES / args.name
        dest.write_bytes(cand.read_bytes())
    update_manifest(
        dest,
        {
            "precision": "fp32",
            "version": args.version,
            "threshold": tuned["threshold"],
            "val_dice": round(tuned["val_dice"], 4),
            "val_aupr": round(tuned["val_aupr"], 4),
        },
    )
    print(f"shipped {dest} (val Dice {tuned['val_dice']:.4f} > {old:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
