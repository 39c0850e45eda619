"""Train a model: ``python -m training.train --recipe cpu|paper|mnv2 [--resume]``.

Recipes:
- ``paper``: the paper's recipe. Adam (defaults), binary cross-entropy, batch 4, 100 epochs,
  full 560x576 images with the paper's augmentation; mixed float16 on a GPU.
- ``cpu``: the paper's U-Net on what a 2-core CPU can afford. Random patches growing 128 -> 192
  -> 256 px (progressive resizing; each epoch sees about the same number of pixels), 60 % of them
  centred on a hemorrhage pixel; lesion-weighted BCE + soft Dice (hemorrhage is ~1 % of
  pixels); Adam 1e-3 halved when validation stalls (``--lr-patience``).
- ``mnv2``: model v2 (``training.model_mnv2``), ImageNet MobileNetV2 encoder with its BatchNorm
  frozen, 1120x1152 inputs, 448 px patches, half on a hemorrhage; Adam 5e-4. Its second phase
  (``--init`` phase-1 best weights ``--freeze-bn --lr 2.5e-4``) freezes every BatchNorm.

Patch recipes re-estimate the trainable BatchNorm statistics on whole training images before
each validation (``recalibrate_batchnorm``). bf16 mixed precision where the CPU has
AMX/AVX512-BF16 (fast there), float32 otherwise (bf16 is emulated and slow on AVX2).

An "epoch" of a patch recipe is ``--steps`` batches. After each epoch: validation on the 8
VAL_IDS images at full model resolution, a checkpoint (weights + optimizer state + RNG) in the
run folder, ``best.weights.h5`` when validation AUPR improves, a CSV log and a PNG of the curves.
``--resume`` continues from the run folder's checkpoint. Runs live outside git
(``$HEMOSEG_CACHE/runs/<recipe>``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_precision(requested: str, on_gpu: bool) -> str:
    """'mixed_float16' on GPU, 'mixed_bfloat16' on CPUs with native bf16, else 'float32'."""
    if requested != "auto":
        return requested
    if on_gpu:
        return "mixed_float16"
    flags = cpu_flags()
    return "mixed_bfloat16" if {"amx_bf16", "avx512_bf16"} & flags else "float32"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    p.add_argument("--recipe", choices=("cpu", "paper", "mnv2"), default="cpu")
    p.add_argument("--epochs", type=int, default=None, help="paper: 100; cpu: 200 (early stop)")
    p.add_argument("--steps", type=int, default=100, help="cpu recipe: batches per epoch")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--patch", type=int, default=None, help="final patch size (cpu 256, mnv2 448)")
    p.add_argument(
        "--patch-schedule",
        default=None,
        help="progressive resizing, 'SIZE:UNTIL_EPOCH,...' then --patch; '' = off "
        "(cpu: 128:15,192:30; mnv2: off)",
    )
    p.add_argument(
        "--lesion-fraction",
        type=float,
        default=None,
        help="share of patches centred on a hemorrhage (cpu 0.6, mnv2 0.5)",
    )
    p.add_argument("--lr", type=float, default=None, help="cpu 1e-3, mnv2 5e-4")
    p.add_argument(
        "--recal-images",
        type=int,
        default=16,
        help="patch recipes: whole training images that re-estimate BatchNorm statistics "
        "before each validation (0 = keep the moving averages)",
    )
    p.add_argument("--patience", type=int, default=25, help="epochs without val gain to stop")
    p.add_argument(
        "--lr-patience", type=int, default=8, help="epochs without val gain to halve the LR"
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N train images")
    p.add_argument("--run-dir", type=Path, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--init", type=Path, default=None, help="start from these weights (e.g. a shipped model)"
    )
    p.add_argument(
        "--freeze-bn",
        action="store_true",
        help="every BatchNorm in inference mode (use with --init weights whose statistics "
        "were recalibrated): no train/inference mismatch left",
    )
    p.add_argument("--precision", default="auto", help="auto|float32|mixed_bfloat16|mixed_float16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    mnv2 = args.recipe == "mnv2"
    if args.patch is None:
        args.patch = 448 if mnv2 else 256
    if args.patch_schedule is None:
        args.patch_schedule = "" if mnv2 else "128:15,192:30"
    if args.lesion_fraction is None:
        args.lesion_fraction = 0.5 if mnv2 else 0.6
    if args.lr is None:
        args.lr = 5e-4 if mnv2 else 1e-3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from hemoseg_edge.metrics import PrHistogram
    from hemoseg_edge.preprocess import DEFAULT_INPUT_HW
    from training.augment import augment
    from training.data import cache_root, idrid_items, load_cached
    from training.losses import bce_dice_loss, dice_from_probs
    from training.model import build_unet
    from training.model_mnv2 import INPUT_HW, build_mnv2_unet, encoder_layers, load_imagenet
    from training.pretrained import mobilenet_v2_state

    on_gpu = _gpu_available(keras.backend.backend())
    precision = choose_precision(args.precision, on_gpu)
    keras.mixed_precision.set_global_policy(precision)
    epochs = args.epochs or (100 if args.recipe == "paper" else 200)
    run_dir = args.run_dir or cache_root() / "runs" / args.recipe
    run_dir.mkdir(parents=True, exist_ok=True)

    mnv2 = args.recipe == "mnv2"
    data_hw = INPUT_HW if mnv2 else DEFAULT_INPUT_HW
    train = load_cached(idrid_items("train"), data_hw)[: args.limit]
    val = load_cached(idrid_items("val"), data_hw)
    if args.limit:
        val = val[: max(1, min(len(val), args.limit))]
    model_hw = train[0].x.shape
    full = args.recipe == "paper"
    build = build_mnv2_unet if mnv2 else build_unet
    model = build(model_hw if full else (None, None))
    if args.init:  # fine-tune a shipped model (engines/*.weights.h5)
        model.load_weights(args.init)
    elif mnv2:
        load_imagenet(model, mobilenet_v2_state())
        # batches of 4 lesion-biased patches would drag ImageNet's BatchNorm statistics around
        # (v1's validation swings): the encoder's BN layers stay in inference mode
        for layer in encoder_layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    if args.freeze_bn:
        # every BN a fixed affine map (its current, recalibrated statistics): training and
        # inference then compute the same function, whatever a batch of patches holds
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    loss = "binary_crossentropy" if full else bce_dice_loss
    optimizer = keras.optimizers.Adam() if full else keras.optimizers.Adam(args.lr)
    model.compile(optimizer=optimizer, loss=loss)
    val_model = build(model_hw) if not full else model

    state = {
        "epoch": 0,
        "best_aupr": -1.0,
        "best_dice": -1.0,
        "best_epoch": -1,
        "lr": args.lr,
        "stall": 0,
    }
    rng = np.random.default_rng(args.seed)
    if args.resume and (run_dir / "last.weights.h5").exists():
        state = _load_checkpoint(run_dir, model, optimizer)
        rng = np.random.default_rng([args.seed, state["epoch"]])
        print(f"resumed {run_dir} at epoch {state['epoch']}", flush=True)
    elif args.resume:
        print(f"no checkpoint in {run_dir}; starting fresh", flush=True)

    info = {
        "recipe": args.recipe,
        "backend": keras.backend.backend(),
        "precision": precision,
        "device": "gpu" if on_gpu else "cpu",
        "cpu_model": _cpu_model(),
        "train_images": len(train),
        "val_images": len(val),
        "batch": args.batch,
        "patch": None if full else args.patch,
        "lr": args.lr,
        "init": str(args.init) if args.init else None,
        "freeze_bn": bool(args.freeze_bn),
    }
    print(json.dumps(info), flush=True)
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=2))
    log_path = run_dir / "log.csv"

    schedule = _parse_schedule(args.patch_schedule)
    for epoch in range(state["epoch"], epochs):
        patch = _patch_for(epoch, schedule, args.patch)
        # smaller patches: more steps, so that every epoch sees about the same number of pixels
        steps = (
            (len(train) + args.batch - 1) // args.batch
            if full
            else max(1, round(args.steps * (args.patch / patch) ** 2))
        )
        t0 = time.time()
        optimizer.learning_rate.assign(state["lr"]) if not full else None
        losses = []
        bar = _progress(steps, f"epoch {epoch + 1}/{epochs}", args.no_progress)
        order = rng.permutation(len(train))
        for step in range(steps):
            if full:
                idx = order[step * args.batch : (step + 1) * args.batch]
                pairs = [augment(train[i].x, train[i].y, rng, allow_transpose=False) for i in idx]
            else:
                pairs = [
                    _sample_patch(train, patch, rng, args.lesion_fraction)
                    for _ in range(args.batch)
                ]
                pairs = [augment(x, y, rng) for x, y in pairs]
            xb = np.stack([p[0] for p in pairs])[..., None]
            yb = np.stack([p[1] for p in pairs])[..., None]
            out = model.train_on_batch(xb, yb)
            losses.append(float(out if np.isscalar(out) else np.asarray(out).ravel()[0]))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        bar.close()
        train_time = time.time() - t0
        if not full:
            recalibrate_batchnorm(model, train, args.recal_images, rng)
        if val_model is not model:
            val_model.set_weights(model.get_weights())
        probs = [
            np.asarray(val_model.predict_on_batch(e.x[None, ..., None]), dtype=np.float32)[
                0, ..., 0
            ]
            for e in val
        ]
        truths = [e.y >= 0.5 for e in val]
        dice05, best_dice, best_thr = dice_from_probs(probs, truths)
        hist = PrHistogram(1000)
        for p_, t_ in zip(probs, truths, strict=True):
            hist.add(p_, t_)
        aupr = hist.aupr()
        # the model is chosen on validation AUPR (the target); Dice is logged beside it
        improved = aupr > state.get("best_aupr", -1.0)
        if improved:
            state.update(
                best_aupr=aupr,
                best_dice=best_dice,
                best_epoch=epoch + 1,
                stall=0,
                best_thr=best_thr,
            )
            model.save_weights(run_dir / "best.weights.h5")
        else:
            state["stall"] += 1
            if not full and state["stall"] % args.lr_patience == 0:
                state["lr"] = max(state["lr"] * 0.5, 1e-5)
        state["epoch"] = epoch + 1
        row = {
            "epoch": epoch + 1,
            "loss": round(float(np.mean(losses)), 5),
            "val_dice@0.5": round(dice05, 4),
            "val_dice_best": round(best_dice, 4),
            "val_aupr": round(aupr, 4),
            "val_thr": best_thr,
            "lr": state["lr"],
            "seconds": round(train_time, 1),
            "patch": None if full else patch,
            "samples_per_s": round(steps * args.batch / train_time, 3),
        }
        _append_csv(log_path, row)
        _save_checkpoint(run_dir, model, optimizer, state)
        _plot(log_path, run_dir / "curves.png")
        print(json.dumps(row) + (" *" if improved else ""), flush=True)
        if not full and state["stall"] >= args.patience:
            print(f"early stop: no val gain for {args.patience} epochs", flush=True)
            break
    print(
        f"best val AUPR {state['best_aupr']:.4f} (Dice {state['best_dice']:.4f}) "
        f"at epoch {state['best_epoch']}",
        flush=True,
    )
    return 0


def recalibrate_batchnorm(model, examples, count: int, rng) -> int:
    """Replace the moving statistics of every trainable BatchNorm layer by the exact average of
    its batch statistics over ``count`` whole training images ("precise BN").

    Training batches are 4 lesion-biased patches; the exponential moving averages they leave
    describe neither whole photographs nor the current weights: with them v2's validation AUPR
    fell from 0.44 to 0.07 between two epochs, and recalibrating that same checkpoint on 16
    whole training images gave it back 0.34. Weights are untouched; returns the layers reset.
    """
    import keras

    bns = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not bns or count <= 0:
        return 0
    saved = [layer.momentum for layer in bns]
    try:
        for k, i in enumerate(rng.permutation(len(examples))[:count]):
            for layer in bns:
                layer.momentum = k / (k + 1.0)  # cumulative mean: image k weighs 1 / (k + 1)
            model(examples[int(i)].x[None, ..., None], training=True)
    finally:
        for layer, m in zip(bns, saved, strict=True):
            layer.momentum = m
    return len(bns)


def _gpu_available(backend: str) -> bool:
    if backend == "torch":
        import torch

        return bool(torch.cuda.is_available())
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    return False


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _parse_schedule(text: str) -> list[tuple[int, int]]:
    """'128:15,192:30' -> [(128, 15), (192, 30)]: patch size until that epoch (exclusive)."""
    out = []
    for part in filter(None, (t.strip() for t in text.split(","))):
        size, until = part.split(":")
        out.append((int(size), int(until)))
    return out


def _patch_for(epoch: int, schedule: list[tuple[int, int]], final: int) -> int:
    for size, until in schedule:
        if epoch < until:
            return size
    return final


def _sample_patch(train, size, rng, lesion_fraction=0.6):
    """A random patch; ``lesion_fraction`` of the time centred (with jitter) on a hemorrhage
    pixel, otherwise anywhere mostly inside the field of view (fovea, disc, vessel crossings)."""
    import numpy as np

    ex = train[int(rng.integers(len(train)))]
    h, w = ex.x.shape
    if rng.random() < lesion_fraction:
        ys, xs = np.nonzero(ex.y >= 0.5)
        if ys.size:
            k = int(rng.integers(ys.size))
            cy = ys[k] + int(rng.integers(-size // 3, size // 3 + 1))
            cx = xs[k] + int(rng.integers(-size // 3, size // 3 + 1))
            y0 = int(np.clip(cy - size // 2, 0, h - size))
            x0 = int(np.clip(cx - size // 2, 0, w - size))
            return ex.x[y0 : y0 + size, x0 : x0 + size], ex.y[y0 : y0 + size, x0 : x0 + size]
    for _ in range(10):  # a patch that is mostly inside the field of view
        y0, x0 = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        px = ex.x[y0 : y0 + size, x0 : x0 + size]
        if (px > 0.02).mean() > 0.5:
            break
    return px, ex.y[y0 : y0 + size, x0 : x0 + size]


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def _progress(total: int, desc: str, disabled: bool):
    if disabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def _save_checkpoint(run_dir: Path, model, optimizer, state: dict) -> None:
    import numpy as np

    tmp = run_dir / "last.tmp.weights.h5"
    model.save_weights(tmp)
    opt = {f"v{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)}
    np.savez(run_dir / "optimizer.tmp.npz", **opt)
    (run_dir / "state.tmp.json").write_text(json.dumps(state))
    os.replace(tmp, run_dir / "last.weights.h5")
    os.replace(run_dir / "optimizer.tmp.npz", run_dir / "optimizer.npz")
    os.replace(run_dir / "state.tmp.json", run_dir / "state.json")


def _load_checkpoint(run_dir: Path, model, optimizer) -> dict:
    import numpy as np

    model.load_weights(run_dir / "last.weights.h5")
    optimizer.build(model.trainable_variables)
    z = np.load(run_dir / "optimizer.npz")
    for i, v in enumerate(optimizer.variables):
        v.assign(z[f"v{i}"])
    return json.loads((run_dir / "state.json").read_text())


def _append_csv(path: Path, row: dict) -> None:
    rows = list(csv.DictReader(open(path))) if path.exists() else []
    fields = list(dict.fromkeys([*(rows[0].keys() if rows else []), *row]))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:  # rewrite: columns may have been added
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows([*rows, row])
    os.replace(tmp, path)


def _plot(log_path: Path, png: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    with open(log_path) as f:
        rows = list(csv.DictReader(f))
    ep = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(ep, [float(r["loss"]) for r in rows])
    ax[0].set(title="training loss", xlabel="epoch")
    ax[1].plot(ep, [float(r["val_dice_best"]) for r in rows], label="best threshold")
    ax[1].plot(ep, [float(r["val_dice@0.5"]) for r in rows], label="threshold 0.5")
    ax[1].set(title="validation Dice (model resolution)", xlabel="epoch")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
