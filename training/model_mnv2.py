"""Model v2: a U-Net with an ImageNet MobileNetV2 encoder, pure Keras 3 (any backend).

Input (H, W, 1): the same preprocessed green channel in [0, 1] as v1, at twice v1's side
(1120 x 1152), so the one preprocessing truth and the CUDA kernel stay as they are. The
pretrained first convolution sees RGB; for a green-only input its kernel is summed over the
three colour planes after ImageNet normalisation ((x - mean_c) / std_c folded into its weights
and a bias), so the encoder starts from ImageNet features without an extra layer.

- encoder: torchvision's MobileNetV2 (inverted residuals, ReLU6, BatchNorm eps 1e-5) up to
  ``features.17`` (320 channels at 1/32); skips at 1/2, 1/4, 1/8, 1/16.
- decoder: per level nearest x2 upsampling -> concat skip -> 3x3 conv -> ReLU -> BN (v1's
  order), widths DECODER; a last level at full resolution concatenates the input image.
- head: 1x1 conv, sigmoid, float32.

Stride-2 convolutions use 'same' padding (TensorFlow's asymmetric pad: bottom/right), which
differs from torchvision's symmetric pad by one pixel: irrelevant after fine-tuning.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

INPUT_HW = (1120, 1152)
# (expansion t, channels c, repeats n, first stride s): torchvision's inverted_residual_setting
SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
SKIP_FEATURES = (1, 3, 6, 13)  # features.i outputs at 1/2, 1/4, 1/8, 1/16
DECODER = (128, 64, 48, 32, 16)  # 1/16, 1/8, 1/4, 1/2, 1/1
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
BN_EPS = 1e-5


def _sep() -> str:
    """Layer names follow torchvision's keys ("features.3.dw") so that ONNX node names (the INT8
    ``--keep-float`` lists) stay as shipped; Keras' torch backend registers each variable under
    its path as a torch parameter, which may not contain ".", so there "_" stands in. Weight
    files do not store layer names (``layers/conv2d_3/...``): one file loads on every backend."""
    return "_" if keras.backend.backend() == "torch" else "."


def layer_name(idx: int, part: str) -> str:
    """The encoder layer of torchvision's ``features.<idx>`` block, e.g. (3, "dw")."""
    s = _sep()
    return f"features{s}{idx}{s}{part}"


def _bn(name):
    return layers.BatchNormalization(epsilon=BN_EPS, momentum=0.99, name=name)


def _inverted_residual(x, cin, cout, stride, t, idx):
    h = x
    if t != 1:
        h = layers.Conv2D(cin * t, 1, use_bias=False, name=layer_name(idx, "expand"))(h)
        h = _bn(layer_name(idx, "expand_bn"))(h)
        h = layers.ReLU(max_value=6.0, name=layer_name(idx, "expand_relu"))(h)
    h = layers.DepthwiseConv2D(
        3, strides=stride, padding="same", use_bias=False, name=layer_name(idx, "dw")
    )(h)
    h = _bn(layer_name(idx, "dw_bn"))(h)
    h = layers.ReLU(max_value=6.0, name=layer_name(idx, "dw_relu"))(h)
    h = layers.Conv2D(cout, 1, use_bias=False, name=layer_name(idx, "project"))(h)
    h = _bn(layer_name(idx, "project_bn"))(h)
    if stride == 1 and cin == cout:
        h = layers.Add(name=layer_name(idx, "add"))([x, h])
    return h


def build_mnv2_unet(input_hw: tuple[int | None, int | None] = INPUT_HW) -> keras.Model:
    inp = keras.Input(shape=(*input_hw, 1), name="image")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=True, name=layer_name(0, "conv"))(
        inp
    )
    x = _bn(layer_name(0, "bn"))(x)
    x = layers.ReLU(max_value=6.0, name=layer_name(0, "relu"))(x)
    feats, cin, idx = [], 32, 1
    for t, c, n, s in SETTING:
        for i in range(n):
            x = _inverted_residual(x, cin, c, s if i == 0 else 1, t, idx)
            if idx in SKIP_FEATURES:
                feats.append(x)
            cin, idx = c, idx + 1
    skips = [*reversed(feats), inp]  # 1/16, 1/8, 1/4, 1/2, full
    for level, (width, skip) in enumerate(zip(DECODER, skips, strict=True), start=1):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skip])
        for j in range(1 if level >= 4 else 2):
            x = layers.Conv2D(width, 3, padding="same", name=f"dec{level}_conv{j + 1}")(x)
            x = layers.ReLU(name=f"dec{level}_relu{j + 1}")(x)
            x = layers.BatchNormalization(name=f"dec{level}_bn{j + 1}")(x)
    out = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="head")(x)
    return keras.Model(inp, out, name="hemoseg_mnv2_unet")


def encoder_layers(model: keras.Model) -> list[layers.Layer]:
    return [layer for layer in model.layers if layer.name.startswith(f"features{_sep()}")]


def load_imagenet(model: keras.Model, state: dict[str, np.ndarray]) -> int:
    """Copy torchvision MobileNetV2 weights into the encoder; returns the tensors assigned."""
    names = {layer.name: layer for layer in model.layers}
    n = 0

    def conv(name, w):  # torch (O, I, kh, kw) -> keras (kh, kw, I, O)
        nonlocal n
        names[name].kernel.assign(w.transpose(2, 3, 1, 0))
        n += 1

    def dw(name, w):  # torch (C, 1, kh, kw) -> keras (kh, kw, C, 1)
        nonlocal n
        names[name].kernel.assign(w.transpose(2, 3, 0, 1))
        n += 1

    def bn(name, prefix):
        nonlocal n
        layer = names[name]
        for var, key in (
            (layer.gamma, "weight"),
            (layer.beta, "bias"),
            (layer.moving_mean, "running_mean"),
            (layer.moving_variance, "running_var"),
        ):
            var.assign(state[f"{prefix}.{key}"])
            n += 1

    # first conv: fold ImageNet normalisation of a grey (green) image into kernel + bias
    w = state["features.0.0.weight"]  # (32, 3, 3, 3)
    w_grey = (w / IMAGENET_STD[None, :, None, None]).sum(axis=1, keepdims=True)
    bias = -(w * (IMAGENET_MEAN / IMAGENET_STD)[None, :, None, None]).sum(axis=(1, 2, 3))
    conv(layer_name(0, "conv"), w_grey)
    names[layer_name(0, "conv")].bias.assign(bias)
    bn(layer_name(0, "bn"), "features.0.1")
    idx = 1
    for t, _c, rep, _s in SETTING:
        for _ in range(rep):
            p = f"features.{idx}.conv"
            if t == 1:
                dw(layer_name(idx, "dw"), state[f"{p}.0.0.weight"])
                bn(layer_name(idx, "dw_bn"), f"{p}.0.1")
                conv(layer_name(idx, "project"), state[f"{p}.1.weight"])
                bn(layer_name(idx, "project_bn"), f"{p}.2")
            else:
                conv(layer_name(idx, "expand"), state[f"{p}.0.0.weight"])
                bn(layer_name(idx, "expand_bn"), f"{p}.0.1")
                dw(layer_name(idx, "dw"), state[f"{p}.1.0.weight"])
                bn(layer_name(idx, "dw_bn"), f"{p}.1.1")
                conv(layer_name(idx, "project"), state[f"{p}.2.weight"])
                bn(layer_name(idx, "project_bn"), f"{p}.3")
            idx += 1
    return n
