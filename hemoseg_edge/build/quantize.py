"""FP32 hemoseg ONNX model -> FP16, or INT8 with explicit TensorRT-legal Q/DQ.

``hemoseg-edge quantize MODEL.onnx --precision fp16|int8 --out OUT.onnx [--calib DIR ...]``

- FP16 (``to_fp16``): an own small pass over the known op set. Weights are stored and computed in
  FP16; the graph input and output stay FP32 (one ``Cast`` each); ``Resize`` scales stay FP32.
  Kept over onnxconverter-common (measured): its ``convert_float_to_float16(keep_io_types=True)``
  is as accurate (IDRiD_55-58, ONNX Runtime: max |p - p_fp32| 0.112 vs 0.112 on v2, 0.0121 vs
  0.0122 on v1; Dice equal to 1e-5; max |p_lib - p_ours| 6.8e-4 / 2.6e-4), but it keeps every
  ``Resize`` in FP32 with a ``Cast`` pair around it (13 / 11 Casts instead of 2; taking Resize
  off its block list makes FP16 ``scales``, which the checker and ORT reject), and ORT then
  runs 1.07x [1.06, 1.09] (v2) and 1.08x [1.07, 1.09] (v1) our time; OpenVINO 1.01x / 1.00x
  (A/A control 0.99-1.00x). Single-thread process CPU time, 6 rounds, Intel(R) Xeon(R)
  Processor (lscpu), 2 cores; ``python benchmarks/compare_fp16.py --out /tmp/fp16.json
  --threads 1 --clock cpu`` (needs onnxconverter-common).
- INT8 (``to_int8``): explicit quantization for TensorRT's strongly typed mode. Symmetric INT8,
  zero point 0, per-tensor activation scales, per-channel weight scales on axis 0, bias left in
  float (no INT32 bias ``DequantizeLinear``), Q/DQ at the inputs of every ``Conv`` only.
  ``method="ort"`` uses ONNX Runtime's ``quantize_static`` (MinMax calibration, the default);
  ``method="modelopt"`` uses NVIDIA ModelOpt (``modelopt.onnx.quantization``, entropy
  calibration), which must be installed in its own environment (it replaces onnxruntime with
  onnxruntime-gpu and pins an older onnx). ``check_trt_qdq_rules`` verifies the result.
  ``method="nncf"`` uses OpenVINO's NNCF post-training quantization on the ONNX graph
  (``PERFORMANCE`` preset: symmetric; the 1x1 head conv kept in float, without which the
  masks collapse). NNCF also puts Q/DQ on Concat and MaxPool inputs; the result is for
  OpenVINO, and is checked against the TensorRT rules only for the record. Measured against
  the shipped ORT model in ``benchmarks/compare_int8.py``.

Calibration uses training images only, through the runtime's own ``io.load_image`` +
``preprocess.preprocess_frame``; a path inside a folder named ``test`` is refused.
Both conversions keep every ``hemoseg.*`` metadata key and set ``hemoseg.precision``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import HemosegError, ModelError, install_hint
from ..files import atomic_write_bytes
from ..inputs import IMAGE_SUFFIXES, load_image
from ..model_file import ModelMetadata, onnx_metadata, proto_metadata, read_model
from ..model_file.metadata import PREFIX
from ..preprocess import preprocess_frame

PRECISIONS = ("fp16", "int8")
METHODS = ("ort", "modelopt", "nncf")
DEFAULT_CALIB_COUNT = 16
# Ops whose kernels are type-polymorphic over float16: the FP16 pass refuses anything else.
FP16_OPS = frozenset(
    {
        "Conv",
        "Relu",
        "BatchNormalization",
        "MaxPool",
        "AveragePool",
        "Resize",
        "Concat",
        "Sigmoid",
        "Add",
        "Mul",
        "Identity",
        "Clip",  # ReLU6: its min/max initializers become float16 with the data
        "Slice",  # test-time flips (build.tta); their int64 arguments stay int64
        "Mean",
    }
)
FP16_MAX = 65504.0


class QuantizeError(HemosegError):
    """A conversion could not be done (bad input model, calibration data, missing tool)."""

    exit_code = 1


class QdqRuleError(ValueError):
    """The Q/DQ graph breaks a rule TensorRT's explicit quantization needs."""


