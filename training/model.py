"""The modified U-Net of Skouta et al. (2022), in pure Keras 3 (any backend).

Layout (input H x W x 1, the green channel in [0, 1]; H and W multiples of 16):

- encoder blocks, each 3x3 'same' convs with conv -> ReLU -> BatchNorm, then a 2x2 max-pool; the
  last activation of each block (before the pool) is kept as the skip:
  (32, 32, 64), (64, 64, 128), (128, 128), (256, 256)
- bottleneck: two convs, widen then narrow: 512, 256
- decoder, mirrored: each block UpSampling2D(2) (nearest) -> concat with the mirrored skip ->
  convs (256, 256), (128, 128), (128, 64, 64), (64, 32, 32)
- concat with the input image -> 1x1 conv -> sigmoid (float32 even under mixed precision).

Choices where the paper is ambiguous (also in engines/MODEL_CARD.md):
- Bottleneck widths: the paper says "the first enhances the feature maps and the second reduces
  them"; we double then return: 512 -> 256.
- Decoder widths: "symmetric", each upsampling "divides [the maps] by two": the decoder mirrors
  the encoder block widths in reverse.
- "An additional subsampling step after the last block of the decoder path, then concatenation
  with the initial input image": a subsampling (resolution-reducing) step would make the
  concatenation with the full-resolution input impossible, so we read it as the final
  upsampling of the last decoder block, and add no extra layer.
"""

from __future__ import annotations

import keras
from keras import layers

ENCODER = ((32, 32, 64), (64, 64, 128), (128, 128), (256, 256))
BOTTLENECK = (512, 256)
DECODER = ((256, 256), (128, 128), (128, 64, 64), (64, 32, 32))


def _conv_block(x, widths, name):
    for i, f in enumerate(widths):
        x = layers.Conv2D(f, 3, padding="same", name=f"{name}_conv{i + 1}")(x)
        x = layers.ReLU(name=f"{name}_relu{i + 1}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i + 1}")(x)
    return x


def build_unet(input_hw: tuple[int | None, int | None] = (560, 576)) -> keras.Model:
    """Build the network; ``input_hw`` may be (None, None) for patch training."""
    inp = keras.Input(shape=(*input_hw, 1), name="image")
    x = inp
    skips = []
    for b, widths in enumerate(ENCODER, start=1):
        x = _conv_block(x, widths, f"enc{b}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{b}_pool")(x)
    x = _conv_block(x, BOTTLENECK, "bottleneck")
    for b, (widths, skip) in enumerate(zip(DECODER, reversed(skips), strict=True), start=1):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"dec{b}_up")(x)
        x = layers.Concatenate(name=f"dec{b}_concat")([x, skip])
        x = _conv_block(x, widths, f"dec{b}")
    x = layers.Concatenate(name="head_concat")([x, inp])
    out = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="head")(x)
    return keras.Model(inp, out, name="hemoseg_unet")
