"""Write BENCHMARKS.md (and the latency plot) from a pytest-benchmark JSON file.

    python benchmarks/report.py benchmarks/results.json [more.json ...] [--out BENCHMARKS.md]
        [--plot benchmarks/latency.png]

Several JSON files (e.g. groups run separately) are merged: their benchmarks are concatenated,
the machine description is the first file's.

Every number in the output comes from the JSON (or, in the Jetson section, is computed from the
stated TOPS figures); nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")
GROUP_ORDER = (
    "preprocess-cpu",
    "preprocess-cuda",
    "inference",
    "postprocess",
    "outputs",
    "end-to-end",
    "cpu-budget",
    "memory",
    "parity",
    "archive",
)
# Advertised AI performance of each Jetson Orin module: INT8 TOPS *with* 2:4 structured sparsity,
# GPU and DLAs together (NVIDIA Jetson Orin module data sheets; "Super" = JetPack 6.2 clocks).
# Dense INT8 = sparse / 2; dense FP16 = dense INT8 / 2 (Ampere tensor cores).
ORIN_SPARSE_INT8_TOPS = (
    ("Jetson AGX Orin 64GB", 275.0),
    ("Jetson AGX Orin 32GB", 200.0),
    ("Jetson Orin NX 16GB (Super)", 157.0),
    ("Jetson Orin NX 16GB", 100.0),
    ("Jetson Orin NX 8GB (Super)", 117.0),
    ("Jetson Orin NX 8GB", 70.0),
    ("Jetson Orin Nano 8GB (Super)", 67.0),
    ("Jetson Orin Nano 8GB", 40.0),
    ("Jetson Orin Nano 4GB (Super)", 34.0),
    ("Jetson Orin Nano 4GB", 20.0),
)


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:,.1f}"


def _label(b: dict) -> str:
    """The backend-precision for per-backend groups, else the benchmark's name (with its
    parameter, e.g. ``find_fov[native]``)."""
    base = b["name"].split("[", 1)[0].removeprefix("bench_")
    param = b.get("param")
    if param and b.get("group") in ("inference", "memory", "parity"):
        return param
    return f"{base}[{param}]" if param else base


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def by_group(data: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for b in data.get("benchmarks", []):
        groups.setdefault(b.get("group") or "other", []).append(b)
    return groups


def machine_section(data: dict) -> list[str]:
    mi = data.get("machine_info", {})
    hm = mi.get("hemoseg", {})
    run = data.get("hemoseg", {})
    flags = hm.get("cpu_flags", {})
    lines = ["## Machine", ""]
    rows = [
        ["CPU", hm.get("cpu_model", mi.get("cpu", {}).get("brand_raw", "?"))],
        ["flags", ", ".join(f"{f} {'yes' if flags.get(f) else 'no'}" for f in FLAGS)],
        [
            "cores",
            f"{hm.get('logical_cores')} logical, {hm.get('physical_cores')} physical, "
            f"{hm.get('affinity_cores')} usable",
        ],
        ["memory", f"{hm.get('memory_gb')} GB"],
        ["GPU", hm.get("gpu") or "none"],
        ["mode", "quick (CI)" if run.get("quick") else "full"],
        [
            "model",
            "real (" + run.get("models_dir", "?") + ")"
            if run.get("real_model")
            else "tiny fallback: no real model in " + run.get("models_dir", "?"),
        ],
        ["load average (1, 5, 15 min) at start", run.get("load_average_at_start")],
        ["load average at end", hm.get("load_average_at_end")],
        ["note", run.get("note") or "-"],
        ["environment", ", ".join(f"{k}={v}" for k, v in run.get("env", {}).items()) or "-"],
        ["date", data.get("datetime", "?")],
    ]
    lines += _table(["", ""], rows)
    versions = hm.get("versions", {})
    lines += ["## Versions", ""]
    lines += _table(["package", "version"], [[k, v] for k, v in sorted(versions.items())])
    return lines


def _per_round(b: dict) -> int:
    return int(b.get("extra_info", {}).get("images_per_round", 1))


def _per_image(b: dict, stat: str = "median") -> float:
    """Seconds per image (throughput-tuned inference runs several images per round)."""
    return b["stats"][stat] / _per_round(b)


def _ips(b: dict) -> float:
    return 1.0 / _per_image(b)


def inference_section(benches: list[dict]) -> list[str]:
    ref = next((b for b in benches if _label(b) == "onnxruntime-fp32"), None)
    rows = []
    for b in sorted(benches, key=_per_image):
        ei, st = b.get("extra_info", {}), b["stats"]
        speedup = f"{_per_image(ref) / _per_image(b):.2f}x" if ref else "-"
        rows.append(
            [
                _label(b),
                ei.get("providers", ""),
                _ms(_per_image(b)),
                _ms(_per_image(b, "iqr")),
                f"{st['rounds']} x {_per_round(b)}",
                f"{_ips(b):.2f}",
                speedup,
                ei.get("load_s", ""),
            ]
        )
    head = ["backend-precision", "runs as", "median ms / image", "IQR ms", "rounds x images"]
    return [
        "Latency tuning runs one image at a time on all cores; throughput tuning keeps"
        " `2 x streams` images in flight (one OpenVINO stream per core) and divides the round"
        " time by that count.",
        "",
        *_table(head + ["images/s", "speed-up vs ORT FP32", "load s"], rows),
    ]


def generic_section(benches: list[dict]) -> list[str]:
    rows = []
    for b in benches:
        ei, st = b.get("extra_info", {}), b["stats"]
        extra = ", ".join(
            f"{k}={v}"
            for k, v in ei.items()
            if k
            in ("images_per_s", "paired_ratio", "ceiling_ratio", "model", "providers", "variant")
        )
        rows.append([_label(b), _ms(st["median"]), _ms(st["iqr"]), st["rounds"], extra])
    return _table(["benchmark", "median ms", "IQR ms", "rounds", "notes"], rows)


def archive_section(benches: list[dict]) -> list[str]:
    """Ray Data against ``segment``'s batch path, each round paired with a yardstick run just
    before it (bench_archive.py), and Ray's cost per task."""
    rows, sched = [], []
    for b in benches:
        ei = b.get("extra_info", {})
        if ei.get("mode") == "archive-scheduling":
            sched.append(
                f"Ray Data scheduling: {ei['scheduling_ms_per_task']} ms per task "
                f"(rounds {ei['scheduling_ms_per_task_rounds']}; "
                f"{ei['scheduling_ms_per_image_at_batch_4']} ms per image at the CLI's batch of 4)."
            )
            continue
        rows.append(
            [
                f"{ei.get('workers')} actor(s) x {ei.get('cpus_per_worker')} CPU",
                ei.get("images_per_round"),
                ei.get("images_per_s"),
                ei.get("segment_batch_images_per_s"),
                ei.get("paired_ratio"),
                ei.get("overhead_ms_per_image"),
                ei.get("steady_images_per_s"),
                ei.get("startup_s"),
                b["stats"]["rounds"],
            ]
        )
    head = [
        "archive",
        "images/round",
        "images/s",
        "segment batch images/s (same run)",
        "ratio",
        "Ray overhead ms/image",
        "steady images/s",
        "start-up s",
        "rounds",
    ]
    note = (
        "ratio: a round's archive rate over the yardstick's just before it, actor start and "
        "model load included; steady: the rate between the first and the last row written."
    )
    return [*_table(head, rows), note, "", *sched, ""] if rows or sched else []