# --------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------


def _set_precision(
    model: onnx.ModelProto, original: onnx.ModelProto, precision: str, extra: dict | None = None
) -> None:
    """Copy every metadata key of ``original`` onto ``model``; set precision, merge ``extra``."""
    props = {p.key: p.value for p in original.metadata_props}
    props[PREFIX + "precision"] = precision
    if extra:
        old = json.loads(props.get(PREFIX + "extra", "{}") or "{}")
        props[PREFIX + "extra"] = json.dumps({**old, **extra}, sort_keys=True)
    helper.set_model_props(model, props)
    model.producer_name = original.producer_name
    model.producer_version = original.producer_version
    model.doc_string = original.doc_string


def _require_fp32(model: onnx.ModelProto, source: str) -> ModelMetadata:
    md = proto_metadata(model, source)
    if md.precision != "fp32":
        raise QuantizeError(f"{source}: model precision is {md.precision}; start from the fp32 one")
    return md


# --------------------------------------------------------------------------------------------
# FP16
# --------------------------------------------------------------------------------------------


def _resize_params(g: onnx.GraphProto) -> set[str]:
    """``Resize`` roi/scales inputs: these stay float32 whatever the data type."""
    return {
        n.input[i]
        for n in g.node
        if n.op_type == "Resize"
        for i in (1, 2)
        if len(n.input) > i and n.input[i]
    }


def to_fp16(model: onnx.ModelProto, source: str = "model") -> onnx.ModelProto:
    """FP16 weights and compute, FP32 graph input/output, FP32 ``Resize`` scales."""
    _require_fp32(model, source)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    unknown = sorted({n.op_type for n in g.node} - FP16_OPS)
    if unknown:
        raise QuantizeError(f"{source}: fp16 pass does not know op(s) {', '.join(unknown)}")
    keep32 = _resize_params(g)
    for i, init in enumerate(g.initializer):
        if init.data_type != TensorProto.FLOAT or init.name in keep32:
            continue
        arr = numpy_helper.to_array(init)
        if arr.size and float(np.max(np.abs(arr))) > FP16_MAX:
            raise QuantizeError(f"{source}: initializer {init.name!r} overflows float16")
        g.initializer[i].CopyFrom(numpy_helper.from_array(arr.astype(np.float16), init.name))
    head: list[onnx.NodeProto] = []
    for inp in g.input:
        if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{inp.name}/fp16"
        for n in g.node:
            n.input[:] = [half if x == inp.name else x for x in n.input]
        head.append(
            helper.make_node(
                "Cast", [inp.name], [half], name=f"{inp.name}/to_fp16", to=TensorProto.FLOAT16
            )
        )
    tail: list[onnx.NodeProto] = []
    for o in g.output:
        if o.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{o.name}/fp16"
        for n in g.node:
            n.output[:] = [half if x == o.name else x for x in n.output]
            n.input[:] = [half if x == o.name else x for x in n.input]
        tail.append(
            helper.make_node(
                "Cast", [half], [o.name], name=f"{o.name}/to_fp32", to=TensorProto.FLOAT
            )
        )
    nodes = head + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # stale float32 annotations; shape inference recreates them
    _set_precision(out, model, "fp16")
    onnx.checker.check_model(out, full_check=True)
    check_fp16(out)
    return out


def check_fp16(model: onnx.ModelProto) -> None:
    """Raise ``ValueError`` unless I/O is float32, every float initializer float16 except
    ``Resize`` roi/scales (float32)."""
    g = model.graph
    for v in list(g.input) + list(g.output):
        if v.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise ValueError(f"graph I/O {v.name!r} is not float32")
    keep32 = _resize_params(g)
    for init in g.initializer:
        want = TensorProto.FLOAT if init.name in keep32 else TensorProto.FLOAT16
        if init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and init.data_type != want:
            raise ValueError(
                f"initializer {init.name!r} is {TensorProto.DataType.Name(init.data_type)}"
            )


# --------------------------------------------------------------------------------------------
# calibration data
# --------------------------------------------------------------------------------------------


