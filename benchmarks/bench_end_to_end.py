"""JPEG path -> ``SegmentationResult`` through the default CPU path: the model variant and
backend that ``hemoseg-edge segment`` picks without ``--model`` (``Segmenter.default_model``),
tuned as the CLI tunes it (latency for one image, throughput for several). Group "end-to-end";
every round processes the same N full-size images (full mode: the 27 official IDRiD test
images).

The batch benchmarks measure their own yardstick, *paired*: before and after each timed round
(in pytest-benchmark's untimed ``setup`` and ``teardown``) the same backend runs pure inference
on N preprocessed tensors, tuned both ways. Each round's ratio is its end-to-end rate over the
mean of the inference rates measured just before and just after it, in the tuning whose median
is better, so a host whose speed drifts (shared, throttled) moves both sides together.
``paired_ratio`` is the median of those ratios.

``batch-spare-core`` asks whether the pipeline hides decode, preprocess and postprocess when
inference leaves CPU to hide them in: inference on one thread (one core), the pipeline's other
stages free to use the rest, paired with pure inference on that same one-thread backend. (On a
host whose cores inference fills, ``cpu-budget`` gives the ceiling instead.)
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time

import numpy as np
import pytest
from bench_inference import runner
from benchlib import default_segmenter, forget_caches, n_images, rounds

from hemoseg_edge.errors import HemosegError
from hemoseg_edge.model_file.shipped import PREVIOUS_INT8_MODEL, PREVIOUS_MODEL
from hemoseg_edge.segmenter import Segmenter

GROUP = "end-to-end"


@pytest.fixture(scope="module")
def single_seg(models, images) -> Segmenter:
    s = default_segmenter(models, throughput=False)
    s.segment(images[0])  # warm up (first-call allocations)
    return s


@pytest.fixture(scope="module")
def batch_seg(models, images) -> Segmenter:
    s = default_segmenter(models, throughput=True)
    list(s.segment_batch(images[:2]))
    return s


@pytest.fixture(scope="module")
def paths(images) -> list:
    n = n_images(27, 4)  # full: the whole official test set per round
    return list(itertools.islice(itertools.cycle(images), n))


def per_image(run, per_call: int, n: int, clock) -> float:
    """``clock`` time per image over about ``n`` images of ``runner``'s ``run`` (``per_call``
    images a call), after one untimed call: the pipeline may have left the other tuning's
    threads asleep."""
    run()
    calls = max(1, n // per_call)
    t = clock()
    for _ in range(calls):
        run()
    return (clock() - t) / (calls * per_call)


class PairedInference:
    """Pure-inference rates (images/s) of each tuning, measured right before and right after
    each timed round (``measure``, ``measure_after``: pytest-benchmark's untimed setup and
    teardown); a round's rate is the mean of the two, so a steady drift of the host's speed
    cancels. The tuning with the better median is the yardstick for every round: taking the
    better of two noisy measurements round by round would inflate the yardstick."""

    def __init__(self, segs: list[Segmenter], tensor: np.ndarray, n: int):
        self.runs = [runner(s.backend, tensor) for s in segs]
        self.n = n
        self.before: list[list[float]] = [[] for _ in segs]
        self.after: list[list[float]] = [[] for _ in segs]

    def _rates(self, into: list[list[float]]) -> None:
        for (run, per_call), rates in zip(self.runs, into, strict=True):
            rates.append(1.0 / per_image(run, per_call, self.n, time.perf_counter))

    def measure(self) -> None:
        self._rates(self.before)
        forget_caches()  # the timed round then sees the images as new ones

    def measure_after(self) -> None:
        self._rates(self.after)

    @property
    def by_tuning(self) -> list[list[float]]:
        return [
            [(a + b) / 2 for a, b in zip(before, after, strict=True)]
            for before, after in zip(self.before, self.after, strict=True)
        ]

    @property
    def rates(self) -> list[float]:
        return max(self.by_tuning, key=statistics.median)

    def pedantic(self, benchmark, run, rounds: int) -> None:
        benchmark.pedantic(run, setup=self.measure, teardown=self.measure_after, rounds=rounds)


class StageCpu:
    """CPU time of the timed rounds: the whole process's, and the part spent in decode +
    preprocess and postprocess (thread CPU time inside the segmenter's stage methods, wrapped
    for the benchmark). The rest is inference and the pipeline's own overhead."""

    def __init__(self, seg: Segmenter):
        self.seg, self.lock = seg, threading.Lock()
        self.other = 0.0
        self.shares: list[float] = []
        self.other_ms: list[float] = []
        self.total_ms: list[float] = []

    def _timed(self, fn):
        def wrapper(*args):
            t = time.thread_time()
            try:
                return fn(*args)
            finally:
                dt = time.thread_time() - t
                with self.lock:
                    self.other += dt

        return wrapper

    def wrap(self, run, n: int):
        def timed_run():
            seg = self.seg
            seg._load_and_preprocess = self._timed(seg._load_and_preprocess)
            seg._finish = self._timed(seg._finish)
            self.other, t = 0.0, time.process_time()
            try:
                return run()
            finally:
                total = time.process_time() - t
                del seg._load_and_preprocess, seg._finish  # the class's methods again
                self.shares.append((total - self.other) / total)
                self.other_ms.append(1000 * self.other / n)
                self.total_ms.append(1000 * total / n)

        return timed_run