def serve_section(load: dict) -> list[str]:
    """``hemoseg-edge serve`` under load (benchmarks/load_http.py --out)."""
    host = load.get("host", {})
    model = load.get("model", {})
    lines = [
        "## serve (HTTP)",
        "",
        f"`benchmarks/load_http.py` against `hemoseg-edge serve` on loopback "
        f"({load.get('source')}, {load.get('date', '?')}): POST /v1/segment with "
        f"{load.get('image')} ({load.get('image_bytes')} bytes), model {model.get('name')} "
        f"({model.get('precision', '?')}), {load.get('server_workers')} inference worker(s); "
        f"host {host.get('cpu_model')}, {host.get('cpus')} CPUs, load average at start "
        f"{[round(v, 2) for v in host.get('load_avg') or []]}. Idle RSS after model load "
        f"{load.get('idle_rss_mb_after_load')} MB.",
        "",
    ]
    rows = [
        [
            r["concurrency"],
            r["requests_ok"],
            len(r["errors"]),
            r["requests_per_s"],
            r["p50_ms"],
            r["p99_ms"],
            r["peak_rss_mb"],
        ]
        for r in load.get("levels", [])
    ]
    head = ["clients", "ok", "errors", "requests/s", "p50 ms", "p99 ms", "peak RSS MB"]
    return [*lines, *_table(head, rows)]


