"""Everything about model files: the metadata that travels inside them, reading and validating
ONNX models and hemoseg engine files, the shipped models and their sha256 manifest, and where
built engines are cached. Segmenter, the build tools and the CLI ask here; nothing else parses
a model file."""

from .engine_header import engine_cache_path, is_engine
from .metadata import NO_IMAGE_THRESHOLD, MissingMetadataError, ModelMetadata
from .reader import ModelKind, model_metadata, onnx_metadata, parse_onnx, proto_metadata, read_model
from .shipped import (
    DEFAULT_MODEL,
    FP16_MODEL,
    INT8_MODEL,
    OPENVINO_INT8_MODEL,
    OPENVINO_PRECISION,
    OPENVINO_RUNS_INT8,
    PREVIOUS_FP16_MODEL,
    PREVIOUS_INT8_MODEL,
    PREVIOUS_MODEL,
    default_model_path,
    engines_dirs,
)

__all__ = [
    "DEFAULT_MODEL",
    "FP16_MODEL",
    "INT8_MODEL",
    "OPENVINO_INT8_MODEL",
    "OPENVINO_PRECISION",
    "OPENVINO_RUNS_INT8",
    "NO_IMAGE_THRESHOLD",
    "PREVIOUS_FP16_MODEL",
    "PREVIOUS_INT8_MODEL",
    "PREVIOUS_MODEL",
    "MissingMetadataError",
    "ModelKind",
    "ModelMetadata",
    "default_model_path",
    "engine_cache_path",
    "engines_dirs",
    "is_engine",
    "model_metadata",
    "onnx_metadata",
    "parse_onnx",
    "proto_metadata",
    "read_model",
]