def _record(
    benchmark, seg: Segmenter, paths: list, mode: str, models, paired=None, cpu=None
) -> None:
    ei = benchmark.extra_info
    ei.update(
        mode=mode,
        images_per_round=len(paths),
        images_per_s=round(len(paths) / benchmark.stats.stats.median, 3),
        backend=seg.backend.name,
        providers=",".join(seg.backend.providers),
        model=seg.source.rsplit("/", 1)[-1],
        real_model=models.real,
    )
    if paired is not None:
        times = benchmark.stats.stats.data  # seconds per round, in round order
        e2e = [len(paths) / t for t in times]
        ratios = [a / b for a, b in zip(e2e, paired.rates, strict=True)]
        ei.update(
            paired_inference_images_per_s=[round(r, 3) for r in paired.rates],
            paired_e2e_images_per_s=[round(r, 3) for r in e2e],
            paired_ratios=[round(r, 3) for r in ratios],
            paired_ratio=round(statistics.median(ratios), 3),
            paired_inference_median=round(statistics.median(paired.rates), 3),
            paired_inference_by_tuning=[[round(r, 3) for r in t] for t in paired.by_tuning],
            paired_inference_before=[[round(r, 3) for r in t] for t in paired.before],
            paired_inference_after=[[round(r, 3) for r in t] for t in paired.after],
        )
    if cpu is not None:
        ei.update(
            inference_cpu_share=round(statistics.median(cpu.shares), 3),
            inference_cpu_shares=[round(r, 3) for r in cpu.shares],
            other_core_ms=round(statistics.median(cpu.other_ms), 1),
            total_core_ms=round(statistics.median(cpu.total_ms), 1),
        )


def _paired(segs: list[Segmenter], paths: list) -> PairedInference:
    tensor = segs[0].preprocess(segs[0].load(paths[0])).tensor
    return PairedInference(segs, tensor, len(paths))


def bench_single(benchmark, single_seg, paths, models):
    """``segment`` image after image (latency tuning): no overlap."""
    benchmark.group = GROUP

    def run():
        return [single_seg.segment(p) for p in paths]

    benchmark.pedantic(run, setup=forget_caches, rounds=rounds(3, 1))
    _record(benchmark, single_seg, paths, "single", models)


def _batch_run(seg: Segmenter, paths: list):
    def run():
        out = list(seg.segment_batch(paths, prefetch=2))
        assert not any(isinstance(r, HemosegError) for _, r in out)
        return out

    return run


def bench_batch(benchmark, single_seg, batch_seg, paths, models):
    """``segment_batch`` (throughput tuning): decode+preprocess, inference streams and
    postprocess overlap. Paired with pure inference (module docstring)."""
    benchmark.group = GROUP
    paired = _paired([single_seg, batch_seg], paths)
    cpu = StageCpu(batch_seg)
    run = cpu.wrap(_batch_run(batch_seg, paths), len(paths))
    paired.pedantic(benchmark, run, rounds(12, 2))
    _record(benchmark, batch_seg, paths, "batch", models, paired, cpu)


@pytest.fixture(scope="module")
def one_thread_seg(models, images) -> Segmenter:
    s = default_segmenter(models, throughput=False, threads=1)
    list(s.segment_batch(images[:2]))
    return s


def bench_batch_spare_core(benchmark, one_thread_seg, paths, models):
    """``segment_batch`` with inference on one thread: does the pipeline hide the rest when a
    core is free? Paired with pure inference of the same one-thread backend."""
    benchmark.group = GROUP
    paired = _paired([one_thread_seg], paths)
    run = _batch_run(one_thread_seg, paths)
    paired.pedantic(benchmark, run, rounds(4, 1))
    _record(benchmark, one_thread_seg, paths, "batch-spare-core", models, paired)


def _with_outputs_run(seg: Segmenter, paths: list, out_dir):
    """What ``hemoseg-edge segment`` does for several images: the batch pipeline plus the mask
    PNG, overlay JPEG and JSON written by a bounded writer pool (``pipeline.write_behind``)."""
    from hemoseg_edge.outputs import write_outputs
    from hemoseg_edge.outputs.write_behind import write_behind

    counter = itertools.count()

    def run():
        jobs = write_behind(
            seg.segment_batch(paths, prefetch=2),
            lambda path, res, stem: write_outputs(res, path, out_dir, stem, 2048),
            prepare=lambda path: f"{path.stem}_{next(counter)}",
        )
        for _, _, fut in jobs:
            fut.result()

    return run