def _host_of(run: dict) -> tuple[str, str]:
    mi = run.get("machine_info", {})
    cpu = mi.get("hemoseg", {}).get("cpu_model") or mi.get("cpu", {}).get("brand_raw", "?")
    return cpu, str(run.get("datetime", "?"))


def _apart(b: dict, main: tuple[str, str] | None) -> bool:
    """Whether benchmark ``b`` comes from another run than the report's machine section."""
    return main is not None and "_run" in b and tuple(b["_run"][:2]) != main


def measured_apart(benches: list[dict], main: tuple[str, str]) -> list[str]:
    """A line naming the run of a group measured in another run than the machine section's."""
    runs = {tuple(b["_run"]) for b in benches if _apart(b, main)}
    lines = []
    for run in sorted(runs, key=str):
        rows = [_label(b) for b in benches if tuple(b.get("_run", ())) == run]
        which = "" if len(rows) == len(benches) else f" (rows {', '.join(rows)})"
        lines.append(
            f"Measured in a separate run{which}: {run[0]}, {run[1]}, load average at start "
            f"{run[2]}."
        )
    return lines + ([""] if runs else [])


def memory_section(benches: list[dict]) -> list[str]:
    rows = []
    for b in benches:
        ei = b.get("extra_info", {})
        rows.append(
            [
                _label(b),
                ei.get("providers", ""),
                ei.get("peak_rss_mb", ""),
                ei.get("peak_rss_mb_psutil", ""),
                ei.get("load_s", ""),
                _ms(b["stats"]["median"]),
            ]
        )
    head = ["backend-precision", "runs as", "peak RSS MB (VmHWM)", "peak RSS MB (psutil)"]
    return _table(head + ["model load s", "cold start ms (load + 2 runs)"], rows)


def parity_section(benches: list[dict]) -> list[str]:
    rows = []
    for b in benches:
        ei = b.get("extra_info", {})
        if "dice" not in ei:
            continue
        ok = abs(ei["delta_dice"]) <= ei["tolerance"] and abs(ei["delta_iou"]) <= ei["tolerance"]
        rows.append(
            [
                _label(b),
                ei["images"],
                f"{ei['dice']:.4f}",
                f"{ei['iou']:.4f}",
                f"{ei['delta_dice']:+.4f}",
                f"{ei['delta_iou']:+.4f}",
                f"{ei['agreement_dice']:.4f}",
                ei["tolerance"],
                ei.get("parity") or ("pass" if ok else "FAIL"),
            ]
        )
    if not rows:
        return ["No parity results (needs the real model and the IDRiD test masks).", ""]
    head = ["backend-precision", "images", "pooled Dice", "pooled IoU", "ΔDice", "ΔIoU"]
    return [
        "Pooled over the IDRiD official test images at full resolution, hemorrhage (HE) masks;"
        " Δ = variant - FP32 ONNX Runtime; agreement = Dice of the variant's masks with the"
        " FP32 ONNX Runtime masks.",
        "",
        *_table(head + ["agreement Dice", "tolerance", "result"], rows),
    ]


