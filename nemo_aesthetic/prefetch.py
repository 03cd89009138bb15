"""Run an iterator ahead of its consumer in a background thread, a bounded number of items ahead.

The engine reads tar shards through this, so the next samples are read (and their batches
decoded) while the model runs on the current batch: the model's thread never waits for the
filesystem unless the reader is slower than the model. Items arrive in order; an exception raised
by the source is raised to the consumer at the place it happened (after every item before it);
``close()`` (or leaving the ``with`` block, or dropping a generator over it) stops the reader.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")

_DONE = object()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


class Prefetcher(Generic[T]):
    """``iter(source)`` consumed by a daemon thread, holding at most ``depth`` items ready.

    ``setup``, if given, runs first on the reader thread (e.g. to select a CUDA stream for work
    the source does there) and may return a context manager kept open while the source runs.
    """

    def __init__(self, source: Iterable[T], depth: int = 2, name: str = "prefetch",
                 setup: Callable[[], object] | None = None):
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.depth = depth
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, args=(source, setup), name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        """Blocks while the queue is full; False once the consumer has closed us."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterable[T], setup) -> None:
        try:
            context = setup() if setup is not None else None
            if context is not None and hasattr(context, "__enter__"):
                with context:
                    self._pump(source)
            else:
                self._pump(source)
        except BaseException as exc:  # the consumer re-raises it in order
            self._put(_Raised(exc))
            return
        self._put(_DONE)

    def _pump(self, source: Iterable[T]) -> None:
        iterator = iter(source)
        try:
            for item in iterator:
                if not self._put(item):
                    return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # a generator source releases its files now, on this thread

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._finished = True
            raise item.exc
        return item

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the reader (it finishes the item it is producing) and wait for its thread."""
        self._stop.set()
        self._finished = True
        while True:  # unblock a reader waiting to put
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> "Prefetcher[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prefetch(source: Iterable[T], depth: int = 2, name: str = "prefetch",
             setup: Callable[[], object] | None = None) -> Iterator[T]:
    """A generator over ``source`` run ahead by a :class:`Prefetcher`; closing the generator (or
    garbage-collecting it) stops the reader thread."""
    fetcher = Prefetcher(source, depth, name, setup)
    try:
        yield from fetcher
    finally:
        fetcher.close()
