"""Ctrl-C on a local cluster (issue 17): the command says it was interrupted, exits 130, and
prints no tracebacks from asyncio, distributed or the workers (the data written so far is whole).

The terminal sends SIGINT to the whole foreground process group: the command, its nannies and
its worker processes. The test starts ``score`` in a session of its own and signals that group
while the shards are being scored.
"""
from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time

from factory import TINY_KWARGS, TINY_MODEL, write_img2dataset

CLI = [sys.executable, "-c", "import sys; from nemo_aesthetic.cli import main; sys.exit(main())"]


def test_ctrl_c_on_a_local_cluster_prints_no_tracebacks(tmp_path, tiny_checkpoint, aesthetic_weights):
    import json

    write_img2dataset(tmp_path / "ds", n_shards=4, rows_per_shard=40, image_size=(640, 480))
    proc = subprocess.Popen(
        CLI + ["score", str(tmp_path / "ds"), "--cluster", "cpu", "--workers", "2", "--model", TINY_MODEL,
               "--model-kwargs", json.dumps(TINY_KWARGS), "--clip-checkpoint", tiny_checkpoint,
               "--aesthetic-weights", aesthetic_weights, "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen, deadline = "", time.monotonic() + 240
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        while "scoring 4 shard(s)" not in seen:  # the cluster is up and the work submitted
            assert proc.poll() is None and time.monotonic() < deadline, seen
            if sel.select(timeout=0.5):
                seen += proc.stderr.readline()
    time.sleep(4)  # workers busy embedding
    assert proc.poll() is None, "finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, err = proc.communicate(timeout=120)
    err = seen + err
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert "Traceback" not in err and "exception was never retrieved" not in err, err
    # Nothing but the command's own lines ("HH:MM:SS [logger] ...", however many the progress
    # printed before the signal) and its last word: no warnings from the workers' teardown.
    own = re.compile(r"^\d\d:\d\d:\d\d \[[\w.-]+\] ")
    noise = [line for line in err.splitlines()
             if line.strip() and not own.match(line) and line != "nemo-aesthetic: interrupted"]
    assert not noise, err
