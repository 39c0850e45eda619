"""The driver: list SRC, skip what the table already has for this model, run the rest on Ray
Data (local by default, a cluster with ``address``), fold the parts into ``results.parquet``.

Passes: the first runs batches of ``batch_size``; a batch whose task failed for good (its
worker died on every retry: a file that crashes the decoder, a node lost for good) leaves no
part, so a second pass runs what is left one image per task; what is still left after the last
pass (an input that kills its worker every time) gets a ``failed`` row written by the driver.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import EXIT_FLAGGED, EXIT_INPUT, EXIT_OK, HemosegError, ModelError, UsageError
from ..model_file import model_metadata, read_model
from ..model_file.shipped import sha256_bytes
from .store import Listing, Store, list_inputs
from .table import (
    RESULTS,
    base_row,
    commit_part,
    compact,
    failed_fields,
    one_line,
    outputs_dir,
    part_key,
    parts_dir,
    printable,
    read_table,
)
from .worker import ArchiveWorker, Job

LOCAL_OBJECT_STORE_BYTES = 512 * 1024 * 1024  # result summaries and the model travel, not images
# actor task retries after its worker process died (killed, OOM, crashed); Ray restarts the actor
MAX_TASK_RETRIES = 3


@dataclass
class ArchiveConfig:
    src: str
    out: str
    address: str | None = None  # None: start Ray on this machine
    workers: int | None = None  # None: the cluster's CPUs / cpus_per_worker
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = 4
    model: str | None = None
    backend: str = "auto"
    assume_defaults: bool = False
    overlay_max_side: int = 2048
    retry_failed: bool = False
    quiet: bool = False
    max_passes: int = 2


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    sha256: str
    data: bytes = field(repr=False)


@dataclass
class ArchiveSummary:
    inputs: int = 0
    skipped: int = 0  # already in the table for this model
    processed: int = 0  # rows written by this run (for SRC's inputs)
    ok: int = 0  # the final status of SRC's inputs for this model
    ungradable: int = 0
    failed: int = 0
    flagged: int = 0
    workers: int = 0
    seconds: float = 0.0
    model_name: str = ""
    model_sha256: str = ""
    table: str = ""
    statuses: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def exit_code(self) -> int:
        if self.failed:
            return EXIT_INPUT
        return EXIT_FLAGGED if self.flagged or self.ungradable else EXIT_OK

    def line(self) -> str:
        rate = f" ({self.processed / self.seconds:.2f} img/s)" if self.seconds else ""
        return (
            f"{self.inputs} inputs: {self.ok} ok, {self.ungradable} ungradable, "
            f"{self.failed} failed, {self.flagged} flagged; {self.processed} processed in "
            f"{self.seconds:.1f} s{rate} on {self.workers} worker(s), {self.skipped} already "
            f"done; model {self.model_name} {self.model_sha256[:12]} -> {self.table}"
        )


def _say(config: ArchiveConfig, msg: str) -> None:
    if not config.quiet:
        print(f"hemoseg-edge: {msg}", file=sys.stderr, flush=True)


def resolve_model(path: str | None, backend: str, allow_defaults: bool) -> Model:
    """The exact model file every worker runs: ``path``, or the shipped model in the variant
    ``segment`` picks on this machine (the driver decides once, for the whole cluster)."""
    if path is None:
        from ..segmenter import Segmenter

        seg = Segmenter.from_engine(None, backend, allow_defaults)  # type: ignore[arg-type]
        seg.backend.close()
        path = seg.source
    data, kind = read_model(path)  # sha256-checked against the manifest for a shipped file
    md = model_metadata(data, kind, str(path), allow_defaults)
    return Model(Path(path).name, md.version, sha256_bytes(data), data)


@contextlib.contextmanager
def dst_lock(store: Store, dst: str) -> Iterator[None]:
    """One driver per local DST at a time (an OS lock: a killed driver holds nothing)."""
    if store.fs is not None:  # object storage: no lock; run one driver per DST
        yield
        return
    import fcntl

    fd = os.open(os.path.join(dst, ".archive.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"{dst}: another archive run is using this folder") from None
        yield
    finally:
        os.close(fd)


def _done(store: Store, dst: str, model_sha256: str) -> dict[str, tuple[str, int]]:
    """``{input: (status, processed_at in us)}`` of this model's rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = read_table(store, dst, ["status"])
    if table is None:
        return {}
    table = table.filter(pc.equal(table.column("model_sha256"), model_sha256))
    ts = pc.cast(table.column("processed_at"), pa.int64()).to_pylist()
    st = table.column("status").to_pylist()
    return dict(zip(table.column("input").to_pylist(), zip(st, ts, strict=True), strict=True))