def calibration_images(sources: Iterable[str | os.PathLike], count: int) -> list[Path]:
    """Image files from ``sources`` (files or folders, sorted), ``count`` spread evenly.

    Refuses any file in a folder named ``test``: calibration is part of building the model
    and must never see evaluation images.
    """
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise QuantizeError(f"{p}: no such calibration file or folder")
    for f in files:
        if f.resolve().parent.name.lower() == "test":
            raise QuantizeError(f"{f}: calibration must use training images, not test images")
    if not files:
        raise QuantizeError("no calibration images found")
    if count <= 0 or count >= len(files):
        return files
    step = len(files) / count
    return [files[int(i * step)] for i in range(count)]


def calibration_batch(paths: Sequence[str | os.PathLike], input_hw: tuple[int, int]) -> np.ndarray:
    """(N, 1, H, W) float32 model inputs through the runtime's one preprocessing truth."""

    tensors = []
    for p in paths:
        img = load_image(p, input_hw)
        tensor = preprocess_frame(img.frame, img.original_hw, input_hw).tensor
        assert tensor is not None  # preprocess_frame always builds it
        tensors.append(tensor)
    return np.concatenate(tensors).astype(np.float32)


# --------------------------------------------------------------------------------------------
# INT8
# --------------------------------------------------------------------------------------------


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("Please consider") and "pre-processing" in msg)


@contextmanager
def _quiet_ort_advice() -> Iterator[None]:
    """ORT's quantizer logs advice to pre-process (we fold nothing on purpose: Q/DQ must sit
    at the Conv inputs of the graph as exported); drop that one line, nothing else."""
    root, f = logging.getLogger(), _DropAdvice()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


def _quantize_ort(
    src: Path, dst: Path, input_name: str, calib: np.ndarray, keep_float: Sequence[str] = ()
) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(range(len(calib)))

        def get_next(self) -> dict | None:
            i = next(self._it, None)
            return None if i is None else {input_name: calib[i : i + 1]}

    with _quiet_ort_advice():
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=list(keep_float),
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                "AddQDQPairToWeight": False,
                "DedicatedQDQPair": False,
                "QDQOpTypePerChannelSupportToAxis": {"Conv": 0},
                "OpTypesToExcludeOutputQuantization": ["Conv"],
            },
        )


def _quantize_modelopt(src: Path, dst: Path, input_name: str, calib: np.ndarray) -> None:
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError:
        raise QuantizeError(
            "method 'modelopt' needs nvidia-modelopt[onnx] (install it in a separate environment: "
            "it replaces onnxruntime with onnxruntime-gpu); or use --method ort"
        ) from None
    quantize(
        str(src),
        quantize_mode="int8",
        calibration_data={input_name: calib},
        calibration_method="entropy",
        calibration_eps=["cpu"],
        op_types_to_quantize=["Conv"],
        high_precision_dtype="fp32",
        output_path=str(dst),
        log_level="ERROR",
    )


def _quantize_nncf(src: Path, dst: Path, input_name: str, calib: np.ndarray) -> None:
    try:
        import nncf
    except ImportError:
        raise QuantizeError(f"method 'nncf' needs nncf: {install_hint('nncf')}") from None
    model = onnx.load(src)
    head = [n.name for n in model.graph.node if n.op_type == "Conv"][-1]
    data = nncf.Dataset([calib[i : i + 1] for i in range(len(calib))], lambda x: {input_name: x})
    out = nncf.quantize(
        model,
        data,
        preset=nncf.QuantizationPreset.PERFORMANCE,
        target_device=nncf.TargetDevice.CPU,
        subset_size=len(calib),
        ignored_scope=nncf.IgnoredScope(names=[head]),
    )
    onnx.save(out, dst)


_QUANTIZERS = {"ort": _quantize_ort, "modelopt": _quantize_modelopt, "nncf": _quantize_nncf}
_METHOD_NAMES = {"ort": "ort-minmax", "modelopt": "modelopt-entropy", "nncf": "nncf-performance"}