def summary_section(
    groups: dict[str, list[dict]], main: tuple[str, str] | None = None
) -> list[str]:
    inf = groups.get("inference", [])
    e2e = {b.get("extra_info", {}).get("mode"): b for b in groups.get("end-to-end", [])}
    if not inf or "batch" not in e2e:
        return ["(no end-to-end or inference results)", ""]
    best = max(inf, key=_ips)
    lines = ["## End-to-end vs pure inference", ""]
    rows = []
    modes = ("single", "batch", "batch+outputs", "batch-spare-core", "batch+outputs-spare-core")
    for mode in modes:
        b = e2e.get(mode)
        if b is None:
            continue
        ei = b["extra_info"]
        ips = ei["images_per_s"]
        paired = ei.get("paired_ratio")
        rows.append(
            [
                mode + (" (†)" if _apart(b, main) else ""),
                f"{ei.get('model', '?')} on {ei.get('providers', '')}",
                f"{ips:.2f}",
                f"{ei['paired_inference_median']:.2f}" if paired is not None else "-",
                f"**{paired:.3f}**" if paired is not None else "-",
                f"{ips / _ips(best):.3f}",
            ]
        )
    # the default model is the one the report's own run measured, where it measured a row
    own = [e2e[m] for m in modes if m in e2e and not _apart(e2e[m], main)]
    batch = (own or [e2e["batch"]])[0]["extra_info"]
    lines += [
        f'Default CPU path: `{batch.get("model", "?")}`, backend "auto" (what `hemoseg-edge'
        " segment` runs without `--model`). Best pure inference in the inference group:"
        f" **{_label(best)}** at {_ips(best):.2f} images/s. Target: batch / best inference"
        " >= 0.9.",
        "",
        "*Paired*: right before and right after each timed round the same backend ran pure"
        " inference on N tensors, in latency and in throughput tuning; a round's yardstick is"
        " the mean of its before and after rates, in the tuning with the better median (the"
        " better of two noisy rates round by round would inflate it). The ratio is taken per"
        " round and its median reported, so drift in the host's speed cancels. Per-round"
        " values are in the JSON (`paired_ratios`, `paired_inference_before`, `_after`).",
        "",
        "*-spare-core*: inference on one thread, so a core is free for decode, preprocess,"
        " postprocess (and the writes); paired with pure inference of that same one-thread"
        " backend. Its ratio says whether the pipeline hides the other stages when the host"
        " has CPU left to hide them in.",
        "",
    ]
    apart: dict[tuple, set[str]] = {}  # run -> the models its rows ran
    for m in modes:
        if m in e2e and _apart(e2e[m], main):
            apart.setdefault(tuple(e2e[m]["_run"]), set()).add(
                e2e[m]["extra_info"].get("model", "?")
            )
    for (cpu, date, load), models in sorted(apart.items(), key=lambda kv: kv[0]):
        lines += [
            f"(†) measured in a separate, earlier run with {', '.join(sorted(models))}: {cpu},"
            f" {date},"
            f" load average at start {load}. Not re-measured with the current default model.",
            "",
        ]
    share = e2e["batch"]["extra_info"].get("inference_cpu_share")
    if share is not None:
        ei = e2e["batch"]["extra_info"]
        lines += [
            f"CPU accounting inside the batch rounds of {ei.get('model', '?')} (no pairing"
            f" needed){' (†)' if _apart(e2e['batch'], main) else ''}: {ei['total_core_ms']}"
            f" core-ms per image in all, {ei['other_core_ms']} of them in decode, preprocess"
            f" and postprocess (thread CPU time), so inference had **{share:.3f}** of the CPU"
            " (median over rounds).",
            "",
        ]
    head = ["default CPU path", "runs as", "images/s", "paired inference images/s"]
    lines += _table(head + ["paired ratio", "/ best of inference group"], rows)
    vs = e2e.get("batch-vs-previous")
    if vs is not None:
        ei = vs["extra_info"]
        lines += [
            "Side by side with the previous model: each timed batch round of the default model"
            f" followed the same {ei['images_per_round']} images through `{ei['previous_model']}`"
            " on its own default path, in the same run (untimed setup).",
            "",
            *_table(
                ["model", "images/s (median round)", "time / previous model's (median)"],
                [
                    [
                        ei["model"],
                        f"{ei['images_per_s']:.2f}",
                        f"**{ei['time_ratio_vs_previous_median']:.3f}**",
                    ],
                    [ei["previous_model"], f"{ei['previous_images_per_s']:.2f}", "1"],
                ],
            ),
        ]
    budget = next(iter(groups.get("cpu-budget", [])), None)
    if budget is not None:
        ei = budget["extra_info"]
        stages = ("decode", "preprocess", "inference", "postprocess")
        lines += [
            "What limits it: CPU time per image of each stage of the batch path (core-ms,"
            " process CPU time, one stage at a time over the same images; inference as the"
            " batch path runs it, every stream busy). Inference already fills every core, so"
            " every other core-ms is taken from it: inference / total is the ceiling of the"
            " ratio on this host, however well the stages overlap.",
            "",
            *_table(
                [*stages, "ceiling ratio"],
                [[ei[f"{k}_core_ms"] for k in stages] + [f"**{ei['ceiling_ratio']:.3f}**"]],
            ),
        ]
    return lines


