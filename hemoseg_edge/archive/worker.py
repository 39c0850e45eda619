"""The Ray Data callable class: one ``Segmenter`` per actor, one part file per batch.

``map_batches(ArchiveWorker, ...)`` builds one instance per actor; ``__call__`` gets a batch of
``{"input", "stem"}`` rows and returns one small summary row per input (what the driver's
progress display counts). The rows themselves never travel back: they go to DST as a part file.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HemosegError, ModelError
from ..files import atomic_write_bytes
from ..inputs import LoadedImage, decode_image
from ..outputs import OUTPUT_KINDS, render_outputs
from ..result import SegmentationResult
from ..segmenter import Segmenter
from .store import Store
from .table import (
    base_row,
    commit_part,
    failed_fields,
    one_line,
    outputs_dir,
    part_key,
    part_name,
    read_part,
    result_fields,
)

SUMMARY = ("input", "status", "reason", "flags")


@dataclass(frozen=True)
class Job:
    """What every actor needs: plain data (pickled to each actor), plus the model's bytes as a
    Ray object (``model_ref``) so every actor runs exactly the file whose sha256 is recorded."""

    src_root: str
    dst: str
    model_name: str
    model_version: str
    model_sha256: str
    model_ref: Any
    backend: str = "auto"
    allow_defaults: bool = False
    threads: int = 0
    overlay_max_side: int = 2048
    prefetch: int = 2

    @property
    def outputs_dir(self) -> str:
        return outputs_dir(self.dst, self.model_sha256)


def spool_model(data: bytes, name: str, sha256: str) -> Path:
    """The model's bytes as a file under this node's temp folder (shared by its actors,
    content-addressed, written atomically), so ``Segmenter.from_engine`` loads it by path."""
    path = Path(tempfile.gettempdir()) / "hemoseg-archive" / sha256 / name
    if not (path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256):
        atomic_write_bytes(path, data)
    return path


def lookahead(fn: Callable, items: Iterable, depth: int) -> Iterator[tuple[Any, Future]]:
    """``(item, future of fn(item))`` in order, at most ``depth`` running ahead."""
    pool = ThreadPoolExecutor(max(1, depth), thread_name_prefix="hemoseg-read")
    pending: deque[tuple[Any, Future]] = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) > depth:
                yield pending.popleft()
        while pending:
            yield pending.popleft()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class ArchiveWorker:
    """One model per actor; ``__call__`` segments a batch, writes each image's output files,
    then commits the batch's rows as one part file (a retried batch finds its part and
    returns it without redoing the work)."""

    def __init__(self, job: Job):
        import ray

        self.job = job
        self.src, _ = Store.open(job.src_root)
        self.dst, _ = Store.open(job.dst)
        data = ray.get(job.model_ref)
        if hashlib.sha256(data).hexdigest() != job.model_sha256:
            raise ModelError(f"{job.model_name}: model bytes differ from sha256 {job.model_sha256}")
        path = spool_model(data, job.model_name, job.model_sha256)
        options = {"threads": job.threads} if job.threads else {}
        self.seg = Segmenter.from_engine(
            path,
            job.backend,  # type: ignore[arg-type]  # one of backends.NAMES (the CLI's choices)
            job.allow_defaults,
            throughput=True,
            **options,
        )
        self.model = {
            "model_name": job.model_name,
            "model_version": self.seg.metadata.version,
            "model_sha256": job.model_sha256,
        }
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.spool = tempfile.mkdtemp(prefix="hemoseg-archive-") if self.src.fs else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [str(x) for x in batch["input"]]
        stems = [str(x) for x in batch["stem"]]
        key = part_key(self.job.model_sha256, names)
        committed = read_part(self.dst, part_name(self.job.dst, self.job.model_sha256, key))
        if committed is not None:  # this batch was done before its task was retried
            return summary(committed.to_pylist())
        rows = self.process(names, stems)
        commit_part(self.dst, self.job.dst, self.job.model_sha256, key, rows)
        return summary(rows)

    # --- one batch ----------------------------------------------------------------------------
    def process(self, names: list[str], stems: list[str]) -> list[dict]:
        """One row per input, in input order; nothing raised for a bad image."""
        rows: dict[str, dict] = {}
        try:
            self._pipeline(names, dict(zip(names, stems, strict=True)), rows)
        except Exception as e:  # noqa: BLE001 - a bug on one image: redo the rest one by one
            for name, stem in zip(names, stems, strict=True):
                if name not in rows:
                    rows[name] = self._one(name, stem, e)
        return [rows[n] for n in names]

    def _pipeline(self, names: list[str], stem_of: dict[str, str], rows: dict[str, dict]):
        """Reads and decodes (``prefetch`` threads) feed ``segment_batch``, whose results are
        rendered and written one behind (``write_behind``)."""
        from ..outputs import write_behind

        read: dict[str, tuple[str, int, bytes | None]] = {}

        def load(name: str) -> LoadedImage:
            data = self.src.read(name)
            read[name] = (hashlib.sha256(data).hexdigest(), len(data), data if self.spool else None)
            return decode_image(data, name, self.seg.metadata.input_hw)

        def loaded() -> Iterator[LoadedImage]:
            for name, fut in lookahead(load, names, self.job.prefetch):
                try:
                    yield fut.result()
                except HemosegError as e:
                    rows[name] = self._row(name, read.get(name), failed_fields(str(e)))

        def write(image: LoadedImage, result: Any, _: Any) -> dict[str, str]:
            return self._write(image.path, stem_of[image.path], result, read[image.path][2])

        pairs = self.seg.segment_batch(loaded(), prefetch=self.job.prefetch)
        for image, res, fut in write_behind(pairs, write, workers=1, depth=2):
            name = image.path if isinstance(image, LoadedImage) else str(image)
            if isinstance(res, HemosegError):
                rows[name] = self._row(name, read.get(name), failed_fields(str(res)))
                continue
            try:
                assert fut is not None  # write_behind writes every result
                outputs = fut.result()
            except (OSError, HemosegError) as e:
                reason = f"{name}: cannot write outputs ({one_line(str(e), 200)})"
                rows[name] = self._row(name, read.get(name), failed_fields(reason))
            else:
                rows[name] = self._row(name, read.get(name), result_fields(res, outputs))
            if name in read:  # the bytes of a remote input are done with
                read[name] = read[name][:2] + (None,)

    def _one(self, name: str, stem: str, first: BaseException) -> dict:
        """One image on its own, after the batch pipeline raised something unexpected."""
        meta = None
        try:
            data = self.src.read(name)
            meta = (hashlib.sha256(data).hexdigest(), len(data))
            image = decode_image(data, name, self.seg.metadata.input_hw)
            result = self.seg.segment(image)
            outputs = self._write(name, stem, result, data if self.spool else None)
            return self._row(name, meta, result_fields(result, outputs))
        except HemosegError as e:
            return self._row(name, meta, failed_fields(str(e)))
        except Exception as e:  # noqa: BLE001 - never stop the job: a failed row with the bug
            return self._row(name, meta, failed_fields(f"{name}: internal error: {_describe(e)}"))

    def _write(
        self, name: str, stem: str, result: SegmentationResult, data: bytes | None
    ) -> dict[str, str]:
        """Render and write the three output files (each atomically, JSON last)."""
        path, spooled = name, None
        if data is not None:  # a remote input: the overlay is drawn from a local copy
            assert self.spool is not None
            spooled = os.path.join(
                self.spool, f"{os.getpid()}-{hashlib.sha1(name.encode()).hexdigest()}"
            )
            with open(spooled, "wb") as f:
                f.write(data)
            path = spooled
        try:
            files = render_outputs(result, path, stem, self.job.overlay_max_side, {"input": name})
        finally:
            if spooled:
                os.unlink(spooled)
        out = self.job.outputs_dir
        for fname, blob in files.items():
            self.dst.write_atomic(Store.join(out, fname), blob)
        return dict(zip(OUTPUT_KINDS, (Store.join(out, f) for f in files), strict=True))

    def _row(self, name: str, meta: tuple | None, fields: dict) -> dict:
        row = base_row(name, self.model, self.worker)
        if meta is not None:
            row.update(input_sha256=meta[0], input_bytes=meta[1])
        row.update(fields)
        if row["backend"] is None:
            row["backend"] = self.seg.backend.name
        return row


def summary(rows: list[dict]) -> dict[str, np.ndarray]:
    """What goes back to the driver: input, status, reason and flags (``;``-joined)."""
    cols: dict[str, list] = {k: [] for k in SUMMARY}
    for r in rows:
        cols["input"].append(r["input"])
        cols["status"].append(r["status"])
        cols["reason"].append(r["reason"] or "")
        cols["flags"].append(";".join(r["flags"] or ()))
    return {k: np.array(v, dtype=object) for k, v in cols.items()}


def _describe(e: BaseException) -> str:
    return one_line(f"{type(e).__name__}: {e}", 300)
