"""Export the Keras U-Net to ONNX without tf2onnx or TensorFlow.

``python -m training.export --weights W.weights.h5 --out engines/x.onnx --version v1``

The converter walks the Keras functional graph (any backend: only Keras' symbolic graph and
``keras.ops.convert_to_numpy`` are used) and writes one ONNX node per Keras layer, NCHW, opset 17:

- ``Conv2D`` -> ``Conv`` (kernel HWIO -> OIHW, bias as initializer) [+ ``Relu``/``Sigmoid``];
  'same' padding with any stride as Keras pads it (odd pixel bottom/right)
- ``DepthwiseConv2D`` -> grouped ``Conv``; ``Add`` -> ``Add``
- ``ReLU`` -> ``Relu`` (``max_value``: ``Clip``); ``BatchNormalization`` -> ``BatchNormalization``
  (inference form)
- ``MaxPooling2D`` -> ``MaxPool``; ``Concatenate`` -> ``Concat`` (channel axis -1 -> 1)
- ``UpSampling2D`` (nearest) -> exactly one ``Resize`` (nearest, asymmetric, floor, constant
  ``scales`` initializer): never a Shape/Gather/Tile subgraph, which some edge runtimes (and
  TensorRT's older parsers) reject or run slowly. ``check_resize_rule`` enforces this.

Any other layer type (or an unsupported option of a supported one) is a ``ValueError``: the
converter never guesses. Weights are written as float32 whatever the training precision.

The graph input is ``image`` (N, 1, H, W) float32 (the preprocessed green channel, x/255), the
output ``probability`` (N, 1, H, W) float32; N is 1 unless ``batch`` says otherwise. The model
metadata (``hemoseg_edge.model_file.metadata.ModelMetadata``) travels in ``metadata_props``.

Why not tf2onnx (measured; decision: this converter stays). tf2onnx 1.17 (TF 2.21, Keras 3.15)
converts model v2 (``engines/hemoseg_mnv2_v2.weights.h5``, mnv2, 1120x1152) without error, but
not into this graph: NHWC I/O, each UpSampling2D as Unsqueeze/Tile/Transpose/Reshape (10 Tile,
10 Transpose, 12 Reshape in 212 nodes; ``check_resize_rule`` fails), BatchNormalization as
Mul + Add. As it comes it takes 1.27x [1.24, 1.30] this export's time on ONNX Runtime and
1.20x [1.16, 1.23] on OpenVINO. Made legal (``inputs_as_nchw`` + a graph pass: the no-op I/O
Reshapes dropped, each upsampling island -> one Resize; ``hemoseg_graph_pass`` in the script)
it has 175 nodes, 0 Transpose, 10.62 MB (this export: 182 nodes, 0 Transpose, 10.78 MB) and
takes 0.98x [0.98, 1.02] (ORT) and 0.98x [0.94, 1.01] (OpenVINO) the time, inside the A/A
control (this export loaded twice: 0.96x ORT, 1.02x OpenVINO), so equal; with Mul + Add also
turned back into BatchNormalization, 0.97x / 0.97x and the same ORT-optimised graph (84
nodes). Agreement on IDRiD_55/56: max |p_tf2onnx - p_this| 1.4e-5 on ORT (each vs Keras
2.4e-5), no mask pixel differs; 9.0e-3 and 19 pixels on OpenVINO (bf16 on this host). So the
library buys no speed or accuracy; it needs a pass of ~150 lines that pattern-matches its
lowering of the two ops this converter writes directly (Resize, BatchNormalization), and with a
dynamic batch (``batch=None``) its graph adds 10 Shape, 5 Gather, 20 Slice, 20 Cast and 10
Concat that the pass does not undo; conversion takes 5 s instead of 0.14 s and needs the
TensorFlow backend. Times are single-thread process CPU time (``--threads 1 --clock cpu``, 10
rounds, medians of per-round paired ratios with 95 % bootstrap intervals; wall-clock on a
shared host was within +-20 % noise), Intel(R) Xeon(R) Processor (lscpu), 2 cores. Reproduce:
``PYTHONPATH=. python benchmarks/compare_export.py --out /tmp/export.json --threads 1 --clock
cpu`` (needs tf2onnx).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hemoseg_edge.files import atomic_write_bytes
from hemoseg_edge.model_file.metadata import PREFIX, ModelMetadata

if TYPE_CHECKING:  # pragma: no cover
    import keras

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17 (onnx 1.12): loadable by older runtimes
PRODUCER = "hemoseg-edge"
INPUT_NAME = "image"
OUTPUT_NAME = "probability"
FORBIDDEN_OPS = ("Shape", "Gather", "Tile", "Expand", "ConstantOfShape")
PARITY_TOL = 1e-4

# NHWC axis -> NCHW axis (for Concatenate)
_NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}


# --------------------------------------------------------------------------------------------
# Keras graph -> ONNX graph
# --------------------------------------------------------------------------------------------


class _Graph:
    """What the per-layer converters append to."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}

    def add_initializer(self, name: str, array: np.ndarray) -> str:
        if name not in self.initializers:  # a shared layer reuses its weights
            self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def add_node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))


