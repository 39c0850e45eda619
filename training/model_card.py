"""Render ``engines/MODEL_CARD.md`` from measured files — no number is typed by hand.

    python -m training.model_card --model v1=engines/eval_v1.json,engines/quantize_v1.json \\
        --model v2=engines/eval_v2.json,engines/quantize_v2.json,engines/train_v2

Each ``--model`` is ``NAME=EVAL[,QUANT[,RUN]]``: the evaluation JSON (``training.evaluate``),
the precision-parity JSON (``training.quantize_report``) and a training run folder
(``run_info.json``, ``log.csv``; the shipped model's is committed beside it). The first model
listed is the shipped default. Also read: ``engines/manifest.json`` and the notes file.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from hemoseg_edge import metrics as M

ENGINES = Path(__file__).resolve().parents[1] / "engines"
NOTES = ENGINES / "MODEL_CARD_NOTES.md"


@dataclass
class Entry:
    name: str
    eval: dict
    quant: dict | None
    run: Path | None

    @property
    def test(self) -> dict:
        return self.eval["idrid_test"]

    @property
    def arch(self) -> str:
        return self.eval.get("architecture", "unet-skouta2022")

    @property
    def tta(self) -> str:
        return self.eval.get("tta", "none")

    @functools.cached_property
    def gflop(self) -> float:
        """Compute per frame, counted in the shipped FP32 file (test-time views included)."""
        from hemoseg_edge.build.flops import conv_gflop

        return conv_gflop(ENGINES / Path(self.eval["model"]).name)

    @functools.cached_property
    def input_hw(self) -> tuple[int, int]:
        """The input size in the shipped FP32 file's metadata (models of one architecture
        differ: v6 is v3's network at 1280 x 1312)."""
        from hemoseg_edge.model_file import onnx_metadata

        path = ENGINES / Path(self.eval["model"]).name
        return tuple(onnx_metadata(path.read_bytes(), path.name).input_hw)


def parse_model(spec: str) -> Entry:
    name, _, files = spec.partition("=")
    parts = [Path(p) for p in files.split(",") if p]
    if not name or not parts:
        raise SystemExit(f"--model {spec!r}: expected NAME=EVAL[,QUANT[,RUN]]")
    quant = parts[1] if len(parts) > 1 and parts[1].exists() else None
    run = parts[2] if len(parts) > 2 and parts[2].exists() else None
    return Entry(
        name,
        json.loads(parts[0].read_text()),
        json.loads(quant.read_text()) if quant else None,
        run,
    )


