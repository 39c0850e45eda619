"""FP16: the hand-written pass vs onnxconverter-common, on the shipped v2 and v1 FP32 models.

    python benchmarks/compare_fp16.py --out /tmp/fp16_methods.json [--rounds 10] [--images 4]
    python benchmarks/compare_fp16.py --out /tmp/x.json --skip-accuracy --threads 1 --clock cpu

For each shipped FP32 model (``engines/hemoseg_mnv2_v2.onnx``, ``engines/hemoseg_unet_v1.onnx``)
it makes two FP16 models in memory (nothing in ``engines/`` is written):

- ``hand-written``: the hand-written FP16 pass as the shipped ``*_fp16.onnx`` files were made
  (``hemoseg_edge.build.quantize.to_fp16``; the script checks that its bytes equal the
  shipped ``*_fp16.onnx``);
- ``onnxconverter-common``: ``onnxconverter_common.float16.convert_float_to_float16`` with
  ``keep_io_types=True`` and its defaults (``Resize`` in its op block list, values clamped to
  [1e-7, 1e4] in magnitude), the hemoseg metadata copied, precision "fp16".

Then, side by side: the graph (nodes, ``Cast`` nodes, file size), accuracy on ``--images``
IDRiD official test images through ``Segmenter.from_engine(path, backend="onnxruntime")``
(max |probability - FP32's| at model resolution, pooled Dice against the HE ground truth and
its difference from FP32's, Dice of the mask against FP32's mask) and the latency of one image
on ONNX Runtime and OpenVINO (the backends as deployed; the models alternating run by run,
``--rounds`` each; medians and per-round paired ratios, with an A/A control: the
hand-written model loaded a second time, last; later sessions alone measured 5-10 % faster, so
smaller ratios are not differences). ``--threads 1 --clock cpu`` measures the work (process CPU
time), which other jobs on a shared host barely change. Prints a table, writes the JSON to
``--out``. Needs onnxconverter-common, OpenVINO and the shared IDRiD data.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
import warnings
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_parity import truth  # noqa: E402
from benchlib import TESTS, add_timing_args  # noqa: E402
from compare_export import _host, paired  # noqa: E402

from hemoseg_edge.metrics import Counts, confusion, dice  # noqa: E402
from hemoseg_edge.segmenter import Segmenter  # noqa: E402

FAMILIES = {"v2": "hemoseg_mnv2_v2", "v1": "hemoseg_unet_v1"}
ENGINES = REPO / "engines"
CONTROL = "hand-written, again (A/A control, loaded last)"
LIB_MIN, LIB_MAX = 1e-7, 1e4  # convert_float_to_float16's defaults


def library_fp16(model):
    """onnxconverter-common's FP16 (``keep_io_types=True``) with the hemoseg metadata."""
    import onnx
    from onnxconverter_common.float16 import convert_float_to_float16

    from hemoseg_edge.build.quantize import _set_precision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # one warning per clamped value
        out = convert_float_to_float16(model, keep_io_types=True)
    _set_precision(out, model, "fp16")
    onnx.checker.check_model(out, full_check=True)
    return out


def clamped_by_library(model) -> int:
    """Float32 initializer values the library's defaults clamp (0 < |v| < 1e-7 or > 1e4)."""
    from onnx import TensorProto, numpy_helper

    n = 0
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            a = np.abs(numpy_helper.to_array(init))
            n += int(np.count_nonzero((a > 0) & (a < LIB_MIN)) + np.count_nonzero(a > LIB_MAX))
    return n


def graph_stats(proto) -> dict:
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    return {
        "nodes": len(proto.graph.node),
        "cast": ops.get("Cast", 0),
        "bytes": len(proto.SerializeToString()),
        "value_info": len(proto.graph.value_info),
    }


