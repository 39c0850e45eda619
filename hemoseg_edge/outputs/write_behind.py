"""Bounded, ordered write-behind for batch outputs: encoding and writing the files of one image
overlaps inference of the next ones, without unbounded memory."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def write_behind(
    pairs: Iterable[tuple[T, R]],
    write: Callable[[T, R, Any], Any],
    prepare: Callable[[T], Any] = lambda item: None,
    skip: Callable[[R], bool] = lambda result: isinstance(result, Exception),
    workers: int = 2,
    depth: int = 4,
) -> Iterator[tuple[T, R, Future | None]]:
    """Yield ``(item, result, future)`` in input order, ``future`` being
    ``write(item, result, prepare(item))`` run on a ``workers``-thread pool (None where
    ``skip(result)``, e.g. a failed image). ``prepare`` runs in the caller's thread, in order
    (e.g. choosing unique file names). At most ``depth`` writes are pending: the producer of
    ``pairs`` waits for the slowest writes, and their results are not held forever."""
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="hemoseg-write")
    pending: deque[tuple[T, R, Future | None]] = deque()
    try:
        for item, result in pairs:
            fut = None if skip(result) else pool.submit(write, item, result, prepare(item))
            pending.append((item, result, fut))
            while len(pending) > max(0, depth) or pending and _done(pending[0][2]):
                yield pending.popleft()
        while pending:
            item, result, fut = pending.popleft()
            if fut is not None:
                fut.exception()  # wait
            yield item, result, fut
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _done(fut: Future | None) -> bool:
    return fut is None or fut.done()
