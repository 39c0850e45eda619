"""Reading a model file: its bytes (guarded by the shipped manifest), its kind (ONNX or a
hemoseg TensorRT engine file) and its metadata, with one-line errors for anything malformed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import ModelError
from ..files import read_bytes
from . import engine_header
from .metadata import ModelMetadata
from .shipped import verify_against_manifest

if TYPE_CHECKING:  # pragma: no cover
    import onnx

ModelKind = Literal["onnx", "engine"]
# an fp32 model of model v2's size is 11 MB; the limit only refuses absurd files before reading
MAX_MODEL_BYTES = 1 << 30


def read_model(path: str | os.PathLike) -> tuple[bytes, ModelKind]:
    """Model bytes and kind; a listed file must match the manifest's sha256."""
    p = Path(path)
    data = read_bytes(p, MAX_MODEL_BYTES, ModelError, "a model")
    verify_against_manifest(p, data)
    return data, "engine" if engine_header.is_engine(data) else "onnx"


def parse_onnx(data: bytes, source: str) -> onnx.ModelProto:
    import onnx
    from google.protobuf.message import DecodeError

    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ModelError(f"{source}: not a valid ONNX model ({type(e).__name__})") from None
    if not proto.graph.node:
        raise ModelError(f"{source}: not a valid ONNX model (empty graph)")
    return proto


def proto_metadata(
    model: onnx.ModelProto, source: str = "model", allow_defaults: bool = False
) -> ModelMetadata:
    props = {p.key: p.value for p in model.metadata_props}
    return ModelMetadata.from_props(props, source, allow_defaults)


def onnx_metadata(data: bytes, source: str, allow_defaults: bool = False) -> ModelMetadata:
    return proto_metadata(parse_onnx(data, source), source, allow_defaults)


def model_metadata(
    data: bytes, kind: ModelKind, source: str, allow_defaults: bool = False
) -> ModelMetadata:
    """The metadata of either kind of model file (an engine's is in its header)."""
    if kind == "engine":
        header, _ = engine_header.split(data, source)
        return ModelMetadata.from_props(header["metadata"], source)
    return onnx_metadata(data, source, allow_defaults)