def run_archive(config: ArchiveConfig) -> ArchiveSummary:
    """Process every input under ``config.src`` that has no row for the model yet."""
    if config.batch_size < 1 or config.cpus_per_worker <= 0 or (config.workers or 1) < 1:
        raise UsageError("--batch-size, --workers and --cpus-per-worker must be positive")
    t_start = time.perf_counter()
    run_started = int(datetime.now(timezone.utc).timestamp() * 1e6)
    store, dst = Store.open(config.out)
    listing = list_inputs(config.src, exclude=dst)
    if not listing.inputs:
        raise UsageError(f"{config.src}: no input images found")
    model = resolve_model(config.model, config.backend, config.assume_defaults)
    store.makedirs(dst)
    summary = ArchiveSummary(
        inputs=len(listing.inputs),
        model_name=model.name,
        model_sha256=model.sha256,
        table=Store.join(dst, RESULTS),
    )
    with dst_lock(store, dst):
        store.remove_stale_temporaries(parts_dir(dst, model.sha256))

        def todo() -> list[tuple[str, str]]:
            done = _done(store, dst, model.sha256)

            def needed(name: str) -> bool:
                row = done.get(name)
                if row is None:
                    return True
                return config.retry_failed and row[0] == "failed" and row[1] < run_started

            pairs = zip(listing.inputs, listing.stems, strict=True)
            return [(i, s) for i, s in pairs if needed(printable(i))]

        pending = todo()
        summary.skipped = len(listing.inputs) - len(pending)
        _say(
            config,
            f"{len(listing.inputs)} inputs, {summary.skipped} already done for {model.name} "
            f"({model.sha256[:12]}), {len(pending)} to process",
        )
        if pending:
            _, summary.workers = _process(config, listing, model, store, dst, pending, todo)
            # a worker killed while writing leaves a hidden temporary beside the outputs of an
            # image that had no row, so was processed now: sweep those folders (no worker runs)
            out = outputs_dir(dst, model.sha256)
            for folder in sorted({os.path.dirname(Store.join(out, s)) for _, s in pending}):
                store.remove_stale_temporaries(folder)
        compact(store, dst)
        _final_counts(summary, store, dst, listing, model, run_started)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _final_counts(summary, store, dst, listing: Listing, model: Model, since: int) -> None:
    """The final state of SRC's inputs for this model, and how many rows this run wrote."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = read_table(store, dst, ["status", "flags"])
    assert table is not None
    table = table.filter(pc.equal(table.column("model_sha256"), model.sha256))
    wanted = {printable(i) for i in listing.inputs}
    summary.processed = 0
    for name, status, flags, at in zip(
        table.column("input").to_pylist(),
        table.column("status").to_pylist(),
        table.column("flags").to_pylist(),
        pc.cast(table.column("processed_at"), pa.int64()).to_pylist(),
        strict=True,
    ):
        if name not in wanted:
            continue  # an input no longer under SRC: its row stays in the table
        summary.processed += at >= since
        summary.statuses[name] = status
        if status == "failed":
            summary.failed += 1
        elif status == "ungradable":
            summary.ungradable += 1
        else:
            summary.ok += 1
            summary.flagged += bool(flags)


def _process(config, listing, model, store, dst, pending, todo) -> tuple[int, int]:
    import ray

    started = connect(config.address, config.workers, config.cpus_per_worker)
    try:
        workers = config.workers or max(
            1, int(ray.cluster_resources().get("CPU", 1) // config.cpus_per_worker)
        )
        workers = min(workers, math.ceil(len(pending) / config.batch_size))
        job = Job(
            src_root=listing.root,
            dst=dst,
            model_name=model.name,
            model_version=model.version,
            model_sha256=model.sha256,
            model_ref=ray.put(model.data),
            backend=config.backend,
            allow_defaults=config.assume_defaults,
            threads=max(1, int(config.cpus_per_worker)),
            overlay_max_side=config.overlay_max_side,
        )
        _say(config, f"running on {workers} worker(s), {config.batch_size} images per batch")
        bar = _progress(config, len(pending))
        processed, last_error = 0, ""
        try:
            for attempt in range(max(1, config.max_passes)):
                batch = config.batch_size if attempt == 0 else 1
                try:
                    processed += _run_pass(config, job, pending, workers, batch, bar)
                except HemosegError:
                    raise  # the model cannot load on the workers: no pass will do better
                except Exception as e:  # noqa: BLE001 - Ray errors: rescan, run what is left
                    fatal = init_failure(e)
                    if fatal is not None:
                        raise fatal from None
                    last_error = one_line(f"{type(e).__name__}: {e}", 200)
                    _say(config, f"warning: pass {attempt + 1} stopped ({last_error})")
                before = len(pending)
                pending = todo()
                if not pending:
                    break
                _say(config, f"{len(pending)} inputs left after pass {attempt + 1}")
                if len(pending) == before and attempt > 0:
                    break
        finally:
            bar.close()
        if pending:
            if processed == 0 and last_error:
                raise RuntimeError(f"the workers processed nothing: {last_error}")
            processed += _give_up(job, store, pending, config.max_passes, last_error)
        return processed, workers
    finally:
        if started:
            ray.shutdown()


def init_failure(e: BaseException) -> HemosegError | None:
    """A ``ModelError`` when the actors could not start (their ``__init__`` raised: the model or
    its backend will not load on the workers; no retry helps), else None."""
    text = str(e)
    if not (getattr(e, "actor_init_failed", False) or "creation task" in text):
        return None
    found = re.findall(r"hemoseg_edge\.errors\.\w+: (.+)", text)
    why = found[-1] if found else f"{type(e).__name__}: {text}"
    return ModelError(f"the workers cannot start: {one_line(why, 300)}")


def _give_up(job: Job, store: Store, pending, passes: int, error: str) -> int:
    """Failed rows, written by the driver, for inputs whose worker died on every try."""
    names = [name for name, _ in pending]
    worker = f"driver:{os.getpid()}"
    model = {
        "model_name": job.model_name,
        "model_version": job.model_version,
        "model_sha256": job.model_sha256,
    }
    reason = f"the worker processing it died on every try ({passes} passes)" + (
        f": {error}" if error else ""
    )
    rows = []
    for name in names:
        row = base_row(name, model, worker)
        row.update(failed_fields(f"{name}: {reason}"))
        rows.append(row)
    commit_part(store, job.dst, job.model_sha256, part_key(job.model_sha256, names), rows)
    return len(rows)


def connect(address: str | None, workers: int | None = None, cpus: float = 1.0) -> bool:
    """Join ``address``, or start Ray on this machine; True when this call started it (the
    caller shuts it down). An already initialised Ray (a test, a notebook) is used as is."""
    import ray

    if ray.is_initialized():
        return False
    debug = bool(os.environ.get("HEMOSEG_DEBUG"))
    kw: dict = {
        "include_dashboard": False,
        "log_to_driver": debug,
        "logging_level": logging.INFO if debug else logging.ERROR,
    }
    if address:
        ray.init(address=address, **kw)
    else:
        need = math.ceil((workers or 0) * cpus)
        ray.init(
            address="local",
            num_cpus=max(os.cpu_count() or 1, need),
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            **kw,
        )
    return True


def configure_data_context() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    settings = {
        "enable_progress_bars": False,  # the driver shows its own (images, ok / failed)
        "print_on_execution_start": False,
        "max_errored_blocks": -1,  # a batch whose task failed for good: rescanned, not fatal
        "raise_original_map_exception": True,  # a ModelError from a worker stays one
    }
    for key, value in settings.items():
        if hasattr(ctx, key):
            setattr(ctx, key, value)
    quiet = logging.INFO if os.environ.get("HEMOSEG_DEBUG") else logging.CRITICAL
    logging.getLogger("ray.data").setLevel(quiet)  # what fails ends as one line of ours


def _run_pass(config, job: Job, pending, workers: int, batch: int, bar) -> int:
    import warnings

    import ray.data

    configure_data_context()
    items = [{"input": name, "stem": stem} for name, stem in pending]
    blocks = max(1, min(math.ceil(len(items) / batch), 10_000))
    kw: dict = dict(
        fn_constructor_kwargs={"job": job},
        batch_size=batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=config.cpus_per_worker,
        num_gpus=config.gpus_per_worker or None,
    )
    source = ray.data.from_items(items, override_num_blocks=blocks)
    with warnings.catch_warnings():
        # Ray Data restarts dead actors (max_restarts=-1) and retries their tasks without end
        # by default: bounded here, so an input that kills its worker every time ends as a
        # failed row instead of stalling the job. Ray >= 2.64 drops these remote args (then
        # its defaults apply: a killed worker is still retried).
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            ds = source.map_batches(
                ArchiveWorker, max_restarts=-1, max_task_retries=MAX_TASK_RETRIES, **kw
            )
        except TypeError:
            ds = source.map_batches(ArchiveWorker, **kw)
    n = 0
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for name, status, reason, flags in zip(
            out["input"], out["status"], out["reason"], out["flags"], strict=True
        ):
            n += 1
            bar.record(str(status), str(flags))
            if status == "failed" and not config.quiet:
                bar.write(f"hemoseg-edge: error: {reason}")
            elif flags and not config.quiet:
                bar.write(f"hemoseg-edge: warning: {name}: flagged {flags.replace(';', ', ')}")
    return n


class _Progress:
    """tqdm over images with ok / failed counts on a terminal; elsewhere (a log) a line every
    tenth of the work or every 30 s; nothing when quiet."""

    def __init__(self, config: ArchiveConfig, total: int):
        from tqdm import tqdm

        self.counts = {"ok": 0, "ungradable": 0, "failed": 0, "flagged": 0}
        self.total, self.done, self.quiet = total, 0, config.quiet
        self.bar = tqdm(
            total=total,
            unit="img",
            file=sys.stderr,
            disable=True if config.quiet else None,  # None: only on a terminal
        )
        self.t0 = self.last = time.monotonic()
        self.every = max(1, total // 10)

    def record(self, status: str, flags: str) -> None:
        self.counts[status if status in self.counts else "ok"] += 1
        self.counts["flagged"] += bool(flags)
        self.done += 1
        self.bar.set_postfix(self.counts, refresh=False)
        self.bar.update(1)
        now = time.monotonic()
        if self.bar.disable and not self.quiet:
            if self.done % self.every == 0 or now - self.last > 30 or self.done == self.total:
                self.last = now
                counts = ", ".join(f"{v} {k}" for k, v in self.counts.items())
                rate = self.done / max(now - self.t0, 1e-9)
                _say_line(f"{self.done}/{self.total} images ({counts}), {rate:.2f} img/s")

    def write(self, msg: str) -> None:
        self.bar.write(msg, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _say_line(msg: str) -> None:
    print(f"hemoseg-edge: {msg}", file=sys.stderr, flush=True)


def _progress(config: ArchiveConfig, total: int) -> _Progress:
    return _Progress(config, total)
