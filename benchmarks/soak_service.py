"""Soak test for the watch service: push many frames through it and sample its memory (RSS).

    python benchmarks/soak_service.py --frames 2000 --out /tmp/soak

Starts ``hemoseg-edge watch`` as a subprocess (the tiny test model unless ``--model``), keeps at
most ``--backlog`` frames waiting in its input folder, samples the service's RSS with psutil and
writes ``soak.csv`` (t_s, frames_done, rss_mb) and ``soak.png`` into ``--out``. Prints RSS after
warm-up, at the end, the growth per 1000 frames (least-squares slope after warm-up) and the
throughput. Frames are distinct small JPEGs (synthetic fundus-like discs, or ``--images``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def tiny_model(path: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_tiny_onnx

    from hemoseg_edge.model_file.metadata import ModelMetadata

    md = ModelMetadata(version="soak-tiny", threshold=0.5, training_data="none (soak test)")
    path.write_bytes(make_tiny_onnx(metadata=md))
    return path


def frame_pool(images: list[Path], width: int, n: int = 8) -> list[bytes]:
    """JPEG bytes of ``n`` distinct frames ``width`` px wide."""
    frames = []
    for i in range(n):
        if images:
            src = images[i % len(images)]
            img = cv2.imread(str(src), cv2.IMREAD_REDUCED_COLOR_4)
            if img is None:
                raise SystemExit(f"cannot read {src}")
            h, w = img.shape[:2]
            img = cv2.resize(img, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)
        else:
            rng = np.random.default_rng(i)
            h = round(width * 0.66)
            img = np.zeros((h, width, 3), np.uint8)
            cv2.circle(img, (width // 2, h // 2), int(h * 0.47), (40, 90, 190), -1)
            for _ in range(8):
                c = (int(rng.integers(width // 3, 2 * width // 3)), int(rng.integers(h // 4, h)))
                cv2.circle(img, c, int(rng.integers(3, 14)), (10, 25, 70), -1)
        frames.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return frames


def tagged(jpg: bytes, k: int) -> bytes:
    """A JPEG comment segment makes every file distinct."""
    payload = f"soak-{k}".encode()
    return jpg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpg[2:]


def finished(status_path: Path) -> int:
    try:
        s = json.loads(status_path.read_text())
    except (OSError, ValueError):
        return 0
    return int(s.get("processed", 0)) + int(s.get("failed", 0))


def plot(rows: list[tuple[float, int, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, n, rss = zip(*rows, strict=True)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(n, rss)
    ax[0].set(xlabel="frames processed", ylabel="RSS (MB)", title=title)
    ax[1].plot(t, rss)
    ax[1].set(xlabel="time (s)", ylabel="RSS (MB)", title="RSS over time")
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--out", type=Path, required=True, help="work and report folder (emptied)")
    ap.add_argument("--model", type=Path, default=None, help="default: the tiny test model")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--images", type=Path, nargs="*", default=[], help="real images to use")
    ap.add_argument("--width", type=int, default=800)
    ap.add_argument("--backlog", type=int, default=16)
    ap.add_argument("--sample", type=float, default=0.5, help="RSS sampling period (s)")
    ap.add_argument("--settle", type=float, default=0.2)
    args = ap.parse_args()

    import psutil  # type: ignore[import-untyped]

    if args.out.exists():
        shutil.rmtree(args.out)
    in_dir, svc_dir = args.out / "in", args.out / "service"
    in_dir.mkdir(parents=True)
    model = args.model or tiny_model(args.out / "tiny.onnx")
    pool = frame_pool(args.images, args.width)
    log_path = args.out / "service.log"
    cmd = [
        sys.executable,
        "-m",
        "hemoseg_edge",
        "watch",
        str(in_dir),
        "--out",
        str(svc_dir),
        "--model",
        str(model),
        "--backend",
        args.backend,
        "--settle",
        str(args.settle),
        "--rescan",
        "5",
        "--queue-size",
        str(args.backlog),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    ps = psutil.Process(proc.pid)
    rows: list[tuple[float, int, float]] = []
    t0 = time.monotonic()
    written, next_sample = 0, 0.0
    status_path = svc_dir / "status.json"
    try:
        while True:
            if proc.poll() is not None:
                print(f"service exited early ({proc.returncode}); see {log_path}")
                return 1
            done = finished(status_path)
            pending = sum(1 for e in os.scandir(in_dir) if not e.name.startswith("."))
            while written < args.frames and pending < args.backlog:
                tmp = in_dir / f".f{written:06d}.tmp"
                tmp.write_bytes(tagged(pool[written % len(pool)], written))
                os.rename(tmp, in_dir / f"f{written:06d}.jpg")
                written += 1
                pending += 1
            now = time.monotonic() - t0
            if now >= next_sample:
                rows.append((round(now, 2), done, ps.memory_info().rss / 2**20))
                next_sample = now + args.sample
            if done >= args.frames:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    rows.append((round(time.monotonic() - t0, 2), finished(status_path), rows[-1][2]))

    with open(args.out / "soak.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("t_s", "frames_done", "rss_mb"))
        w.writerows((t, n, f"{r:.1f}") for t, n, r in rows)
    warm = max(20, args.frames // 10)
    after = [(n, r) for _, n, r in rows if n >= warm]
    rss_warm = after[0][1] if after else rows[0][2]
    rss_end, rss_max = rows[-1][2], max(r for *_, r in rows)
    slope = 0.0
    if len(after) > 2:
        xs, ys = np.array([a[0] for a in after], float), np.array([a[1] for a in after], float)
        slope = float(np.polyfit(xs, ys, 1)[0]) * 1000 if np.ptp(xs) > 0 else 0.0
    elapsed = rows[-1][0]
    failed = log_path.read_text(errors="replace").count("event=failed")
    title = f"{args.frames} frames, {args.width}px, {args.backend}"
    plot(rows, args.out / "soak.png", title)
    print(
        f"frames {args.frames} in {elapsed:.0f} s ({args.frames / elapsed:.1f} frames/s),"
        f" failed {failed}"
    )
    print(
        f"RSS start {rows[0][2]:.1f} MB, after {warm} frames {rss_warm:.1f} MB,"
        f" end {rss_end:.1f} MB, max {rss_max:.1f} MB"
    )
    print(
        f"RSS growth after warm-up: {rss_end - rss_warm:+.1f} MB"
        f" (fit {slope:+.2f} MB per 1000 frames)"
    )
    print(f"wrote {args.out / 'soak.csv'} and {args.out / 'soak.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
