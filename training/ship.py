"""Ship trained weights as a model in ``engines/`` — only when they beat the shipped default.

    python -m training.ship --arch mnv2 --weights ~/.cache/hemoseg-edge/runs/mnv2/best.weights.h5 \\
        --name hemoseg_mnv2_v2.onnx --version v2

1. export the weights to ONNX (parity vs Keras asserted by ``training.export``);
2. on the validation images at full resolution, through ``Segmenter`` (the deployed path) —
   never test images: tune the decision threshold (pooled Dice) and the image-level operating
   point (sensitivity >= 0.95); then the minimum lesion area (best lesion-level F1 at no more
   than 0.005 pooled Dice, ``training.evaluate.tune_min_lesion_area``);
3. compare validation AUPR and Dice with every shipped model's (``engines/manifest.json``);
   ship only when both are better than the best of them (``--force`` to override);
4. write both thresholds into the model's metadata, the model and its Keras weights (weights
   only, so any machine can resume or fine-tune) into ``engines/``, their sha256 into the
   manifest. Weights that are a shipped file already (``--weights engines/X.weights.h5``,
   e.g. a new test-time augmentation of a shipped network) are named, not copied.

``--tta hflip`` bakes flip test-time augmentation into the exported graph before step 2
(``hemoseg_edge.build.tta``), so the thresholds are tuned on what ships.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from training.export import ARCH_NAMES

ENGINES = Path(__file__).resolve().parents[1] / "engines"


def set_metadata(onnx_path: Path, **values) -> None:
    """Rewrite ``hemoseg.<key>`` metadata values of an ONNX file in place (atomically); a
    ``ModelMetadata`` field the file predates is added."""
    import dataclasses

    import onnx

    from hemoseg_edge.files import atomic_write_bytes
    from hemoseg_edge.model_file.metadata import PREFIX, ModelMetadata

    known = {f.name for f in dataclasses.fields(ModelMetadata)}
    model = onnx.load(str(onnx_path))
    props = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        if PREFIX + key not in props:
            if key not in known:
                raise KeyError(f"{onnx_path}: no metadata key {PREFIX + key}")
            props[PREFIX + key] = model.metadata_props.add(key=PREFIX + key)
        props[PREFIX + key].value = str(value)
    atomic_write_bytes(onnx_path, model.SerializeToString())


def save_weights_only(arch: str, input_hw, src: Path, dst: Path) -> None:
    """The layers' weights of a training checkpoint, without the optimizer state that Keras
    stores beside them for a compiled model (a third of the size), written atomically."""
    from training.export import _float32_model

    model = _float32_model(input_hw, src, arch)
    tmp = dst.with_name(dst.name + ".tmp.weights.h5")
    model.save_weights(tmp)
    os.replace(tmp, dst)


def update_manifest(path: Path, entry: dict) -> None:
    from hemoseg_edge.files import atomic_write_bytes
    from hemoseg_edge.model_file.shipped import MANIFEST, read_manifest, sha256_bytes

    manifest = read_manifest(path.parent) or {"files": {}}
    data = path.read_bytes()
    manifest["files"][path.name] = {"sha256": sha256_bytes(data), "bytes": len(data), **entry}
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path.parent / MANIFEST, text.encode())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.ship", description=__doc__)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--arch", default="unet", choices=sorted(ARCH_NAMES))
    p.add_argument("--name", default="hemoseg_unet_v1.onnx")
    p.add_argument("--version", default="v1")
    p.add_argument(
        "--against", default=None, help="manifest entry to beat (default: every shipped model)"
    )
    p.add_argument("--run-info", type=Path, default=None, help="run_info.json of the run")
    p.add_argument(
        "--tta",
        default=None,
        help="flip test-time augmentation in the graph, e.g. 'hflip' or 'hflip,vflip'",
    )
    p.add_argument(
        "--input-hw",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="the input size the weights were trained at (default: run_info.json's, else the "
        "architecture's)",
    )
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")

    from hemoseg_edge.model_file.metadata import ModelMetadata
    from hemoseg_edge.model_file.shipped import read_manifest
    from hemoseg_edge.segmenter import Segmenter
    from training.data import VAL_IDS, idrid_items, load_cached
    from training.evaluate import tune_min_lesion_area, tune_threshold
    from training.export import architecture_input_hw, export

    run_info = json.loads(args.run_info.read_text()) if args.run_info else {}
    trained_hw = run_info.get("input_hw")
    if args.input_hw and trained_hw and list(args.input_hw) != list(trained_hw):
        p.error(f"--input-hw {args.input_hw} but the run trained at {trained_hw}")
    input_hw = tuple(args.input_hw or trained_hw or architecture_input_hw(args.arch))
    md = ModelMetadata(
        input_height=input_hw[0],
        input_width=input_hw[1],
        version=args.version,
        threshold=0.5,
        architecture=ARCH_NAMES[args.arch],
        training_data=f"IDRiD train 1-54 minus IDRiD_43 and val {','.join(VAL_IDS)}",
        extra={"recipe": run_info.get("recipe", "?"), "weights": args.weights.name},
    )
    with tempfile.TemporaryDirectory() as tmp:
        cand = Path(tmp) / args.name
        parity = np.stack([e.x for e in load_cached(idrid_items("val"), input_hw)[:2]])
        rep = export(args.weights, cand, md, input_hw, parity_inputs=parity, arch=args.arch)
        print(f"exported: parity max abs diff {rep.max_abs_diff:.2e}", flush=True)
        if args.tta:
            import onnx

            from hemoseg_edge.build.tta import with_flip_tta

            onnx.save(with_flip_tta(onnx.load(str(cand)), args.tta.split(",")), str(cand))
            print(f"test-time augmentation in the graph: {args.tta}", flush=True)
        tuned = tune_threshold(
            Segmenter.from_engine(cand, backend="onnxruntime"), idrid_items("val")
        )
        print(f"validation (full resolution): {json.dumps(tuned)}", flush=True)
        files = read_manifest(ENGINES).get("files", {})
        shipped = {k: v for k, v in files.items() if "val_aupr" in v and "val_dice" in v}
        if args.against:
            shipped = {k: v for k, v in shipped.items() if k == args.against}
        old_aupr = max((v["val_aupr"] for v in shipped.values()), default=-1.0)
        old_dice = max((v["val_dice"] for v in shipped.values()), default=-1.0)
        better = tuned["val_aupr"] > old_aupr and tuned["val_dice"] > old_dice
        if not better and not args.force:
            print(
                f"not shipped: val AUPR {tuned['val_aupr']:.4f} / Dice {tuned['val_dice']:.4f} "
                f"vs the best shipped ({', '.join(shipped)}) {old_aupr:.4f} / {old_dice:.4f}"
            )
            return 1
        min_area = tune_min_lesion_area(
            Segmenter.from_engine(cand, backend="onnxruntime", threshold=tuned["threshold"]),
            idrid_items("val"),
        )
        print(f"minimum lesion area (validation): {json.dumps(min_area)}", flush=True)
        set_metadata(
            cand,
            threshold=tuned["threshold"],
            image_threshold=tuned["image_threshold"],
            min_lesion_model_px=min_area["min_lesion_model_px"],
        )
        dest = ENGINES / args.name
        dest.write_bytes(cand.read_bytes())
    shipped_weights = args.weights.resolve().parent == ENGINES and args.weights.name in files
    weights_dest = args.weights if shipped_weights else dest.with_suffix(".weights.h5")
    if not shipped_weights:
        save_weights_only(args.arch, input_hw, args.weights, weights_dest)
    update_manifest(
        dest,
        {
            "precision": "fp32",
            "version": args.version,
            "architecture": ARCH_NAMES[args.arch],
            "threshold": tuned["threshold"],
            "image_threshold": tuned["image_threshold"],
            "min_lesion_model_px": min_area["min_lesion_model_px"],
            "val_dice": round(tuned["val_dice"], 4),
            "val_aupr": round(tuned["val_aupr"], 4),
            "val_image_scores": tuned["image_scores"],
            "weights": weights_dest.name,
            **({"tta": args.tta} if args.tta else {}),
        },
    )
    if not shipped_weights:
        update_manifest(
            weights_dest, {"kind": "keras weights", "arch": args.arch, "version": args.version}
        )
    print(
        f"shipped {dest} and {weights_dest.name} (val AUPR {tuned['val_aupr']:.4f} > "
        f"{old_aupr:.4f}, Dice {tuned['val_dice']:.4f} > {old_dice:.4f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
