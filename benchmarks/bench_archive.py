"""``hemoseg-edge archive`` (Ray Data, ``hemoseg_edge.archive``) against ``segment``'s batch
path on this host, in the same run. Group "archive".

``archive-actors[1]`` / ``[2]``: ``run_archive`` on N full-size images into a fresh DST each
round, with 1 actor on every core or 2 actors on half the cores each (the same CPU as
``segment``, which tunes its one model for throughput over all cores). A round is what a user
waits for once Ray is up: actor start and model load per actor, decode, inference, output files
(mask, overlay, JSON), part files, the final ``results.parquet``. Before each round (untimed)
the yardstick runs: ``segment_batch`` plus the same output files through ``write_behind``, as
``hemoseg-edge segment`` does; ``paired_ratio`` is the median of the rounds' archive rate over
the yardstick rate measured just before, ``overhead_ms_per_image`` what Ray adds per image, and
``steady_images_per_s`` the rate between the first and the last row written (actor start left
out), ``startup_s`` the time from the call to the first row.

``archive-scheduling``: Ray Data's own cost per task, with a no-op callable class on one actor
(one item per batch, as the archive's second pass runs): the slope of wall time between a short
and a long run, so actor start cancels.

Skipped in quick mode (``HEMOSEG_BENCH_QUICK=1``): starting Ray and its actors alone takes
longer than the quick suite, and without ``ray[data]`` (the ``[archive]`` extra).
"""

from __future__ import annotations

import itertools
import os
import shutil
import statistics
import time

import pytest
from benchlib import QUICK, default_segmenter, n_images, rounds

pytestmark = [
    pytest.mark.skipif(QUICK, reason="quick mode: Ray's start-up alone outlasts the quick suite"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
ray = pytest.importorskip("ray", reason="the [archive] extra (ray[data]) is not installed")
pytest.importorskip("ray.data", reason="the [archive] extra (ray[data]) is not installed")

GROUP = "archive"
BATCH = 2  # images per task and part file (the CLI's default is 4; 2 spreads N images evenly)


@pytest.fixture(scope="module")
def ray_host():
    """Ray on this machine with every core, started once (its start-up is not timed)."""
    from hemoseg_edge.archive.driver import connect

    started = connect(None)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def batch_seg(models):
    return default_segmenter(models, throughput=True)


@pytest.fixture(scope="module")
def archive_src(images, tmp_path_factory):
    """N full-size images (the test images, cycled under distinct names) in one folder."""
    n = n_images(12, 2)
    src = tmp_path_factory.mktemp("archive_src")
    for i, p in zip(range(n), itertools.cycle(images), strict=False):
        shutil.copyfile(p, src / f"{i:03d}_{p.name}")
    return src, sorted(src.iterdir())


class Yardstick:
    """``segment``'s batch path with its output files, timed before every archive round."""

    def __init__(self, seg, paths, out):
        self.seg, self.paths, self.out = seg, paths, out
        self.rates: list[float] = []

    def measure(self) -> None:
        from hemoseg_edge.outputs import write_behind, write_outputs

        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir(parents=True)
        t = time.perf_counter()
        jobs = write_behind(
            self.seg.segment_batch(self.paths),
            lambda path, res, stem: write_outputs(res, path, self.out, stem, 2048),
            prepare=lambda path: path.stem,
        )
        for _, _, written in jobs:
            assert written is not None, "an image failed"
            written.result()
        self.rates.append(len(self.paths) / (time.perf_counter() - t))


@pytest.mark.parametrize("workers", [1, 2])
def bench_archive_actors(benchmark, ray_host, batch_seg, archive_src, models, tmp_path, workers):
    import pyarrow.parquet as pq

    from hemoseg_edge.archive import ArchiveConfig, run_archive

    benchmark.group = GROUP
    src, paths = archive_src
    cpus = max(1, (os.cpu_count() or 1) // workers)
    yard = Yardstick(batch_seg, paths, tmp_path / "segment")
    rounds_run: list[dict] = []

    def setup():
        yard.measure()
        dst = tmp_path / f"dst{len(rounds_run)}"
        rounds_run.append({"dst": dst})
        return (dst,), {}

    def run(dst):
        rounds_run[-1]["t0"] = time.time()
        summary = run_archive(
            ArchiveConfig(
                src=str(src),
                out=str(dst),
                workers=workers,
                cpus_per_worker=cpus,
                batch_size=BATCH,
                model=batch_seg.source,
                quiet=True,
            )
        )
        assert summary.ok == len(paths) and summary.processed == len(paths), summary
        return summary

    benchmark.pedantic(run, setup=setup, rounds=rounds(2, 1))
    times = benchmark.stats.stats.data
    rates = [len(paths) / t for t in times]
    ratios = [a / b for a, b in zip(rates, yard.rates, strict=True)]
    steady, startup = [], []
    for r in rounds_run:
        ts = sorted(
            t.timestamp()
            for t in pq.read_table(r["dst"] / "results.parquet")["processed_at"].to_pylist()
        )
        startup.append(ts[0] - r["t0"])
        if len(ts) > workers:
            steady.append((len(ts) - 1) / (ts[-1] - ts[0]))
    seg_rate = statistics.median(yard.rates)
    benchmark.extra_info.update(
        mode=f"archive-{workers}-actor",
        workers=workers,
        cpus_per_worker=cpus,
        batch_size=BATCH,
        images_per_round=len(paths),
        images_per_s=round(statistics.median(rates), 3),
        segment_batch_images_per_s=round(seg_rate, 3),
        segment_batch_rates=[round(r, 3) for r in yard.rates],
        archive_rates=[round(r, 3) for r in rates],
        paired_ratios=[round(r, 3) for r in ratios],
        paired_ratio=round(statistics.median(ratios), 3),
        overhead_ms_per_image=round(1000 * (1 / statistics.median(rates) - 1 / seg_rate), 1),
        steady_images_per_s=round(statistics.median(steady), 3) if steady else None,
        startup_s=round(statistics.median(startup), 2),
        model=os.path.basename(batch_seg.source),
        backend=batch_seg.backend.name,
        real_model=models.real,
    )


def bench_archive_scheduling(benchmark, ray_host):
    """Ray Data's cost per task: a no-op callable class on one actor, one item per batch."""
    import ray.data

    from hemoseg_edge.archive.driver import configure_data_context

    benchmark.group = GROUP
    configure_data_context()

    class Echo:  # defined here: Ray pickles it by value (the benchmarks folder is no package)
        def __call__(self, batch):
            return batch

    def run_items(n: int) -> float:
        items = [{"input": f"/x/{i}.jpg", "stem": str(i)} for i in range(n)]
        ds = ray.data.from_items(items, override_num_blocks=n).map_batches(
            Echo,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=1,
        )
        t = time.perf_counter()
        got = sum(len(b["input"]) for b in ds.iter_batches(batch_size=None))
        assert got == n
        return time.perf_counter() - t

    short, long = 20, n_images(200, 40)
    slopes: list[float] = []

    def run():
        slopes.append((run_items(long) - run_items(short)) / (long - short))

    benchmark.pedantic(run, rounds=rounds(3, 1))
    benchmark.extra_info.update(
        mode="archive-scheduling",
        tasks=[short, long],
        scheduling_ms_per_task=round(1000 * statistics.median(slopes), 2),
        scheduling_ms_per_task_rounds=[round(1000 * s, 2) for s in slopes],
        scheduling_ms_per_image_at_batch_4=round(1000 * statistics.median(slopes) / 4, 2),
    )
