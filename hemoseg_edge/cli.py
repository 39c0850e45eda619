"""``hemoseg-edge`` command line.

Exit codes:
  0  every image processed, nothing flagged
  1  at least one input could not be processed (each named on stderr, one line each)
  2  usage error (bad arguments)
  3  the model could not be loaded (missing, corrupt, no metadata, backend unavailable)
  4  every image processed, but at least one is ungradable (no_fov_found,
     non_fundus_suspected, low_quality, low_resolution: status "ungradable", no findings) or
     flagged (e.g. greyscale_input): look at it before trusting it
  70  internal error (a bug: please report it with HEMOSEG_DEBUG=1 output)
  75  an inference stalled (HEMOSEG_INFER_TIMEOUT s, default 300): the batch stopped
  130 interrupted
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import __version__
from .backends import NAMES as BACKENDS
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_FLAGGED,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_STUCK,
    EXIT_USAGE,
    HemosegError,
    InferenceMemoryError,
    ModelError,
    install_hint,
)
from .inputs import IMAGE_SUFFIXES


def _err(msg: str) -> None:
    print(f"hemoseg-edge: {msg}", file=sys.stderr, flush=True)


def expand_inputs(args: list[str]) -> Iterator[Path]:
    """Files as given; directories expanded (non-recursive, sorted) to image files."""
    for a in args:
        p = Path(a)
        if p.is_dir():
            yield from sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield p


def _stem_for(path: Path, used: set[str]) -> str:
    stem = path.stem or "image"
    name, i = stem, 1
    while name in used:
        i += 1
        name = f"{stem}_{i}"
    used.add(name)
    return name


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot take our outputs (created if missing), or None: a probe file is
    written and removed, so read-only mounts and full disks are found before any image."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".hemoseg-probe.") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def cmd_segment(args: argparse.Namespace) -> int:
    from .result import SegmentationResult
    from .segmenter import Segmenter, StalledInferenceError

    inputs = list(expand_inputs(args.images))
    try:  # several images: tune the backend for throughput (OpenVINO streams in parallel)
        seg = Segmenter.from_engine(
            args.model,
            backend=args.backend,
            allow_defaults=args.assume_defaults,
            throughput=len(inputs) > 1,
            threshold=args.threshold,
            min_lesion_model_px=args.min_lesion_area,
        )
    except HemosegError as e:
        _err(f"error: {e}")
        return EXIT_MODEL
    out_dir = Path(args.out)
    problem = _unwritable(out_dir)
    if problem:
        _err(f"error: cannot write to output folder {out_dir} ({problem})")
        return EXIT_USAGE
    if not inputs:
        _err("error: no input images found")
        return EXIT_USAGE
    from tqdm import tqdm

    from .outputs import (
        failed_row,
        result_row,
        write_behind,
        write_html_report,
        write_outputs,
        write_report,
    )

    rows: list[dict] = []
    failed, flagged, used = 0, 0, set[str]()
    bar = tqdm(
        total=len(inputs),
        unit="img",
        file=sys.stderr,
        disable=True if args.quiet or len(inputs) < 2 else None,  # None: only on a terminal
    )

    def write(path: Path, res: SegmentationResult | HemosegError, stem: str) -> dict[str, str]:
        assert isinstance(res, SegmentationResult)  # write_behind skips the errors
        return write_outputs(res, path, out_dir, stem, args.overlay_max_side)

    jobs = write_behind(  # PNG encoding and writing overlap inference of the next images
        seg.segment_batch(inputs, prefetch=args.prefetch),
        write,
        prepare=lambda path: _stem_for(path, used),
    )
    stalled = out_of_memory = False
    for path, res, written in jobs:
        if isinstance(res, HemosegError):
            stalled = stalled or isinstance(res, StalledInferenceError)
            out_of_memory = out_of_memory or isinstance(res, InferenceMemoryError)
            failed += 1
            row = failed_row(path, str(res))
            _err(f"error: {res}")
        else:
            try:
                assert written is not None  # write_behind writes every result
                outs = written.result()
            except (OSError, HemosegError) as e:
                failed += 1
                row = failed_row(path, f"{path}: cannot write outputs ({e})")
                _err(f"error: {row['error']}")
            else:
                row = result_row(path, res, outs)
                if not res.gradable:
                    flagged += 1
                    why = ", ".join(res.ungradable_reasons)
                    _err(f"warning: {path}: ungradable ({why}): no findings reported")
                elif res.flags:
                    flagged += 1
                    _err(f"warning: {path}: flagged {', '.join(res.flags)}")
        rows.append(row)
        bar.update(1)
    bar.close()
    try:
        write_report(out_dir / "report.csv", rows)
    except OSError as e:
        _err(f"error: cannot write {out_dir / 'report.csv'} ({e.strerror or e})")
        return EXIT_INPUT
    try:  # the same rows as a self-contained page with overlay thumbnails
        write_html_report(out_dir / "report.html", rows)
    except OSError as e:
        _err(f"error: cannot write {out_dir / 'report.html'} ({e.strerror or e})")
        return EXIT_INPUT
    ok = len(rows) - failed
    if not args.quiet:
        print(f"{ok}/{len(rows)} processed, {failed} failed, {flagged} flagged -> {out_dir}")
    if stalled:  # a runtime thread is stuck: exiting normally would wait for it forever
        _err("error: inference stalled; the images after it were not processed (see report.csv)")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_STUCK)
    if out_of_memory:  # the model cannot run here as configured: a model-side failure
        _err("error: inference ran out of memory on some images (see report.csv)")
        return EXIT_MODEL
    if failed:
        return EXIT_INPUT
    return EXIT_FLAGGED if flagged else EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from .segmenter import Segmenter

    try:
        seg = Segmenter.from_engine(args.model, backend=args.backend)
        h, w = seg.metadata.input_hw
        out = seg.backend.run(np.zeros((1, 1, h, w), np.float32))
        if out.shape != (1, 1, h, w) or not np.isfinite(out).all():
            raise ModelError(
                f"{seg.source}: test inference gave shape {out.shape} or non-finite values"
            )
    except HemosegError as e:
        _err(f"error: {e}")
        return EXIT_MODEL
    info = seg.info()
    info["checks"] = {
        "metadata": "ok",
        "test_inference": "ok",
        "preprocess_spec": "matches"
        if seg.metadata.preprocess_matches
        else "DIFFERS (retrain/export)",
    }
    print(json.dumps(info, indent=2, default=str))
    return EXIT_OK


def service_config(args: argparse.Namespace, in_dir: str | os.PathLike):
    from .service.config import ServiceConfig

    return ServiceConfig(
        in_dir=Path(in_dir),
        out=Path(args.out),
        model=args.model,
        backend=args.backend,
        assume_defaults=args.assume_defaults,
        settle=args.settle,
        rescan=args.rescan,
        timeout=args.timeout,
        queue_size=args.queue_size,
        overlay_max_side=args.overlay_max_side,
        inotify=not args.no_inotify,
        forward=args.forward,
        forward_ae_title=args.forward_ae_title,
        forward_max_attempts=args.forward_max_attempts,
        forward_backoff=args.forward_backoff,
        forward_max_backoff=args.forward_max_backoff,
    )


def cmd_watch(args: argparse.Namespace) -> int:
    from .service.watch import serve

    return serve(service_config(args, args.in_dir))


def cmd_dicom_listen(args: argparse.Namespace) -> int:
    from .service.config import ListenerConfig
    from .service.dicom import run_dicom_listen

    in_dir = args.in_dir or Path(args.out) / "incoming"
    listener = ListenerConfig(args.port, args.host, args.ae_title, tuple(args.allow_ae))
    return run_dicom_listen(service_config(args, in_dir), listener)


def cmd_serve(args: argparse.Namespace) -> int:
    from .service.http import HttpConfig, run_http

    return run_http(
        HttpConfig(
            host=args.host,
            port=args.port,
            token=args.token or os.environ.get("HEMOSEG_TOKEN") or None,
            max_bytes=args.max_bytes,
            queue=args.queue,
            model=args.model,
            backend=args.backend,
            assume_defaults=args.assume_defaults,
            throughput=args.throughput,
            overlay_max_side=args.overlay_max_side,
            read_timeout=args.read_timeout,
            access_log=not args.no_access_log,
        )
    )


def cmd_status(args: argparse.Namespace) -> int:
    from .service.status import read_status

    try:
        data = read_status(args.out_dir)
    except (OSError, ValueError) as e:
        _err(f"error: no readable status.json in {args.out_dir} ({type(e).__name__})")
        return EXIT_INPUT
    print(json.dumps(data, indent=2))
    return EXIT_OK


def _overlay_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--overlay-max-side",
        type=int,
        default=2048,
        help="longest side of the overlay JPEG in px (0 = original size)",
    )


def _model_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model", default=None, help="ONNX model or engine (default: shipped model)")
    s.add_argument("--backend", default="auto", choices=BACKENDS)
    s.add_argument(
        "--assume-defaults",
        action="store_true",
        help="accept a model without hemoseg metadata, using default settings",
    )


def _service_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--out", required=True, help="output folder (work/, done/, failed/, results/)")
    _model_args(s)
    s.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds a file's size and mtime must stay unchanged before it is taken",
    )
    s.add_argument(
        "--rescan",
        type=float,
        default=30.0,
        help="seconds between full rescans of the input folder (missed events)",
    )
    s.add_argument("--timeout", type=float, default=120.0, help="per-file limit in seconds")
    s.add_argument("--queue-size", type=int, default=32, help="bounded processing queue length")
    _overlay_arg(s)
    s.add_argument("--no-inotify", action="store_true", help="rescans only (network mounts)")
    s.add_argument(
        "--forward",
        metavar="AE@HOST:PORT",
        default=None,
        help="C-STORE the DICOM outputs (SEG, SR, SC) to this PACS, via OUT/outbox/",
    )
    s.add_argument("--forward-ae-title", default="HEMOSEG", help="our calling AE title")
    s.add_argument(
        "--forward-max-attempts",
        type=int,
        default=8,
        help="refusals of one object by the PACS before it goes to OUT/outbox/failed/",
    )
    s.add_argument(
        "--forward-backoff", type=float, default=2.0, help="first retry delay in s (doubles)"
    )
    s.add_argument(
        "--forward-max-backoff", type=float, default=300.0, help="longest retry delay in s"
    )


def cmd_quantize(args: argparse.Namespace) -> int:
    from .build.quantize import quantize_file

    if args.precision == "int8" and not args.calib:
        _err("error: int8 needs calibration images: --calib DIR_OR_FILE ... (training images)")
        return EXIT_USAGE
    try:
        r = quantize_file(
            args.model,
            args.out,
            args.precision,
            calib=args.calib or (),
            calib_count=args.calib_count,
            method=args.method,
            keep_float=args.keep_float or (),
        )
    except HemosegError as e:
        _err(f"error: {e}")
        return e.exit_code
    calib = f", calibrated on {r.calibration['images']} image(s)" if r.calibration else ""
    print(f"wrote {r.path} ({r.precision}, {r.size_bytes / 1e6:.1f} MB{calib})")
    return EXIT_OK


def cmd_build_engine(args: argparse.Namespace) -> int:
    from .build.trt_engine import build_engine_file

    try:
        out = build_engine_file(args.model, args.out, args.workspace_mb)
    except HemosegError as e:
        _err(f"error: {e}")
        return EXIT_MODEL
    print(f"wrote {out}")
    return EXIT_OK


def cmd_archive(args: argparse.Namespace) -> int:
    import importlib.util

    if not (importlib.util.find_spec("ray") and importlib.util.find_spec("pyarrow")):
        _err(f"error: archive needs the [archive] extra: {install_hint('archive')}")
        return EXIT_USAGE
    from .archive import ArchiveConfig, run_archive

    config = ArchiveConfig(
        src=args.src,
        out=args.out,
        address=args.address,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        batch_size=args.batch_size,
        model=args.model,
        backend=args.backend,
        assume_defaults=args.assume_defaults,
        overlay_max_side=args.overlay_max_side,
        retry_failed=args.retry_failed,
        quiet=args.quiet,
    )
    try:
        summary = run_archive(config)
    except HemosegError as e:
        _err(f"error: {e}")
        return e.exit_code
    if not args.quiet:
        print(summary.line())
    return summary.exit_code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hemoseg-edge",
        description="Retinal hemorrhage segmentation in colour fundus photographs.",
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"hemoseg-edge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("segment", help="segment images; write mask, overlay, JSON and report.csv")
    s.add_argument("images", nargs="+", help="image files or folders")
    s.add_argument("--out", required=True, help="output folder")
    _model_args(s)
    s.add_argument("--prefetch", type=int, default=2, help="images decoded ahead of inference")
    s.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="pixel probability threshold (default: the model's, chosen on validation)",
    )
    s.add_argument(
        "--min-lesion-area",
        type=float,
        default=None,
        metavar="MODEL_PX",
        help="drop lesions smaller than this many model-input pixels (default: the model's, "
        "chosen on validation; 0 keeps every lesion)",
    )
    _overlay_arg(s)
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_segment)
    i = sub.add_parser("info", help="print a model's metadata and check that it runs")
    i.add_argument("model", nargs="?", default=None)
    i.add_argument("--backend", default="auto", choices=BACKENDS)
    i.set_defaults(func=cmd_info)
    w = sub.add_parser("watch", help="service: process images dropped into a folder")
    w.add_argument("in_dir", help="input folder watched for JPEG/PNG/TIFF/DICOM files")
    _service_args(w)
    w.set_defaults(func=cmd_watch)
    d = sub.add_parser("dicom-listen", help="service: DICOM C-STORE receiver plus the watch loop")
    d.add_argument("--port", type=int, default=11112)
    d.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    d.add_argument("--ae-title", default="HEMOSEG")
    d.add_argument(
        "--allow-ae",
        nargs="+",
        action="extend",
        default=[],
        help="calling AE titles accepted (default: any)",
    )
    d.add_argument(
        "--in",
        dest="in_dir",
        default=None,
        help="folder for received files (default: OUT/incoming)",
    )
    _service_args(d)
    d.set_defaults(func=cmd_dicom_listen)
    hs = sub.add_parser("serve", help="service: HTTP API (POST /v1/segment, /health, /docs)")
    hs.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    hs.add_argument("--port", type=int, default=8080, help="TCP port (0: any free port)")
    hs.add_argument(
        "--token",
        default=None,
        help="require 'Authorization: Bearer TOKEN' (default: $HEMOSEG_TOKEN; prefer the env)",
    )
    hs.add_argument(
        "--max-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="largest request body accepted, in bytes (413 beyond)",
    )
    hs.add_argument(
        "--queue", type=int, default=8, help="requests admitted at once (503 + Retry-After beyond)"
    )
    _model_args(hs)
    hs.add_argument(
        "--throughput",
        action="store_true",
        help="tune the backend for concurrent requests (OpenVINO streams)",
    )
    _overlay_arg(hs)
    hs.add_argument(
        "--read-timeout", type=float, default=60.0, help="seconds to receive a body (408 beyond)"
    )
    hs.add_argument("--no-access-log", action="store_true", help="no log line per request")
    hs.set_defaults(func=cmd_serve)
    st = sub.add_parser("status", help="print a running service's status.json")
    st.add_argument("out_dir")
    st.set_defaults(func=cmd_status)
    q = sub.add_parser("quantize", help="convert an fp32 ONNX model to fp16 or int8 (Q/DQ)")
    q.add_argument("model", help="fp32 ONNX model with hemoseg metadata")
    q.add_argument("--precision", required=True, choices=("fp16", "int8"))
    q.add_argument("--out", required=True, help="ONNX file to write")
    q.add_argument(
        "--calib",
        nargs="+",
        default=None,
        metavar="DIR_OR_FILE",
        help="int8: TRAINING images (files or folders) for calibration",
    )
    q.add_argument("--calib-count", type=int, default=16, help="int8: images used (0: all)")
    q.add_argument(
        "--method",
        default="ort",
        choices=("ort", "modelopt", "nncf"),
        help="int8 quantizer: ONNX Runtime (default), NVIDIA ModelOpt, or OpenVINO NNCF",
    )
    q.add_argument(
        "--keep-float",
        nargs="+",
        default=None,
        metavar="CONV",
        help="int8 (ort): Conv node names to leave in float (e.g. head)",
    )
    q.set_defaults(func=cmd_quantize)
    be = sub.add_parser("build-engine", help="build a TensorRT engine file (on the target GPU)")
    be.add_argument("model", help="ONNX model (fp32, fp16 or int8 Q/DQ)")
    be.add_argument("--out", required=True, help="engine file to write")
    be.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT workspace limit")
    be.set_defaults(func=cmd_build_engine)
    a = sub.add_parser("archive", help="re-process an archive on Ray: Parquet table + outputs")
    a.add_argument("src", help="folder (recursive), file or glob; local or a URI (s3://, gs://)")
    a.add_argument("--out", required=True, help="DST: results.parquet, outputs/ (local or URI)")
    a.add_argument("--address", default=None, help="Ray cluster to join (default: start locally)")
    a.add_argument("--workers", type=int, default=None, help="actors (default: CPUs / cpus)")
    a.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs (threads) per actor")
    a.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor")
    a.add_argument("--batch-size", type=int, default=4, help="images per task and part file")
    _model_args(a)
    _overlay_arg(a)
    a.add_argument(
        "--retry-failed", action="store_true", help="process inputs whose row is failed again"
    )
    a.add_argument("-q", "--quiet", action="store_true")
    a.set_defaults(func=cmd_archive)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")  # failures are reported by us, one line
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `hemoseg-edge info | head`: the reader left; stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return EXIT_BROKEN_PIPE
    except HemosegError as e:  # anything we raise on purpose ends as one line
        _err(f"error: {e}")
        return e.exit_code
    except MemoryError:
        _err("error: out of memory")
        return EXIT_INPUT
    except Exception as e:  # noqa: BLE001 - last resort: one line, never a traceback
        if os.environ.get("HEMOSEG_DEBUG"):
            raise
        _err(f"internal error: {type(e).__name__}: {e} (set HEMOSEG_DEBUG=1 for details)")
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