def to_int8(
    model: onnx.ModelProto,
    calib: np.ndarray,
    *,
    method: str = "ort",
    calib_info: dict | None = None,
    source: str = "model",
    keep_float: Sequence[str] = (),
) -> onnx.ModelProto:
    """Explicit INT8 Q/DQ (see the module docstring); ``calib`` is (N, 1, H, W) float32.
    ``keep_float``: Conv node names the ORT quantizer leaves in float (chosen on validation)."""
    if method not in METHODS:
        raise QuantizeError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    md = _require_fp32(model, source)
    calib = np.ascontiguousarray(calib, np.float32)
    if calib.ndim != 4 or calib.shape[1:] != (1, *md.input_hw) or not len(calib):
        raise QuantizeError(f"calibration data {calib.shape} is not (N, 1, {md.input_hw})")
    input_name = model.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="hemoseg-quant-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        if keep_float:
            if method != "ort":
                raise QuantizeError("keep_float works with the ORT quantizer only")
            names = {n.name for n in model.graph.node if n.op_type == "Conv"}
            unknown = sorted(set(keep_float) - names)
            if unknown:
                raise QuantizeError(f"{source}: no Conv node(s) named {', '.join(unknown)}")
            _quantize_ort(src, dst, input_name, calib, keep_float)
        else:
            _QUANTIZERS[method](src, dst, input_name, calib)
        out = onnx.load(dst)
    info = {"method": _METHOD_NAMES[method], "images": int(len(calib)), **(calib_info or {})}
    if keep_float:
        info["float_nodes"] = list(keep_float)
    try:
        counts = check_trt_qdq_rules(out, allow_float_convs=method != "ort" or bool(keep_float))
    except QdqRuleError as e:
        if method != "nncf":
            raise
        info["tensorrt_qdq_rules"] = f"not met: {e}"
    else:
        if counts["float_conv"]:
            info["float_convs"] = counts["float_conv"]
    _set_precision(out, model, "int8", {"calibration": info})
    onnx.checker.check_model(out, full_check=True)
    return out


# --------------------------------------------------------------------------------------------
# TensorRT Q/DQ rules
# --------------------------------------------------------------------------------------------


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    c = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    c[n.output[0]] = numpy_helper.to_array(a.t)
    return c


