"""Pure inference per backend x precision (group "inference"), and peak memory plus cold start
per backend in a fresh process (group "memory")."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from benchlib import ONE_AT_A_TIME, VARIANTS, Variant, load_or_skip, rounds, skip_reason

_CHILD = r"""
import json, sys, time
import numpy as np
from hemoseg_edge.backends import load_backend
path, backend, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
t = time.perf_counter()
be = load_backend(backend, open(path, "rb").read(), path, **options)
load_s = time.perf_counter() - t
x = np.random.default_rng(0).random(tuple(max(1, d) for d in be.input_spec.shape), np.float32)
for _ in range(2):
    be.run(x)
peak = 0.0  # VmHWM: this process's own high-water mark (ru_maxrss can carry the parent's)
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        peak = int(line.split()[1]) / 1024
print(json.dumps({"load_s": load_s, "peak_rss_mb": peak, "providers": be.providers}))
"""


def _variant_or_skip(v: Variant, models):
    why = skip_reason(v, models)
    if why:
        pytest.skip(why)
    return models.path(v.file)


def runner(be, x: np.ndarray):
    """``(run, images per call)``: one inference, or for a backend with several requests
    (``concurrency`` > 1) two per request, all in flight at once."""
    from concurrent.futures import ThreadPoolExecutor

    if be.concurrency <= 1:
        return (lambda: be.run(x)), 1
    pool = ThreadPoolExecutor(be.concurrency, thread_name_prefix="bench-infer")
    n = 2 * be.concurrency

    def run():
        outs = list(pool.map(lambda _: be.run(x), range(n)))
        return outs[-1]

    return run, n


@pytest.mark.parametrize("v", VARIANTS, ids=lambda v: v.id)
def bench_inference(benchmark, v: Variant, models, model_input):
    """Per round: one image (latency tuning) or ``2 x concurrency`` images at once (throughput
    tuning); ``images_per_s`` and the report's per-image times divide by that count."""
    path = _variant_or_skip(v, models)
    t = time.perf_counter()
    be = load_or_skip(v, path)
    load_s = time.perf_counter() - t
    x = model_input
    run, per_round = runner(be, x)
    run()  # first call: lazy allocations, JIT
    benchmark.group = "inference"
    benchmark.extra_info.update(
        backend=v.backend,
        precision=v.precision,
        mode="throughput" if v.throughput else "latency",
        providers=",".join(be.providers),
        model=path.name,
        real_model=models.real,
        load_s=round(load_s, 3),
        images_per_round=per_round,
    )
    out = benchmark.pedantic(run, rounds=rounds(10, 3), warmup_rounds=1)
    assert out.shape == x.shape and np.isfinite(out).all()
    benchmark.extra_info["images_per_s"] = round(per_round / benchmark.stats.stats.median, 3)
    be.close()


@pytest.mark.parametrize("v", ONE_AT_A_TIME, ids=lambda v: v.id)
def bench_memory(benchmark, v: Variant, models):
    """Peak RSS of a fresh process that loads the model and runs it twice (psutil polls it from
    outside; ``VmHWM`` from inside, exact, Linux only); the time is that cold start."""
    import psutil

    path = _variant_or_skip(v, models)
    benchmark.group = "memory"
    peak = {"rss": 0}

    def cold_start() -> dict:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), v.backend, json.dumps(v.options)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak["rss"] = max(peak["rss"], ps.memory_info().rss)
            except psutil.Error:
                break
            time.sleep(0.02)
        out, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"child failed: {err.strip().splitlines()[-1:]}")
        return json.loads(out.strip().splitlines()[-1])

    info = benchmark.pedantic(cold_start, rounds=1, iterations=1)
    benchmark.extra_info.update(
        backend=v.backend,
        precision=v.precision,
        model=path.name,
        providers=",".join(info["providers"]),
        peak_rss_mb=round(info["peak_rss_mb"], 1),
        peak_rss_mb_psutil=round(peak["rss"] / 2**20, 1),
        load_s=round(info["load_s"], 3),
    )