def jetson_section(gflop: float) -> list[str]:
    rows = []
    for name, sparse in ORIN_SPARSE_INT8_TOPS:
        dense8, dense16 = sparse / 2, sparse / 4
        ms8, ms16 = gflop / dense8, gflop / dense16  # GFLOP / TOPS = ms
        rows.append(
            [
                name,
                f"{sparse:g}",
                f"{dense8:g}",
                f"{dense16:g}",
                f"{ms8:.2f}",
                f"{ms16:.2f}",
                f"{1000 / ms8:.0f}",
                f"{1000 / ms16:.0f}",
            ]
        )
    head = ["module", "advertised sparse INT8 TOPS", "dense INT8 TOPS", "dense FP16 TOPS"]
    head += ["INT8 floor ms", "FP16 floor ms", "INT8 ceiling img/s", "FP16 ceiling img/s"]
    return [
        "## On Jetson (computed, not measured)",
        "",
        f"**Computed, not measured.** Compute-only floor for {gflop:g} GFLOP per frame "
        "(the default model): time = GFLOP / dense TOPS at 100% utilisation. TOPS: NVIDIA's "
        'advertised module figures (INT8 with 2:4 sparsity, GPU and DLAs together; "Super" = '
        "JetPack 6.2 clocks); dense INT8 = half of that, dense FP16 = a quarter. The GPU alone "
        "has fewer TOPS, the dense network gets no sparsity gain, and memory bandwidth "
        "(68-205 GB/s) limits the full-resolution layers, so real latencies are several times "
        "these floors; preprocessing and postprocessing are extra.",
        "",
        *_table(head, rows),
    ]