def _f32(variable) -> np.ndarray:
    """A Keras variable as a float32 numpy array (bf16/fp16 weights are upcast)."""
    import keras

    return np.ascontiguousarray(np.asarray(keras.ops.convert_to_numpy(variable), np.float32))


def _unsupported(layer, why: str) -> ValueError:
    return ValueError(
        f"layer {layer.name!r} ({type(layer).__name__}): {why}; the ONNX exporter supports "
        "InputLayer, Conv2D, DepthwiseConv2D, ReLU (optionally capped), Add, BatchNormalization, "
        "MaxPooling2D, UpSampling2D (nearest) and Concatenate only"
    )


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _channels_last(layer) -> None:
    fmt = getattr(layer, "data_format", "channels_last")
    if fmt != "channels_last":
        raise _unsupported(layer, f"data_format {fmt!r} (expected channels_last)")


def _activation_op(layer) -> str | None:
    import keras

    act = layer.activation
    if act is None or act is keras.activations.linear:
        return None
    if act is keras.activations.relu:
        return "Relu"
    if act is keras.activations.sigmoid:
        return "Sigmoid"
    raise _unsupported(layer, f"activation {getattr(act, '__name__', act)!r}")


def _conv_node(
    g: _Graph, layer, x: str, onnx_kernel: np.ndarray, shape: tuple, groups: int, out: str
) -> tuple:
    """One ``Conv`` (+ its activation) for a Keras conv layer; ``onnx_kernel`` is OIHW.
    Returns the NCHW output shape."""
    n, _c, h, w = shape
    kh, kw = _pair(layer.kernel_size)
    sh, sw = _pair(layer.strides)
    dh, dw = _pair(layer.dilation_rate)
    pads, (ho, wo) = _pads(layer, (h, w), (kh, kw), (sh, sw), (dh, dw))
    inputs = [x, g.add_initializer(f"{layer.name}/kernel", onnx_kernel)]
    if layer.use_bias:
        inputs.append(g.add_initializer(f"{layer.name}/bias", _f32(layer.bias)))
    act = _activation_op(layer)
    conv_out = f"{out}/preact" if act else out
    g.add_node(
        "Conv",
        inputs,
        [conv_out],
        name=layer.name,
        kernel_shape=[kh, kw],
        pads=pads,
        strides=[sh, sw],
        dilations=[dh, dw],
        group=groups,
    )
    if act:
        g.add_node(act, [conv_out], [out], name=f"{layer.name}/{act.lower()}")
    return (n, int(onnx_kernel.shape[0]), ho, wo)


def _conv2d(g: _Graph, layer, ins: list[str], shapes: list[tuple], out: str) -> tuple:
    _channels_last(layer)
    c = shapes[0][1]
    groups = int(getattr(layer, "groups", 1))
    kernel = _f32(layer.kernel)  # (kh, kw, cin / groups, cout)
    if kernel.shape[2] * groups != c:
        raise ValueError(f"layer {layer.name!r}: kernel {kernel.shape} does not fit {c} channels")
    onnx_kernel = kernel.transpose(3, 2, 0, 1).copy()
    return _conv_node(g, layer, ins[0], onnx_kernel, shapes[0], groups, out)


