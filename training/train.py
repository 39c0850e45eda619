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

Training is Keras' own ``model.fit`` on a ``keras.utils.PyDataset`` (``training.patches``:
random lesion-aware patches, or the paper's whole augmented images; every batch a function of
seed, epoch and index) with the stock callbacks: ``BackupAndRestore`` (weights, optimizer
state and epoch in ``<run>/backup`` after every epoch), ``ModelCheckpoint`` (``best.weights.h5``,
weights only, when validation AUPR improves), ``CSVLogger`` (``log.csv``, appended on resume),
and for the patch recipes ``ReduceLROnPlateau`` (halve the rate after ``--lr-patience`` epochs
without a validation AUPR gain, down to 1e-5) and ``EarlyStopping`` (after ``--patience``). The
project's part is ``training.callbacks``: before each validation the patch recipes re-estimate
the trainable BatchNorm statistics on ``--recal-images`` whole training images
(``recalibrate_batchnorm``); then the 8 VAL_IDS images are validated at full model resolution
and their AUPR and pooled Dice go into the epoch's logs (``val_aupr``, ``val_dice_best``,
``val_dice@0.5``, ``val_thr``) beside the epoch's training time (``seconds``, validation
excluded), ``samples_per_s``, ``lr`` (the rate the epoch trained with) and ``patch``. Those
callbacks' counters (best value, patience) are kept in ``callback_state.json`` so that a
resumed run selects, halves and stops as an uninterrupted one would; a PNG of the curves is
redrawn after every epoch. bf16 mixed precision where the CPU has AMX/AVX512-BF16 (fast there),
float32 otherwise (bf16 is emulated and slow on AVX2).

