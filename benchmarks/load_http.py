"""Load figures for ``hemoseg-edge serve``: requests/s, p50/p99 latency and the server's peak RSS
at a few client concurrencies, over loopback, against a server process started here.

    .venv/bin/python benchmarks/load_http.py                       # shipped model, c = 1 and 4
    .venv/bin/python benchmarks/load_http.py --concurrency 1 2 4 --requests 24 --out load.json

Bounded: ``--requests`` per level and ``--time-limit`` seconds per level (whichever first).
Records the host (``lscpu`` model name, cores, load average: a shared machine shows in it),
the model and backend the server reports, and the concurrency of each row. Not collected by
``make bench`` (pytest there collects ``bench_*.py``); ``benchmarks/report.py`` renders the
committed ``benchmarks/load_http.json`` (``--out``) as BENCHMARKS.md's "serve" section.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def host_info() -> dict:
    info = {"cpu_model": None, "cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            info["cpu_model"] = value.strip()
        elif key.strip() in ("CPU(s)", "Core(s) per socket", "Socket(s)", "Thread(s) per core"):
            info[key.strip()] = value.strip()
    return info


def start_server(args) -> tuple[subprocess.Popen, int, list[str]]:
    cmd = [sys.executable, "-m", "hemoseg_edge", "serve", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--no-access-log", "--queue", str(max(args.concurrency) * 2)]
    cmd += ["--model", args.model] if args.model else []
    cmd += ["--backend", args.backend] + (["--throughput"] if args.throughput else [])
    env = {**os.environ, "HEMOSEG_TOKEN": ""}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert proc.stderr is not None
    deadline = time.monotonic() + 180
    for line in proc.stderr:
        lines.append(line.rstrip())
        m = re.search(r"event=http_listening url=http://127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(
                target=lambda: [lines.append(x) for x in proc.stderr], daemon=True
            ).start()
            return proc, int(m.group(1)), lines
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("server did not start:\n" + "\n".join(lines[-20:]))


def post(conn: http.client.HTTPConnection, body: bytes) -> int:
    conn.request("POST", "/v1/segment?name=bench.jpg", body=body)
    r = conn.getresponse()
    r.read()
    return r.status


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (with few samples p99 is the maximum)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 1)) - 1))
    return sorted_values[k]


def run_level(port: int, pid: int, body: bytes, concurrency: int, n: int, limit: float) -> dict:
    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    errors: list[str] = []
    stop = threading.Event()
    peak = [0]
    proc = psutil.Process(pid)

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                return
            stop.wait(0.02)

    deadline = time.monotonic() + limit

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if issued[0] >= n:
                        return
                    issued[0] += 1
                t = time.perf_counter()
                try:
                    status = post(conn, body)
                except OSError as e:
                    errors.append(type(e).__name__)
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                    continue
                dt = time.perf_counter() - t
                with lock:
                    (latencies.append(dt) if status == 200 else errors.append(str(status)))
        finally:
            conn.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    lat = sorted(latencies)
    return {
        "concurrency": concurrency,
        "requests_ok": len(lat),
        "errors": errors,
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(lat) / wall, 3) if wall else None,
        "p50_ms": round(1000 * percentile(lat, 0.50), 1),
        "p99_ms": round(1000 * percentile(lat, 0.99), 1),
        "peak_rss_mb": round(peak[0] / 2**20, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model file (default: the shipped model)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--throughput", action="store_true", help="serve --throughput")
    p.add_argument("--image", default=str(REPO / "examples" / "IDRiD_55.jpg"))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    p.add_argument("--requests", type=int, default=16, help="requests per level")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--time-limit", type=float, default=180.0, help="seconds per level, at most")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    body = Path(args.image).read_bytes()
    host = host_info()
    proc, port, lines = start_server(args)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        conn.request("GET", "/version")
        version = json.loads(conn.getresponse().read())
        idle_rss = psutil.Process(proc.pid).memory_info().rss
        for _ in range(args.warmup):
            assert post(conn, body) == 200
        conn.close()
        rows = [
            run_level(port, proc.pid, body, c, args.requests, args.time_limit)
            for c in args.concurrency
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": host,
        "image": os.path.basename(args.image),
        "image_bytes": len(body),
        "model": version["model"],
        "server_workers": version["concurrency"],
        "idle_rss_mb_after_load": round(idle_rss / 2**20, 1),
        "levels": rows,
        "server_exit_code": proc.returncode,
    }
    print(json.dumps(report, indent=2))
    print(f"\nhost: {host['cpu_model']}, {host['cpus']} CPUs, load avg {host['load_avg']}")
    print(f"model: {version['model']['name']} on {version['backend']}")
    print("concurrency  ok  req/s   p50 ms   p99 ms  peak RSS MB")
    for r in rows:
        print(
            f"{r['concurrency']:>11} {r['requests_ok']:>3} {r['requests_per_s']:>6} "
            f"{r['p50_ms']:>8} {r['p99_ms']:>8} {r['peak_rss_mb']:>12}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(not r["errors"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
