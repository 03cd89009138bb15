"""examples/aesthetic_scoring.ipynb runs top to bottom (nbclient, a real Jupyter kernel).

The notebook's first cell reads NEMO_AESTHETIC_NOTEBOOK_* environment variables; the kernel inherits
this process's environment, so the test points it at a dataset it builds, a tiny CLIP-shaped
checkpoint, the real aesthetic weights and dask's synchronous scheduler (no cluster: fast).
"""
import json
from pathlib import Path

import pandas as pd
import pytest
from factory import TINY_KWARGS, TINY_MODEL, write_img2dataset

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "aesthetic_scoring.ipynb"


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    first = code[0].source
    for name in ("WORK", "DATA", "MODEL_KWARGS", "CHECKPOINT", "WEIGHTS", "CLUSTER"):
        assert f"NEMO_AESTHETIC_NOTEBOOK_{name}" in first
    assert '"vit_large_patch14_clip_quickgelu_224.openai"' in first  # the real model by default


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch, aesthetic_weights, tiny_checkpoint):
    data = tmp_path / "data"
    expected = write_img2dataset(data, n_shards=2, rows_per_shard=6)
    checkpoint = tiny_checkpoint
    filtered = tmp_path / "filtered"
    env = {"DATA": data, "OUT": filtered, "MODEL": TINY_MODEL, "MODEL_KWARGS": json.dumps(TINY_KWARGS),
           "CHECKPOINT": checkpoint, "WEIGHTS": aesthetic_weights, "CLUSTER": "sync"}
    for name, value in env.items():
        monkeypatch.setenv(f"NEMO_AESTHETIC_NOTEBOOK_{name}", str(value))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("NEMO_AESTHETIC_NOTEBOOK_WORK", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # WORK's default, ~/nemo-aesthetic-notebook
    workdir = tmp_path / "home" / "nemo-aesthetic-notebook"
    before = sorted(p.name for p in NOTEBOOK.parent.iterdir())

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Run where a user opens it: in examples/ (which it must leave as it found it).
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    assert sorted(p.name for p in NOTEBOOK.parent.iterdir()) == before, "the notebook wrote into examples/"

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the histogram was not drawn"
    grids = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("data:image/jpeg;base64," in g for g in grids), "no thumbnails shown"

    # The scores were saved over the input, every row kept.
    saved = pd.concat([pd.read_parquet(p) for p in sorted(data.glob("*.parquet"))], ignore_index=True)
    assert len(saved) == len(expected)
    assert {"aesthetic_score", "image_embedding", "error"} <= set(saved.columns)
    assert "passes_aesthetic_check" not in saved.columns
    n_ok = sum(v["status"] == "success" for v in expected.values())
    assert saved["aesthetic_score"].notna().sum() == n_ok
    # The filtered dataset holds exactly the rows with score >= the threshold (5.0 by default); with
    # generated weights (no ../shared) nothing may pass, and then nothing is written.
    kept = int((saved["aesthetic_score"] >= 5.0).sum())
    parquets = sorted(filtered.glob("*.parquet")) if filtered.exists() else []
    assert len(sorted(filtered.glob("*.tar")) if filtered.exists() else []) == len(parquets) == (kept > 0)
    out = sum(len(pd.read_parquet(p)) for p in parquets)
    assert out == kept
    assert (workdir / "aesthetic_report.html").exists() and (workdir / "aesthetic_report.png").exists()
