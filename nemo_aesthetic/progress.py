"""Per-image progress of an embedding job, carried as data (Dask events), not as log text.

A shard of 1,000 images is half an hour of ViT-L/14 on a CPU core, so per-shard progress is not
enough. While it embeds a shard, the engine hands :class:`ShardProgress` a
:class:`~nemo_aesthetic.engine.BatchProgress` after every model batch; it publishes
``{"shard", "rows", "done", "finished"}`` (``done``: rows dealt with so far, embedded or failed)
at most every :data:`PUBLISH_INTERVAL` seconds, and once when the shard is finished (then
``done == rows``: rows without an image count as dealt with).

On a Dask worker a message is a worker event on topic :data:`TOPIC`: the scheduler keeps it
(``client.get_events(TOPIC)``, the dashboard) and pushes it to every client that called
``client.subscribe_topic(TOPIC, handler)``. In a process without a worker (the synchronous
scheduler) it goes to the handlers given to :func:`subscribe_local`. :class:`ProgressTally` turns
the messages into a total, an images-per-second rate and an ETA.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

TOPIC = "nemo_aesthetic.progress"
#: Seconds between two messages about the same shard (the first batch and the end always publish).
PUBLISH_INTERVAL = 2.0

_local_handlers: list[Callable[[dict], None]] = []
_local_lock = threading.Lock()


def publish(message: dict) -> None:
    """Send ``message`` to whoever watches: the scheduler (on a worker), else local handlers."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not running in a Dask worker
        with _local_lock:
            handlers = list(_local_handlers)
        for handler in handlers:
            handler(dict(message))
        return
    worker.log_event(TOPIC, message)


class subscribe_local:
    """Context manager: ``handler(message)`` hears the progress published in this process."""

    def __init__(self, handler: Callable[[dict], None]):
        self.handler = handler

    def __enter__(self):
        with _local_lock:
            _local_handlers.append(self.handler)
        return self

    def __exit__(self, *exc):
        with _local_lock:
            _local_handlers.remove(self.handler)


_CURRENT = threading.local()


def current_shard_progress() -> "ShardProgress | None":
    """The :class:`ShardProgress` of the partition this thread is running (the stage executor sets
    it per partition; stages are set up once per worker and run many partitions)."""
    return getattr(_CURRENT, "tracker", None)


def set_current_shard_progress(tracker: "ShardProgress | None") -> None:
    _CURRENT.tracker = tracker


class ShardProgress:
    """The engine's ``on_batch`` callback for one shard: publishes its progress, throttled.

    ``rows`` None: the shard's size is not known ahead (the stage front streams it); ``done``
    then counts what the callback heard, and :meth:`finish` reports that count. :meth:`advance`
    carries the count over to a later engine stream of the same shard.
    """

    def __init__(self, shard: str, rows: int | None, interval: float = PUBLISH_INTERVAL):
        self.shard, self.rows, self.interval = shard, rows, interval
        self.last = None
        self.start = self.done = 0

    def __call__(self, batch) -> None:
        self.done = self.start + batch.total_images + batch.total_failed
        if self.rows is not None:
            self.done = min(self.rows, self.done)
        now = time.monotonic()
        if self.last is None or now - self.last >= self.interval:
            self.last = now
            publish({"shard": self.shard, "rows": self.rows, "done": self.done, "finished": False})

    def advance(self, rows: int) -> None:
        """``rows`` more were dealt with by the stream that just ended: a later stream of the
        same shard counts on from there (its own totals restart at zero)."""
        self.start += rows
        self.done = self.start if self.rows is None else min(self.rows, self.start)

    def finish(self) -> None:
        done = self.done if self.rows is None else self.rows
        publish({"shard": self.shard, "rows": self.rows, "done": done, "finished": True})


class ProgressTally:
    """Progress messages of a job -> rows done, rate and ETA (thread-safe; messages may repeat).
    ``total_rows`` None: not known ahead (no percentage or ETA then)."""

    def __init__(self, total_rows: int | None, total_shards: int, clock: Callable[[], float] = time.monotonic):
        self.total_rows, self.total_shards, self.clock = total_rows, total_shards, clock
        self.done: dict[str, int] = {}
        self.finished: set[str] = set()
        self.first: tuple[float, int] | None = None  # (time, rows) of the first message: the model is loaded
        self.lock = threading.Lock()
        self.all_finished = threading.Event()
        if total_shards == 0:
            self.all_finished.set()

    def add(self, message: dict) -> int:
        """Take one message; returns how many rows it added to the total."""
        with self.lock:
            shard = message["shard"]
            before = self.done.get(shard, 0)
            now_done = max(before, int(message["done"]))
            self.done[shard] = now_done
            if message.get("finished"):
                self.finished.add(shard)
                if len(self.finished) >= self.total_shards:
                    self.all_finished.set()
            if self.first is None:
                self.first = (self.clock(), self.rows_done)
            return now_done - before

    @property
    def rows_done(self) -> int:
        return sum(self.done.values())

    def rate(self) -> float | None:
        """Rows per second since the first message (model loading excluded), None before two points."""
        with self.lock:
            if self.first is None:
                return None
            seconds = self.clock() - self.first[0]
            rows = self.rows_done - self.first[1]
        return rows / seconds if seconds > 0.5 and rows > 0 else None

    def line(self, unit: str = "shards") -> str:
        """One human line: ``1,234/5,000 images (24.7%)  0.52 images/s  ETA 2h01m  3/10 shards``
        (``1,234 images  0.52 images/s  3/10 partitions`` when the total is not known)."""
        done, total = self.rows_done, self.total_rows
        share = f" ({100 * done / total:.1f}%)" if total else ""
        rate = self.rate()
        speed = f"  {rate:.2f} images/s" if rate else ""
        eta = f"  ETA {format_seconds((total - done) / rate)}" if rate and total and total >= done else ""
        count = f"{done:,}/{total:,}" if total is not None else f"{done:,}"
        return f"{count} images{share}{speed}{eta}  {len(self.finished)}/{self.total_shards} {unit}"


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