def accuracy(paths: dict[str, Path], images: list[Path]) -> dict[str, dict]:
    """Per model: pooled Dice vs the HE truth, max |p - FP32's p|, mask Dice vs FP32's mask."""
    segs = {k: Segmenter.from_engine(p, backend="onnxruntime") for k, p in paths.items()}
    gt = {k: Counts(0, 0, 0, 0) for k in segs}
    agree = {k: Counts(0, 0, 0, 0) for k in segs}
    worst = dict.fromkeys(segs, 0.0)
    worst_hand = dict.fromkeys(segs, 0.0)
    px_hand = dict.fromkeys(segs, 0)
    for img in images:
        t = truth(img)
        res = {k: s.segment(img) for k, s in segs.items()}
        ref = res["fp32"]
        for k, r in res.items():
            gt[k] = gt[k] + confusion(r.mask, t)
            agree[k] = agree[k] + confusion(r.mask, ref.mask)
            worst[k] = max(worst[k], float(np.max(np.abs(r.probability - ref.probability))))
            hand = res["hand-written"]
            diff = np.abs(r.probability - hand.probability)
            worst_hand[k] = max(worst_hand[k], float(np.max(diff)))
            px_hand[k] += int(np.count_nonzero(r.mask != hand.mask))
    out = {}
    for k in segs:
        out[k] = {
            "dice": round(dice(gt[k]), 5),
            "delta_dice_vs_fp32": round(dice(gt[k]) - dice(gt["fp32"]), 5),
            "mask_dice_vs_fp32": round(dice(agree[k]), 5),
            "max_abs_prob_diff_vs_fp32": worst[k],
            "max_abs_prob_diff_vs_hand_written": worst_hand[k],
            "mask_pixels_differing_vs_hand_written": px_hand[k],
        }
    for s in segs.values():
        if hasattr(s.backend, "close"):
            s.backend.close()
    return out


def latency(
    paths: dict[str, Path], backend: str, image: Path, rounds: int, threads: int = 0, clock=None
) -> tuple[dict, str]:
    """Seconds per ``backend.run`` of one preprocessed image, the models alternating (order
    rotated each round); ``clock``: ``time.perf_counter`` (wall) or ``time.process_time``."""
    clock = clock or time.perf_counter
    kw: dict = {"threads": threads} if threads else {}
    if backend == "openvino":
        kw["cache_dir"] = ""
    segs = {k: Segmenter.from_engine(p, backend=backend, **kw) for k, p in paths.items()}
    # A/A control: the hand-written model again, loaded last (a later session alone measured
    # 5-10 % faster); a ratio closer to 1 than the control's is not a difference
    segs[CONTROL] = Segmenter.from_engine(paths["hand-written"], backend=backend, **kw)
    first = next(iter(segs.values()))
    x = first.preprocess(first.load(image)).tensor
    names = list(segs)
    for k in names:
        segs[k].backend.run(x)
        segs[k].backend.run(x)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t = clock()
            segs[k].backend.run(x)
            times[k].append(clock() - t)
    providers = {k: ",".join(s.backend.providers) for k, s in segs.items()}
    for s in segs.values():
        if hasattr(s.backend, "close"):
            s.backend.close()
    return times, json.dumps(providers)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--rounds", type=int, default=10, help="timed runs per model and runtime")
    ap.add_argument("--images", type=int, default=4, help="IDRiD test images for accuracy")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    add_timing_args(ap)
    ap.add_argument("--skip-accuracy", action="store_true", help="graph and latency only")
    ap.add_argument("--skip-speed", action="store_true", help="graph and accuracy only")
    args = ap.parse_args(argv)

    import onnx

    from hemoseg_edge.build import quantize

    images = [p for p in TESTS.idrid_images("test")][: args.images]
    if len(images) < args.images:
        print("compare_fp16: needs the shared IDRiD test images and HE masks", file=sys.stderr)
        return 2
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    result: dict = {
        "host": _host(),
        "versions": {
            k: importlib_metadata.version(k)
            for k in ("onnxconverter-common", "onnx", "onnxruntime", "openvino")
        },
        "images": [p.stem for p in images],
        "rounds": args.rounds,
        "threads": args.threads or "backend default",
        "clock": args.clock,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "note": os.environ.get("HEMOSEG_BENCH_NOTE", ""),
        "families": {},
    }
    with tempfile.TemporaryDirectory(prefix="hemoseg-fp16-") as tmp:
        for fam in args.families:
            stem = FAMILIES[fam]
            src = ENGINES / f"{stem}.onnx"
            shipped = (ENGINES / f"{stem}_fp16.onnx").read_bytes()
            fp32 = onnx.load(src)
            t = time.perf_counter()
            ours = quantize.to_fp16(fp32, str(src))
            t_ours = time.perf_counter() - t
            t = time.perf_counter()
            lib = library_fp16(fp32)
            t_lib = time.perf_counter() - t
            quantize.check_fp16(lib)
            paths = {"fp32": src}
            for k, m in (("hand-written", ours), ("onnxconverter-common", lib)):
                paths[k] = Path(tmp) / f"{stem}_fp16_{k}.onnx"
                onnx.save(m, paths[k])
            fam_out = {
                "model": src.name,
                "hand_written_equals_shipped_fp16": ours.SerializeToString() == shipped,
                "library_equals_shipped_fp16": lib.SerializeToString() == shipped,
                "library_clamped_values": clamped_by_library(fp32),
                "convert_s": {"hand-written": round(t_ours, 2), "onnxconverter-common": t_lib},
                "graph": {
                    "fp32": graph_stats(fp32),
                    "hand-written": graph_stats(ours),
                    "onnxconverter-common": graph_stats(lib),
                },
            }
            if not args.skip_accuracy:
                fam_out["accuracy_onnxruntime"] = accuracy(paths, images)
            fam_out["convert_s"]["onnxconverter-common"] = round(t_lib, 2)
            for backend in () if args.skip_speed else ("onnxruntime", "openvino"):
                times, providers = latency(
                    paths, backend, images[0], args.rounds, args.threads, clock
                )
                fam_out[f"{backend}_providers"] = json.loads(providers)
                fam_out[f"{backend}_ms_median"] = {
                    k: round(1000 * float(np.median(v)), 1) for k, v in times.items()
                }
                fam_out[f"{backend}_ms"] = {
                    k: [round(1000 * s, 1) for s in v] for k, v in times.items()
                }
                ratios = paired(times, "hand-written")
                fam_out[f"{backend}_aa_control_ratio"] = ratios.pop(CONTROL)
                fam_out[f"{backend}_time_ratio_vs_hand_written"] = ratios
            result["families"][fam] = fam_out
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0


