"""``make gpu-check``: on a machine with an NVIDIA GPU, run every GPU test and print what it proved.

    python tools/gpu_check.py [--dry-run] [--checks tests,kernel,speed,trt] [--images N]
                              [--families v2,v1] [--rounds N]

The checks:

* ``tests``  - ``pytest -m gpu``: every GPU-marked test (the kernel through pycuda or CuPy, the
  TensorRT backend's device preprocessing path, engines at three precisions, FP16-input refusal).
* ``kernel`` - the CUDA kernel against the CPU reference (``preprocess_frame``) on every shared
  image (IDRiD and DIARETDB1 under ``../shared/data`` or ``$HEMOSEG_DATA``), at both models' input
  sizes: max |kernel - reference| per dataset (allowed: 1/255; the host build shows ~1e-7).
* ``speed``  - one full-size 4288x2848 frame to a model tensor: the kernel (alone, and with the
  frame's upload) against OpenCV's CPU path (``extractChannel`` + ``resize(INTER_AREA)`` + /255)
  and this project's CPU reference (``preprocess_tensor``); medians, printed, not asserted.
* ``trt``    - the shipped models as TensorRT engines (FP32, FP16, INT8; built into
  ``build/gpu-check/engines``) through ``Segmenter`` (the GPU preprocessing path) against ONNX
  Runtime FP32 on the CPU path: pooled Dice on IDRiD test images, Dice change allowed
  0.002 / 0.005 / 0.01, plus probability and mask differences.

The kernel runs through pycuda where it is installed, else through CuPy (``cuda.cupy_gpu``); the
TensorRT backend itself needs pycuda. Without a GPU (or with ``--dry-run``) nothing runs: it
prints what each check would prove and which prerequisites are missing.

Exit status: 0 every check that could run passed (those that could not are listed as NOT RUN,
with the reason); 1 a check failed; 2 no GPU found (nothing was proved). ``--dry-run``: 0.

Written on a machine without a GPU: only the dry run has been run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # hemoseg_edge and training, also without an editable install

ENGINES = REPO / "engines"
FAMILIES = {
    "v7": "hemoseg_mnv2_v7",
    "v6": "hemoseg_mnv2_v6",
    "v5": "hemoseg_unet_v5",
    "v4": "hemoseg_mnv2_v4",
    "v3": "hemoseg_mnv2_v3",
    "v2": "hemoseg_mnv2_v2",
    "v1": "hemoseg_unet_v1",
}
PRECISIONS = {"fp32": "", "fp16": "_fp16", "int8": "_int8"}
DICE_TOL = {"fp32": 0.002, "fp16": 0.005, "int8": 0.01}
KERNEL_TOL = 1.0 / 255.0
FULL_HW = (2848, 4288)  # IDRiD frames, height x width
CHECKS = ("tests", "kernel", "speed", "trt")


def data_root() -> Path:
    env = os.environ.get("HEMOSEG_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def shared_images() -> dict[str, list[Path]]:
    root = data_root()
    return {
        "idrid": sorted((root / "idrid" / "images").glob("*/IDRiD_*.jpg")),
        "diaretdb1": sorted((root / "diaretdb1" / "ddb1_fundusimages").glob("image*.png")),
    }


# --- prerequisites ------------------------------------------------------------------------------


@dataclass
class Prereq:
    ok: bool
    detail: str


def _gpu() -> Prereq:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            p = subprocess.run(
                [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            lines = [ln.strip() for ln in p.stdout.splitlines() if ln.strip()]
            if p.returncode == 0 and lines:
                return Prereq(True, "; ".join(lines))
            why = (p.stderr or p.stdout).strip().splitlines()
            return Prereq(False, f"nvidia-smi: {why[0] if why else f'exit {p.returncode}'}")
        except (OSError, subprocess.TimeoutExpired) as e:
            return Prereq(False, f"nvidia-smi failed ({e})")
    for probe in (_pycuda_devices, _cupy_devices):
        found = probe()
        if found:
            return Prereq(True, found)
    return Prereq(False, "no nvidia-smi, and neither pycuda nor CuPy sees a CUDA device")


def _pycuda_devices() -> str:
    try:
        import pycuda.driver as cuda

        cuda.init()
        return ", ".join(str(cuda.Device(i).name()) for i in range(cuda.Device.count()))
    except Exception:  # noqa: BLE001 - ImportError, cuda.Error, missing libcuda
        return ""


def _cupy_devices() -> str:
    try:
        cp = importlib.import_module("cupy")
        n = int(cp.cuda.runtime.getDeviceCount())
        names = [cp.cuda.runtime.getDeviceProperties(i)["name"] for i in range(n)]
        return ", ".join(x.decode() if isinstance(x, bytes) else str(x) for x in names)
    except Exception:  # noqa: BLE001 - ImportError, CUDARuntimeError
        return ""


def _module(name: str, hint: str, load: bool = True) -> Prereq:
    if importlib.util.find_spec(name) is None:
        return Prereq(False, f"{name} not installed ({hint})")
    if not load:  # e.g. keras: importing it starts TensorFlow
        return Prereq(True, f"{name} installed")
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - a broken install
        return Prereq(False, f"import {name} failed: {str(e).splitlines()[0][:120]}")
    return Prereq(True, f"{name} {getattr(mod, '__version__', getattr(mod, 'VERSION', '?'))}")


def _tensorrt() -> Prereq:
    try:
        from hemoseg_edge.backends.tensorrt import require_tensorrt

        return Prereq(True, f"TensorRT {require_tensorrt()}")
    except Exception as e:  # noqa: BLE001 - BackendUnavailableError
        return Prereq(False, str(e))


def _file(path: Path, hint: str) -> Prereq:
    return Prereq(path.is_file(), str(path.relative_to(REPO)) + ("" if path.is_file() else hint))


def prerequisites() -> dict[str, Prereq]:
    from hemoseg_edge.cuda import BUILD_DIR
    from hemoseg_edge.cuda.gpu import FATBIN_NAME
    from hemoseg_edge.cuda.host import LIB_NAME

    imgs = shared_images()
    masks = data_root() / "idrid" / "masks" / "HE" / "test"
    shipped = [ENGINES / f"{FAMILIES['v7']}{s}.onnx" for s in PRECISIONS.values()]
    missing = [p.name for p in shipped if not p.is_file()]
    nvcc = shutil.which("nvcc")
    return {
        "gpu": _gpu(),
        "pycuda": _module("pycuda", "CUDA_ROOT=/usr/local/cuda pip install pycuda"),
        "cupy": _module("cupy", "pip install cupy-cuda12x: the kernel's fallback runner"),
        "tensorrt": _tensorrt(),
        "nvcc": Prereq(nvcc is not None, nvcc or "not on PATH (needed only without a fatbin)"),
        "fatbin": _file(BUILD_DIR / FATBIN_NAME, ": not built (make build, with nvcc)"),
        "host-lib": _file(BUILD_DIR / LIB_NAME, ": not built (make build)"),
        "pytest": _module("pytest", "the [dev] extra"),
        "keras": _module("keras", "the [train] extra: the U-Net engine test", load=False),
        "data": Prereq(
            bool(imgs["idrid"] and imgs["diaretdb1"]),
            f"{len(imgs['idrid'])} IDRiD + {len(imgs['diaretdb1'])} DIARETDB1 images "
            f"under {data_root()}",
        ),
        "idrid-masks": Prereq(masks.is_dir(), f"{masks}" + ("" if masks.is_dir() else ": none")),
        "models": Prereq(
            not missing, "engines/" + (f" lacks {', '.join(missing)}" if missing else ": v2 x3")
        ),
    }


@dataclass
class Check:
    name: str
    proves: str
    needs: list[str]  # prerequisite names; "a|b" = either
    run: Callable[[argparse.Namespace], list[str]]  # raises CheckFailed; returns detail lines
    optional: list[str] = field(default_factory=list)  # used when present

    def missing(self, pre: dict[str, Prereq]) -> list[str]:
        out = []
        for need in self.needs:
            alts = need.split("|")
            if not any(pre[a].ok for a in alts):
                out.append(" or ".join(f"{a} ({pre[a].detail})" for a in alts))
        return out


class CheckFailed(Exception):
    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


# --- the checks ---------------------------------------------------------------------------------


def run_tests(args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "gpu.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-rs", "-q", f"--junitxml={xml}"]
        print("    $ python " + " ".join(cmd[1:]), flush=True)
        p = subprocess.run(cmd, cwd=REPO, timeout=args.test_timeout)
        if not xml.is_file():
            raise CheckFailed([f"pytest exited {p.returncode} without a report"])
        cases = ET.parse(xml).getroot().iter("testcase")
        passed, failed, skipped = [], [], []
        for case in cases:
            name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(name)
            elif (sk := case.find("skipped")) is not None:
                skipped.append(f"{name} ({(sk.get('message') or '').strip()[:160]})")
            else:
                passed.append(name)
    lines = [f"passed: {n}" for n in passed] + [f"NOT RUN (skipped): {s}" for s in skipped]
    lines.append(f"{len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped")
    if failed or p.returncode not in (0, 5):
        raise CheckFailed([f"FAILED: {n}" for n in failed] + lines)
    if not passed:
        raise CheckFailed(["no GPU test ran"] + lines)
    return lines


class Runner:
    """The kernel on the GPU through pycuda (a fresh context), else CuPy; a common surface for
    the parity and speed checks."""

    def __init__(self) -> None:
        from hemoseg_edge.cuda.gpu import GpuPreprocessor, NoGpuError, open_context

        self._ctx = None
        try:
            self.cuda, self._ctx = open_context()
        except NoGpuError as e:
            from hemoseg_edge.cuda.cupy_gpu import CupyPreprocessor

            print(f"    (pycuda: {e}; using CuPy)", flush=True)
            self.impl = "cupy"
            self.kernel = CupyPreprocessor()
            self.cp = importlib.import_module("cupy")
        else:
            self.impl = "pycuda"
            self.kernel = GpuPreprocessor()

    def to_host(self, frame: np.ndarray, box, hw) -> np.ndarray:
        return self.kernel.run_to_host(frame, box, hw)

    def timings(self, frame: np.ndarray, box, hw, rounds: int) -> tuple[list[float], list[float]]:
        """(kernel alone in ms by CUDA events, upload + kernel in ms wall clock) per round."""
        h, w = hw
        alone, staged = [], []
        if self.impl == "pycuda":
            cuda = self.cuda
            frame_c = np.ascontiguousarray(frame)
            dev_frame = cuda.mem_alloc(frame_c.nbytes)
            cuda.memcpy_htod(dev_frame, frame_c)
            out = cuda.mem_alloc(h * w * 4)
            stream, e0, e1 = cuda.Stream(), cuda.Event(), cuda.Event()
            kw = {"frame_hw": frame.shape[:2], "channels": frame.shape[2], "stream": stream}
            try:
                for i in range(rounds + 3):  # 3 warm-up rounds
                    e0.record(stream)
                    self.kernel.run(int(dev_frame), box, int(out), hw, **kw)
                    e1.record(stream)
                    e1.synchronize()
                    t = time.perf_counter()
                    self.kernel.run(frame, box, int(out), hw, stream=stream)
                    stream.synchronize()
                    if i >= 3:
                        alone.append(e1.time_since(e0))
                        staged.append(1000 * (time.perf_counter() - t))
            finally:
                dev_frame.free()
                out.free()
        else:
            cp = self.cp
            dev_frame = self.kernel.upload(frame)
            out = cp.empty((h, w), dtype=np.float32)
            e0, e1 = cp.cuda.Event(), cp.cuda.Event()
            for i in range(rounds + 3):
                e0.record()
                self.kernel.run(dev_frame, box, out, hw)
                e1.record()
                e1.synchronize()
                t = time.perf_counter()
                self.kernel.run(frame, box, out, hw)
                cp.cuda.get_current_stream().synchronize()
                if i >= 3:
                    alone.append(float(cp.cuda.get_elapsed_time(e0, e1)))
                    staged.append(1000 * (time.perf_counter() - t))
        return alone, staged

    def close(self) -> None:
        self.kernel.close()
        if self._ctx is not None:
            self._ctx.pop()
            self._ctx.detach()


def _model_sizes() -> list[tuple[int, int]]:
    from hemoseg_edge.model_file import model_metadata, read_model
    from hemoseg_edge.preprocess import DEFAULT_INPUT_HW

    sizes = [DEFAULT_INPUT_HW]
    for stem in FAMILIES.values():
        path = ENGINES / f"{stem}.onnx"
        if path.is_file():
            data, kind = read_model(path)
            sizes.append(model_metadata(data, kind, str(path)).input_hw)
    return sorted(set(sizes))


def run_kernel(args: argparse.Namespace) -> list[str]:
    from hemoseg_edge.inputs import load_image
    from hemoseg_edge.preprocess import preprocess_frame

    runner = Runner()
    lines, bad = [f"kernel: {runner.impl}, {runner.kernel.source}"], []
    try:
        for hw in _model_sizes():
            for dataset, paths in shared_images().items():
                worst, worst_name = 0.0, ""
                for path in paths:
                    img = load_image(path, hw)
                    pre = preprocess_frame(img.frame, img.original_hw, hw)
                    got = runner.to_host(img.frame, pre.fov.box, hw)
                    assert pre.tensor is not None
                    diff = float(np.abs(got - pre.tensor[0, 0]).max())
                    if diff > KERNEL_TOL:
                        bad.append(f"{path.name} at {hw}: max diff {diff:.3g} > 1/255")
                    if diff >= worst:
                        worst, worst_name = diff, path.name
                lines.append(
                    f"{dataset}, {len(paths)} images, model input {hw[0]}x{hw[1]}: "
                    f"max |kernel - CPU reference| = {worst:.3g} ({worst_name})"
                )
    finally:
        runner.close()
    if bad:
        raise CheckFailed(bad + lines)
    return lines


def _median_ms(fn: Callable[[], object], rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def run_speed(args: argparse.Namespace) -> list[str]:
    import cv2

    from hemoseg_edge.preprocess import find_fov, preprocess_tensor

    idrid = shared_images()["idrid"]
    frame = cv2.imread(str(idrid[0]), cv2.IMREAD_COLOR) if idrid else None
    if frame is None or frame.shape[:2] != FULL_HW:
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 256, (*FULL_HW, 3), dtype=np.uint8)
        what = "synthetic 4288x2848 frame"
    else:
        what = f"{idrid[0].name}, 4288x2848"
    box = find_fov(frame).box
    x0, y0, x1, y1 = box
    rounds = args.rounds
    runner = Runner()
    lines = [
        f"{what}, FOV box {box}; kernel via {runner.impl} ({runner.kernel.source}); "
        f"CPU: {os.cpu_count()} cores, OpenCV {cv2.__version__} with {cv2.getNumThreads()} "
        f"threads; medians of {rounds} rounds"
    ]
    bad = []
    try:
        for hw in _model_sizes():
            h, w = hw

            def opencv(hw=hw) -> np.ndarray:
                green = cv2.extractChannel(frame[y0:y1, x0:x1], 1)
                small = cv2.resize(green, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
                return small.astype(np.float32) * np.float32(1.0 / 255.0)

            cv_ms = _median_ms(opencv, rounds)
            ref_ms = _median_ms(lambda hw=hw: preprocess_tensor(frame, box, hw), rounds)
            alone, staged = runner.timings(frame, box, hw, rounds)
            got = runner.to_host(frame, box, hw)
            diff = float(np.abs(got - preprocess_tensor(frame, box, hw)[0, 0]).max())
            if diff > KERNEL_TOL:
                bad.append(f"full-size frame at {hw}: max diff {diff:.3g} > 1/255")
            k_ms, s_ms = statistics.median(alone), statistics.median(staged)
            lines += [
                f"-> {h}x{w}: GPU kernel {k_ms:.3f} ms, upload + kernel {s_ms:.2f} ms; "
                f"OpenCV CPU {cv_ms:.2f} ms ({cv_ms / k_ms:.0f}x the kernel, "
                f"{cv_ms / s_ms:.1f}x upload + kernel); CPU reference {ref_ms:.2f} ms",
                f"   kernel vs CPU reference on this frame: max diff {diff:.3g}",
            ]
    finally:
        runner.close()
    if bad:
        raise CheckFailed(bad + lines)
    return lines


def _engine(onnx_path: Path, out_dir: Path, workspace_mb: int) -> Path:
    """An engine for ``onnx_path`` in ``out_dir``: reused when built from the same ONNX by this
    TensorRT for this GPU, else built."""
    import hashlib

    from hemoseg_edge.backends.tensorrt import gpu_identity, require_tensorrt
    from hemoseg_edge.build.trt_engine import build_engine_file
    from hemoseg_edge.errors import ModelError
    from hemoseg_edge.model_file import engine_header

    out = out_dir / (onnx_path.stem + ".engine")
    if out.is_file():
        try:
            header, _ = engine_header.split(out.read_bytes(), str(out))
            name, cc = gpu_identity(0)
            engine_header.check_compatible(header, require_tensorrt(), name, cc, str(out))
            if header["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest():
                return out
        except ModelError:
            pass
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    build_engine_file(onnx_path, out, workspace_mb=workspace_mb)
    print(f"    built {out.name} in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def run_trt(args: argparse.Namespace) -> list[str]:
    from training.data import idrid_items
    from training.quantize_report import evaluate

    items = idrid_items("test", data_root())
    if args.images:
        items = items[: args.images]
    out_dir = REPO / "build" / "gpu-check" / "engines"
    lines, bad = [], []
    for fam in args.families:
        stem = FAMILIES[fam]
        onnx = {k: ENGINES / f"{stem}{s}.onnx" for k, s in PRECISIONS.items()}
        absent = [p.name for p in onnx.values() if not p.is_file()]
        if absent:
            lines.append(f"{fam}: NOT RUN, engines/ lacks {', '.join(absent)}")
            continue
        models: dict[str, str | os.PathLike] = {"ort_fp32": onnx["fp32"]}
        for k, path in onnx.items():
            models[f"trt_{k}"] = _engine(path, out_dir, args.workspace_mb)
        report = evaluate(models, items, backend="onnxruntime", progress=True)
        table = report["models"]
        ref = table["ort_fp32"]
        lines.append(
            f"{fam} ({stem}), {report['images']} IDRiD test images: ONNX Runtime FP32 (CPU "
            f"preprocessing) Dice {ref['dice']:.4f}"
        )
        for k in PRECISIONS:
            row = table[f"trt_{k}"]
            delta = row["dice_delta_vs_ort_fp32"]
            ok = abs(delta) <= DICE_TOL[k]
            if not ok:
                bad.append(f"{fam} TensorRT {k}: Dice change {delta:+.4f} > {DICE_TOL[k]}")
            lines.append(
                f"  TensorRT {k} (GPU preprocessing): Dice {row['dice']:.4f} ({delta:+.4f}, "
                f"allowed {DICE_TOL[k]}), mask pixels differing "
                f"{row['mask_pixels_differing_vs_ort_fp32']:.2e}, probability max / mean abs "
                f"diff {row['prob_max_abs_diff_vs_ort_fp32']:.3g} / "
                f"{row['prob_mean_abs_diff_vs_ort_fp32']:.2e}, "
                f"{row['seconds_per_image']:.2f} s/image end to end" + ("" if ok else "  <- FAILED")
            )
    if bad:
        raise CheckFailed(bad + lines)
    return lines


def all_checks() -> list[Check]:
    return [
        Check(
            "tests",
            "pytest -m gpu: every GPU test (kernel vs reference through pycuda or CuPy; the "
            "TensorRT backend filling its input binding with the kernel and matching ONNX "
            "Runtime; FP16-input engines refused; U-Net engines at FP32/FP16/INT8 vs ORT)",
            ["gpu", "pytest"],
            run_tests,
            optional=["pycuda", "cupy", "tensorrt", "keras", "data"],
        ),
        Check(
            "kernel",
            "the kernel equals the CPU reference (max diff <= 1/255) on every shared image, "
            "at each shipped model's input size",
            ["gpu", "pycuda|cupy", "fatbin|nvcc", "data"],
            run_kernel,
        ),
        Check(
            "speed",
            "kernel speed on a full-size 4288x2848 frame vs OpenCV's CPU path and the CPU "
            "reference (and the kernel's output on that frame vs the reference)",
            ["gpu", "pycuda|cupy", "fatbin|nvcc"],
            run_speed,
            optional=["data"],
        ),
        Check(
            "trt",
            "TensorRT engines (FP32/FP16/INT8) through Segmenter with GPU preprocessing vs ONNX "
            "Runtime FP32: Dice change within 0.002 / 0.005 / 0.01 on IDRiD test images",
            ["gpu", "tensorrt", "pycuda", "fatbin|nvcc", "models", "idrid-masks"],
            run_trt,
        ),
    ]


def gpu_tests() -> list[str]:
    """``file::name`` of every ``@pytest.mark.gpu`` test under tests/ (read, not collected)."""
    import ast

    found = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef) and any(
                "mark.gpu" in ast.unparse(d) for d in node.decorator_list
            ):
                found.append(f"{path.relative_to(REPO)}::{node.name}")
    return found


def _print_prereqs(pre: dict[str, Prereq]) -> None:
    print("prerequisites:")
    for name, p in pre.items():
        print(f"  [{'ok' if p.ok else 'missing'}] {name}: {p.detail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="list what would be proved; run none")
    ap.add_argument("--checks", default=",".join(CHECKS), help=f"subset of {','.join(CHECKS)}")
    ap.add_argument("--images", type=int, default=3, help="IDRiD test images for trt (0: all)")
    ap.add_argument(
        "--families",
        default="v7",
        help="model families for trt: v7, v6, v5, v4, v3, v2, v1 or a list",
    )
    ap.add_argument("--rounds", type=int, default=50, help="timed rounds for speed")
    ap.add_argument("--workspace-mb", type=int, default=2048, help="TensorRT build workspace")
    ap.add_argument("--test-timeout", type=int, default=3600, help="seconds for pytest -m gpu")
    args = ap.parse_args(argv)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    wanted = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in CHECKS] + [
        f for f in args.families if f not in FAMILIES
    ]
    if unknown:
        ap.error(f"unknown check or family: {', '.join(unknown)}")

    pre = prerequisites()
    checks = [c for c in all_checks() if c.name in wanted]
    if args.dry_run or not pre["gpu"].ok:
        print("gpu-check: " + ("dry run" if args.dry_run else "no NVIDIA GPU found") + "\n")
        _print_prereqs(pre)
        print("\nwould prove:")
        for c in checks:
            missing = c.missing(pre)
            state = "ready" if not missing else "blocked"
            print(f"  [{state}] {c.name}: {c.proves}")
            for m in missing:
                print(f"      missing: {m}")
            for o in c.optional:
                if not pre[o].ok:
                    print(f"      without {o}, the parts that need it skip ({pre[o].detail})")
            if c.name == "tests":
                for t in gpu_tests():
                    print(f"      - {t}")
        print("\nnothing was run" + ("" if args.dry_run else ": exit 2 (no GPU)"))
        return 0 if args.dry_run else 2

    print("gpu-check on " + pre["gpu"].detail + "\n")
    _print_prereqs(pre)
    results: list[tuple[str, str, list[str]]] = []
    for c in checks:
        print(f"\n== {c.name}: {c.proves}", flush=True)
        missing = c.missing(pre)
        if missing:
            lines = [f"missing: {m}" for m in missing]
            results.append((c.name, "NOT RUN", lines))
            for ln in lines:
                print(f"    NOT RUN, {ln}", flush=True)
            continue
        t = time.perf_counter()
        try:
            lines = c.run(args)
            state = "PROVED"
        except CheckFailed as e:
            lines, state = e.lines, "FAILED"
        except Exception as e:  # noqa: BLE001 - report and go on with the other checks
            lines, state = [f"{type(e).__name__}: {str(e).strip()[:500]}"], "FAILED"
        lines.append(f"({time.perf_counter() - t:.0f} s)")
        results.append((c.name, state, lines))
        for ln in lines:
            print(f"    {ln}", flush=True)

    print("\n== summary")
    for name, state, lines in results:
        print(f"[{state}] {name}")
        for ln in lines:
            print(f"    {ln}")
    return 1 if any(state == "FAILED" for _, state, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
