"""The examples, offline without the weights, stop at once with one line per missing file saying what to provide
(instead of workers retrying the hub for a minute and printing a page of tracebacks)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from factory import write_img2dataset

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run_offline(tmp_path, *argv):
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty_hf"), "HF_HUB_OFFLINE": "1",
           "NEMO_AESTHETIC_OFFLINE": "1", "NEMO_AESTHETIC_HOME": str(tmp_path / "empty_home")}
    env.pop("HF_HUB_CACHE", None)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("script, needle", [("score_dataset.py", "--clip-checkpoint"),
                                            ("stage_pipeline.py", "openai/clip-vit-large-patch14")])
def test_example_offline_without_weights_is_one_line_per_missing_file(tmp_path, script, needle):
    write_img2dataset(tmp_path / "ds", n_shards=1, rows_per_shard=2)
    (tmp_path / "models").mkdir()
    extra = [tmp_path / "models"] if script == "stage_pipeline.py" else []
    proc, seconds = _run_offline(tmp_path, EXAMPLES / script, tmp_path / "ds", *extra)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr  # both weights are missing: both are named, as the CLI does
    assert all("Provide" in line for line in lines) and "offline" in lines[0], lines
    assert needle in lines[0] and "sac+logos+ava1-l14-linearMSE.pth" in lines[1], lines
    assert seconds < 60
    assert not list((tmp_path / "ds").glob("*.parquet.*"))  # nothing started writing
