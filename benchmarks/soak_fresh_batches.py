"""Fresh multi-image ``segment`` processes, many times: none may hang (issue: a deadlock on the
first numpy conversion by two OpenVINO streams at once, 1 run in 12 before the fix).

``python benchmarks/soak_fresh_batches.py --runs 50 --images 6 --out soak_fresh.json``

Each run is a new process of ``hemoseg-edge segment IMG... --out DIR -q`` on the default path
(OpenVINO throughput streams on x86 when installed: the path that deadlocked), with a
wall-clock limit per run far above its normal time; a run past the limit counts as hung and is
killed. Bounded in count and time; nothing but local processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def images(n: int) -> list[str]:
    root = Path(os.environ.get("HEMOSEG_DATA", REPO.parent / "shared" / "data"))
    found = sorted((root / "idrid" / "images").glob("test/IDRiD_*.jpg"))[:n]
    return [str(p) for p in found] or [str(REPO / "examples" / "IDRiD_55.jpg")] * n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--limit", type=float, default=180.0, help="seconds before a run is hung")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    imgs = images(args.images)
    results = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.monotonic()
            cmd = [sys.executable, "-m", "hemoseg_edge", "segment", *imgs, "--out", out, "-q"]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.limit)
                code, hung = proc.returncode, False
            except subprocess.TimeoutExpired:
                code, hung = None, True
            seconds = time.monotonic() - t0
            rows = (Path(out) / "report.csv").read_text().count("\n") - 1 if not hung else 0
        results.append(
            {"run": i, "exit": code, "hung": hung, "seconds": round(seconds, 2), "rows": rows}
        )
        print(
            f"run {i + 1}/{args.runs}: exit {code} {'HUNG' if hung else ''} "
            f"{seconds:.1f} s, {rows} rows",
            flush=True,
        )
    hung = sum(r["hung"] for r in results)
    bad = sum(1 for r in results if not r["hung"] and r["exit"] not in (0, 4))
    summary = {
        "runs": args.runs,
        "images_per_run": len(imgs),
        "hung": hung,
        "bad_exit": bad,
        "incomplete_reports": sum(1 for r in results if not r["hung"] and r["rows"] != len(imgs)),
        "limit_s": args.limit,
        "host": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "results": results,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if hung or bad else 0


if __name__ == "__main__":
    sys.exit(main())
