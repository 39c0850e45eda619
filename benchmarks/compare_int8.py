"""INT8 for OpenVINO: NNCF post-training quantization vs the shipped Q/DQ model.

    python benchmarks/compare_int8.py [--out benchmarks/int8_methods.json] [--rounds 10]

Quantizes the shipped FP32 model with ``hemoseg-edge quantize --method nncf`` on the same
calibration images as the shipped INT8 model (24 IDRiD training-folder images), then measures
on this host, side by side:

- parity: pooled Dice/IoU on the IDRiD official test images at full resolution, each INT8
  model on OpenVINO against the FP32 model on ONNX Runtime (the parity group's reference),
  over all images and over each of 3 folds (image i in fold i % 3): a model at parity only on
  the whole set but not on a third of it is not at parity;
- speed: OpenVINO latency-tuned inference, the two INT8 models alternating frame by frame
  (``rounds`` pairs); each pair's ratio cancels drift in the host's speed, and the median of
  the ratios is reported.

"Faster at parity" decides which INT8 model OpenVINO should run (the issue's rule): NNCF's
only when it is at parity (whole set and every fold) and the 95 % bootstrap interval of the
median pair ratio lies above 1; otherwise the shipped Q/DQ model (one file for OpenVINO and
TensorRT). The JSON records both;
``benchmarks/report.py`` adds a section to BENCHMARKS.md. Needs nncf
(``pip install 'hemoseg-edge[nncf]'``), OpenVINO and the shared IDRiD data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_parity import agreement, per_image  # noqa: E402
from benchlib import FP32, INT8, MODELS_DIR, TESTS, cpu_flags, fundus_images  # noqa: E402

from hemoseg_edge.build.quantize import calibration_batch, calibration_images, to_int8  # noqa: E402
from hemoseg_edge.metrics import Counts, dice, iou  # noqa: E402
from hemoseg_edge.segmenter import Segmenter  # noqa: E402

PARITY_TOLERANCE = 0.01  # the parity group's INT8 tolerance
FOLDS = 3


def bootstrap_median_ci(values: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(values, size=(n, len(values))), axis=1)
    return float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def _total(counts: list[Counts]) -> Counts:
    return sum(counts, Counts(0, 0, 0, 0))


def speed(segs: dict[str, Segmenter], tensor: np.ndarray, rounds: int, frames: int = 1) -> dict:
    rates: dict[str, list[float]] = {k: [] for k in segs}
    for _ in range(rounds):
        for name, seg in segs.items():
            seg.backend.run(tensor)
            t = time.perf_counter()
            for _ in range(frames):
                seg.backend.run(tensor)
            rates[name].append(frames / (time.perf_counter() - t))
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "int8_methods.json")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--calib-count", type=int, default=24)
    args = ap.parse_args(argv)

    import onnx

    cases = [p for p in fundus_images() if "test" in p.parts]
    train = TESTS.data_root() / "idrid" / "images" / "train"
    if not cases or not train.is_dir():
        print("compare_int8: needs the shared IDRiD data (train and test)", file=sys.stderr)
        return 2
    fp32 = MODELS_DIR / FP32
    calib_paths = calibration_images([train], args.calib_count)
    md_hw = Segmenter.from_engine(fp32, backend="onnxruntime").metadata.input_hw
    t = time.perf_counter()
    nncf_model = to_int8(
        onnx.load(fp32),
        calibration_batch(calib_paths, md_hw),
        method="nncf",
        calib_info={"source": f"{len(calib_paths)} IDRiD training-folder images"},
        source=str(fp32),
    )
    quantize_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        nncf_path = Path(tmp) / "hemoseg_unet_v1_int8_nncf.onnx"
        onnx.save(nncf_model, nncf_path)
        ref_each, ref_masks = per_image(Segmenter.from_engine(fp32, backend="onnxruntime"), cases)
        ref_counts = _total(ref_each)
        paths = {
            "shipped Q/DQ (ONNX Runtime quantizer)": MODELS_DIR / INT8,
            "NNCF (performance preset, head in float)": nncf_path,
        }
        segs = {name: Segmenter.from_engine(p, backend="openvino") for name, p in paths.items()}
        rows = {}
        for name, seg in segs.items():
            each, masks = per_image(seg, cases)
            counts = _total(each)
            folds = [
                dice(_total(each[k::FOLDS])) - dice(_total(ref_each[k::FOLDS]))
                for k in range(FOLDS)
            ]
            rows[name] = {
                "providers": ",".join(seg.backend.providers),
                "bytes": paths[name].stat().st_size,
                "dice": round(dice(counts), 5),
                "iou": round(iou(counts), 5),
                "delta_dice": round(dice(counts) - dice(ref_counts), 5),
                "delta_iou": round(iou(counts) - iou(ref_counts), 5),
                "fold_delta_dice": [round(d, 5) for d in folds],
                "agreement_dice": round(dice(agreement(masks, ref_masks)), 5),
            }
            rows[name]["parity"] = all(
                abs(d) <= PARITY_TOLERANCE for d in [rows[name]["delta_dice"], *folds]
            )
        tensor = next(iter(segs.values())).preprocess(next(iter(segs.values())).load(cases[0]))
        rates = speed(segs, tensor.tensor, args.rounds)
    names = list(segs)
    ratios = [b / a for a, b in zip(rates[names[0]], rates[names[1]], strict=True)]
    for name in names:
        rows[name]["images_per_s_median"] = round(statistics.median(rates[name]), 3)
        rows[name]["images_per_s"] = [round(r, 3) for r in rates[name]]
    low, high = bootstrap_median_ci(ratios)
    nncf_wins = rows[names[1]]["parity"] and low > 1.0
    choice = names[1] if nncf_wins else names[0] if rows[names[0]]["parity"] else None
    result = {
        "cpu_flags": sorted(cpu_flags() & {"avx2", "avx512_vnni", "amx_int8", "amx_bf16"}),
        "versions": {k: importlib_metadata.version(k) for k in ("openvino", "nncf", "onnxruntime")},
        "images": len(cases),
        "calibration_images": len(calib_paths),
        "nncf_quantize_s": round(quantize_s, 1),
        "nncf_calibration": json.loads(
            {p.key: p.value for p in nncf_model.metadata_props}.get("hemoseg.extra", "{}")
        ).get("calibration"),
        "reference": {"model": FP32, "backend": "onnxruntime", "dice": round(dice(ref_counts), 5)},
        "models": rows,
        "paired_speed_ratio_nncf_over_shipped": round(statistics.median(ratios), 3),
        "paired_speed_ratios": [round(r, 3) for r in ratios],
        "paired_speed_ratio_ci95": [round(low, 3), round(high, 3)],
        "folds": FOLDS,
        "parity_tolerance": PARITY_TOLERANCE,
        "choice": choice,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("models", "paired_speed_ratio_nncf_over_shipped")}))
    print(f"choice: {choice}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
