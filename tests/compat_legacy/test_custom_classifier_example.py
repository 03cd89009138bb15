"""examples/custom_classifier.py, run as a user runs it, on a real dataset with embeddings."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_classifier.py"


def test_custom_classifier_example_writes_its_column(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(3)
    root = tmp_path / "ds"
    root.mkdir()
    embeddings = [None if i == 4 else rng.normal(size=16).astype(np.float32) for i in range(7)]
    pd.DataFrame({"key": [f"{i:09d}" for i in range(7)], "image_embedding": embeddings}).to_parquet(
        root / "00000.parquet")
    (root / "00000.tar").write_bytes(b"\0" * 1024)  # an empty tar: the classifier reads only metadata
    probe = {"weight": torch.as_tensor(rng.normal(size=16), dtype=torch.float32), "bias": torch.tensor(0.25)}
    torch.save(probe, tmp_path / "probe.pt")

    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), str(root), "--probe", str(tmp_path / "probe.pt"),
                                      "--threshold", "0.5", "--embedding-size", "16", "--workers", "0",
                                      "--out", str(tmp_path / "out")])
    runpy.run_path(str(EXAMPLE), run_name="__main__")  # as `python examples/custom_classifier.py ...`
    saved = pq.read_table(tmp_path / "out" / "00000.parquet").to_pandas()
    expected = [None if e is None else bool(e @ probe["weight"].numpy() + 0.25 > 0.5) for e in embeddings]
    assert saved["probe_positive"].tolist() == expected
    assert f"probe_positive: {sum(bool(e) for e in expected)} of 6 scored rows" in capsys.readouterr().out