An "epoch" of a patch recipe is ``--steps`` batches of the final patch size, more batches of
the smaller ones; each patch size of the schedule is one ``fit`` call (it fixes the batch shape).
``--resume`` continues after the last completed epoch, whatever stopped the run (a kill
included; an epoch that was cut short is trained again, and logged once), and trains as the
run would have without the stop; ``--epochs`` may be raised for it. Without ``--resume`` a run
starts fresh: it removes the folder's backup, log and counters (and a checkpoint of the earlier
loop), and its first epoch overwrites ``best.weights.h5``. A run folder of the earlier
hand-written loop (``last.weights.h5``, ``optimizer.npz``, ``state.json``) is converted on its
first ``--resume``: weights, optimizer state, epoch, learning rate and best validation AUPR
carry over, and its ``log.csv`` keeps its column order. Runs live outside git
(``$HEMOSEG_CACHE/runs/<recipe>``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from pathlib import Path

LEGACY_FILES = ("last.weights.h5", "optimizer.npz", "state.json")


def choose_precision(requested: str, on_gpu: bool) -> str:
    """'mixed_float16' on GPU, 'mixed_bfloat16' on CPUs with native bf16, else 'float32'."""
    from hemoseg_edge.cpu import has_native_bf16

    if requested != "auto":
        return requested
    if on_gpu:
        return "mixed_float16"
    return "mixed_bfloat16" if has_native_bf16() else "float32"


def _exposure(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.split(","))
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"exposure range {text!r}: need 0 < LOW <= HIGH")
    return lo, hi


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    p.add_argument("--recipe", choices=("cpu", "paper", "mnv2"), default="cpu")
    p.add_argument("--epochs", type=int, default=None, help="paper: 100; cpu: 200 (early stop)")
    p.add_argument(
        "--steps",
        type=int,
        default=100,
        help="patch recipes: batches per epoch at the final patch size (more at smaller ones)",
    )
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
        "--exposure",
        type=_exposure,
        default=(1.0, 1.0),
        help="patch recipes: 'LOW,HIGH' range of a log-uniform exposure factor on each patch "
        "(default 1,1 = off, as the paper)",
    )
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
        "--init",
        type=Path,
        default=None,
        help="start from these weights: a shipped model's .weights.h5 or its FP32 .onnx",
    )
    p.add_argument(
        "--recal-init",
        type=int,
        default=0,
        help="with --init: first re-estimate its BatchNorm statistics on N whole training "
        "images (precise BN; v1's are moving averages of patches), e.g. before --freeze-bn",
    )
    p.add_argument(
        "--freeze-bn",
        action="store_true",
        help="every BatchNorm in inference mode (use with --init weights whose statistics "
        "were recalibrated): no train/inference mismatch left",
    )
    p.add_argument(
        "--input-hw",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="model input size (the field of view is resampled to it; multiples of 32): "
        "default the architecture's (cpu/paper 560 576, mnv2 1120 1152)",
    )
    p.add_argument(
        "--keep-epochs",
        action="store_true",
        help="also save every epoch's weights as <run>/epochs/epochNNN.weights.h5 "
        "(for averaging the last epochs' weights: python -m training.average)",
    )
    p.add_argument("--precision", default="auto", help="auto|float32|mixed_bfloat16|mixed_float16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="one line per epoch, no progress bar")
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
    if args.input_hw is not None:
        args.input_hw = tuple(args.input_hw)
        if any(v <= 0 or v % 32 for v in args.input_hw):
            p.error(f"--input-hw {args.input_hw}: both sides must be positive multiples of 32")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from hemoseg_edge.preprocess import DEFAULT_INPUT_HW
    from training.callbacks import CallbackState, EpochCSVLogger, ValidateEpoch
    from training.data import cache_root, idrid_items, load_cached
    from training.losses import bce_dice_loss
    from training.model import build_unet
    from training.model_mnv2 import INPUT_HW, build_mnv2_unet, encoder_layers, load_imagenet
    from training.onnx_weights import load_onnx_weights
    from training.patches import ImageBatches, PatchBatches, parse_schedule, phases, steps_for
    from training.pretrained import mobilenet_v2_state

    keras.utils.set_random_seed(args.seed)
    on_gpu = _gpu_available(keras.backend.backend())
    precision = choose_precision(args.precision, on_gpu)
    keras.mixed_precision.set_global_policy(precision)
    epochs = args.epochs or (100 if args.recipe == "paper" else 200)
    run_dir = args.run_dir or cache_root() / "runs" / args.recipe
    run_dir.mkdir(parents=True, exist_ok=True)

    mnv2 = args.recipe == "mnv2"
    data_hw = args.input_hw or (INPUT_HW if mnv2 else DEFAULT_INPUT_HW)
    train = load_cached(idrid_items("train")[: args.limit], data_hw)
    val_items = idrid_items("val")
    if args.limit:
        val_items = val_items[: max(1, min(len(val_items), args.limit))]
    val = load_cached(val_items, data_hw)
    model_hw = train[0].x.shape
    full = args.recipe == "paper"
    build = build_mnv2_unet if mnv2 else build_unet
    model = build(model_hw if full else (None, None))
    if args.init and args.init.suffix == ".onnx":  # a shipped FP32 file (v1 has no .h5)
        load_onnx_weights(model, args.init)
    elif args.init:  # fine-tune a shipped model (engines/*.weights.h5)
        model.load_weights(args.init)
    elif mnv2:
        load_imagenet(model, mobilenet_v2_state())
        # batches of 4 lesion-biased patches would drag ImageNet's BatchNorm statistics around
        # (v1's validation swings): the encoder's BN layers stay in inference mode
        for layer in encoder_layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    resuming = args.resume and _backup_epoch(run_dir / "backup") is not None
    if args.init and args.recal_init and not resuming:  # a resumed run restores its own
        import numpy as np

        from training.callbacks import recalibrate_batchnorm

        rng = np.random.default_rng([args.seed, 0, 2])
        recalibrate_batchnorm(model, train, args.recal_init, rng)
    if args.freeze_bn:
        # every BN a fixed affine map (its current, recalibrated statistics): training and
        # inference then compute the same function, whatever a batch of patches holds
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    loss = "binary_crossentropy" if full else bce_dice_loss
    optimizer = keras.optimizers.Adam() if full else keras.optimizers.Adam(args.lr)
    model.compile(optimizer=optimizer, loss=loss)
    val_model = None if full else build(model_hw)

    backup = run_dir / "backup"
    state_path = run_dir / "callback_state.json"
    log_path = run_dir / "log.csv"
    start = 0
    if args.resume:
        start = _backup_epoch(backup)
        if start is None and _is_legacy_run(run_dir):
            start = _adopt_legacy_run(run_dir, model, full, args.lr_patience)
            print(f"converted the hand-written loop's checkpoint in {run_dir}", flush=True)
        if start is None:
            start = 0
            print(f"no checkpoint in {run_dir}; starting fresh", flush=True)
        else:
            print(f"resumed {run_dir} at epoch {start}", flush=True)
    if start == 0:  # a fresh run: nothing of an earlier one may be restored or appended to
        shutil.rmtree(backup, ignore_errors=True)
        for p in (state_path, log_path, *(run_dir / f for f in LEGACY_FILES)):
            p.unlink(missing_ok=True)
    _trim_log(log_path, start)

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
        "recal_init": args.recal_init,
        "freeze_bn": bool(args.freeze_bn),
        "exposure": list(args.exposure),
        "input_hw": list(data_hw),
    }
    print(json.dumps(info), flush=True)
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=2))

    checkpoint = keras.callbacks.ModelCheckpoint(
        str(run_dir / "best.weights.h5"),
        monitor="val_aupr",
        mode="max",
        save_best_only=True,
        save_weights_only=True,
        verbose=1,
    )
    stock = {"checkpoint": checkpoint}
    every_epoch = []
    if args.keep_epochs:
        (run_dir / "epochs").mkdir(exist_ok=True)
        every_epoch.append(
            keras.callbacks.ModelCheckpoint(
                str(run_dir / "epochs" / "epoch{epoch:03d}.weights.h5"), save_weights_only=True
            )
        )
    if not full:  # the paper's recipe: a constant learning rate, all its epochs
        stock["early_stop"] = keras.callbacks.EarlyStopping(
            monitor="val_aupr", mode="max", patience=args.patience, verbose=1
        )
        stock["reduce_lr"] = keras.callbacks.ReduceLROnPlateau(
            monitor="val_aupr",
            mode="max",
            factor=0.5,
            patience=args.lr_patience,
            min_delta=0.0,
            min_lr=1e-5,
            verbose=1,
        )
    plot = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: _plot(log_path, run_dir / "curves.png")
    )
    if full:
        runs = [(start, epochs, None)] if start < epochs else []
    else:
        runs = phases(start, epochs, parse_schedule(args.patch_schedule), args.patch)
    for first, end, patch in runs:
        if full:
            data = ImageBatches(train, args.batch, args.seed, epoch=first)
        else:
            steps = steps_for(patch, args.steps, args.patch)
            data = PatchBatches(
                train,
                patch,
                steps,
                args.batch,
                args.lesion_fraction,
                args.seed,
                epoch=first,
                exposure=args.exposure,
            )
            span = f"epoch {end}" if end == first + 1 else f"epochs {first + 1}-{end}"
            print(f"{span}: {patch} px patches, {steps} steps of {args.batch}", flush=True)
        callbacks = [
            # first: its val_* entries in logs are what the stock callbacks monitor
            ValidateEpoch(
                data,
                train,
                val,
                val_model,
                recal_images=0 if full else args.recal_images,
                seed=args.seed,
            ),
            checkpoint,
            *every_epoch,
            *([stock["early_stop"]] if not full else []),
            EpochCSVLogger(str(log_path), append=True),
            plot,
            # after the log, which thus gets ValidateEpoch's "lr" (the rate the epoch trained
            # with) and not this callback's "learning_rate" (the next epoch's)
            *([stock["reduce_lr"]] if not full else []),
            CallbackState(state_path, stock),
            # last: what it saves is the state after everything else in the epoch
            keras.callbacks.BackupAndRestore(
                str(backup), double_checkpoint=True, delete_checkpoint=False
            ),
        ]
        model.fit(
            data,
            initial_epoch=first,
            epochs=end,
            callbacks=callbacks,
            verbose=2 if args.no_progress else 1,
            # the batches are random already; fit's shuffle would reorder them with Python's
            # global random state, which a resumed run does not have
            shuffle=False,
        )
        if model.stop_training:  # EarlyStopping
            break
    rows = list(csv.DictReader(open(log_path))) if log_path.exists() else []
    scored = [r for r in rows if r.get("val_aupr") not in (None, "", "NA")]
    if scored:
        best = max(scored, key=lambda r: float(r["val_aupr"]))
        print(
            f"best val AUPR {float(best['val_aupr']):.4f} (Dice {float(best['val_dice_best']):.4f})"
            f" at epoch {best['epoch']}",
            flush=True,
        )
    return 0


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


