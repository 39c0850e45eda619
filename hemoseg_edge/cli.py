"""``hemoseg-edge`` command line.

Exit codes:
  0  every image processed, nothing flagged
  1  at least one input could not be processed (each named on stderr, one line each)
  2  usage error (bad arguments)
  3  the model could not be loaded (missing, corrupt, no metadata, backend unavailable)
  4  every image processed, but at least one result is flagged (e.g. non_fundus_suspected,
     no_fov_found, low_quality, greyscale_input): look at it before trusting it
  70  internal error (a bug: please report it with HEMOSEG_DEBUG=1 output)
  130 interrupted
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from . import __version__
from .errors import HemosegError, ModelError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm"}
EXIT_OK, EXIT_INPUT, EXIT_USAGE, EXIT_MODEL, EXIT_FLAGGED = 0, 1, 2, 3, 4
EXIT_INTERNAL = 70
REPORT_FIELDS = (
    "input", "status", "error", "burden_percent", "lesion_count", "lesion_area_px",
    "upper_left", "upper_right", "lower_left", "lower_right", "flags", "total_ms",
    "mask", "overlay", "json",
)


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


def write_outputs(result, path: Path, out_dir: Path, stem: str, overlay_max_side: int) -> dict:
    """Mask PNG (original size), overlay PNG, JSON — each written atomically."""
    import cv2

    from .io import atomic_write_bytes, encode_png, load_overlay_frame
    from .postprocess import render_overlay

    mask_path = out_dir / f"{stem}_mask.png"
    overlay_path = out_dir / f"{stem}_overlay.png"
    json_path = out_dir / f"{stem}.json"
    atomic_write_bytes(mask_path, encode_png(result.mask.astype("uint8") * 255))
    colour = load_overlay_frame(path, result, overlay_max_side)
    summary = (
        f"hemorrhage {result.burden_percent:.2f}% of FOV, {len(result.lesions)} lesions"
        + (f"  [{', '.join(result.flags)}]" if result.flags else "")
    )
    overlay = render_overlay(colour, result.mask, summary)
    ok, buf = cv2.imencode(".png", overlay, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    atomic_write_bytes(overlay_path, buf.tobytes())
    d = result.to_dict()
    d["input"] = str(path)
    d["outputs"] = {"mask": mask_path.name, "overlay": overlay_path.name}
    atomic_write_bytes(json_path, (json.dumps(d, indent=2) + "\n").encode())
    return {"mask": str(mask_path), "overlay": str(overlay_path), "json": str(json_path)}


def cmd_segment(args: argparse.Namespace) -> int:
    from .segmenter import Segmenter

    try:
        seg = Segmenter.from_engine(
            args.model, backend=args.backend, allow_defaults=args.assume_defaults
        )
    except HemosegError as e:
        _err(f"error: {e}")
        return EXIT_MODEL
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _err(f"error: cannot create output folder {out_dir} ({e.strerror})")
        return EXIT_USAGE
    inputs = list(expand_inputs(args.images))
    if not inputs:
        _err("error: no input images found")
        return EXIT_USAGE
    rows, failed, flagged, used = [], 0, 0, set()
    bar = _progress(len(inputs), args.quiet)
    for path, res in seg.segment_batch(inputs, prefetch=args.prefetch):
        row = dict.fromkeys(REPORT_FIELDS, "")
        row["input"] = str(path)
        if isinstance(res, HemosegError):
            failed += 1
            row.update(status="failed", error=str(res))
            _err(f"error: {res}")
        else:
            try:
                outs = write_outputs(res, path, out_dir, _stem_for(path, used), args.overlay_max_side)
            except (OSError, HemosegError) as e:
                failed += 1
                row.update(status="failed", error=f"{path}: cannot write outputs ({e})")
                _err(f"error: {row['error']}")
            else:
                q = res.quadrant_counts
                row.update(
                    status="ok", burden_percent=f"{res.burden_percent:.4f}",
                    lesion_count=len(res.lesions), lesion_area_px=res.lesion_area_px,
                    flags=";".join(res.flags), total_ms=f"{res.timings_ms.get('total', 0):.1f}",
                    **q, **outs,
                )
                if res.flags:
                    flagged += 1
                    _err(f"warning: {path}: flagged {', '.join(res.flags)}")
        rows.append(row)
        bar.update(1)
    bar.close()
    _write_report(out_dir / "report.csv", rows)
    ok = len(rows) - failed
    if not args.quiet:
        print(f"{ok}/{len(rows)} processed, {failed} failed, {flagged} flagged -> {out_dir}")
    if failed:
        return EXIT_INPUT
    return EXIT_FLAGGED if flagged else EXIT_OK


def _write_report(path: Path, rows: list[dict]) -> None:
    from .io import atomic_write_bytes

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=REPORT_FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


class _NoBar:
    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, quiet: bool):
    if quiet or total < 2:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, disable=None)


def cmd_info(args: argparse.Namespace) -> int:
    import numpy as np

    from .segmenter import Segmenter

    try:
        seg = Segmenter.from_engine(args.model, backend=args.backend)
        h, w = seg.metadata.input_hw
        out = seg.backend.run(np.zeros((1, 1, h, w), np.float32))
        if out.shape != (1, 1, h, w) or not np.isfinite(out).all():
            raise ModelError(f"{seg.source}: test inference gave shape {out.shape} or non-finite values")
    except HemosegError as e:
        _err(f"error: {e}")
        return EXIT_MODEL
    info = seg.info()
    info["checks"] = {
        "metadata": "ok",
        "test_inference": "ok",
        "preprocess_spec": "matches" if seg.metadata.preprocess_matches else "DIFFERS (retrain/export)",
    }
    print(json.dumps(info, indent=2, default=str))
    return EXIT_OK


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
    s.add_argument("--model", default=None, help="ONNX model or engine (default: shipped model)")
    s.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "openvino", "tensorrt"))
    s.add_argument("--assume-defaults", action="store_true",
                   help="accept a model without hemoseg metadata, using default settings")
    s.add_argument("--prefetch", type=int, default=2, help="images decoded ahead of inference")
    s.add_argument("--overlay-max-side", type=int, default=2048,
                   help="longest side of the overlay PNG in px (0 = original size)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_segment)
    i = sub.add_parser("info", help="print a model's metadata and check that it runs")
    i.add_argument("model", nargs="?", default=None)
    i.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "openvino", "tensorrt"))
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
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
