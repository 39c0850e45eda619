"""Accuracy parity (group "parity"): pooled Dice and IoU against the IDRiD hemorrhage (HE)
ground truth at full resolution, for every backend x precision, compared with the FP32 ONNX
Runtime model; plus each variant's mask agreement (Dice) with the reference's masks."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
from benchlib import (
    ONE_AT_A_TIME,
    REFERENCE,
    Variant,
    default_segmenter,
    he_mask_path,
    n_images,
    skip_reason,
)
from PIL import Image

from hemoseg_edge.errors import BackendUnavailableError, HemosegError
from hemoseg_edge.metrics import Counts, confusion, dice, iou
from hemoseg_edge.model_file.shipped import OPENVINO_PRECISION, OPENVINO_RUNS_INT8
from hemoseg_edge.segmenter import Segmenter

# |pooled Dice (and IoU) - FP32 ONNX Runtime's| may not exceed these
TOLERANCE = {"fp32": 0.002, "fp16": 0.005, "bf16": 0.01, "int8": 0.01}
TOLERANCE_TRT_FP32 = 0.005  # TensorRT runs FP32 layers as TF32 on Ampere and newer


@cache
def _packed_truth(image) -> tuple[np.ndarray, tuple[int, int]]:
    a = np.asarray(Image.open(he_mask_path(image)))
    m = a > 0 if a.ndim == 2 else (a > 0).any(axis=2)
    return np.packbits(m), m.shape


def truth(image) -> np.ndarray:
    """The HE ground truth, ``> 0`` (read once, kept bit-packed)."""
    packed, shape = _packed_truth(image)
    return np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)


@pytest.fixture(scope="module")
def cases(models, images) -> list:
    if not models.real:
        pytest.skip("parity needs the real model (the tiny fallback is in use)")
    with_truth = [p for p in images if he_mask_path(p).is_file()]
    if not with_truth:
        pytest.skip("no IDRiD HE ground-truth masks (IDRiD test set not in the shared data)")
    # quick mode: 6 images (pooled Dice over 2 moved by more than bf16's tolerance on v2; over
    # all 27 every variant is within it)
    return with_truth[: n_images(len(with_truth), 6)]


def evaluate(v: Variant, models, cases) -> tuple[Counts, list[np.ndarray]]:
    try:
        seg = Segmenter.from_engine(models.path(v.file), backend=v.backend, **v.options)
    except BackendUnavailableError as e:
        pytest.skip(str(e))
    try:
        return pooled(seg, cases)
    finally:
        seg.backend.close()


def per_image(seg: Segmenter, cases) -> tuple[list[Counts], list[np.ndarray]]:
    """Confusion counts against the HE truth and bit-packed masks, image by image."""
    counts, packed = [], []
    for path, res in seg.segment_batch(cases, prefetch=2):
        if isinstance(res, HemosegError):
            raise res
        counts.append(confusion(res.mask, truth(path)))
        packed.append(np.packbits(res.mask))
    return counts, packed


def pooled(seg: Segmenter, cases) -> tuple[Counts, list[np.ndarray]]:
    counts, packed = per_image(seg, cases)
    return sum(counts, Counts(0, 0, 0, 0)), packed


def agreement(masks: list[np.ndarray], ref_masks: list[np.ndarray]) -> Counts:
    """Pooled counts of bit-packed masks against the reference's masks."""
    total = Counts(0, 0, 0, 0)
    for a, b in zip(masks, ref_masks, strict=True):
        total = total + confusion(np.unpackbits(a), np.unpackbits(b))
    return total


@pytest.fixture(scope="module")
def reference(models, cases):
    why = skip_reason(REFERENCE, models)
    if why:
        pytest.skip(why)
    return evaluate(REFERENCE, models, cases)


@pytest.mark.parametrize("v", ONE_AT_A_TIME, ids=lambda v: v.id)
def bench_parity(benchmark, v: Variant, models, cases, reference):
    why = skip_reason(v, models)
    if why:
        pytest.skip(why)
    benchmark.group = "parity"
    if v == REFERENCE:
        result = benchmark.pedantic(lambda: reference, rounds=1, iterations=1)
    else:
        result = benchmark.pedantic(evaluate, args=(v, models, cases), rounds=1)
    record(benchmark, result, reference, len(cases), v.backend, v.precision, v.file, v.id)


def bench_parity_default_cpu_path(benchmark, models, cases, reference):
    """What ``hemoseg-edge segment`` runs for several images (default model variant, backend
    "auto", throughput tuning): the numbers behind the end-to-end group."""
    benchmark.group = "parity"
    seg = default_segmenter(models, throughput=True)
    result = benchmark.pedantic(pooled, args=(seg, cases), rounds=1)
    precision = seg.metadata.precision
    computed = getattr(seg.backend, "precision", "")  # OpenVINO runs an FP32 file in bf16
    if precision == "fp32" and computed in ("bf16", "f16"):
        precision = "bf16" if computed == "bf16" else "fp16"
    name = Path(seg.source).name
    record(benchmark, result, reference, len(cases), seg.backend.name, precision, name, "")


def record(benchmark, result, reference, images, backend, precision, model, vid) -> None:
    """Store the variant's pooled Dice/IoU and agreement next to the reference; assert."""
    counts, masks = result
    ref_counts, ref_masks = reference
    agree = agreement(masks, ref_masks)
    tol = TOLERANCE_TRT_FP32 if vid == "tensorrt-fp32" else TOLERANCE[precision]
    d, i = dice(counts), iou(counts)
    d_ref, i_ref = dice(ref_counts), iou(ref_counts)
    benchmark.extra_info.update(
        backend=backend,
        precision=precision,
        model=model,
        images=images,
        dice=round(d, 5),
        iou=round(i, 5),
        reference_dice=round(d_ref, 5),
        reference_iou=round(i_ref, 5),
        delta_dice=round(d - d_ref, 5),
        delta_iou=round(i - i_ref, 5),
        agreement_dice=round(dice(agree), 5),
        tolerance=tol,
    )
    if backend == "openvino" and precision == "bf16" and OPENVINO_PRECISION != "auto":
        # measured and reported, not asserted: the default path asks OpenVINO for f32
        # (v6 in bf16 moved 0.012 Dice on this subset; model_file.shipped)
        benchmark.extra_info["parity"] = "not asserted: off the default path"
        return
    if backend == "openvino" and precision == "int8" and not OPENVINO_RUNS_INT8:
        # measured and reported, not asserted: the default path does not run INT8 on OpenVINO
        # (its int8 kernels lost 0.066 validation Dice on an AMD host; model_file.shipped)
        benchmark.extra_info["parity"] = "not asserted: off the default path"
        return
    assert abs(d - d_ref) <= tol, f"pooled Dice {d:.4f} vs FP32 ORT {d_ref:.4f} (tol {tol})"
    assert abs(i - i_ref) <= tol, f"pooled IoU {i:.4f} vs FP32 ORT {i_ref:.4f} (tol {tol})"