def plot(groups: dict[str, list[dict]], path: Path) -> bool:
    benches = sorted(groups.get("inference", []), key=_per_image)
    if not benches:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [_label(b) for b in benches]
    med = [1000 * _per_image(b) for b in benches]
    q1 = [1000 * (_per_image(b) - _per_image(b, "q1")) for b in benches]
    q3 = [1000 * (_per_image(b, "q3") - _per_image(b)) for b in benches]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ax.barh(names, med, xerr=[q1, q3], color="tab:blue", capsize=3)
    for y, (m, hi) in enumerate(zip(med, q3, strict=True)):
        ax.text(m + hi, y, f"  {m:,.0f} ms", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("time per model frame, median (ms); whiskers: IQR")
    ax.set_title("Inference time per frame by backend, precision and tuning")
    ax.set_xlim(0, max(m + hi for m, hi in zip(med, q3, strict=True)) * 1.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def mermaid_chart(groups: dict) -> list[str]:
    """The latency plot as a Mermaid bar chart: text, so it lives in git and renders on GitHub."""
    benches = groups.get("inference", [])
    if not benches:
        return []
    names = ", ".join(f'"{_label(b)}"' for b in benches)
    med = ", ".join(f"{1000 * _per_image(b):.0f}" for b in benches)
    return [
        "```mermaid",
        "xychart-beta",
        '    title "Inference time per model frame, median (ms)"',
        f"    x-axis [{names}]",
        '    y-axis "ms"',
        f"    bar [{med}]",
        "```",
        "",
    ]


def int8_section(cmp: dict) -> list[str]:
    """``benchmarks/compare_int8.py``'s JSON: NNCF vs the shipped Q/DQ INT8 on OpenVINO."""
    rows = []
    for name, m in cmp["models"].items():
        rows.append(
            [
                name,
                m["providers"],
                f"{m['bytes'] / 1e6:.1f}",
                f"{m['dice']:.4f}",
                f"{m['delta_dice']:+.4f}",
                ", ".join(f"{d:+.4f}" for d in m.get("fold_delta_dice", [])),
                f"{m['agreement_dice']:.4f}",
                "pass" if m["parity"] else "FAIL",
                f"{m['images_per_s_median']:.2f}",
            ]
        )
    head = ["INT8 model", "runs as", "MB", "pooled Dice", "ΔDice vs FP32 ORT", "ΔDice per fold"]
    head += ["agreement"]
    ratio = cmp["paired_speed_ratio_nncf_over_shipped"]
    lo, hi = cmp.get("paired_speed_ratio_ci95", (ratio, ratio))
    return [
        "## INT8 for OpenVINO: NNCF vs the shipped Q/DQ model",
        "",
        f"From `benchmarks/compare_int8.py` (`{cmp.get('source', 'benchmarks/int8_methods.json')}`"
        f"; run separately: `python benchmarks/compare_int8.py`). Both calibrated on"
        f" {cmp['calibration_images']} IDRiD training-folder images; parity on"
        f" {cmp['images']} IDRiD test images at full resolution (tolerance"
        f" {cmp['parity_tolerance']}); speed: OpenVINO latency tuning, the two models"
        f" alternating frame by frame over {len(cmp['paired_speed_ratios'])} pairs; NNCF /"
        f" shipped, median of the per-pair ratios: **{ratio:.3f}** (95 % bootstrap interval"
        f" {lo:.3f}-{hi:.3f}). Parity must hold on the whole set and on each of"
        f" {cmp.get('folds', 1)} folds (image i in fold i % {cmp.get('folds', 1)}). Chosen for"
        f" OpenVINO (faster at parity, interval above 1): **{cmp['choice']}**.",
        "",
        *_table(head + ["parity", "images/s (median)"], rows),
    ]


def render(
    data: dict,
    source: str,
    plot_path: Path,
    md_path: Path,
    gflop: float,
    int8_cmp: dict | None = None,
    load: dict | None = None,
) -> str:
    groups = by_group(data)
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `benchmarks/report.py` from `{source}` on "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; do not edit by hand.",
        "",
    ]
    lines += machine_section(data)
    lines += summary_section(groups, _host_of(data))
    lines += mermaid_chart(groups)
    if plot(groups, plot_path):
        rel = os.path.relpath(plot_path, md_path.parent)
        lines += [f"PNG version (not in git, written by `make bench`): `{rel}`", ""]
    for g in GROUP_ORDER + tuple(sorted(set(groups) - set(GROUP_ORDER))):
        if g not in groups:
            continue
        lines += [f"## {g}", ""]
        lines += measured_apart(groups[g], _host_of(data))
        if g == "inference":
            lines += inference_section(groups[g])
        elif g == "memory":
            lines += memory_section(groups[g])
        elif g == "parity":
            lines += parity_section(groups[g])
        elif g == "archive":
            lines += archive_section(groups[g])
        else:
            lines += generic_section(groups[g])
    if load:
        lines += serve_section(load)
    if int8_cmp:
        lines += int8_section(int8_cmp)
    lines += jetson_section(gflop)
    return "\n".join(lines).rstrip() + "\n"


def merge(runs: list[dict]) -> dict:
    """One report from several runs: the first run's machine; a benchmark measured in more than
    one run is taken from the first that has it (a later, partial run listed first replaces
    those rows of an older full one); the load averages of every run are kept."""
    data = dict(runs[0])
    seen: set[str] = set()
    data["benchmarks"] = []
    for r in runs:
        for b in r.get("benchmarks", []):
            key = b.get("fullname", b["name"])
            if key in seen:
                continue
            seen.add(key)
            run = [*_host_of(r), str(r.get("hemoseg", {}).get("load_average_at_start"))]
            data["benchmarks"].append({**b, "_run": run})
    if len(runs) > 1:
        hm = dict(data.get("hemoseg", {}))
        hm["load_average_at_start"] = [
            r.get("hemoseg", {}).get("load_average_at_start") for r in runs
        ]
        hm["note"] = "; ".join(dict.fromkeys(r.get("hemoseg", {}).get("note", "") for r in runs))
        data["hemoseg"] = hm
        mi = dict(data.get("machine_info", {}))
        mi["hemoseg"] = dict(mi.get("hemoseg", {}))
        mi["hemoseg"]["load_average_at_end"] = [
            r.get("machine_info", {}).get("hemoseg", {}).get("load_average_at_end") for r in runs
        ]
        data["machine_info"] = mi
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", type=Path, nargs="+", help="pytest --benchmark-json output(s)")
    p.add_argument("--out", type=Path, default=HERE.parent / "BENCHMARKS.md")
    p.add_argument("--plot", type=Path, default=HERE / "latency.png")
    p.add_argument(
        "--gflop", type=float, default=None, help="default: counted in the default model file"
    )
    p.add_argument(
        "--int8",
        type=Path,
        default=HERE / "int8_methods.json",
        help="benchmarks/compare_int8.py output (section skipped when absent)",
    )
    p.add_argument(
        "--serve",
        type=Path,
        default=HERE / "load_http.json",
        help="benchmarks/load_http.py --out output (section skipped when absent)",
    )
    args = p.parse_args(argv)
    try:
        data = merge([json.loads(p.read_text()) for p in args.json])
        int8_cmp = json.loads(args.int8.read_text()) if args.int8.is_file() else None
        load = json.loads(args.serve.read_text()) if args.serve.is_file() else None
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int8_cmp is not None:
        int8_cmp["source"] = os.path.relpath(args.int8, args.out.parent)
    source = ", ".join(os.path.relpath(p, args.out.parent) for p in args.json)
    if load is not None:
        load["source"] = os.path.relpath(args.serve, args.out.parent)
    if args.gflop is None:
        sys.path.insert(0, str(HERE.parent))
        from hemoseg_edge.build.flops import conv_gflop
        from hemoseg_edge.model_file import default_model_path

        args.gflop = round(conv_gflop(default_model_path()), 1)
    text = render(data, source, args.plot, args.out, args.gflop, int8_cmp, load)
    args.out.write_text(text)
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
