"""The console: library log lines on stderr (above the progress bar when there is one), and the
per-image progress (bar or lines) of an embedding job."""
from __future__ import annotations

import contextlib
import logging
import sys
import time

logger = logging.getLogger("nemo_aesthetic.cli")


class _Console(logging.Handler):
    """Log records to stderr, printed above the progress bar when there is one."""

    def __init__(self):
        super().__init__()
        self.bar = None
        self.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(message)s", "%H:%M:%S"))

    def format(self, record):
        text = super().format(record).replace("[nemo_aesthetic.", "[", 1)
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname}: {text}"
        return text

    def emit(self, record):
        try:
            msg = self.format(record)
            bar = self.bar
            if bar is not None:
                bar.write(msg, file=sys.stderr)
            else:
                sys.stderr.write(msg + "\n")
                sys.stderr.flush()
        except Exception:
            self.handleError(record)


CONSOLE = _Console()


@contextlib.contextmanager
def cli_logging(quiet: bool):
    """Library log lines to stderr (INFO, or WARNING with --quiet); restored afterwards, so
    ``main()`` can also be called in-process (tests, notebooks) without changing their logging."""
    level = logging.WARNING if quiet else logging.INFO
    lib = logging.getLogger("nemo_aesthetic")
    quieted = [logging.getLogger(name) for name in ("distributed", "distributed.nanny", "dask")]
    saved = (lib.level, lib.propagate, [q.level for q in quieted])
    CONSOLE.setLevel(level)
    lib.setLevel(level)
    lib.addHandler(CONSOLE)
    lib.propagate = False
    # Dask's own chatter (cluster start/stop) is noise here; its warnings still show.
    for q in quieted:
        q.setLevel(max(q.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        lib.removeHandler(CONSOLE)
        lib.setLevel(saved[0])
        lib.propagate = saved[1]
        for q, lvl in zip(quieted, saved[2]):
            q.setLevel(lvl)


#: Seconds between two progress lines when stderr is not a terminal (a log file, CI).
LINE_INTERVAL = 5.0


def count_rows(dataset) -> int:
    """Rows of every shard, from the Parquet footers only (no data read); those ``from_webdataset``
    read on the workers when it opened the dataset, if it did."""
    from concurrent.futures import ThreadPoolExecutor

    import fsspec
    import pyarrow.parquet as pq

    if getattr(dataset, "footer_rows", None) is not None:
        return dataset.footer_rows
    fs = dataset._fs_for(None)[0]

    def rows(shard):
        if shard.source is not None:  # a folder chunk or an image Parquet (nemo_aesthetic.engine.sources)
            return shard.source.stop - shard.source.start if shard.source.layout == "folder" else \
                pq.ParquetFile(fsspec.open(shard.source.path, "rb", **dataset.storage_options).open()).metadata.num_rows
        with fs.open(shard.parquet, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows

    with ThreadPoolExecutor(16) as pool:
        return sum(pool.map(rows, dataset.shards))


def _loaded(message) -> None:
    if isinstance(message, dict):
        kind = str(message.get("key", "model")).rsplit("-", 1)[0]  # keys end in a hash of the settings
        logger.info("loaded the %s in %.1fs on %s", kind, message.get("seconds", 0.0), message.get("worker", "a worker"))


@contextlib.contextmanager
def job_progress(dataset, client, quiet: bool):
    """Per-image progress of embedding ``dataset``: a bar with rate and ETA on a terminal, else a
    line every few seconds. It listens to the progress the workers publish as Dask events
    (:mod:`nemo_aesthetic.progress`), or, with no client (synchronous scheduler), in-process."""
    from nemo_aesthetic import progress
    from nemo_aesthetic.distributed import LOAD_EVENTS

    tally = progress.ProgressTally(count_rows(dataset), len(dataset.shards))
    bar = None
    if not quiet and sys.stderr.isatty() and tally.total_rows:
        from tqdm import tqdm

        bar = tqdm(total=tally.total_rows, unit="img", desc="scoring", file=sys.stderr, dynamic_ncols=True)
    last_line = [0.0]

    def hear(message: dict) -> None:
        added = tally.add(message)
        if bar is not None:
            bar.set_postfix_str(f"{len(tally.finished)}/{tally.total_shards} shards", refresh=False)
            bar.update(added)
        elif not quiet:
            now = time.monotonic()
            if now - last_line[0] >= LINE_INTERVAL or tally.all_finished.is_set():
                last_line[0] = now
                logger.info("progress: %s", tally.line())

    if not quiet:  # a model load takes a while (ViT-L/14 on a CPU: up to a minute) and shows no progress
        logger.info("loading the models (once per worker, before its first batch); progress follows")
    if client is None:
        listening = progress.subscribe_local(hear)
    else:
        client.subscribe_topic(progress.TOPIC, lambda event: hear(event[1]))
        if not quiet:
            client.subscribe_topic(LOAD_EVENTS, lambda event: _loaded(event[1]))
        listening = contextlib.nullcontext()
    CONSOLE.bar = bar
    try:
        with listening:
            yield tally
            if client is not None:
                # Events travel apart from the results: let the last ones (and the log lines sent
                # before them) land.
                tally.all_finished.wait(timeout=5.0)
    finally:
        if client is not None:
            client.unsubscribe_topic(progress.TOPIC)
            if not quiet:
                client.unsubscribe_topic(LOAD_EVENTS)
        CONSOLE.bar = None
        if bar is not None:
            bar.close()
