"""Compute per frame, counted in the model file itself.

One counter for every place that reports it (the model card, the Jetson floor in
BENCHMARKS.md): whatever the graph computes, test-time views included, with no architecture
table or view count to keep in step with the file.
"""

from __future__ import annotations

import os

import onnx
from onnx import numpy_helper


def conv_gflop(model: str | os.PathLike | onnx.ModelProto) -> float:
    """Multiply-adds x 2 of every (grouped) ``Conv`` of an ONNX graph for one frame, in GFLOP
    (output shapes by ONNX shape inference; the graph's input must have a fixed size)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    g = onnx.shape_inference.infer_shapes(proto).graph
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*g.value_info, *g.output, *g.input]
    }
    weights = {i.name: numpy_helper.to_array(i).shape for i in g.initializer}
    total = 0
    for n in g.node:
        if n.op_type != "Conv":
            continue
        # weight (C_out, C_in / groups, kh, kw): per output element C_in/groups * kh * kw MACs
        w = weights.get(n.input[1]) or shapes[n.input[1]]
        out = shapes[n.output[0]]
        if 0 in out[1:]:
            raise ValueError(f"Conv {n.name!r}: output shape {out} is not fixed")
        total += 2 * out[1] * out[2] * out[3] * w[1] * w[2] * w[3]
    return total / 1e9