def check_trt_qdq_rules(model: onnx.ModelProto, allow_float_convs: bool = False) -> dict[str, int]:
    """Raise ``QdqRuleError`` unless the Q/DQ graph is legal for TensorRT explicit INT8.

    Every Q/DQ node: standard domain, constant positive float scale, constant INT8 zero point
    that is all zeros. Activation scales are scalars; weight DQ scales are per-channel on axis 0
    with one scale per output channel. No ``DequantizeLinear`` of INT32 (quantized bias). Every
    ``Conv`` takes input 0 and its weight from a ``DequantizeLinear`` (``allow_float_convs``:
    a Conv with neither stays float, as ModelOpt leaves tiny ones). Every ``QuantizeLinear``
    feeds only ``DequantizeLinear``. Returns counts.
    """
    g = model.graph
    const = _constants(model)
    producer = {o: n for n in g.node for o in n.output}
    errors: list[str] = []
    qdq = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]

    def attr(n: onnx.NodeProto, name: str, default: int) -> int:
        return next((int(a.i) for a in n.attribute if a.name == name), default)

    for n in qdq:
        where = f"{n.op_type} {n.name or n.output[0]!r}"
        if n.domain not in ("", "ai.onnx"):
            errors.append(f"{where}: domain {n.domain!r}")
        scale = const.get(n.input[1]) if len(n.input) > 1 else None
        if scale is None or scale.dtype not in (np.float32, np.float16) or not np.all(scale > 0):
            errors.append(f"{where}: scale is not a constant positive float")
        zp = const.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None or zp.dtype != np.int8:
            errors.append(f"{where}: zero point missing or not int8")
        elif np.any(zp != 0):
            errors.append(f"{where}: zero point is not 0 (asymmetric)")
        elif scale is not None and zp.shape != scale.shape:
            errors.append(f"{where}: zero point shape {zp.shape} != scale shape {scale.shape}")
        if n.op_type == "DequantizeLinear" and n.input[0] in const:
            if const[n.input[0]].dtype != np.int8:
                errors.append(f"{where}: dequantizes {const[n.input[0]].dtype} (quantized bias?)")

    def weight_of(dq: onnx.NodeProto) -> np.ndarray | None:
        """The weight a DQ dequantizes: an int8 constant, or a float constant through a Q."""
        if dq.input[0] in const:
            return const[dq.input[0]]
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in const:
            return const[q.input[0]]
        return None

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in qdq:
        if n.op_type == "QuantizeLinear" and any(
            c.op_type != "DequantizeLinear" for c in consumers.get(n.output[0], [])
        ):
            errors.append(f"QuantizeLinear {n.name or n.output[0]!r}: feeds a non-DQ node")

    n_conv = n_float = 0
    weight_dqs: set[str] = set()
    for n in g.node:
        if n.op_type != "Conv":
            continue
        n_conv += 1
        where = f"Conv {n.name or n.output[0]!r}"
        x, w = producer.get(n.input[0]), producer.get(n.input[1])
        is_dq = [p is not None and p.op_type == "DequantizeLinear" for p in (x, w)]
        if allow_float_convs and not any(is_dq):
            n_float += 1
            continue
        if x is None or x.op_type != "DequantizeLinear":
            errors.append(f"{where}: input is not from DequantizeLinear")
        if w is None or w.op_type != "DequantizeLinear":
            errors.append(f"{where}: weight is not from DequantizeLinear")
            continue
        weight_dqs.add(w.name or w.output[0])
        wt, scale = weight_of(w), const.get(w.input[1])
        if wt is None or scale is None:
            errors.append(f"{where}: weight is not a constant")
            continue
        if scale.ndim != 1 or scale.shape[0] != wt.shape[0] or attr(w, "axis", 1) != 0:
            errors.append(
                f"{where}: weight scales {scale.shape} are not per-channel on axis 0 "
                f"for {wt.shape[0]} output channels"
            )
    for n in qdq:
        if (n.name or n.output[0]) in weight_dqs:
            continue
        if n.op_type == "QuantizeLinear" and n.input[0] in const:
            continue  # the Q half of a weight Q/DQ pair, checked through its DQ
        scale = const.get(n.input[1])
        if scale is not None and scale.ndim != 0:
            errors.append(
                f"{n.op_type} {n.name or n.output[0]!r}: activation scale shape "
                f"{scale.shape} is not a scalar"
            )
    if errors:
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        raise QdqRuleError("; ".join(errors[:3]) + more)
    n_q = sum(n.op_type == "QuantizeLinear" for n in qdq)
    return {"conv": n_conv, "float_conv": n_float, "quantize": n_q, "dequantize": len(qdq) - n_q}


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizeReport:
    path: Path
    precision: str
    size_bytes: int
    calibration: dict | None


def quantize_file(
    src: str | os.PathLike,
    out: str | os.PathLike,
    precision: str,
    *,
    calib: Sequence[str | os.PathLike] = (),
    calib_count: int = DEFAULT_CALIB_COUNT,
    method: str = "ort",
    keep_float: Sequence[str] = (),
) -> QuantizeReport:
    """Read an FP32 hemoseg ONNX file, convert it, check it, write it atomically."""
    if precision not in PRECISIONS:
        raise QuantizeError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    data, kind = read_model(src)
    if kind != "onnx":
        raise ModelError(f"{src}: is an engine file; quantize the ONNX model it was built from")
    md = onnx_metadata(data, str(src))
    model = onnx.load_from_string(data)
    info = None
    if precision == "fp16":
        result = to_fp16(model, str(src))
    else:
        if not calib:
            raise QuantizeError("int8 needs calibration images: --calib DIR_OR_FILES (training)")
        paths = calibration_images(calib, calib_count)
        batch = calibration_batch(paths, md.input_hw)
        info = {"files": [p.name for p in paths]}
        result = to_int8(
            model, batch, method=method, calib_info=info, source=str(src), keep_float=keep_float
        )
        info = proto_metadata(result).extra["calibration"]
    blob = result.SerializeToString()
    atomic_write_bytes(out, blob)
    return QuantizeReport(Path(out), precision, len(blob), info)
