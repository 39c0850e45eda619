"""Losses in ``keras.ops`` (backend-agnostic) and a validation helper."""

from __future__ import annotations

import keras
from keras import ops

from hemoseg_edge.metrics import best_threshold_dice


@keras.saving.register_keras_serializable(package="hemoseg")
def bce_dice_loss(y_true, y_pred):
    """Binary cross-entropy + (1 - soft Dice over the batch), computed in float32."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
    inter = ops.sum(y_true * y_pred)
    soft_dice = (2.0 * inter + 1.0) / (ops.sum(y_true) + ops.sum(y_pred) + 1.0)
    return bce + (1.0 - soft_dice)


def dice_from_probs(probs, truths):
    """(Dice at 0.5, best Dice, best threshold) pooled over validation images."""
    return best_threshold_dice(probs, truths)
