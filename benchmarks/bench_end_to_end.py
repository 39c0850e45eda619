"""JPEG path -> ``SegmentationResult`` through the default CPU path (the shipped FP32 model,
backend "auto"): one image at a time, the batch pipeline, and the batch pipeline plus the CLI's
output files (group "end-to-end"; every round processes the same N images)."""

from __future__ import annotations

import itertools

import pytest
from benchlib import FP32, n_images, rounds

from hemoseg_edge.errors import HemosegError
from hemoseg_edge.segmenter import Segmenter

GROUP = "end-to-end"


@pytest.fixture(scope="module")
def seg(models, images) -> Segmenter:
    s = Segmenter.from_engine(models.path(FP32), backend="auto")
    s.segment(images[0])  # warm up (first-call allocations)
    return s


@pytest.fixture(scope="module")
def paths(images) -> list:
    n = n_images(12, 4)
    return list(itertools.islice(itertools.cycle(images), n))


def _record(benchmark, seg: Segmenter, paths: list, mode: str, models) -> None:
    benchmark.extra_info.update(
        mode=mode,
        images_per_round=len(paths),
        images_per_s=round(len(paths) / benchmark.stats.stats.median, 3),
        backend=seg.backend.name,
        providers=",".join(seg.backend.providers),
        real_model=models.real,
    )


def bench_single(benchmark, seg, paths, models):
    """``segment`` image after image: no overlap."""
    benchmark.group = GROUP

    def run():
        return [seg.segment(p) for p in paths]

    benchmark.pedantic(run, rounds=rounds(3, 1))
    _record(benchmark, seg, paths, "single", models)


def bench_batch(benchmark, seg, paths, models):
    """``segment_batch``: decode+preprocess, inference and postprocess overlap."""
    benchmark.group = GROUP

    def run():
        out = list(seg.segment_batch(paths, prefetch=2))
        assert not any(isinstance(r, HemosegError) for _, r in out)
        return out

    benchmark.pedantic(run, rounds=rounds(3, 1))
    _record(benchmark, seg, paths, "batch", models)


def bench_batch_with_outputs(benchmark, seg, paths, models, tmp_path):
    """What ``hemoseg-edge segment`` does: the batch pipeline plus mask/overlay/JSON files
    written by a bounded writer pool (``pipeline.write_behind``)."""
    from hemoseg_edge.cli import write_outputs
    from hemoseg_edge.pipeline import write_behind

    benchmark.group = GROUP
    counter = itertools.count()

    def run():
        jobs = write_behind(
            seg.segment_batch(paths, prefetch=2),
            lambda path, res, stem: write_outputs(res, path, tmp_path, stem, 2048),
            prepare=lambda path: f"{path.stem}_{next(counter)}",
        )
        for _, _, fut in jobs:
            fut.result()

    benchmark.pedantic(run, rounds=rounds(3, 1))
    _record(benchmark, seg, paths, "batch+outputs", models)
