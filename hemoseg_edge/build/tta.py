"""Flip test-time augmentation baked into a hemoseg ONNX graph.

``with_flip_tta(model, ("hflip",))`` returns a graph that runs the network on the image and on
each flipped copy, flips each output back and returns the mean probability. In the graph, not
in the runtime, so every backend (ONNX Runtime, OpenVINO, TensorRT) and every precision variant
computes the same function from one file, and the CUDA preprocessing path is unchanged. The
copies share the initializers (the file grows by the node list only); compute grows with the
number of views. ``hemoseg.tta`` in the metadata names the views.

What has run: ONNX Runtime and OpenVINO on CPU (tests/test_tta.py, tests/test_openvino.py, the
model card). TensorRT imports a ``Slice`` with step -1 over a whole axis (onnx-tensorrt
"Support negative slicing across an entire axis", PR 453) but no TensorRT build of a TTA graph
has run here (no GPU); ``make gpu-check`` builds and compares the default model's engines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..model_file import proto_metadata
from ..model_file.metadata import PREFIX, TTA_VIEWS

# NCHW axes each flip reverses
FLIP_AXES = {"hflip": (3,), "vflip": (2,)}
assert set(FLIP_AXES) == set(TTA_VIEWS)
NO_TTA = "none"


class TtaError(ValueError):
    pass


def _slice_reversed(prefix: str, axes: Sequence[int]) -> tuple[list[str], list[onnx.TensorProto]]:
    """Inputs 2-5 of a ``Slice`` that reverses ``axes`` (start -1, end past the front, step -1)."""
    n = len(axes)
    arrays = {
        "starts": np.full(n, -1, np.int64),
        "ends": np.full(n, np.iinfo(np.int64).min, np.int64),
        "axes": np.array(axes, np.int64),
        "steps": np.full(n, -1, np.int64),
    }
    names = [f"{prefix}{k}" for k in arrays]
    return names, [numpy_helper.from_array(a, name) for a, name in zip(arrays.values(), names)]


def with_flip_tta(model: onnx.ModelProto, flips: Sequence[str] = ("hflip",)) -> onnx.ModelProto:
    """``model`` with the mean over the identity view and one view per flip (see the module
    docstring). The original nodes keep their names (so INT8 ``keep_float`` lists still name
    them); a view's copies are prefixed ``tta<k>/``."""
    unknown = [f for f in flips if f not in FLIP_AXES]
    if unknown or not flips or len(set(flips)) != len(flips):
        raise TtaError(f"flips {list(flips)}: choose distinct ones from {sorted(FLIP_AXES)}")
    md = proto_metadata(model)
    if md.tta != NO_TTA:
        raise TtaError(f"the model already has test-time augmentation ({md.tta})")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    if len(g.input) != 1 or len(g.output) != 1:
        raise TtaError("expected one graph input and one output")
    image, prob = g.input[0].name, g.output[0].name
    shared = {i.name for i in g.initializer}
    originals = list(g.node)
    base_out = "tta_identity/" + prob
    for node in originals:
        node.output[:] = [base_out if o == prob else o for o in node.output]
    views = [base_out]
    for k, flip in enumerate(flips):
        prefix = f"tta{k}/"
        slice_args, consts = _slice_reversed(prefix, FLIP_AXES[flip])
        g.initializer.extend(consts)
        flipped = prefix + image

        def rename(name: str, prefix: str = prefix, flipped: str = flipped) -> str:
            if not name or name in shared:
                return name
            return flipped if name == image else prefix + name

        g.node.append(
            helper.make_node("Slice", [image, *slice_args], [flipped], name=prefix + "flip_in")
        )
        for node in originals:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = prefix + node.name
            copy.input[:] = [rename(i) for i in node.input]
            copy.output[:] = [rename(o) for o in node.output]
            g.node.append(copy)
        back = prefix + "unflipped"
        g.node.append(
            helper.make_node(
                "Slice", [rename(base_out), *slice_args], [back], name=prefix + "flip_out"
            )
        )
        views.append(back)
    g.node.append(helper.make_node("Mean", views, [prob], name="tta_mean"))
    del g.value_info[:]  # intermediate shapes are re-inferred; the copies would need their own
    props = {p.key: p.value for p in out.metadata_props}
    props[PREFIX + "tta"] = ",".join(flips)
    helper.set_model_props(out, props)
    onnx.checker.check_model(out, full_check=True)
    return out
