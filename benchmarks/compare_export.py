"""Keras -> ONNX: the hand-written converter (training/export.py) vs tf2onnx, on model v2.

    PYTHONPATH=. python benchmarks/compare_export.py --out /tmp/export_methods.json [--rounds 15]
    PYTHONPATH=. python benchmarks/compare_export.py --out /tmp/x.json --threads 1 --clock cpu

Builds the shipped model v2 (``engines/hemoseg_mnv2_v2.weights.h5``, architecture ``mnv2``,
input 1120x1152) in float32 and exports it four ways in one process:

- ``hand-written``: ``training.export.keras_to_onnx`` + ``attach_metadata`` (what ships; the
  script says which parts equal ``engines/hemoseg_mnv2_v2.onnx``);
- ``tf2onnx``: ``tf2onnx.convert.from_keras`` (opset 17) as it comes, NHWC graph I/O;
- ``tf2onnx + pass``: the same with ``inputs_as_nchw``/``outputs_as_nchw`` and the small graph
  pass (``hemoseg_graph_pass``) a hemoseg/TensorRT graph needs: no-op Reshapes at the I/O
  dropped, each UpSampling2D's Unsqueeze/Tile/Transpose/Reshape island replaced by one nearest
  ``Resize`` (``check_resize_rule``), the output renamed ``probability``, hemoseg metadata;
- ``tf2onnx + pass + BN``: that pass plus one more step, tf2onnx's per-channel ``Mul`` +
  ``Add`` (its lowering of BatchNormalization) turned back into ``BatchNormalization``, to
  see how much of a difference that lowering makes.

Then, side by side: the graph (node counts by op type, Transpose count, file size, node count
after ONNX Runtime's own optimisation, whether ``check_resize_rule`` passes), the latency of
one 1120x1152 image on ONNX Runtime (CPU, ORT_ENABLE_ALL as the backend sets it) and on
OpenVINO (CPU, LATENCY hint, the backend's ``auto`` precision), the variants alternating run by
run (``rounds`` each), medians and per-round paired ratios against the hand-written export,
with an A/A control (the hand-written export loaded a second time, last: later sessions alone
measured 5-10 % faster, so ratios closer to 1 than the control's are not differences); and the
numerical agreement: max |difference| of the probabilities on real IDRiD test images, each
export against Keras and against the hand-written export. ``--threads 1 --clock cpu``
measures the work (process CPU time), which other jobs on a shared host barely change. Prints
a table, writes the JSON to ``--out``. Needs the train extra (keras, tensorflow), tf2onnx,
OpenVINO and the shared IDRiD data. Nothing in ``engines/`` is written.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from benchlib import TESTS, add_timing_args  # noqa: E402

ARCH, VERSION = "mnv2", "v2"
WEIGHTS = REPO / "engines" / "hemoseg_mnv2_v2.weights.h5"
SHIPPED = REPO / "engines" / "hemoseg_mnv2_v2.onnx"
CONTROL = "hand-written, again (A/A control, loaded last)"
MOVEMENT_OPS = frozenset({"Unsqueeze", "Squeeze", "Tile", "Transpose", "Reshape"})


# --------------------------------------------------------------------------------------------
# tf2onnx and the graph pass
# --------------------------------------------------------------------------------------------


def tf2onnx_export(model, input_hw: tuple[int, int], nchw: bool):
    """``tf2onnx.convert.from_keras`` at a static (1, H, W, 1) input named ``image``."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((1, *input_hw, 1), tf.float32, name="image"),)
    kw = {}
    if nchw:
        kw = {"inputs_as_nchw": ["image"], "outputs_as_nchw": list(model.output_names)}
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, **kw)
    return proto