def _pads(layer, hw, kernel, strides, dilations) -> tuple[list[int], tuple[int, int]]:
    """ONNX pads [top, left, bottom, right] and the output size, as Keras computes them:
    'same' pads ``max((out - 1) * s + (k - 1) * d + 1 - in, 0)`` with the odd pixel at the
    bottom/right (TensorFlow's rule, which Keras follows on every backend)."""
    if layer.padding not in ("same", "valid"):
        raise _unsupported(layer, f"padding {layer.padding!r}")
    begin, end, out = [], [], []
    for size, k, s, d in zip(hw, kernel, strides, dilations, strict=True):
        span = (k - 1) * d + 1
        if layer.padding == "valid":
            begin.append(0)
            end.append(0)
            out.append((size - span) // s + 1)
            continue
        o = -(-size // s)
        total = max((o - 1) * s + span - size, 0)
        begin.append(total // 2)
        end.append(total - total // 2)
        out.append(o)
    return [*begin, *end], (out[0], out[1])


def _depthwise(g: _Graph, layer, ins: list[str], shapes: list[tuple], out: str) -> tuple:
    """``DepthwiseConv2D`` -> grouped ``Conv`` (group = channels)."""
    _channels_last(layer)
    c = shapes[0][1]
    kernel = _f32(layer.kernel)  # (kh, kw, c, multiplier)
    if kernel.shape[2] != c:
        raise ValueError(f"layer {layer.name!r}: kernel {kernel.shape} does not fit {c} channels")
    kh, kw, _, mult = kernel.shape
    onnx_kernel = kernel.transpose(2, 3, 0, 1).reshape(c * mult, 1, kh, kw).copy()
    return _conv_node(g, layer, ins[0], onnx_kernel, shapes[0], c, out)


def _relu(g: _Graph, layer, ins, shapes, out) -> tuple:
    mv, ns, th = layer.max_value, float(layer.negative_slope), float(layer.threshold)
    if ns != 0.0 or th != 0.0:
        raise _unsupported(layer, "ReLU with negative_slope or threshold")
    if mv is None:
        g.add_node("Relu", ins, [out], name=layer.name)
    else:  # ReLU6 and friends: Clip (opset >= 11 takes min/max as inputs)
        lo = g.add_initializer(f"{layer.name}/min", np.array(0.0, np.float32))
        hi = g.add_initializer(f"{layer.name}/max", np.array(float(mv), np.float32))
        g.add_node("Clip", [ins[0], lo, hi], [out], name=layer.name)
    return shapes[0]


def _add(g: _Graph, layer, ins, shapes, out) -> tuple:
    if len(ins) != 2 or shapes[0] != shapes[1]:
        raise _unsupported(layer, f"Add of shapes {shapes} (expected two equal shapes)")
    g.add_node("Add", ins, [out], name=layer.name)
    return shapes[0]


def _batchnorm(g: _Graph, layer, ins, shapes, out) -> tuple:
    axis = layer.axis if isinstance(layer.axis, int) else list(layer.axis)
    if axis not in (-1, 3, [-1], [3]):
        raise _unsupported(layer, f"normalisation axis {layer.axis!r} (expected the channel axis)")
    c = shapes[0][1]
    mean, var = _f32(layer.moving_mean), _f32(layer.moving_variance)
    gamma = _f32(layer.gamma) if layer.scale else np.ones(c, np.float32)
    beta = _f32(layer.beta) if layer.center else np.zeros(c, np.float32)
    if mean.shape != (c,):
        raise ValueError(f"layer {layer.name!r}: moving_mean {mean.shape} != ({c},) channels")
    names = [
        g.add_initializer(f"{layer.name}/{k}", v)
        for k, v in (
            ("gamma", gamma),
            ("beta", beta),
            ("moving_mean", mean),
            ("moving_variance", var),
        )
    ]
    g.add_node(
        "BatchNormalization",
        [ins[0], *names],
        [out],
        name=layer.name,
        epsilon=float(layer.epsilon),
    )
    return shapes[0]


def _maxpool(g: _Graph, layer, ins, shapes, out) -> tuple:
    _channels_last(layer)
    if layer.padding != "valid":
        raise _unsupported(layer, f"padding {layer.padding!r} (expected 'valid')")
    kh, kw = _pair(layer.pool_size)
    sh, sw = _pair(layer.strides if layer.strides is not None else layer.pool_size)
    g.add_node("MaxPool", ins, [out], name=layer.name, kernel_shape=[kh, kw], strides=[sh, sw])
    n, c, h, w = shapes[0]
    return (n, c, (h - kh) // sh + 1, (w - kw) // sw + 1)


def _upsampling(g: _Graph, layer, ins, shapes, out) -> tuple:
    _channels_last(layer)
    if layer.interpolation != "nearest":
        raise _unsupported(layer, f"interpolation {layer.interpolation!r} (expected 'nearest')")
    sh, sw = _pair(layer.size)
    scales = g.add_initializer(f"{layer.name}/scales", np.array([1, 1, sh, sw], np.float32))
    # Keras' nearest upsampling repeats each pixel: out[i] = in[floor(i / s)], which is ONNX's
    # "asymmetric" coordinates with "floor" rounding (the defaults, half_pixel and
    # round_prefer_floor, would differ), so every attribute is explicit.
    g.add_node(
        "Resize",
        [ins[0], "", scales],
        [out],
        name=layer.name,
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )
    n, c, h, w = shapes[0]
    return (n, c, h * sh, w * sw)


def _concatenate(g: _Graph, layer, ins, shapes, out) -> tuple:
    axis = int(layer.axis)
    axis = axis + 4 if axis < 0 else axis
    if axis not in _NHWC_TO_NCHW:
        raise _unsupported(layer, f"axis {layer.axis}")
    onnx_axis = _NHWC_TO_NCHW[axis]
    ref = shapes[0]
    for s in shapes[1:]:
        if any(a != b for i, (a, b) in enumerate(zip(ref, s, strict=True)) if i != onnx_axis):
            raise ValueError(f"layer {layer.name!r}: cannot concatenate shapes {shapes} (NCHW)")
    g.add_node("Concat", ins, [out], name=layer.name, axis=onnx_axis)
    total = sum(s[onnx_axis] for s in shapes)
    return tuple(total if i == onnx_axis else d for i, d in enumerate(ref))


def _converters() -> dict[type, Any]:
    from keras import layers

    # exact types: a subclass may override call(), so it is refused rather than guessed
    return {
        layers.Conv2D: _conv2d,
        layers.DepthwiseConv2D: _depthwise,
        layers.ReLU: _relu,
        layers.Add: _add,
        layers.BatchNormalization: _batchnorm,
        layers.MaxPooling2D: _maxpool,
        layers.UpSampling2D: _upsampling,
        layers.Concatenate: _concatenate,
    }


def _history(tensor) -> tuple[Any, int, int]:
    h = getattr(tensor, "_keras_history", None)
    if h is None:
        raise ValueError(f"{tensor!r} is not a symbolic Keras tensor (not a functional model?)")
    return h.operation, h.node_index, h.tensor_index


def _tensor_key(tensor) -> tuple[int, int, int]:
    op, ni, ti = _history(tensor)
    return (id(op), ni, ti)


def _topological_nodes(model) -> list:
    """The Keras nodes that lead from the model's inputs to its outputs, producers first.

    Walks back from ``model.outputs`` through each tensor's ``_keras_history`` (operation,
    node index, tensor index), so a layer shared with another model contributes only the node(s)
    of this graph.
    """
    order: list = []
    state: dict[tuple[int, int], int] = {}  # 1 = on the stack, 2 = done
    stack = [(_history(t)[:2], False) for t in reversed(model.outputs)]
    while stack:
        (op, ni), expanded = stack.pop()
        key = (id(op), ni)
        if expanded:
            state[key] = 2
            order.append(op._inbound_nodes[ni])
            continue
        if state.get(key) == 2:
            continue
        if state.get(key) == 1:
            raise ValueError(f"cycle in the Keras graph at {op.name!r}")
        state[key] = 1
        stack.append(((op, ni), True))
        for t in reversed(op._inbound_nodes[ni].input_tensors):
            stack.append((_history(t)[:2], False))
    return order


def count_upsampling(model: keras.Model) -> int:
    """Number of UpSampling2D layer calls in the model's graph (= Resize nodes expected)."""
    from keras import layers

    return sum(isinstance(n.operation, layers.UpSampling2D) for n in _topological_nodes(model))


def keras_to_onnx(
    model: keras.Model, input_hw: tuple[int, int], batch: int | None = 1
) -> onnx.ModelProto:
    """Convert a Keras functional model (NHWC, one input, one output) to an ONNX model (NCHW).

    ``input_hw`` fixes the spatial size of the ONNX input (the Keras model may have been built
    with ``(None, None)``; static Keras sizes must agree). ``batch`` is the static batch size,
    or None for a dynamic ``N``. Raises ValueError for any unsupported layer or option.
    """
    from keras import layers

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"expected one input and one output, got {len(model.inputs)} and {len(model.outputs)}"
        )
    h, w = (int(v) for v in input_hw)
    if batch is not None and int(batch) < 1:
        raise ValueError(f"batch must be >= 1 or None, got {batch}")
    kin = model.inputs[0]
    if len(kin.shape) != 4 or kin.shape[-1] is None:
        raise ValueError(f"input shape {kin.shape} is not (N, H, W, C) with a known C")
    for got, want, what in ((kin.shape[1], h, "height"), (kin.shape[2], w, "width")):
        if got is not None and got != want:
            raise ValueError(f"model input {what} is {got} but input_hw asks for {want}")
    if kin.shape[0] is not None and batch is not None and kin.shape[0] != batch:
        raise ValueError(f"model batch is {kin.shape[0]} but batch={batch}")

    n = batch if batch is not None else "N"
    in_shape = (n, int(kin.shape[-1]), h, w)
    names = {_tensor_key(kin): INPUT_NAME}
    shapes = {_tensor_key(kin): in_shape}
    out_key = _tensor_key(model.outputs[0])
    if out_key in names:
        raise ValueError("the model output is its input")
    names[out_key] = OUTPUT_NAME

    convert = _converters()
    g = _Graph()
    for node in _topological_nodes(model):
        layer = node.operation
        if isinstance(layer, layers.InputLayer):
            if _tensor_key(node.output_tensors[0]) != _tensor_key(kin):
                raise ValueError(f"unexpected extra input layer {layer.name!r}")
            continue
        fn = convert.get(type(layer))
        if fn is None:
            raise _unsupported(layer, "layer type not supported")
        if len(node.output_tensors) != 1:
            raise _unsupported(layer, f"{len(node.output_tensors)} outputs")
        ins, in_shapes = [], []
        for t in node.input_tensors:
            k = _tensor_key(t)
            if k not in names:  # cannot happen with a topological order
                raise ValueError(f"layer {layer.name!r}: input {t!r} not produced yet")
            ins.append(names[k])
            in_shapes.append(shapes[k])
        if not ins:
            raise _unsupported(layer, "no tensor inputs")
        kout = node.output_tensors[0]
        key = _tensor_key(kout)
        ni = _history(kout)[1]
        names.setdefault(key, layer.name if ni == 0 else f"{layer.name}:{ni}")
        shape = fn(g, layer, ins, in_shapes, names[key])
        shapes[key] = shape
        # cross-check against Keras' own static shapes where it knows them
        kshape = tuple(kout.shape)
        expect = (kshape[0], kshape[3], kshape[1], kshape[2]) if len(kshape) == 4 else None
        if expect is None or any(
            e is not None and s != "N" and e != s for e, s in zip(expect, shape, strict=True)
        ):
            raise ValueError(
                f"layer {layer.name!r}: converted shape {shape} (NCHW) disagrees with Keras "
                f"{kshape} (NHWC)"
            )

    out_shape = shapes[out_key]
    graph = helper.make_graph(
        g.nodes,
        model.name or "model",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, out_shape)],
        initializer=list(g.initializers.values()),
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER
    )
    proto.ir_version = IR_VERSION
    return proto


# --------------------------------------------------------------------------------------------
# Metadata, checks
# --------------------------------------------------------------------------------------------


def _input_hw(model_proto: onnx.ModelProto) -> tuple[int | None, int | None]:
    dims = model_proto.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[2:4])


def attach_metadata(model_proto: onnx.ModelProto, metadata: ModelMetadata) -> onnx.ModelProto:
    """Write ``metadata`` into ``metadata_props`` (replacing any earlier hemoseg keys), set the
    producer and doc string; returns the same (modified) proto."""
    metadata.validate("metadata")
    if _input_hw(model_proto) != tuple(metadata.input_hw):
        raise ValueError(
            f"metadata input size {metadata.input_hw} does not match the graph input "
            f"{_input_hw(model_proto)}"
        )
    keep = {p.key: p.value for p in model_proto.metadata_props if not p.key.startswith(PREFIX)}
    helper.set_model_props(model_proto, {**keep, **metadata.to_props()})  # replaces all props
    model_proto.producer_name = PRODUCER
    model_proto.producer_version = metadata.version
    h, w = metadata.input_hw
    model_proto.doc_string = (
        f"hemoseg-edge retinal hemorrhage segmentation U-Net, version {metadata.version}. "
        f"Input '{INPUT_NAME}': float32 (N, 1, {h}, {w}), the preprocessed green channel "
        f"({metadata.normalisation}, {metadata.layout}). Output '{OUTPUT_NAME}': float32 "
        f"(N, 1, {h}, {w}) hemorrhage probability; threshold {metadata.threshold}. "
        f"Training data: {metadata.training_data}."
    )
    return model_proto


def _constant_values(model_proto: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model_proto.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model_proto.graph.node:
        if node.op_type == "Constant" and name in node.output:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def check_resize_rule(model_proto: onnx.ModelProto, expected: int | None = None) -> int:
    """Raise ValueError unless every upsampling is one plain nearest ``Resize``.

    No Shape/Gather/Tile/Expand/ConstantOfShape node anywhere; every Resize has mode nearest,
    coordinate_transformation_mode asymmetric, nearest_mode floor, and a constant ``scales``
    input [1, 1, s, s] (no ``sizes``); and, when ``expected`` is given (``count_upsampling``),
    exactly that many Resize nodes. Returns the number of Resize nodes.
    """
    nodes = list(model_proto.graph.node)
    bad = sorted({n.op_type for n in nodes if n.op_type in FORBIDDEN_OPS})
    if bad:
        raise ValueError(f"graph contains forbidden op(s) {', '.join(bad)}")
    resizes = [n for n in nodes if n.op_type == "Resize"]
    want = {
        "mode": b"nearest",
        "coordinate_transformation_mode": b"asymmetric",
        "nearest_mode": b"floor",
    }
    for n in resizes:
        attrs = {a.name: a.s for a in n.attribute}
        for k, v in want.items():
            if attrs.get(k) != v:
                got = attrs[k].decode() if k in attrs else "(default)"
                raise ValueError(f"Resize {n.name!r}: {k} is {got}, expected {v.decode()}")
        if len(n.input) < 3 or not n.input[2] or (len(n.input) > 3 and n.input[3]):
            raise ValueError(f"Resize {n.name!r}: expected constant scales and no sizes input")
        scales = _constant_values(model_proto, n.input[2])
        if (
            scales is None
            or scales.shape != (4,)
            or list(scales[:2]) != [1, 1]
            or any(s < 1 or s != int(s) for s in scales[2:])
        ):
            raise ValueError(f"Resize {n.name!r}: scales {scales} are not a constant [1, 1, s, s]")
    if expected is not None and len(resizes) != expected:
        raise ValueError(
            f"graph has {len(resizes)} Resize node(s) but the model has {expected} UpSampling2D"
        )
    return len(resizes)


def _ort_session(onnx_model):
    import onnxruntime as ort

    if isinstance(onnx_model, onnx.ModelProto):
        onnx_model = onnx_model.SerializeToString()
    elif not isinstance(onnx_model, bytes):
        onnx_model = os.fspath(onnx_model)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as deployed
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_model, sess_options=opts, providers=["CPUExecutionProvider"])


def check_parity(keras_model: keras.Model, onnx_path, inputs: np.ndarray) -> float:
    """Max |Keras - ONNX Runtime (CPU)| over ``inputs`` (N, H, W) or (H, W) float32 images.

    ``onnx_path`` may also be serialized bytes or a ModelProto. Keras gets ``x[..., None]``
    (NHWC, inference mode), ONNX ``x[:, None]`` (NCHW), image by image if its batch is static.
    """
    import keras

    x = np.asarray(inputs, np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"inputs must be (N, H, W) or (H, W), got {x.shape}")
    sess = _ort_session(onnx_path)
    inp = sess.get_inputs()[0]
    static_n = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = static_n or len(x)
    worst = 0.0
    for i in range(0, len(x), step):
        chunk = x[i : i + step]
        ref = keras.ops.convert_to_numpy(keras_model(chunk[..., None], training=False))
        ref = np.asarray(ref, np.float32).transpose(0, 3, 1, 2)
        got = sess.run(None, {inp.name: np.ascontiguousarray(chunk[:, None])})[0]
        if got.shape != ref.shape:
            raise ValueError(f"ONNX output {got.shape} vs Keras {ref.shape} (NCHW)")
        worst = max(worst, float(np.max(np.abs(got - ref))))
    return worst


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportReport:
    path: Path
    sha256: str
    size_bytes: int
    n_nodes: int
    n_resize: int
    max_abs_diff: float
    metadata: ModelMetadata


# short name (``--arch``) -> the architecture name stored in the model metadata
ARCH_NAMES = {"unet": "unet-skouta2022", "mnv2": "unet-mobilenetv2-imagenet"}


def architecture_input_hw(arch: str) -> tuple[int, int]:
    """The input size ``arch`` is trained and shipped at (v1 560x576, v2 1120x1152)."""
    if arch not in ARCH_NAMES:
        raise ValueError(f"unknown architecture {arch!r} (expected one of {sorted(ARCH_NAMES)})")
    if arch == "mnv2":
        from training.model_mnv2 import INPUT_HW

        return INPUT_HW
    from hemoseg_edge.preprocess import DEFAULT_INPUT_HW

    return DEFAULT_INPUT_HW


def build_architecture(arch: str, input_hw: tuple[int | None, int | None]):
    """The Keras model of ``arch`` ("unet": the paper's, v1; "mnv2": MobileNetV2 U-Net, v2)."""
    from training.model import build_unet
    from training.model_mnv2 import build_mnv2_unet

    builders = {"unet": build_unet, "mnv2": build_mnv2_unet}
    if arch not in builders:
        raise ValueError(f"unknown architecture {arch!r} (expected one of {sorted(builders)})")
    return builders[arch](tuple(input_hw))


def _float32_model(input_hw: tuple[int, int], weights: str | os.PathLike, arch: str = "unet"):
    """``arch`` at ``input_hw`` in float32 (whatever the global policy) with ``weights``."""
    import keras

    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = build_architecture(arch, input_hw)
    finally:
        keras.mixed_precision.set_global_policy(old)
    model.load_weights(os.fspath(weights))
    return model


def export(
    source,
    out_path: str | os.PathLike,
    metadata: ModelMetadata,
    input_hw: tuple[int, int] | None = None,
    *,
    batch: int | None = 1,
    parity_inputs: np.ndarray | None = None,
    tol: float = PARITY_TOL,
    seed: int = 0,
    arch: str = "unet",
) -> ExportReport:
    """Convert, check and atomically write an ONNX model.

    ``source`` is a ``.weights.h5`` path (loaded into a float32 ``arch`` at ``input_hw``) or a
    Keras model. ``input_hw`` defaults to the metadata's and must agree with it. Checks, all
    before anything is written: ``onnx.checker`` (full), the Resize rule, and Keras/ORT parity
    (max abs diff <= ``tol``) on ``parity_inputs`` (N, H, W) or, if None, two seeded random
    images. Raises ValueError when a check fails.
    """
    input_hw = tuple(metadata.input_hw if input_hw is None else (int(v) for v in input_hw))
    if input_hw != tuple(metadata.input_hw):
        raise ValueError(f"input_hw {input_hw} != metadata input size {metadata.input_hw}")
    if isinstance(source, (str, os.PathLike)):
        model = _float32_model(input_hw, source, arch)
    else:
        model = source
    proto = attach_metadata(keras_to_onnx(model, input_hw, batch=batch), metadata)
    onnx.checker.check_model(proto, full_check=True)
    n_resize = check_resize_rule(proto, expected=count_upsampling(model))
    data = proto.SerializeToString()
    if parity_inputs is None:
        parity_inputs = np.random.default_rng(seed).random((2, *input_hw), dtype=np.float32)
    diff = check_parity(model, data, parity_inputs)
    if not diff <= tol:  # also catches NaN
        raise ValueError(f"Keras/ONNX parity failed: max abs diff {diff:.3g} > {tol:.3g}")
    atomic_write_bytes(out_path, data)
    return ExportReport(
        path=Path(out_path),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        n_nodes=len(proto.graph.node),
        n_resize=n_resize,
        max_abs_diff=diff,
        metadata=metadata,
    )


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parity_images(input_hw: tuple[int, int], n: int, seed: int) -> tuple[np.ndarray, str]:
    """Up to ``n`` preprocessed IDRiD validation images, else seeded random ones."""
    try:
        from training.data import idrid_items, load_cached

        items = idrid_items("val")[:n]
        if items:
            exs = load_cached(items, tuple(input_hw))
            return np.stack([e.x for e in exs]).astype(np.float32), (
                "IDRiD val " + ", ".join(e.id for e in exs)
            )
        why = "no IDRiD validation images found"
    except Exception as e:  # noqa: BLE001 - any data problem: fall back to random inputs
        why = f"IDRiD data unavailable ({type(e).__name__}: {e})"
    x = np.random.default_rng(seed).random((n, *input_hw), dtype=np.float32)
    return x, f"{n} random images ({why})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from hemoseg_edge.preprocess import DEFAULT_INPUT_HW

    p = argparse.ArgumentParser(
        prog="python -m training.export", description=__doc__.split("\n")[0]
    )
    p.add_argument("--weights", type=Path, required=True, help="Keras .weights.h5")
    p.add_argument("--arch", default="unet", choices=sorted(ARCH_NAMES), help="network (v1: unet)")
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--version", required=True, help="model version string (metadata)")
    p.add_argument("--threshold", type=float, default=0.5, help="decision threshold (metadata)")
    p.add_argument("--training-data", default="unknown", help="training data note (metadata)")
    p.add_argument(
        "--input-hw", type=int, nargs=2, default=list(DEFAULT_INPUT_HW), metavar=("H", "W")
    )
    p.add_argument("--batch", type=int, default=1, help="static batch size (0: dynamic)")
    p.add_argument("--parity-images", type=int, default=3)
    p.add_argument("--tol", type=float, default=PARITY_TOL)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not args.weights.is_file():
        print(f"error: {args.weights}: no such file", file=sys.stderr)
        return 2
    input_hw = (args.input_hw[0], args.input_hw[1])
    try:
        md = ModelMetadata(
            input_height=input_hw[0],
            input_width=input_hw[1],
            threshold=args.threshold,
            version=args.version,
            training_data=args.training_data,
        )
        md.validate("arguments")
    except Exception as e:  # noqa: BLE001 - ModelError: report, do not trace back
        print(f"error: {e}", file=sys.stderr)
        return 2
    x, what = _parity_images(input_hw, max(1, args.parity_images), args.seed)
    print(f"parity inputs: {what}")
    try:
        report = export(
            args.weights,
            args.out,
            md,
            input_hw,
            batch=args.batch or None,
            parity_inputs=x,
            tol=args.tol,
            arch=args.arch,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, sha256 {report.sha256[:16]}): "
        f"{report.n_nodes} nodes, {report.n_resize} Resize, "
        f"max |keras - onnx| = {report.max_abs_diff:.2e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