def _backup_epoch(backup: Path) -> int | None:
    """The epoch ``BackupAndRestore`` resumes after, None without a backup. Like that callback,
    it falls back to the previous checkpoint when the latest cannot be read (a stop while
    writing it)."""
    import h5py

    weights, meta = backup / "latest.weights.h5", backup / "training_metadata.json"
    if not weights.exists():
        return None
    try:
        h5py.File(weights, "r").close()
    except OSError:
        meta = backup / "training_metadata.json.bkp"
    return int(json.loads(meta.read_text())["epoch"]) if meta.exists() else None


def _is_legacy_run(run_dir: Path) -> bool:
    return all((run_dir / f).exists() for f in LEGACY_FILES)


def _adopt_legacy_run(run_dir: Path, model, full: bool, lr_patience: int) -> int:
    """Turn a run folder of the earlier hand-written loop (``last.weights.h5``,
    ``optimizer.npz``, ``state.json``) into a ``BackupAndRestore`` backup and the callbacks'
    counters; returns its epoch. Its files stay; ``log.csv`` keeps its columns."""
    import numpy as np

    from training.callbacks import CallbackState

    state = json.loads((run_dir / "state.json").read_text())
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    model.load_weights(run_dir / "last.weights.h5")
    z = np.load(run_dir / "optimizer.npz")
    for i, v in enumerate(optimizer.variables):
        v.assign(z[f"v{i}"])
    if not full:  # that loop set the rate of the next epoch at its start
        optimizer.learning_rate = state["lr"]
    epoch = int(state["epoch"])
    backup = run_dir / "backup"
    backup.mkdir(parents=True, exist_ok=True)
    model.save_weights(backup / "latest.weights.h5")
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": epoch, "batch": 0}))
    best = state["best_aupr"] if state.get("best_aupr", -1.0) >= 0 else None
    stall = int(state.get("stall", 0))
    CallbackState.record(
        run_dir / "callback_state.json",
        epoch,
        {
            "checkpoint": {"best": best},
            "early_stop": {"best": best, "wait": stall, "best_epoch": state["best_epoch"] - 1},
            "reduce_lr": {"best": best, "wait": stall % lr_patience, "cooldown_counter": 0},
        },
    )
    return epoch


def _trim_log(log_path: Path, epochs: int) -> None:
    """Drop the log rows after ``epochs`` (a stop between writing the log and the backup would
    otherwise log that epoch twice)."""
    if not log_path.exists():
        return
    with open(log_path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = list(reader)
    keep = [r for r in rows if r and int(r[0]) <= epochs]
    if header is None or keep == rows:
        return
    tmp = log_path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([header, *keep])
    os.replace(tmp, log_path)


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