def _shapes(proto) -> dict[str, tuple]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    g = inferred.graph
    out = {}
    for v in [*g.input, *g.output, *g.value_info]:
        dims = v.type.tensor_type.shape.dim
        out[v.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    for i in g.initializer:
        out[i.name] = tuple(i.dims)
    return out


def _rename(g, old: str, new: str) -> None:
    for n in g.node:
        n.input[:] = [new if x == old else x for x in n.input]
        n.output[:] = [new if x == old else x for x in n.output]


def _affine_to_batchnorm(g) -> int:
    """``Mul(x, a) -> Add(., b)`` with per-channel constants (1, C, 1, 1) -> one inference
    ``BatchNormalization`` (scale a, bias b, mean 0, variance 1 - eps): tf2onnx's lowering of a
    BatchNormalization that no Conv absorbs, given back to the runtimes as one op."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list] = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)

    def per_channel(name: str) -> np.ndarray | None:
        if name not in inits:
            return None
        a = numpy_helper.to_array(inits[name])
        ok = a.dtype == np.float32 and a.ndim == 4 and a.shape[0] == 1 and a.shape[2:] == (1, 1)
        return a.reshape(-1) if ok else None

    eps = 1e-5
    folded = 0
    for mul in [n for n in g.node if n.op_type == "Mul"]:
        users = consumers.get(mul.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        scale = per_channel(mul.input[1])
        other = [i for i in add.input if i != mul.output[0]]
        bias = per_channel(other[0]) if len(other) == 1 else None
        if scale is None or bias is None or scale.shape != bias.shape:
            continue
        c = scale.shape[0]
        base = mul.name.rsplit("/", 1)[0]
        names = [f"{base}/bn_{k}" for k in ("scale", "bias", "mean", "var")]
        arrays = [scale, bias, np.zeros(c, np.float32), np.full(c, 1.0 - eps, np.float32)]
        for nm, a in zip(names, arrays, strict=True):
            g.initializer.append(numpy_helper.from_array(a, nm))
        bn = helper.make_node(
            "BatchNormalization",
            [mul.input[0], *names],
            [add.output[0]],
            name=f"{base}/bn",
            epsilon=eps,
        )
        idx = list(g.node).index(add)
        g.node.insert(idx, bn)
        g.node.remove(mul)
        g.node.remove(add)
        folded += 1
    return folded


def hemoseg_graph_pass(proto, output_name: str = "probability", batchnorm: bool = False):
    """tf2onnx's NCHW-I/O graph -> the graph the hemoseg runtime and TensorRT rules expect.

    Drops Reshapes whose input and output shapes are equal (tf2onnx's NHWC<->NCHW of a
    1-channel tensor), replaces each connected island of Unsqueeze/Squeeze/Tile/Transpose/
    Reshape that contains a Tile and maps one (N, C, h, w) tensor to one (N, C, s*h, s*w) tensor
    by one nearest ``Resize`` with constant scales (asymmetric, floor: Keras' repeat), renames
    the output, keeps only the default-domain opset; ``batchnorm``: also
    ``_affine_to_batchnorm``. Correctness is not inferred from shapes alone: the caller checks
    parity with Keras.
    """
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    shapes = _shapes(out)
    consts = {i.name for i in g.initializer}
    graph_in = {i.name for i in g.input}
    graph_out = {o.name for o in g.output}

    # 1. no-op Reshapes
    for n in list(g.node):
        if n.op_type != "Reshape":
            continue
        src, dst = n.input[0], n.output[0]
        s_in, s_out = shapes.get(src), shapes.get(dst)
        if s_in is None or s_in != s_out or None in s_in:
            continue
        g.node.remove(n)
        if dst in graph_out:
            _rename(g, src, dst)
            if src in graph_in:
                raise ValueError("the model output is its input")
        else:
            _rename(g, dst, src)

    # 2. upsampling islands -> Resize
    producer = {o: n.name for n in g.node for o in n.output}
    consumers: dict[str, list[str]] = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n.name)
    by_name = {n.name: n for n in g.node}
    done: set[str] = set()
    replaced = 0
    for seed in [n for n in g.node if n.op_type == "Tile"]:
        if seed.name in done:
            continue
        region, todo = set(), [seed.name]
        while todo:
            name = todo.pop()
            if name in region:
                continue
            region.add(name)
            n = by_name[name]
            nbrs = [producer[i] for i in n.input if i in producer]
            nbrs += [c for o in n.output for c in consumers.get(o, [])]
            todo += [m for m in nbrs if by_name[m].op_type in MOVEMENT_OPS and m not in region]
        done |= region
        nodes = [by_name[r] for r in region]
        made = {o for n in nodes for o in n.output}
        entry = {i for n in nodes for i in n.input if i and i not in made and i not in consts}
        exits = {
            o
            for n in nodes
            for o in n.output
            if o in graph_out or any(c not in region for c in consumers.get(o, []))
        }
        if len(entry) != 1 or len(exits) != 1:
            raise ValueError(f"upsampling island at {seed.name!r}: {entry} -> {exits}")
        (x,), (y,) = entry, exits
        sx, sy = shapes.get(x), shapes.get(y)
        if (
            not sx
            or not sy
            or len(sx) != 4
            or len(sy) != 4
            or sx[:2] != sy[:2]
            or any(b % a for a, b in zip(sx[2:], sy[2:], strict=True))
        ):
            raise ValueError(f"upsampling island at {seed.name!r}: {sx} -> {sy} is not NCHW x s")
        scale_name = f"{seed.name}/scales"
        scales = np.array([1, 1, sy[2] // sx[2], sy[3] // sx[3]], np.float32)
        g.initializer.append(numpy_helper.from_array(scales, scale_name))
        last = max(i for i, n in enumerate(g.node) if n.name in region)
        resize = helper.make_node(
            "Resize",
            [x, "", scale_name],
            [y],
            name=seed.name.rsplit("/Repeat", 1)[0],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )
        g.node.insert(last + 1, resize)
        for n in nodes:
            g.node.remove(n)
        replaced += 1

    if batchnorm:
        _affine_to_batchnorm(g)

    # 3. unused constants, I/O name, opsets
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    old_out = g.output[0].name
    if old_out != output_name:
        _rename(g, old_out, output_name)
        g.output[0].name = output_name
    domains = {n.domain for n in g.node}
    opsets = [o for o in out.opset_import if o.domain in domains or o.domain in ("", "ai.onnx")]
    del out.opset_import[:]
    out.opset_import.extend(opsets)
    del g.value_info[:]
    out.ir_version = 8
    return out, replaced


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------


def graph_stats(proto) -> dict:
    from training.export import check_resize_rule

    ops = collections.Counter(n.op_type for n in proto.graph.node)
    try:
        n_resize = check_resize_rule(proto)
        rule = f"ok ({n_resize} Resize)"
    except ValueError as e:
        rule = f"fails: {e}"
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return {
        "nodes": len(proto.graph.node),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "transpose": ops.get("Transpose", 0),
        "bytes": len(proto.SerializeToString()),
        "input": [proto.graph.input[0].name, [d.dim_value for d in dims]],
        "output": proto.graph.output[0].name,
        "resize_rule": rule,
    }


def ort_session(data: bytes, optimized_path: str | None = None, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as the backend
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def ort_optimized_nodes(data: bytes) -> dict:
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "opt.onnx")
        ort_session(data, path)
        m = onnx.load(path)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    return {"nodes": len(m.graph.node), "ops": dict(sorted(ops.items()))}


class OrtRunner:
    def __init__(self, data: bytes, threads: int = 0):
        self.sess = ort_session(data, threads=threads)
        self.inp = self.sess.get_inputs()[0]
        self.shape = tuple(self.inp.shape)

    def __call__(self, x_nchw: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x_nchw.reshape(self.shape), np.float32)
        y = self.sess.run(None, {self.inp.name: x})[0]
        return y.reshape(x_nchw.shape)  # 1 channel: NHWC and NCHW share the memory order


class OvRunner:
    def __init__(self, data: bytes, threads: int = 0):
        import openvino as ov

        from hemoseg_edge.backends.openvino import choose_precision
        from hemoseg_edge.cpu import cpu_flags

        core = ov.Core()
        self.precision = choose_precision(
            "auto", cpu_flags(), core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        )
        model = core.read_model(data)
        self.shape = tuple(model.inputs[0].get_partial_shape().to_shape())
        cfg = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            cfg["INFERENCE_NUM_THREADS"] = int(threads)
        self.request = core.compile_model(model, "CPU", cfg).create_infer_request()

    def __call__(self, x_nchw: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x_nchw.reshape(self.shape), np.float32)
        self.request.infer({0: x})
        return self.request.get_output_tensor(0).data.copy().reshape(x_nchw.shape)


def latency(runners: dict, x: np.ndarray, rounds: int, clock=time.perf_counter) -> dict:
    """Seconds per run, the variants alternating (order rotated each round); ``clock``:
    ``time.perf_counter`` (wall) or ``time.process_time`` (CPU time of this process)."""
    names = list(runners)
    for name in names:  # warm-up
        runners[name](x)
        runners[name](x)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = clock()
            runners[name](x)
            times[name].append(clock() - t)
    return times


def same_as_shipped(proto, shipped) -> str:
    """Which parts of ``proto`` equal the shipped file (graph, metadata_props, doc_string)."""
    if proto.SerializeToString() == shipped.SerializeToString():
        return "bytes equal the shipped file"
    same = [
        what
        for what, a, b in (
            ("graph", proto.graph, shipped.graph),
            ("metadata_props", list(proto.metadata_props), list(shipped.metadata_props)),
            ("doc_string", proto.doc_string, shipped.doc_string),
        )
        if a == b
    ]
    return f"equal to the shipped file in: {', '.join(same) or 'nothing'}"


def paired(times: dict[str, list[float]], ref: str, seed: int = 0) -> dict[str, dict]:
    """Per-round time ratios against ``ref`` (same round: drift cancels), median and 95 %
    bootstrap interval of the median."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, ts in times.items():
        if name == ref:
            continue
        r = np.array(ts) / np.array(times[ref])
        meds = np.median(rng.choice(r, size=(2000, len(r))), axis=1)
        out[name] = {
            "median": round(float(np.median(r)), 3),
            "ci95": [round(float(np.percentile(meds, q)), 3) for q in (2.5, 97.5)],
        }
    return out


def real_images(input_hw: tuple[int, int], n: int) -> tuple[np.ndarray, list[str]]:
    """``n`` IDRiD official test images through the runtime's preprocessing, (n, 1, H, W)."""
    from hemoseg_edge.inputs import load_image
    from hemoseg_edge.preprocess import preprocess_frame

    paths = TESTS.idrid_images("test")[:n]
    if len(paths) < n:
        raise SystemExit("compare_export: needs the shared IDRiD test images")
    xs = []
    for p in paths:
        img = load_image(p, input_hw)
        xs.append(preprocess_frame(img.frame, img.original_hw, input_hw).tensor)
    return np.concatenate(xs).astype(np.float32), [p.stem for p in paths]


def _host() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln)
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = platform.processor() or "unknown"
    return f"{name}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--rounds", type=int, default=15, help="timed runs per variant and runtime")
    ap.add_argument("--images", type=int, default=2, help="IDRiD test images for agreement")
    add_timing_args(ap)
    args = ap.parse_args(argv)

    import keras
    import onnx

    from hemoseg_edge.model_file import ModelMetadata, proto_metadata
    from training.export import (
        _float32_model,
        architecture_input_hw,
        attach_metadata,
        check_resize_rule,
        count_upsampling,
        keras_to_onnx,
    )

    hw = architecture_input_hw(ARCH)
    t0 = time.perf_counter()
    model = _float32_model(hw, WEIGHTS, ARCH)
    shipped = SHIPPED.read_bytes()
    md: ModelMetadata = proto_metadata(onnx.load_from_string(shipped), str(SHIPPED))

    exports, convert_s, notes = {}, {}, {}
    t = time.perf_counter()
    hand = attach_metadata(keras_to_onnx(model, hw), md)
    convert_s["hand-written"] = time.perf_counter() - t
    exports["hand-written"] = hand
    notes["hand-written"] = same_as_shipped(hand, onnx.load_from_string(shipped))
    t = time.perf_counter()
    exports["tf2onnx"] = tf2onnx_export(model, hw, nchw=False)
    convert_s["tf2onnx"] = time.perf_counter() - t
    t = time.perf_counter()
    raw_nchw = tf2onnx_export(model, hw, nchw=True)
    passed, n_replaced = hemoseg_graph_pass(raw_nchw)
    passed = attach_metadata(passed, md)
    onnx.checker.check_model(passed, full_check=True)
    check_resize_rule(passed, expected=count_upsampling(model))
    convert_s["tf2onnx + pass"] = time.perf_counter() - t
    exports["tf2onnx + pass"] = passed
    notes["tf2onnx + pass"] = f"{n_replaced} upsampling islands -> Resize"
    t = time.perf_counter()
    with_bn, _ = hemoseg_graph_pass(raw_nchw, batchnorm=True)
    with_bn = attach_metadata(with_bn, md)
    onnx.checker.check_model(with_bn, full_check=True)
    check_resize_rule(with_bn, expected=count_upsampling(model))
    exports["tf2onnx + pass + BN"] = with_bn
    convert_s["tf2onnx + pass + BN"] = convert_s["tf2onnx + pass"] + time.perf_counter() - t
    notes["tf2onnx + pass + BN"] = "also Mul+Add (per channel) -> BatchNormalization"
    notes["tf2onnx"] = "as tf2onnx writes it (NHWC I/O)"
    raw_nchw_stats = graph_stats(raw_nchw)
    blobs = {k: v.SerializeToString() for k, v in exports.items()}

    # numerical agreement on real images (ONNX Runtime and OpenVINO), Keras as the reference
    x, ids = real_images(hw, args.images)
    ref = np.concatenate(
        [
            np.asarray(
                keras.ops.convert_to_numpy(model(x[i : i + 1, 0, ..., None], training=False))
            )
            for i in range(len(x))
        ]
    ).transpose(0, 3, 1, 2)
    ort_runs = {k: OrtRunner(b, args.threads) for k, b in blobs.items()}
    ov_runs = {k: OvRunner(b, args.threads) for k, b in blobs.items()}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    probs = {
        rt: {k: np.concatenate([r(x[i : i + 1]) for i in range(len(x))]) for k, r in runs.items()}
        for rt, runs in (("onnxruntime", ort_runs), ("openvino", ov_runs))
    }
    setup_s = time.perf_counter() - t0

    load_before = [round(v, 2) for v in os.getloadavg()]
    # A/A control: the hand-written export again, its session made last (seen: a later session
    # alone runs 5-10 % faster); a ratio closer to 1 than the control's is not a difference
    ort_runs[CONTROL] = OrtRunner(blobs["hand-written"], args.threads)
    ov_runs[CONTROL] = OvRunner(blobs["hand-written"], args.threads)
    t = time.perf_counter()
    times = {
        "onnxruntime": latency(ort_runs, x[:1], args.rounds, clock),
        "openvino": latency(ov_runs, x[:1], args.rounds, clock),
    }
    timing_s = time.perf_counter() - t
    ratios = {rt: paired(ts, "hand-written") for rt, ts in times.items()}
    control = {rt: ratios[rt].pop(CONTROL) for rt in ratios}
    control_ms = {rt: round(1000 * statistics.median(times[rt].pop(CONTROL)), 1) for rt in times}

    rows = {}
    for k, proto in exports.items():
        row = graph_stats(proto)
        row["convert_s"] = round(convert_s[k], 2)
        row["note"] = notes[k]
        row["ort_optimized"] = ort_optimized_nodes(blobs[k])
        for rt in times:
            if k in ratios[rt]:
                row[f"{rt}_time_ratio_vs_hand"] = ratios[rt][k]
            row[f"{rt}_ms_median"] = round(1000 * statistics.median(times[rt][k]), 1)
            row[f"{rt}_ms"] = [round(1000 * s, 1) for s in times[rt][k]]
            row[f"{rt}_max_abs_diff_vs_keras"] = float(np.max(np.abs(probs[rt][k] - ref)))
            row[f"{rt}_max_abs_diff_vs_hand"] = float(
                np.max(np.abs(probs[rt][k] - probs[rt]["hand-written"]))
            )
            row[f"{rt}_mask_pixels_differing_vs_hand"] = int(
                np.count_nonzero(
                    (probs[rt][k] >= md.threshold) != (probs[rt]["hand-written"] >= md.threshold)
                )
            )
        rows[k] = row
    versions = {
        k: importlib_metadata.version(k)
        for k in ("tf2onnx", "tensorflow-cpu", "keras", "onnx", "onnxruntime", "openvino")
    }
    result = {
        "host": _host(),
        "model": f"{WEIGHTS.name} ({ARCH}, {hw[0]}x{hw[1]})",
        "versions": versions,
        "images": ids,
        "rounds": args.rounds,
        "threads": args.threads or "runtime default",
        "clock": args.clock,
        "load_average_before_timing": load_before,
        "openvino_precision": next(iter(ov_runs.values())).precision,
        "threshold": md.threshold,
        "tf2onnx_nchw_before_pass": {
            k: raw_nchw_stats[k] for k in ("nodes", "ops", "transpose", "bytes")
        },
        "exports": rows,
        "aa_control": {"ratio_vs_hand": control, "ms_median": control_ms},
        "setup_s": round(setup_s, 1),
        "timing_s": round(timing_s, 1),
        "note": os.environ.get("HEMOSEG_BENCH_NOTE", ""),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0


def print_table(result: dict) -> None:
    rows = result["exports"]
    names = list(rows)
    print(f"host: {result['host']}; {result['model']}; images {', '.join(result['images'])}")
    print(f"versions: {result['versions']}; OpenVINO precision {result['openvino_precision']}")
    w = 22
    print(f"{'':34}" + "".join(f"{n:>{w}}" for n in names))

    def line(label, fn):
        print(f"{label:34}" + "".join(f"{fn(rows[n]):>{w}}" for n in names))

    line("nodes", lambda r: r["nodes"])
    ops = sorted({o for r in rows.values() for o in r["ops"]})
    for o in ops:
        line(f"  {o}", lambda r, o=o: r["ops"].get(o, 0))
    line("file size (bytes)", lambda r: r["bytes"])
    line("input", lambda r: "x".join(map(str, r["input"][1])))
    line("resize rule", lambda r: r["resize_rule"].split(":")[0][: w - 2])
    line("nodes after ORT optimisation", lambda r: r["ort_optimized"]["nodes"])
    line("convert (s)", lambda r: r["convert_s"])
    line("ONNX Runtime median (ms)", lambda r: r["onnxruntime_ms_median"])
    line("OpenVINO median (ms)", lambda r: r["openvino_ms_median"])
    for rt, label in (("onnxruntime", "ONNX Runtime"), ("openvino", "OpenVINO")):
        line(
            f"{label} time / hand (paired)",
            lambda r, rt=rt: (
                "{median} [{ci95[0]}, {ci95[1]}]".format(**r[f"{rt}_time_ratio_vs_hand"])
                if f"{rt}_time_ratio_vs_hand" in r
                else "1"
            ),
        )
    for rt in ("onnxruntime", "openvino"):
        line(f"{rt} max|p - keras|", lambda r, rt=rt: f"{r[f'{rt}_max_abs_diff_vs_keras']:.2e}")
        line(f"{rt} max|p - hand|", lambda r, rt=rt: f"{r[f'{rt}_max_abs_diff_vs_hand']:.2e}")
        line(
            f"{rt} mask px != hand",
            lambda r, rt=rt: r[f"{rt}_mask_pixels_differing_vs_hand"],
        )
    raw = result["tf2onnx_nchw_before_pass"]
    print(f"tf2onnx with NCHW I/O, before the pass: {raw['nodes']} nodes, {raw['ops']}")
    print("hand-written:", rows["hand-written"]["note"])
    for rt, r in result["aa_control"]["ratio_vs_hand"].items():
        print(
            f"A/A control ({rt}): the hand-written export again, loaded last: time / hand "
            f"{r['median']} [{r['ci95'][0]}, {r['ci95'][1]}]"
        )
    print(
        f"clock {result['clock']}, threads {result['threads']}, rounds {result['rounds']}, "
        f"load average before timing {result['load_average_before_timing']}"
    )


if __name__ == "__main__":
    sys.exit(main())
