"""The console: library log lines on stderr (above the progress bar when there is one), and the
per-shard progress bar."""
from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading


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


_SHARD_LINE = re.compile(r"^shard (\S+): \d+ rows, \d+ scored")


class _ShardProgress(logging.Handler):
    """Counts the embedder's per-shard log lines (forwarded from the workers) as progress."""

    def __init__(self, total: int, show_bar: bool):
        super().__init__(logging.INFO)
        self.total = total
        self.seen: set[str] = set()
        self.done = threading.Event()
        self.bar = None
        if show_bar and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="shard", desc="scoring", file=sys.stderr, dynamic_ncols=True)
        if total == 0:
            self.done.set()

    def emit(self, record):
        m = _SHARD_LINE.match(record.getMessage())
        if not m or m.group(1) in self.seen:
            return
        self.seen.add(m.group(1))
        if self.bar is not None:
            self.bar.update(1)
        if len(self.seen) >= self.total:
            self.done.set()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        super().close()


@contextlib.contextmanager
def shard_progress(total: int, quiet: bool, wait_for_logs: bool):
    lib = logging.getLogger("nemo_aesthetic")
    progress = _ShardProgress(total, show_bar=not quiet and sys.stderr.isatty())
    CONSOLE.bar = progress.bar
    lib.addHandler(progress)
    try:
        yield progress
        if wait_for_logs and not quiet:
            # Forwarded log records travel separately from the results: let the last ones land.
            progress.done.wait(timeout=5.0)
    finally:
        lib.removeHandler(progress)
        CONSOLE.bar = None
        progress.close()
