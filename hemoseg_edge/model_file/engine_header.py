"""The hemoseg engine file: a small JSON header in front of a serialized TensorRT plan.

Layout: ``MAGIC`` (8 bytes) | header length (uint32 little endian) | header JSON (UTF-8) |
plan bytes. The header holds the model metadata (ONNX ``metadata_props``), the TensorRT
version, GPU name and compute capability, precision, the sha256 of the source ONNX and of the
plan. ``check_compatible`` refuses a plan built for another TensorRT or GPU with a one-line
message saying how to rebuild. Pure Python: tested here without TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path

from ..errors import ModelError

MAGIC = b"HSEGTRT1"
CACHE_ENV = "HEMOSEG_ENGINE_CACHE"
_LEN = struct.Struct("<I")
REQUIRED = (
    "metadata",
    "tensorrt_version",
    "gpu_name",
    "compute_capability",
    "precision",
    "onnx_sha256",
    "plan_sha256",
)


def is_engine(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def pack(header: dict, plan: bytes) -> bytes:
    header = dict(header, plan_sha256=hashlib.sha256(plan).hexdigest())
    missing = [k for k in REQUIRED if k not in header]
    if missing:
        raise ValueError(f"engine header lacks {', '.join(missing)}")
    blob = json.dumps(header, sort_keys=True).encode()
    return MAGIC + _LEN.pack(len(blob)) + blob + plan


def split(data: bytes, source: str = "engine") -> tuple[dict, bytes]:
    """(header, plan); raises ``ModelError`` for anything malformed or truncated."""
    if not is_engine(data):
        raise ModelError(f"{source}: not a hemoseg engine file (bad magic)")
    start = len(MAGIC) + _LEN.size
    if len(data) < start:
        raise ModelError(f"{source}: truncated engine file (no header length)")
    (n,) = _LEN.unpack_from(data, len(MAGIC))
    if len(data) < start + n:
        raise ModelError(f"{source}: truncated engine file (header cut short)")
    try:
        header = json.loads(data[start : start + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{source}: corrupt engine header (not JSON)") from None
    missing = [k for k in REQUIRED if k not in header]
    if missing:
        raise ModelError(f"{source}: engine header lacks {', '.join(missing)}")
    plan = data[start + n :]
    if hashlib.sha256(plan).hexdigest() != header["plan_sha256"]:
        raise ModelError(f"{source}: engine plan is truncated or corrupt (sha256 mismatch)")
    return header, plan


def check_compatible(
    header: dict, trt_version: str, gpu_name: str, compute_capability: str, source: str = "engine"
) -> None:
    """TensorRT plans only run on the TensorRT version and GPU model that built them."""
    rebuild = f"rebuild it on this device: hemoseg-edge build-engine MODEL.onnx --out {source}"
    if header["tensorrt_version"] != trt_version:
        raise ModelError(
            f"{source}: built with TensorRT {header['tensorrt_version']}, this is {trt_version}; "
            + rebuild
        )
    if (header["gpu_name"], header["compute_capability"]) != (gpu_name, compute_capability):
        raise ModelError(
            f"{source}: built for {header['gpu_name']} (sm {header['compute_capability']}), "
            f"this is {gpu_name} (sm {compute_capability}); " + rebuild
        )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "gpu"


def engine_cache_path(onnx_path: str | os.PathLike, gpu_name: str, trt_version: str) -> Path:
    """``model.<gpu>.<trt version>.engine`` beside the ONNX, or under ``$HEMOSEG_ENGINE_CACHE``
    (default ``~/.cache/hemoseg-edge/engines``) when that folder is not writable."""
    p = Path(onnx_path)
    name = f"{p.stem}.{_slug(gpu_name)}.{_slug(trt_version)}.engine"
    folder = p.parent if os.access(p.parent, os.W_OK) else None
    if folder is None:
        env = os.environ.get(CACHE_ENV)
        folder = Path(env) if env else Path.home() / ".cache" / "hemoseg-edge" / "engines"
    return folder / name