def bench_batch_with_outputs(benchmark, single_seg, batch_seg, paths, models, tmp_path):
    """The CLI's batch path with its outputs (``_with_outputs_run``); paired as ``batch``."""
    benchmark.group = GROUP
    paired = _paired([single_seg, batch_seg], paths)
    run = _with_outputs_run(batch_seg, paths, tmp_path)
    paired.pedantic(benchmark, run, rounds(4, 1))
    _record(benchmark, batch_seg, paths, "batch+outputs", models, paired)


def bench_batch_with_outputs_spare_core(benchmark, one_thread_seg, paths, models, tmp_path):
    """The CLI's batch path with its outputs, inference on one thread: are the writes hidden
    too when a core is free? Paired with pure inference of the same one-thread backend."""
    benchmark.group = GROUP
    paired = _paired([one_thread_seg], paths)
    run = _with_outputs_run(one_thread_seg, paths, tmp_path)
    paired.pedantic(benchmark, run, rounds(4, 1))
    _record(benchmark, one_thread_seg, paths, "batch+outputs-spare-core", models, paired)


def bench_cpu_budget(benchmark, batch_seg, paths, models):
    """Core-milliseconds per image of each stage of the batch path, one stage at a time over
    the N images (process CPU time, all threads). On a host whose cores inference already
    fills, everything else is taken from inference: inference / total is the ceiling of the
    end-to-end ratio here, whatever the overlap."""
    benchmark.group = "cpu-budget"
    seg = batch_seg

    def stage(fn, items) -> tuple[list, float]:
        time.sleep(0.5)  # let the previous stage's worker threads go idle (they may spin)
        forget_caches()
        t = time.process_time()
        out = [fn(x) for x in items]
        return out, 1000 * (time.process_time() - t) / len(items)

    def inference_core_ms(tensor: np.ndarray) -> float:
        """As the batch path runs it: every inference stream busy (one request at a time
        would leave a stream idle, and its thread's spinning would count)."""
        run, per_call = runner(seg.backend, tensor)
        time.sleep(0.5)
        return 1000 * per_image(run, per_call, len(paths), time.process_time)

    def run() -> dict[str, float]:
        loaded, decode = stage(seg.load, paths)
        pres, preprocess = stage(seg.preprocess, loaded)
        probs = [seg.backend.run(p.tensor)[0, 0] for p in pres]
        inference = inference_core_ms(pres[0].tensor)
        _, postprocess = stage(
            lambda i: seg.postprocess(probs[i], pres[i], loaded[i], {}), range(len(paths))
        )
        return dict(
            decode=decode, preprocess=preprocess, inference=inference, postprocess=postprocess
        )

    ms = benchmark.pedantic(run, rounds=1, iterations=1)
    other = ms["decode"] + ms["preprocess"] + ms["postprocess"]
    benchmark.extra_info.update(
        {f"{k}_core_ms": round(v, 1) for k, v in ms.items()},
        ceiling_ratio=round(ms["inference"] / (ms["inference"] + other), 3),
        images=len(paths),
        providers=",".join(seg.backend.providers),
        model=seg.source.rsplit("/", 1)[-1],
        real_model=models.real,
    )


@pytest.fixture(scope="module")
def previous_seg(models, images) -> Segmenter:
    """The previous shipped model (v1) on the path ``default_model`` would pick for it."""
    if not models.real:
        pytest.skip("the shipped models are not in the models folder (tiny fallback)")
    if not (models.dir / PREVIOUS_MODEL).is_file():
        pytest.skip(f"{PREVIOUS_MODEL} not in {models.dir}")
    s = default_segmenter(
        models, throughput=True, fp32_name=PREVIOUS_MODEL, int8_name=PREVIOUS_INT8_MODEL
    )
    list(s.segment_batch(images[:2]))
    return s


def bench_batch_vs_previous_model(benchmark, batch_seg, previous_seg, paths, models):
    """The default model's batch path, each timed round preceded (untimed setup) by the same
    images through the previous model (v1) on its default path: their time ratio per round,
    side by side on the same host and minute."""
    benchmark.group = GROUP
    previous: list[float] = []

    def setup():
        forget_caches()
        t = time.perf_counter()
        _batch_run(previous_seg, paths)()
        previous.append(time.perf_counter() - t)
        forget_caches()

    benchmark.pedantic(_batch_run(batch_seg, paths), setup=setup, rounds=rounds(6, 1))
    _record(benchmark, batch_seg, paths, "batch-vs-previous", models)
    times = benchmark.stats.stats.data
    ratios = [a / b for a, b in zip(times, previous, strict=True)]
    benchmark.extra_info.update(
        previous_model=previous_seg.source.rsplit("/", 1)[-1],
        previous_images_per_s=round(len(paths) / statistics.median(previous), 3),
        time_ratio_vs_previous=[round(r, 3) for r in ratios],
        time_ratio_vs_previous_median=round(statistics.median(ratios), 3),
    )
