"""Reading a model file: its bytes (guarded by the shipped manifest), its kind (ONNX or a
hemoseg TensorRT engine file) and its metadata, with one-line errors for anything malformed."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
    external = next(external_data_locations(proto), None)
    if external is not None:
        # a tensor's external data can name any file (an absolute path, ../): a runtime that
        # follows it reads files the model's author chose. Shipped models are self-contained.
        raise ModelError(
            f"{source}: refused: tensor data stored outside the model file ({external!r}); "
            "hemoseg models must be self-contained"
        )
    return proto


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def external_data_locations(model: onnx.ModelProto) -> Iterator[str]:
    """The ``location`` of every tensor (initializers, Constant attributes, subgraphs, sparse
    tensors, function bodies) whose data lives outside the model file."""
    import onnx

    graphs = [model.graph] + [
        onnx.helper.make_graph(list(f.node), f.name, [], []) for f in model.functions
    ]
    for graph in graphs:
        for tensor in _graph_tensors(graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
                where = {e.key: e.value for e in tensor.external_data}.get("location", "?")
                yield where


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
