"""Build a hemoseg engine file (header + TensorRT plan) from an FP32/FP16/INT8 ONNX model.

``hemoseg-edge build-engine MODEL.onnx --out MODEL.engine [--workspace-mb 1024]``

Written against TensorRT 10's documented Python API so that it also runs on TensorRT 11: a
strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; no EXPLICIT_BATCH, which
11 removed; no FP16/INT8 builder flags or calibrators: precision comes from the ONNX types and
its Q/DQ nodes), ``OnnxParser``, a workspace pool limit, one fixed-shape optimization profile,
``build_serialized_network``. The plan is wrapped by ``engine_header.pack`` with the model metadata,
TensorRT version, GPU name and compute capability, precision and the ONNX sha256.

**Not run on a GPU here**: written against the documented API and type-checked against
tensorrt-stubs 10.13 (``mypy.ini``); TensorRT is imported lazily, and without it every entry
point raises ``BackendUnavailableError`` with one line.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..backends.tensorrt import dims, gpu_identity, require_tensorrt
from ..errors import ModelError
from ..files import atomic_write_bytes
from ..model_file import engine_cache_path, engine_header, onnx_metadata, read_model

if TYPE_CHECKING:  # pragma: no cover
    import tensorrt as trt

DEFAULT_WORKSPACE_MB = 1024


def _parse_error(parser: trt.OnnxParser) -> str:
    msgs = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
    return "; ".join(m.strip().splitlines()[0] for m in msgs if m.strip())[:300] or "unknown"


def build_plan(
    onnx_bytes: bytes, source: str = "model", workspace_mb: int = DEFAULT_WORKSPACE_MB
) -> bytes:
    """Serialized TensorRT plan for ``onnx_bytes`` (strongly typed, fixed input shape)."""
    require_tensorrt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        raise ModelError(f"{source}: TensorRT cannot parse the ONNX model ({_parse_error(parser)})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = trt.Dims([d if d > 0 else 1 for d in dims(tensor.shape)])  # dynamic N -> 1
        profile.set_shape(tensor.name, shape, shape, shape)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"{source}: TensorRT could not build an engine (see its log above)")
    return bytes(memoryview(plan))


def build_engine(
    onnx_bytes: bytes,
    source: str = "model",
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    device: int = 0,
) -> bytes:
    """An engine file (``engine_file`` header + plan) for ``onnx_bytes`` on this GPU."""
    md = onnx_metadata(onnx_bytes, source)
    trt_version = require_tensorrt()
    gpu_name, cc = gpu_identity(device)
    plan = build_plan(onnx_bytes, source, workspace_mb)
    header = {
        "metadata": md.to_props(),
        "tensorrt_version": trt_version,
        "gpu_name": gpu_name,
        "compute_capability": cc,
        "precision": md.precision,
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "source_onnx": os.path.basename(source),
    }
    return engine_header.pack(header, plan)


def build_engine_file(
    onnx_path: str | os.PathLike, out: str | os.PathLike, workspace_mb: int = DEFAULT_WORKSPACE_MB
) -> Path:
    """``build-engine``: read the ONNX, build, write ``out`` atomically."""
    data, kind = read_model(onnx_path)
    if kind != "onnx":
        raise ModelError(f"{onnx_path}: is already an engine file; pass the ONNX model")
    atomic_write_bytes(out, build_engine(data, str(onnx_path), workspace_mb))
    return Path(out)


def cached_engine(
    onnx_bytes: bytes, source: str, workspace_mb: int = DEFAULT_WORKSPACE_MB, device: int = 0
) -> bytes:
    """The engine for ``onnx_bytes``: reused from ``engine_cache_path`` when it was built from
    the same ONNX by this TensorRT on this GPU, else built and written there (best effort)."""
    trt_version = require_tensorrt()
    gpu_name, cc = gpu_identity(device)
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    path = engine_cache_path(source, gpu_name, trt_version) if os.path.isfile(source) else None
    if path is not None and path.is_file():
        try:
            data = path.read_bytes()
            header, _ = engine_header.split(data, str(path))
            engine_header.check_compatible(header, trt_version, gpu_name, cc, str(path))
            if header["onnx_sha256"] == sha:
                return data
        except (OSError, ModelError):
            pass  # stale or corrupt: rebuild
    data = build_engine(onnx_bytes, source, workspace_mb, device)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        except OSError:
            pass  # read-only location: the engine is still used from memory
    return data
