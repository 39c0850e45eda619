"""The project's parts of ``model.fit`` training (``training.train``): the per-epoch
validation, a CSV log counted from epoch 1, and the stock callbacks' counters kept across
resumes.

- ``ValidateEpoch`` times the training steps, re-estimates the BatchNorm statistics on whole
  training images (``recalibrate_batchnorm``), validates on the validation images at full model
  resolution and puts the results into ``logs`` (``val_aupr``, ``val_dice_best``,
  ``val_dice@0.5``, ``val_thr``, ``seconds``, ``samples_per_s``, ``lr``, ``patch``), where the
  stock ``ModelCheckpoint``, ``ReduceLROnPlateau``, ``EarlyStopping`` and ``CSVLogger`` read
  them. It must come first in the callback list.
- ``EpochCSVLogger`` is ``keras.callbacks.CSVLogger`` writing epochs from 1, and appending in
  the columns the file already has.
- ``CallbackState``: ``BackupAndRestore`` restores weights, optimizer and epoch, but not the
  best value and patience counters of the other stock callbacks (``fit`` even resets
  ``EarlyStopping`` and ``ReduceLROnPlateau`` at its start). This callback records them after
  every epoch, keyed by epoch, and puts back those of the epoch that training resumes after.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import keras
import numpy as np

from hemoseg_edge.metrics import PrHistogram
from training.losses import dice_from_probs


def recalibrate_batchnorm(model, examples, count: int, rng) -> int:
    """Replace the moving statistics of every trainable BatchNorm layer by the exact average of
    its batch statistics over ``count`` whole training images ("precise BN").

    Training batches are 4 lesion-biased patches; the exponential moving averages they leave
    describe neither whole photographs nor the current weights: with them v2's validation AUPR
    fell from 0.44 to 0.07 between two epochs, and recalibrating that same checkpoint on 16
    whole training images gave it back 0.34. Weights are untouched; returns the layers reset.
    """
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


class ValidateEpoch(keras.callbacks.Callback):
    """Per epoch of ``fit`` on ``data`` (a ``training.patches`` dataset): seeds its batches
    with the epoch, then after the training steps logs their time and throughput, recalibrates
    BatchNorm on ``recal_images`` whole ``train`` images (0: keep the moving averages), copies
    the weights into ``val_model`` (the same network at full model resolution; ``None``: the
    trained model is that already) and validates on ``val``."""

    def __init__(self, data, train, val, val_model=None, recal_images=0, seed=0):
        super().__init__()
        self.data, self.train, self.val, self.val_model = data, train, val, val_model
        self.recal_images, self.seed = recal_images, seed
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.data.epoch = epoch
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._t0
        logs = logs if logs is not None else {}
        logs["seconds"] = round(seconds, 1)
        logs["samples_per_s"] = round(self.data.samples / seconds, 3)
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["lr"] = float(f"{lr:.6g}")  # the float32 variable, as set
        if "loss" in logs:
            logs["loss"] = round(float(logs["loss"]), 5)
        if self.data.patch is not None:
            logs["patch"] = self.data.patch
        if self.recal_images:
            rng = np.random.default_rng([self.seed, epoch, 1])
            recalibrate_batchnorm(self.model, self.train, self.recal_images, rng)
        logs.update(self.validate())

    def validate(self) -> dict:
        """AUPR (1000 probability bins) and pooled Dice at 0.5 and at its best threshold."""
        model = self.model if self.val_model is None else self.val_model
        if model is not self.model:
            model.set_weights(self.model.get_weights())
        probs = [
            np.asarray(model.predict_on_batch(e.x[None, ..., None]), dtype=np.float32)[0, ..., 0]
            for e in self.val
        ]
        truths = [e.y >= 0.5 for e in self.val]
        dice05, best_dice, best_thr = dice_from_probs(probs, truths)
        hist = PrHistogram(1000)
        for p, t in zip(probs, truths, strict=True):
            hist.add(p, t)
        # rounded as logged: the monitoring callbacks compare what the log shows
        return {
            "val_aupr": round(float(hist.aupr()), 4),
            "val_dice_best": round(float(best_dice), 4),
            "val_dice@0.5": round(float(dice05), 4),
            "val_thr": float(best_thr),
        }


class EpochCSVLogger(keras.callbacks.CSVLogger):
    """``keras.callbacks.CSVLogger`` with epochs counted from 1; appending to a file with a
    header writes that header's columns (so a resumed run keeps one table)."""

    def on_train_begin(self, logs=None):
        header = None
        if self.append and os.path.exists(self.filename):
            with open(self.filename, newline="") as f:
                header = f.readline().strip()
        super().on_train_begin(logs)
        if header:
            self.keys = header.split(self.sep)[1:]

    def on_epoch_end(self, epoch, logs=None):
        # a column of the file that this run does not log stays empty (not "NA")
        logs = {**dict.fromkeys(self.keys or (), ""), **(logs or {})}
        super().on_epoch_end(epoch + 1, logs)


STATE_ATTRS = ("best", "wait", "best_epoch", "cooldown_counter")


class CallbackState(keras.callbacks.Callback):
    """Keeps the counters of ``callbacks`` (a name -> stock callback mapping) in ``path``:
    written after every epoch, put back at the first epoch of each ``fit`` from the record of
    the epoch before it. Place it after those callbacks and before ``BackupAndRestore``."""

    def __init__(self, path: Path, callbacks: dict):
        super().__init__()
        self.path, self.callbacks = Path(path), callbacks
        self._restored = False

    def on_train_begin(self, logs=None):
        self._restored = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._restored:
            return
        self._restored = True
        saved = self.load(self.path).get(str(epoch), {})
        for name, cb in self.callbacks.items():
            for attr, value in saved.get(name, {}).items():
                setattr(cb, attr, value)

    def on_epoch_end(self, epoch, logs=None):
        states = {
            name: {a: _plain(getattr(cb, a)) for a in STATE_ATTRS if hasattr(cb, a)}
            for name, cb in self.callbacks.items()
        }
        self.record(self.path, epoch + 1, states)

    @staticmethod
    def load(path: Path) -> dict:
        return json.loads(Path(path).read_text()) if Path(path).exists() else {}

    @staticmethod
    def record(path: Path, epoch: int, states: dict) -> None:
        """Store ``states`` as those after ``epoch`` epochs (atomically)."""
        data = CallbackState.load(path)
        data[str(epoch)] = states
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)


def _plain(value):
    """A JSON-able copy of a counter (the callbacks may hold numpy or backend scalars)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    arr = np.asarray(keras.ops.convert_to_numpy(value))
    return arr.item()