def print_table(result: dict) -> None:
    print(f"host: {result['host']}; images {', '.join(result['images'])}")
    print(f"versions: {result['versions']}")
    print(
        f"clock {result['clock']}, threads {result['threads']}, rounds {result['rounds']}, "
        f"load average at start {result['load_average_at_start']}"
    )
    names = ["fp32", "hand-written", "onnxconverter-common"]
    w = 22

    def line(label: str, cells: list) -> None:
        print(f"{label:30}" + "".join(f"{c:>{w}}" for c in cells))

    def ratio(ratios: dict, n: str) -> str:
        return "{median} [{ci95[0]}, {ci95[1]}]".format(**ratios[n]) if n in ratios else "1"

    for fam, f in result["families"].items():
        print(
            f"\n{fam} ({f['model']}); hand-written == shipped fp16 file: "
            f"{f['hand_written_equals_shipped_fp16']}; library == shipped: "
            f"{f['library_equals_shipped_fp16']}; values the library clamps: "
            f"{f['library_clamped_values']}"
        )
        line("", names)
        g = f["graph"]
        line("nodes", [g[n]["nodes"] for n in names])
        line("Cast nodes", [g[n]["cast"] for n in names])
        line("file size (bytes)", [g[n]["bytes"] for n in names])
        acc = f.get("accuracy_onnxruntime")
        if acc:
            diffs = [f"{acc[n]['max_abs_prob_diff_vs_fp32']:.3g}" for n in names]
            line("max |p - p_fp32| (ORT)", diffs)
            line("Dice vs truth (ORT)", [acc[n]["dice"] for n in names])
            line("  minus FP32's", [acc[n]["delta_dice_vs_fp32"] for n in names])
            line("mask Dice vs FP32 mask (ORT)", [acc[n]["mask_dice_vs_fp32"] for n in names])
            diffs = [f"{acc[n]['max_abs_prob_diff_vs_hand_written']:.3g}" for n in names]
            line("max |p - p_hand-written| (ORT)", diffs)
            line(
                "mask px != hand-written (ORT)",
                [acc[n]["mask_pixels_differing_vs_hand_written"] for n in names],
            )
        for rt, label in (("onnxruntime", "ONNX Runtime"), ("openvino", "OpenVINO")):
            if f"{rt}_ms_median" not in f:
                continue
            ratios = f[f"{rt}_time_ratio_vs_hand_written"]
            line(f"{label} median (ms)", [f[f"{rt}_ms_median"][n] for n in names])
            line(f"{label} time / hand-written", [ratio(ratios, n) for n in names])
            line(f"{label} ran as", [f[f"{rt}_providers"][n][: w - 2] for n in names])
            c = f[f"{rt}_aa_control_ratio"]
            print(
                f"  A/A control: hand-written again, loaded last: time / hand-written "
                f"{c['median']} [{c['ci95'][0]}, {c['ci95'][1]}]"
            )


if __name__ == "__main__":
    sys.exit(main())
