"""Shipped model files: where they are, and the sha256 manifest that guards them.

Search order for the engines folder: ``HEMOSEG_ENGINES``; the repository's ``engines/`` (source
checkout or editable install); ``<sys.prefix>/share/hemoseg-edge/engines`` (``pip install .``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from ..errors import ModelError

# Model v7: v6's network fine-tuned at a larger field of view (1440x1472), with horizontal-flip
# test-time augmentation in its graph (engines/MODEL_CARD.md); the default because it beat every
# shipped model on validation (v6 before it)
DEFAULT_MODEL = "hemoseg_mnv2_v7.onnx"
FP16_MODEL = "hemoseg_mnv2_v7_fp16.onnx"
# The INT8 Q/DQ variant: TensorRT's input, and the default where OpenVINO runs int8 natively
# (see Segmenter.default_model; benchmarks/compare_int8.py for why not NNCF's)
INT8_MODEL = "hemoseg_mnv2_v7_int8.onnx"
# Whether the default path runs INT8_MODEL on OpenVINO. Not for v7, v6, v4 or v3 (that network):
# OpenVINO's int8 kernels on v3's Q/DQ file lose 0.066 validation Dice against FP32 (0.553 vs
# 0.619; ONNX Runtime's int8 of the same file: 0.617; measured on an AMD EPYC with
# AVX512-VNNI; v2's int8 file there lost 0.028 on 3 test images, though it kept parity on the
# Intel AMX host it was chosen on), so OpenVINO runs the FP32 model (bf16 where the CPU has
# it: 0.619) until an INT8 recipe keeps parity on every host (tests/test_openvino.py asserts
# the default path's)
OPENVINO_RUNS_INT8 = False
# The precision the default path asks OpenVINO for with the FP32 file ("auto": bf16 where the
# CPU has it). f32 for v7 as for v6: v6 in bf16 moved pooled Dice 0.012 from FP32 ONNX Runtime
# on the quick parity subset (Intel AMX host), over the 0.01 parity bound; v4 kept parity in
# bf16; v7 in bf16 is unmeasured (no bf16 host since)
OPENVINO_PRECISION = "fp32"
# The INT8 file the default path runs on OpenVINO, or None (then always the FP32 file)
OPENVINO_INT8_MODEL: str | None = INT8_MODEL if OPENVINO_RUNS_INT8 else None
# v1, the paper's U-Net (the reproduction): still shipped, chosen with --model
PREVIOUS_MODEL = "hemoseg_unet_v1.onnx"
PREVIOUS_FP16_MODEL = "hemoseg_unet_v1_fp16.onnx"
PREVIOUS_INT8_MODEL = "hemoseg_unet_v1_int8.onnx"
MANIFEST = "manifest.json"


def engines_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("HEMOSEG_ENGINES"):
        dirs.append(Path(os.environ["HEMOSEG_ENGINES"]))
    dirs.append(Path(__file__).resolve().parents[2] / "engines")
    dirs.append(Path(sys.prefix) / "share" / "hemoseg-edge" / "engines")
    return dirs


def default_model_path(name: str = DEFAULT_MODEL) -> Path:
    for d in engines_dirs():
        if (d / name).is_file():
            return d / name
    raise ModelError(
        f"no default model: {name} not found in "
        + ", ".join(str(d) for d in engines_dirs())
        + " (train and export one, or pass a model path)"
    )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(folder: Path) -> dict:
    f = folder / MANIFEST
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{f}: unreadable manifest ({e})") from None


def verify_against_manifest(path: Path, data: bytes) -> bool:
    """True when the file is listed and matches; raises on a mismatch; False when unlisted."""
    entry = read_manifest(path.parent).get("files", {}).get(path.name)
    if not entry:
        return False
    if sha256_bytes(data) != entry["sha256"]:
        raise ModelError(
            f"{path}: sha256 does not match {MANIFEST} (file corrupt or replaced); "
            "restore it from the release"
        )
    return True