@functools.cache  # builds the Keras network: once per architecture and size, not per row
def architecture(arch: str, hw: tuple[int, int]) -> tuple[int, tuple[int, int], str]:
    """(parameters, input size, layer summary table) of an architecture at input size ``hw``."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from training.export import ARCH_NAMES, build_architecture

    short = {v: k for k, v in ARCH_NAMES.items()}.get(arch, "unet")
    m = build_architecture(short, hw)
    rows = ["| layer | type | output (H, W, C) | params |", "|---|---|---|---|"]
    for ly in m.layers:
        if (
            short == "mnv2"
            and ly.name.startswith("features.")
            and not ly.name.endswith(("project_bn", ".add", "features.0.relu"))
        ):
            continue  # one row per inverted-residual block is enough to read the shapes
        rows.append(
            f"| {ly.name} | {type(ly).__name__} | {tuple(ly.output.shape[1:])} | "
            f"{ly.count_params():,} |"
        )
    return m.count_params(), tuple(hw), "\n".join(rows)


def _f(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def comparison(entries: list[Entry], manifest: dict) -> list[str]:
    head = "| measure | " + " | ".join(e.name for e in entries) + " |"
    rows = [head, "|---" * (len(entries) + 1) + "|"]

    def row(label, get):
        vals = []
        for e in entries:
            try:
                vals.append(_f(get(e)))
            except (KeyError, TypeError):
                vals.append("–")
        rows.append(f"| {label} | " + " | ".join(vals) + " |")

    full = lambda e: e.test["full_resolution"]  # noqa: E731
    row("architecture", lambda e: e.arch)
    row("input (H x W)", lambda e: "x".join(map(str, e.input_hw)))
    row("test-time augmentation (in the graph)", lambda e: e.tta)
    row("GFLOP per frame", lambda e: f"{e.gflop:.1f}")
    row("parameters", lambda e: f"{architecture(e.arch, e.input_hw)[0]:,}")
    shipped = manifest.get("files", {})
    row(
        "*validation* AUPR (8 images, the choice)",
        lambda e: shipped[Path(e.eval["model"]).name]["val_aupr"],
    )
    row("*validation* Dice (8 images)", lambda e: shipped[Path(e.eval["model"]).name]["val_dice"])
    row("threshold (validation)", lambda e: e.test["threshold"])
    row("**AUPR, step-wise**", lambda e: full(e)["aupr"])
    row("AUPR, 11-threshold trapezoid", lambda e: full(e)["aupr_11pt_trapezoid"])
    row("**pooled Dice**", lambda e: full(e)["dice"])
    for k in ("iou", "precision", "sensitivity", "specificity"):
        row(f"pooled {k}", lambda e, k=k: full(e)[k])
    row("mean per-image Dice", lambda e: e.test["mean_per_image_dice"])
    row("lesion-level sensitivity", lambda e: e.test["lesion_level"]["sensitivity"])
    row(
        "false-positive lesions per image",
        lambda e: e.test["lesion_level"]["false_positive_lesions_per_image"],
    )
    row("image-level sensitivity, IDRiD test", lambda e: e.test["image_level"]["sensitivity"])
    row(
        "image-level sensitivity, DIARETDB1",
        lambda e: e.eval["diaretdb1"]["image_level"]["sensitivity"],
    )
    val_il = lambda e: e.eval["validation_image_level"]  # noqa: E731
    ddb1_il = lambda e: e.eval["diaretdb1"]["image_level"]  # noqa: E731
    row(
        "image-level ROC AUC (lesion-free proxy), *validation*",
        lambda e: val_il(e)["proxy_roc_auc"],
    )
    row("image-level ROC AUC (proxy), IDRiD test", lambda e: e.test["image_level"]["proxy_roc_auc"])
    row("image-level ROC AUC (proxy), DIARETDB1", lambda e: ddb1_il(e)["proxy_roc_auc"])
    row(
        "proxy specificity at the operating point, IDRiD test",
        lambda e: e.test["image_level"]["proxy_specificity"],
    )
    row(
        "proxy specificity at the operating point, DIARETDB1",
        lambda e: ddb1_il(e)["proxy_specificity"],
    )
    row("paper's leaky protocol: Dice", lambda e: e.eval["paper_way_leaky"]["dice"])
    return rows


def image_level_section(e: Entry) -> list[str]:
    """The image score's ROC against lesion-free proxies (training/image_level.py), where this
    model's evaluation measured it."""
    sets = [
        ("validation (8, the choice)", e.eval.get("validation_image_level")),
        ("IDRiD test (27)", e.test.get("image_level")),
        ("DIARETDB1 (14)", e.eval.get("diaretdb1", {}).get("image_level")),
    ]
    sets = [(n, d) for n, d in sets if d and d.get("proxy_negative_scores")]
    if not sets:
        return []
    op = sets[0][1].get("operating_point")
    out = [
        "",
        f"Image level (score: the strongest 3 x 3 mean probability; operating point {_f(op)}). "
        "No hemorrhage-free photographs are labelled here, so each photograph also stands in "
        "as a negative with its true hemorrhages removed (`training/image_level.py`: diseased "
        "eyes, not healthy ones; a proxy, not a screening specificity):",
        "",
        "| images | sensitivity | proxy specificity | proxy ROC AUC "
        "| ROC (threshold: sens / spec) |",
        "|---|---|---|---|---|",
    ]
    for name, d in sets:
        pos, neg = list(d["scores"].values()), list(d["proxy_negative_scores"].values())
        pts = M.roc_points(pos, neg)
        # the points where sensitivity or specificity changes, at most 6 of them
        step = max(1, len(pts) // 6)
        curve = "; ".join(f"{t:.4f}: {a:.2f} / {b:.2f}" for t, a, b in pts[::step][:6])
        out.append(
            f"| {name} | {_f(d.get('sensitivity'))} | {_f(d.get('proxy_specificity'))} | "
            f"{_f(d.get('proxy_roc_auc'))} | {curve} |"
        )
    return out


def model_section(e: Entry, manifest: dict) -> list[str]:
    t = e.test
    params, hw, table = architecture(e.arch, e.input_hw)
    out = [f"## {e.name}: `{Path(e.eval['model']).name}`", ""]
    files = {k: v for k, v in manifest.get("files", {}).items() if v.get("version") == e.name}
    if files:
        out += [
            "| file | precision | sha256 | bytes | threshold | image threshold | val AUPR | "
            "val Dice |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, f in sorted(files.items()):
            out.append(
                f"| {name} | {f.get('precision', f.get('kind', '?'))} | "
                f"`{f['sha256'][:16]}…` | {f['bytes']:,} | {f.get('threshold', '–')} | "
                f"{f.get('image_threshold', '–')} | {f.get('val_aupr', '–')} | "
                f"{f.get('val_dice', '–')} |"
            )
        out.append("")
    out += [
        f"IDRiD official test ({t['images']} images) through `Segmenter` (ONNX Runtime, "
        f"{e.eval['precision']}), threshold {t['threshold']} ({e.eval['threshold_source']}, "
        "tuned on validation only), pooled over all pixels:",
        "",
        "| resolution | Dice | IoU | precision | sensitivity | specificity | AUPR | AUPR 11-pt |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, key in (
        (f"full ({'x'.join(['4288', '2848'])})", "full_resolution"),
        (f"model ({hw[0]}x{hw[1]})", "model_resolution"),
    ):
        d = t[key]
        out.append(
            f"| {label} | "
            + " | ".join(
                _f(d.get(k))
                for k in (
                    "dice",
                    "iou",
                    "precision",
                    "sensitivity",
                    "specificity",
                    "aupr",
                    "aupr_11pt_trapezoid",
                )
            )
            + " |"
        )
    per = t["per_image_dice"]
    scores = t.get("image_level", {}).get("scores", {})
    proxy = t.get("image_level", {}).get("proxy_negative_scores", {})
    out += image_level_section(e)
    out += ["", f"Mean per-image Dice {t['mean_per_image_dice']:.4f}.", ""]
    out += ["| image | Dice | image score | lesion-free proxy score |", "|---|---|---|---|"]
    out += [f"| {k} | {v:.4f} | {_f(scores.get(k))} | {_f(proxy.get(k))} |" for k, v in per.items()]
    if "diaretdb1" in e.eval:
        d = e.eval["diaretdb1"]
        il = d.get("image_level", {})
        out += [
            "",
            f"DIARETDB1 ({d['images']} train-split images, never trained on, all with "
            "hemorrhage at confidence >= 0.75): image-level sensitivity (any lesion) "
            f"{d['image_level_sensitivity']}, by the image-level verdict "
            f"{_f(il.get('sensitivity'))}; "
            f"lesion-level hits {d['lesion_level_hits']} of {d['lesion_level_regions']} regions "
            f"({d['lesion_level_sensitivity']}). Experts drew coarse regions: pixel Dice there is "
            "not meaningful.",
        ]
    if "paper_way_leaky" in e.eval:
        leak = e.eval["paper_way_leaky"]
        out += [
            "",
            f"The paper's protocol (a random split of augmented copies, i.e. Dice on augmented "
            f"copies of *training* photographs, {leak['images']} tensors, model resolution): "
            f"**{leak['dice']:.4f}**, against **{t['full_resolution']['dice']:.4f}** on the "
            "official held-out split. Only the second says how the model does on a new patient.",
        ]
    if e.quant:
        q = e.quant
        out += [
            "",
            f"Precision variants ({q.get('images', '?')} test images, full resolution, "
            f"{q.get('backend', '?')}; the reference is FP32; CI asserts FP16 within 0.005 and "
            "INT8 within 0.01 Dice on a subset). s/image is this evaluation's wall time, whatever",
            "else ran on the host: speed is measured in BENCHMARKS.md.",
            "",
            "| model | Dice | IoU | Dice - FP32 | mask px differing | max prob diff | s/image |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in q["models"].values():
            out.append(
                f"| {Path(m['path']).name} ({m['precision']}) | {m['dice']:.4f} | {m['iou']:.4f} "
                f"| {m['dice_delta_vs_fp32']:+.4f} | {m['mask_pixels_differing_vs_fp32']:.2e} "
                f"| {m['prob_max_abs_diff_vs_fp32']:.3f} | {m['seconds_per_image']} |"
            )
    out += ["", *training_section(e), "", "### Architecture", ""]
    views = f", {e.tta} test-time augmentation included" if e.tta != "none" else ""
    out += [
        f"{params:,} parameters, {e.gflop:.1f} GFLOP per {hw[0]}x{hw[1]} frame (counted in "
        f"`{Path(e.eval['model']).name}`{views}).",
        "",
    ]
    out += ["<details><summary>layers</summary>", "", table, "", "</details>"]
    return out


def training_section(e: Entry) -> list[str]:
    run = e.run
    if not run or not (run / "run_info.json").exists():
        return ["### Training", "", "The training log of this model was not kept."]
    info = json.loads((run / "run_info.json").read_text())
    rows = list(csv.DictReader(open(run / "log.csv"))) if (run / "log.csv").exists() else []
    secs = sum(float(r["seconds"]) for r in rows)
    key = "val_aupr" if rows and "val_aupr" in rows[0] and rows[-1].get("val_aupr") else None
    out = [
        "### Training",
        "",
        f"- recipe `{info['recipe']}`, Keras backend `{info['backend']}`, precision "
        f"`{info['precision']}`, on `{info['cpu_model']}` ({info['device']})",
        f"- {info['train_images']} training images, {info['val_images']} validation images, "
        f"batch {info['batch']}, patch {info['patch']}",
        f"- {len(rows)} epochs logged, {secs / 3600:.2f} h of training steps "
        f"({2 * secs / 3600:.1f} CPU core-hours on 2 cores; validation excluded)",
    ]
    if info.get("input_hw"):  # runs before --input-hw trained at the architecture's size
        out.insert(
            -1, f"- field of view resampled to {info['input_hw'][0]} x {info['input_hw'][1]}"
        )
    if info.get("init") and not info.get("phases"):
        recal = info.get("recal_init")
        out.append(
            f"- fine-tuned from `{Path(info['init']).name}`"
            + (
                f", its BatchNorm statistics first re-estimated on {recal} whole training images"
                if recal
                else ""
            )
            + ("; every BatchNorm frozen" if info.get("freeze_bn") else "")
            + f"; lr {info['lr']}, exposure augmentation {info.get('exposure')}"
        )
    for i, ph in enumerate(info.get("phases", []), start=1):
        start = Path(ph["init"]).name if ph.get("init") else "ImageNet encoder"
        out.append(
            f"- phase {i}: {ph.get('note', '')} (lr {ph.get('lr')}, freeze_bn "
            f"{ph.get('freeze_bn')}, from {start})"
        )
    if rows and key:
        scored = [r for r in rows if r.get(key)]
        best = max(scored, key=lambda r: float(r[key]))
        out.append(
            f"- best validation AUPR (model resolution) {float(best[key]):.4f} at epoch "
            f"{best['epoch']} (the shipped weights)"
        )
        out += ["", *curve_chart(rows, key)]
    return out


def curve_chart(rows: list[dict], key: str) -> list[str]:
    """Validation AUPR and Dice per epoch as a Mermaid line chart (text: it lives in git)."""
    epochs = ", ".join(r["epoch"] for r in rows)
    aupr = ", ".join(f"{float(r[key] or 0):.3f}" for r in rows)
    dice = ", ".join(f"{float(r['val_dice_best']):.3f}" for r in rows)
    return [
        "Validation AUPR (line 1) and best-threshold Dice (line 2), model resolution, per epoch:",
        "",
        "```mermaid",
        "xychart-beta",
        '    title "validation AUPR and Dice per epoch"',
        f"    x-axis [{epochs}]",
        "    y-axis 0 --> 1",
        f"    line [{aupr}]",
        f"    line [{dice}]",
        "```",
    ]


def render(entries: list[Entry], manifest: dict) -> str:
    out = [
        "# Model card — hemoseg-edge",
        "",
        "Generated by `python -m training.model_card` (`make card`) from measured files; every",
        "number is reproduced by the commands in *Reproduce*. "
        f"`{entries[0].name}` is the shipped default.",
        "",
        "## Side by side: IDRiD official test, full resolution (27 images)",
        "",
        "Rows marked *validation* are the carve-out of train the models were chosen on;",
        "everything else is the official test set (or DIARETDB1), never used to tune.",
        "",
        *comparison(entries, manifest),
        "",
        "AUPR two ways: step-wise over 1000 probability bins (average-precision style), and as",
        "the M2MRF / HRDecoder evaluation code computes it (precision and recall at the 11",
        "thresholds 0, 0.1, ..., 1 joined by trapezoids), so published numbers compare fairly.",
        "Image-level: every labelled image available here has hemorrhage, so sensitivity is",
        "measured directly and specificity only by a proxy: each photograph scored again with",
        "its true hemorrhages removed (diseased eyes, not healthy ones;",
        "`training/image_level.py`). Specificity on healthy eyes needs healthy photographs.",
    ]
    for e in entries:
        out += ["", *model_section(e, manifest)]
    out += [
        "",
        "## Reproduce",
        "",
        "`make card` re-measures every number above and re-renders this file. The steps that",
        "made the shipped files (v7 fine-tunes v6's weights at a 1440 x 1472 field of view; v6",
        "fine-tunes v3's at 1280 x 1312 and adds horizontal-flip test-time augmentation in its",
        "graph; v4 is v3's network with",
        "that flip; v3 fine-tunes v2's committed weights; v2 itself came from",
        "`python -m training.train --recipe mnv2` in two phases, see its training history):",
        "",
        "```bash",
        "R=~/.cache/hemoseg-edge/runs/mnv2_exp",
        "python -m training.train --recipe mnv2 --init engines/hemoseg_mnv2_v2.weights.h5 \\",
        "    --freeze-bn --lr 1.25e-4 --exposure 0.45,1.4 --epochs 30 --patience 10 \\",
        "    --lr-patience 3 --run-dir $R            # v3: fine-tune (resumable: add --resume)",
        "python -m training.ship --arch mnv2 --name hemoseg_mnv2_v3.onnx --version v3 \\",
        "    --weights $R/best.weights.h5 --run-info $R/run_info.json  # export, tune on val",
        "python -m training.ship --arch mnv2 --name hemoseg_mnv2_v4.onnx --version v4 \\",
        "    --weights engines/hemoseg_mnv2_v3.weights.h5 --tta hflip \\",
        "    --run-info engines/train_v3/run_info.json    # v4: v3 + flip TTA, tuned on val",
        "hemoseg-edge quantize engines/hemoseg_mnv2_v4.onnx --precision fp16 \\",
        "    --out engines/hemoseg_mnv2_v4_fp16.onnx",
        "hemoseg-edge quantize engines/hemoseg_mnv2_v4.onnx --precision int8 \\",
        "    --calib ../shared/data/idrid/images/train --calib-count 24 \\",
        "    --keep-float {,tta0/}head {,tta0/}features.0.conv {,tta0/}features.{1..17}.dw \\",
        "    --out engines/hemoseg_mnv2_v4_int8.onnx",
        "R6=~/.cache/hemoseg-edge/runs/mnv2_v6  # v6: v3 at 1280 x 1312",
        "python -m training.train --recipe mnv2 --init engines/hemoseg_mnv2_v3.weights.h5 \\",
        "    --input-hw 1280 1312 --recal-init 45 --freeze-bn --lr 1.25e-4 --lr-patience 3 \\",
        "    --exposure 0.45,1.4 --epochs 30 --patience 6 --run-dir $R6",
        "python -m training.ship --arch mnv2 --name hemoseg_mnv2_v6.onnx --version v6 \\",
        "    --tta hflip --weights $R6/best.weights.h5 --run-info $R6/run_info.json",
        "hemoseg-edge quantize engines/hemoseg_mnv2_v6.onnx --precision fp16 \\",
        "    --out engines/hemoseg_mnv2_v6_fp16.onnx",
        "hemoseg-edge quantize engines/hemoseg_mnv2_v6.onnx --precision int8 \\",
        "    --calib ../shared/data/idrid/images/train --calib-count 24 \\",
        "    --keep-float {,tta0/}head {,tta0/}features.0.conv {,tta0/}features.{1..17}.dw \\",
        "    --out engines/hemoseg_mnv2_v6_int8.onnx",
        "R7=~/.cache/hemoseg-edge/runs/mnv2_v7  # v7, the default: v6 at 1440 x 1472 (most",
        "# likely tools/gpu_train.sh's recipe; that run's log and exact arguments were lost)",
        "python -m training.train --recipe mnv2 --init engines/hemoseg_mnv2_v6.weights.h5 \\",
        "    --input-hw 1440 1472 --freeze-bn --lr 4e-5 --lr-patience 2 --exposure 0.45,1.4 \\",
        "    --run-dir $R7",
        "python -m training.ship --arch mnv2 --name hemoseg_mnv2_v7.onnx --version v7 \\",
        "    --tta hflip --input-hw 1440 1472 --weights $R7/best.weights.h5",
        "# (from the committed engines/hemoseg_mnv2_v7.weights.h5 with --force, the same file:",
        "# parity 3.3e-5, the same validation threshold, operating point and minimum area)",
        "hemoseg-edge quantize engines/hemoseg_mnv2_v7.onnx --precision fp16 \\",
        "    --out engines/hemoseg_mnv2_v7_fp16.onnx",
        "hemoseg-edge quantize engines/hemoseg_mnv2_v7.onnx --precision int8 \\",
        "    --calib ../shared/data/idrid/images/train --calib-count 24 \\",
        "    --keep-float {,tta0/}head {,tta0/}features.0.conv {,tta0/}features.{1..17}.dw \\",
        "    --out engines/hemoseg_mnv2_v7_int8.onnx",
        "R5=~/.cache/hemoseg-edge/runs/unet_v5  # v5: the paper's U-Net, v1 fine-tuned",
        "python -m training.train --recipe cpu --init engines/hemoseg_unet_v1.onnx \\",
        "    --recal-init 45 --freeze-bn --lr 2.5e-4 --lr-patience 3 --patch 256 \\",
        "    --patch-schedule '' --exposure 0.45,1.4 --patience 8 --run-dir $R5",
        "python -m training.ship --arch unet --name hemoseg_unet_v5.onnx --version v5 \\",
        "    --weights $R5/best.weights.h5 --run-info $R5/run_info.json \\",
        "    --against hemoseg_unet_v1.onnx      # beats v1 on val (not v7, the default)",
        "hemoseg-edge quantize engines/hemoseg_unet_v5.onnx --precision fp16 \\",
        "    --out engines/hemoseg_unet_v5_fp16.onnx",
        "hemoseg-edge quantize engines/hemoseg_unet_v5.onnx --precision int8 \\",
        "    --calib ../shared/data/idrid/images/train --calib-count 24 \\",
        "    --out engines/hemoseg_unet_v5_int8.onnx",
        "make card",
        "```",
    ]
    if NOTES.exists():
        out += ["", NOTES.read_text().strip()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.model_card", description=__doc__)
    p.add_argument("--model", action="append", required=True, help="NAME=EVAL[,QUANT[,RUN]]")
    p.add_argument("--out", type=Path, default=ENGINES / "MODEL_CARD.md")
    args = p.parse_args(argv)
    from hemoseg_edge.model_file.shipped import read_manifest

    entries = [parse_model(s) for s in args.model]
    args.out.write_text(render(entries, read_manifest(ENGINES)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
