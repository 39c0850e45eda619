"""Load a shipped FP32 ONNX file's weights back into its Keras network (``training.export`` run
backwards).

Why: a model shipped before its Keras weights were committed (v1) can still be fine-tuned on any
machine: ``python -m training.train --init engines/hemoseg_unet_v1.onnx``. The exporter names
every initializer ``<keras layer>/<variable>`` and writes kernels OIHW, so the inverse is exact
and needs no guessing: each ``Conv2D``/``DepthwiseConv2D``/``BatchNormalization`` takes its
variables by name, and a layer with weights that has no initializer is an error, not a silent
random init. Test-time-augmentation copies (``tta0/...``) are the same initializers and are not
read. Only float32 files: FP16/INT8 weights are rounded and cannot give back the trained ones.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import onnx
from onnx import numpy_helper


class OnnxWeightsError(ValueError):
    """The ONNX file does not hold this network's float32 weights."""


def _initializers(path: str | os.PathLike) -> dict[str, np.ndarray]:
    proto = onnx.load(str(path))
    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    kinds = {a.dtype for a in arrays.values() if a.dtype.kind == "f"}
    if kinds - {np.dtype(np.float32)}:
        raise OnnxWeightsError(f"{path}: weights are {sorted(map(str, kinds))}, need float32")
    return arrays


def _take(arrays: dict[str, np.ndarray], name: str, shape: tuple) -> np.ndarray:
    if name not in arrays:
        raise OnnxWeightsError(f"no initializer {name!r}")
    a = arrays[name]
    if tuple(a.shape) != tuple(shape):
        raise OnnxWeightsError(f"{name!r}: shape {tuple(a.shape)} != expected {tuple(shape)}")
    return a


def _conv_kernel(layer, arrays) -> np.ndarray:
    kh, kw, cin, cout = layer.kernel.shape
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # Keras (kh, kw, c, m); ONNX (c*m,1,kh,kw)
        oihw = _take(arrays, f"{layer.name}/kernel", (cin * cout, 1, kh, kw))
        return oihw.reshape(cin, cout, kh, kw).transpose(2, 3, 0, 1)
    oihw = _take(arrays, f"{layer.name}/kernel", (cout, cin, kh, kw))
    return oihw.transpose(2, 3, 1, 0)


def _layer_weights(layer, arrays) -> list[np.ndarray]:
    """The layer's variables, in ``layer.get_weights()`` order, from the initializers."""
    if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D):
        out = [_conv_kernel(layer, arrays)]
        if layer.use_bias:
            out.append(_take(arrays, f"{layer.name}/bias", layer.bias.shape))
        return out
    if isinstance(layer, keras.layers.BatchNormalization):
        c = layer.moving_mean.shape
        names = (["gamma"] if layer.scale else []) + (["beta"] if layer.center else [])
        names += ["moving_mean", "moving_variance"]
        return [_take(arrays, f"{layer.name}/{n}", c) for n in names]
    raise OnnxWeightsError(f"layer {layer.name!r} ({type(layer).__name__}): no inverse mapping")


def load_onnx_weights(model: keras.Model, path: str | os.PathLike) -> int:
    """Set every weight of ``model`` from the float32 ONNX file ``path`` (an export of the same
    architecture). Returns the number of layers set; raises ``OnnxWeightsError`` on any
    mismatch before changing a weight."""
    arrays = _initializers(path)
    planned = []
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            planned.append((layer, _layer_weights(layer, arrays)))
        except OnnxWeightsError as e:
            raise OnnxWeightsError(f"{path}: {e}") from None
    for layer, weights in planned:
        layer.set_weights([np.ascontiguousarray(w) for w in weights])
    return len(planned)
