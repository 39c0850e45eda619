"""INT8 for OpenVINO: NNCF post-training quantization vs the shipped Q/DQ model.

    python benchmarks/compare_int8.py [--out benchmarks/int8_methods.json] [--rounds 10]

Quantizes the shipped FP32 model with ``hemoseg-edge quantize --method nncf`` on the same
calibration images as the shipped INT8 model (24 IDRiD training-folder images), then measures
on this host, side by side:

- parity: pooled Dice/IoU on the IDRiD official test images at full resolution, each INT8
  model on OpenVINO against the FP32 model on ONNX Runtime (the parity group's reference);
- speed: OpenVINO latency-tuned inference, the two INT8 models alternating round by round
  (``rounds`` x 6 frames each); the per-round ratio cancels drift in the host's speed.

"Faster at parity" decides which INT8 model OpenVINO should run (the issue's rule); the JSON
records both and ``benchmarks/report.py`` adds a section to BENCHMARKS.md. Needs nncf
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

from bench_parity import pooled  # noqa: E402
from benchlib import FP32, INT8, MODELS_DIR, TESTS, cpu_flags, fundus_images  # noqa: E402

from hemoseg_edge.metrics import Counts, confusion, dice, iou  # noqa: E402
from hemoseg_edge.quantize import calibration_batch, calibration_images, to_int8  # noqa: E402
from hemoseg_edge.segmenter import Segmenter  # noqa: E402

PARITY_TOLERANCE = 0.01  # the parity group's INT8 tolerance


def _agreement(masks: list, ref: list) -> float:
    total = Counts(0, 0, 0, 0)
    for a, b in zip(masks, ref, strict=True):
        total = total + confusion(np.unpackbits(a), np.unpackbits(b))
    return dice(total)


def speed(segs: dict[str, Segmenter], tensor: np.ndarray, rounds: int, frames: int = 6) -> dict:
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
    ap.add_argument("--rounds", type=int, default=10)
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
        ref_counts, ref_masks = pooled(Segmenter.from_engine(fp32, backend="onnxruntime"), cases)
        segs = {
            "shipped Q/DQ (ONNX Runtime quantizer)": Segmenter.from_engine(
                MODELS_DIR / INT8, backend="openvino"
            ),
            "NNCF (performance preset, head in float)": Segmenter.from_engine(
                nncf_path, backend="openvino"
            ),
        }
        rows = {}
        for name, seg in segs.items():
            counts, masks = pooled(seg, cases)
            rows[name] = {
                "providers": ",".join(seg.backend.providers),
                "bytes": (MODELS_DIR / INT8).stat().st_size
                if "shipped" in name
                else nncf_path.stat().st_size,
                "dice": round(dice(counts), 5),
                "iou": round(iou(counts), 5),
                "delta_dice": round(dice(counts) - dice(ref_counts), 5),
                "delta_iou": round(iou(counts) - iou(ref_counts), 5),
                "agreement_dice": round(_agreement(masks, ref_masks), 5),
            }
        tensor = next(iter(segs.values())).preprocess(next(iter(segs.values())).load(cases[0]))
        rates = speed(segs, tensor.tensor, args.rounds)
    names = list(segs)
    ratios = [b / a for a, b in zip(rates[names[0]], rates[names[1]], strict=True)]
    for name in names:
        rows[name]["images_per_s_median"] = round(statistics.median(rates[name]), 3)
        rows[name]["images_per_s"] = [round(r, 3) for r in rates[name]]
        rows[name]["parity"] = abs(rows[name]["delta_dice"]) <= PARITY_TOLERANCE
    faster = names[1] if statistics.median(ratios) > 1 else names[0]
    at_parity = [n for n in names if rows[n]["parity"]]
    choice = faster if faster in at_parity else (at_parity[0] if at_parity else None)
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
        "parity_tolerance": PARITY_TOLERANCE,
        "choice": choice,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("models", "paired_speed_ratio_nncf_over_shipped")}))
    print(f"choice: {choice}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
