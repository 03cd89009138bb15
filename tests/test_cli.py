"""The ``nemo-aesthetic`` command, run as a user runs it (a subprocess) where it matters.

Offline throughout: the autouse fixture sets HF_HUB_OFFLINE / NEMO_AESTHETIC_OFFLINE and an empty
NEMO_AESTHETIC_HOME; ``hf_home`` points the Hugging Face cache at an empty (or fake) folder.
"""
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from factory import TINY_KWARGS, TINY_MODEL, populate_hf_cache, write_img2dataset

from nemo_aesthetic import cli, weights
from nemo_aesthetic.report import reason_group

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "nemo-aesthetic"
TINY_JSON = json.dumps(TINY_KWARGS)
CLIP_REPO_DIR = "models--timm--vit_large_patch14_clip_224.openai"


def run_cli(*args, script=False, timeout=400, cwd=None) -> subprocess.CompletedProcess:
    """The real console script (when installed) or ``python -m nemo_aesthetic.cli``."""
    cmd = [str(SCRIPT)] if script and SCRIPT.exists() else [sys.executable, "-m", "nemo_aesthetic.cli"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or REPO, env=dict(os.environ))


def assert_clean_error(proc, *needles):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


@pytest.fixture(scope="module")
def tiny_state_dict():
    import timm
    import torch

    torch.manual_seed(123)
    return timm.create_model(TINY_MODEL, **TINY_KWARGS).state_dict()


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_state_dict):
    import torch

    path = tmp_path / "tiny-clip.pth"
    torch.save(tiny_state_dict, path)
    return path


def read_shards(root) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(Path(root).glob("*.parquet"))], ignore_index=True)


# ------------------------------------------------------------------------------------ help, errors
def test_help_for_each_command(capsys):
    proc = run_cli("--help", script=True)
    assert proc.returncode == 0 and "demo" in proc.stdout and "score" in proc.stdout and "filter" in proc.stdout
    for command, option in [("demo", "--tiny"), ("score", "--clip-checkpoint"), ("filter", "--threshold")]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert option in out and f"nemo-aesthetic {command}" in out
    with pytest.raises(SystemExit):
        cli.main(["score", "--help"])
    assert "sync" in capsys.readouterr().out  # --cluster sync is documented


def test_bad_path_is_one_line_exit_2(tmp_path):
    proc = run_cli("score", tmp_path / "no-such-dataset", "--cluster", "sync", script=True)
    assert_clean_error(proc, "does not exist", "no-such-dataset")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("argv, needle", [
    (["score", "X", "--cluster", "nowhere"], "--cluster"),
    (["score", "X", "--model-kwargs", "{depth: 1}"], "--model-kwargs"),
    (["score", "X", "--workers", "0"], "--workers"),
    (["filter", "X", "--out", "Y"], "--threshold"),
    ([], "COMMAND"),
])
def test_bad_options_exit_2_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_checkpoint_that_does_not_fit_the_model_is_a_clear_error(tmp_path, aesthetic_weights, capsys):
    write_img2dataset(tmp_path / "ds", n_shards=1, rows_per_shard=2)
    code = cli.main(["score", str(tmp_path / "ds"), "--cluster", "sync", "--model", TINY_MODEL,
                     "--model-kwargs", TINY_JSON, "--clip-checkpoint", aesthetic_weights,
                     "--aesthetic-weights", aesthetic_weights])
    assert code == 2
    assert "does not fit" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ weights
def test_demo_offline_without_weights_names_every_file(tmp_path, hf_home):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--out", out, script=True, timeout=200)
    home = os.environ["NEMO_AESTHETIC_HOME"]
    assert_clean_error(
        proc,
        # the aesthetic head: file, where, URL, checksum
        "sac+logos+ava1-l14-linearMSE.pth", home,
        "https://github.com/christophschuhmann/improved-aesthetic-predictor",
        "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0",
        # CLIP: hub repo, file, cache folder, offline switch
        "timm/vit_large_patch14_clip_224.openai", "model.safetensors", str(hf_home / "hub"), CLIP_REPO_DIR,
        "HF_HUB_OFFLINE", "--clip-checkpoint",
        "add --tiny",  # the way to try the pipeline with no CLIP weights at all
    )
    assert not out.exists()  # stopped before building anything or starting a cluster


def test_clip_weights_found_in_the_hugging_face_cache(tmp_path):
    cache = tmp_path / "hub"
    cached = populate_hf_cache(cache, {"w": torch.zeros(1)})  # the check only looks for the file
    found = weights.check_clip_weights(weights.CLIP_MODEL, cache_dir=str(cache))
    assert found == cached
    with pytest.raises(weights.WeightsUnavailableError, match="offline mode"):
        weights.check_clip_weights(weights.CLIP_MODEL, cache_dir=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"no pretrained tag 'no_such_tag' for vit_tiny_patch16_224\); did you mean"):
        weights.check_clip_weights("vit_tiny_patch16_224.no_such_tag", cache_dir=str(cache))
    with pytest.raises(ValueError, match="does not know"):
        weights.check_clip_weights("no_such_architecture.openai", cache_dir=str(cache))


# ------------------------------------------------------------------------------------ demo
def test_demo_tiny_scores_the_sample_dataset_on_a_local_cluster(tmp_path, hf_home, aesthetic_weights):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--tiny", "--aesthetic-weights", aesthetic_weights, "--out", out,
                   "--workers", "1", "--batch-size", "4", script=True)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # img2dataset layout
    for shard in ("00000", "00001"):
        assert (out / f"{shard}.tar").exists() and (out / f"{shard}_stats.json").exists()
    df = read_shards(out)
    assert len(df) == 16
    assert df["key"].str.fullmatch(r"\d{9}").all()
    photos = df[df["url"].str.contains("skimage/data/")]
    generated = df[df["url"].str.contains("generated/")]
    failed = df[df["status"] == "failed_to_download"]
    assert len(photos) >= 6 and len(failed) == 3
    good = pd.concat([photos, generated[~generated["url"].str.contains("truncated")]])
    assert good["aesthetic_score"].notna().all() and good["error"].isna().all()
    assert np.isfinite(good["aesthetic_score"].astype(float)).all()
    assert failed["aesthetic_score"].isna().all()
    assert failed["error"].str.contains("failed_to_download").all()
    truncated = generated[generated["url"].str.contains("truncated")]
    assert truncated["aesthetic_score"].isna().all() and truncated["error"].str.contains("decode").all()
    # the ranked table, the summary, and the warning that --tiny scores mean nothing
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["rank", "key", "score"])
    table = lines[header + 2: header + 2 + 16]
    assert [line.split()[0] for line in table[:len(good)]] == [str(i) for i in range(1, len(good) + 1)]
    best = good.loc[good["aesthetic_score"].astype(float).idxmax()]
    assert best["key"] in table[0]
    assert "16 images: 12 scored, 4 with errors" in proc.stdout
    assert "MEANINGLESS" in proc.stdout
    # per-shard log lines, forwarded from the worker process
    assert "shard 00000:" in proc.stderr and "shard 00001:" in proc.stderr
    # per-image progress, from the workers' progress events (stderr is not a terminal: lines)
    assert "progress: 16/16 images (100.0%)" in proc.stderr and "2/2 shards" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------ score
def _expected_scores(dataset, checkpoint, aesthetic_weights):
    from nemo_aesthetic import AestheticClassifier, ImageTextPairDataset, TimmImageEmbedder

    ds = ImageTextPairDataset.from_webdataset(str(dataset))
    emb = TimmImageEmbedder(TINY_MODEL, checkpoint_path=str(checkpoint), model_kwargs=TINY_KWARGS, batch_size=4,
                            classifiers=[AestheticClassifier(model_path=aesthetic_weights)])
    df = emb(ds).metadata.compute(scheduler="sync")
    return df.set_index("key")["aesthetic_score"]


def test_score_with_a_local_checkpoint_writes_metadata_and_summary(tmp_path, tiny_checkpoint, aesthetic_weights):
    data, out = tmp_path / "ds", tmp_path / "scored"
    expected = write_img2dataset(data, n_shards=2, rows_per_shard=6, fail_every=3)
    proc = run_cli("score", data, "--out", out, "--cluster", "sync", "--model", TINY_MODEL,
                   "--clip-checkpoint", tiny_checkpoint, "--model-kwargs", TINY_JSON,
                   "--aesthetic-weights", aesthetic_weights, "--batch-size", "4", "--quiet", script=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --quiet: no log lines, no progress bar
    assert sorted(p.name for p in out.iterdir()) == ["00000.parquet", "00001.parquet"]
    df = read_shards(out).set_index("key")
    assert len(df) == len(expected) == 12
    ok = df["status"] == "success"
    assert df.loc[ok, "aesthetic_score"].notna().all() and df.loc[ok, "error"].isna().all()
    assert df.loc[~ok, "aesthetic_score"].isna().all() and df.loc[~ok, "error"].str.contains("failed").all()
    # the scores are the checkpoint's, not a random initialisation's
    reference = _expected_scores(data, tiny_checkpoint, aesthetic_weights)
    np.testing.assert_allclose(df.loc[reference.index, "aesthetic_score"], reference, rtol=1e-5, equal_nan=True)
    # the summary
    assert "rows: 12   scored: 8   errors: 4" in proc.stdout
    assert "errors by reason:" in proc.stdout and "       4  no image" in proc.stdout
    assert "min" in proc.stdout and "p10" in proc.stdout and "median" in proc.stdout and "p90" in proc.stdout
    assert "images/s" in proc.stdout


def test_score_pretrained_weights_from_the_offline_hugging_face_cache(tmp_path, hf_home, tiny_state_dict,
                                                                      tiny_checkpoint, aesthetic_weights):
    """The real model's path (pretrained=True, HF cache, HF_HUB_OFFLINE=1), with tiny weights in the cache."""
    populate_hf_cache(hf_home / "hub", tiny_state_dict)
    data = tmp_path / "ds"
    write_img2dataset(data, n_shards=1, rows_per_shard=4, fail_every=4)
    reference = _expected_scores(data, tiny_checkpoint, aesthetic_weights)
    proc = run_cli("score", data, "--cluster", "sync", "--model", cli.DEFAULT_MODEL, "--model-kwargs", TINY_JSON,
                   "--aesthetic-weights", aesthetic_weights)
    assert proc.returncode == 0, proc.stderr
    assert "shard 00000: 4 rows, 3 scored" in proc.stderr  # per-shard log line
    df = read_shards(data).set_index("key")  # written in place
    np.testing.assert_allclose(df.loc[reference.index, "aesthetic_score"], reference, rtol=1e-5, equal_nan=True)


# ------------------------------------------------------------------------------------ filter
def _scored_dataset(root, seed=0):
    """A factory dataset whose Parquet already has aesthetic_score (NaN for failed rows)."""
    write_img2dataset(root, n_shards=3, rows_per_shard=8, fail_every=4)
    rng = np.random.default_rng(seed)
    for p in sorted(Path(root).glob("*.parquet")):
        df = pd.read_parquet(p)
        scores = rng.uniform(2, 8, len(df)).round(2).astype(np.float32)
        scores[(df["status"] != "success").to_numpy()] = np.nan
        df["aesthetic_score"] = scores
        df.to_parquet(p, index=False)
    return read_shards(root)


def test_filter_keeps_exactly_the_rows_at_or_above_the_threshold(tmp_path):
    meta = _scored_dataset(tmp_path / "ds")
    threshold = float(np.nanmedian(meta["aesthetic_score"]))
    out = tmp_path / "kept"
    proc = run_cli("filter", tmp_path / "ds", "--threshold", threshold, "--out", out, "--samples-per-shard", 5,
                   script=True)
    assert proc.returncode == 0, proc.stderr
    scores = meta["aesthetic_score"]
    keep = meta[scores >= threshold]
    assert 0 < len(keep) < scores.notna().sum()
    kept = read_shards(out)
    assert sorted(kept["url"]) == sorted(keep["url"])
    assert (kept["aesthetic_score"] >= threshold).all()
    assert len(list(out.glob("*.tar"))) == math.ceil(len(keep) / 5)
    members = [m for t in sorted(out.glob("*.tar")) for m in tarfile.open(t).getnames() if m.endswith(".jpg")]
    assert sorted(m.split(".")[0] for m in members) == sorted(kept["key"])
    dropped = int((scores < threshold).sum())
    missing = int(scores.isna().sum())
    assert f"rows: {len(meta)}   kept: {len(keep)} " in proc.stdout
    assert f"dropped: {dropped} " in proc.stdout and f"missing: {missing} " in proc.stdout


def test_filter_without_scores_is_a_clear_error(tmp_path, capsys):
    write_img2dataset(tmp_path / "ds", n_shards=1, rows_per_shard=3)
    code = cli.main(["filter", str(tmp_path / "ds"), "--threshold", "5", "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no aesthetic_score column" in err and "nemo-aesthetic score" in err
    assert not (tmp_path / "out").exists()


def test_filter_speaks_in_options(tmp_path, capsys):
    _scored_dataset(tmp_path / "ds")
    out = tmp_path / "kept"
    assert cli.main(["filter", str(tmp_path / "ds"), "--threshold", "0", "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    assert cli.main(["filter", str(tmp_path / "ds"), "--threshold", "0", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "--mode overwrite" in err and "--mode resume" in err and "mode=" not in err, err
    assert cli.main(["filter", str(tmp_path / "ds"), "--threshold", "0", "--out", str(tmp_path / "ds")]) == 2
    assert "--out is PATH" in capsys.readouterr().err


def test_filter_keeping_nothing_writes_nothing(tmp_path, capsys):
    _scored_dataset(tmp_path / "ds")
    out = tmp_path / "kept"
    assert cli.main(["filter", str(tmp_path / "ds"), "--threshold", "100", "--out", str(out), "-q"]) == 0
    assert "nothing written" in capsys.readouterr().out
    assert not list(out.glob("*")) if out.exists() else True


# ------------------------------------------------------------------------------------ score --tiny --out
def test_score_tiny_out_leads_back_to_the_images_and_says_tiny(tmp_path, aesthetic_weights, capsys):
    """score --tiny --out DIR writes only Parquet; report DIR and filter DIR still find the tars,
    and every output says the scores come from the random model."""
    import pyarrow.parquet as pq

    data, scored = tmp_path / "ds", tmp_path / "scored"
    expected = write_img2dataset(data, n_shards=2, rows_per_shard=6, fail_every=3)
    assert cli.main(["score", str(data), "--tiny", "--out", str(scored), "--cluster", "sync",
                     "--aesthetic-weights", aesthetic_weights, "--batch-size", "4", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "--tiny" in printed and "MEANINGLESS" in printed.splitlines()[0] and "MEANINGLESS" in printed.splitlines()[-1]
    assert sorted(p.name for p in scored.iterdir()) == ["00000.parquet", "00001.parquet"]
    meta = pq.read_schema(scored / "00000.parquet").metadata
    assert meta[b"nemo_aesthetic.source"].decode() == str(data)
    assert b"MEANINGLESS" in meta[b"nemo_aesthetic.tiny"] and meta[b"nemo_aesthetic.model"] == TINY_MODEL.encode()

    report_html = tmp_path / "r.html"
    assert cli.main(["report", str(scored), "--out", str(report_html), "--top", "3", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "--tiny" in printed and "grey box" not in printed, printed
    page = report_html.read_text()
    assert "NOT REAL SCORES" in page and "image not available" not in page
    assert page.count("data:image/jpeg;base64,") >= 3

    ok = sum(v["status"] == "success" for v in expected.values())
    assert cli.main(["filter", str(scored), "--threshold", "-1000", "--out", str(tmp_path / "kept"), "-q"]) == 0
    assert f"wrote {ok} samples" in capsys.readouterr().out
    assert len(read_shards(tmp_path / "kept")) == ok


def test_score_tiny_needs_a_local_cluster(tmp_path, capsys):
    write_img2dataset(tmp_path / "ds", n_shards=1, rows_per_shard=2)
    assert cli.main(["score", str(tmp_path / "ds"), "--tiny", "--cluster", "tcp://127.0.0.1:1"]) == 2
    assert "--tiny runs on a local cluster" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ pieces
def test_reasons_group_by_their_prefix():
    assert reason_group("no image: img2dataset status failed_to_download (HTTP Error 404)") == "no image"
    assert reason_group("cannot decode image: OSError: truncated") == "cannot decode image"
    assert reason_group("not an image PIL can read (starts with b'<html>')") == "not an image PIL can read"
    assert reason_group("no sample for this key in 00042.tar") == "no sample for this key in <shard>.tar"


def test_demo_dataset_is_img2dataset_shaped(tmp_path):
    from nemo_aesthetic import demo

    described = demo.build_demo_dataset(str(tmp_path / "d"))
    meta = read_shards(tmp_path / "d")
    assert set(meta["key"]) == set(described)
    for shard in ("00000", "00001"):
        part = pd.read_parquet(tmp_path / "d" / f"{shard}.parquet")
        assert list(part["key"]) != sorted(part["key"])  # completion order, not key order
        names = tarfile.open(tmp_path / "d" / f"{shard}.tar").getnames()
        ok = part.loc[part["status"] == "success", "key"]
        assert sorted(n for n in names if n.endswith(".jpg")) == sorted(f"{k}.jpg" for k in ok)
        stats = json.loads((tmp_path / "d" / f"{shard}_stats.json").read_text())
        assert stats["count"] == len(part)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        demo.build_demo_dataset(str(tmp_path / "other"))


def test_example_script_runs_the_legacy_api(tmp_path, tiny_checkpoint, aesthetic_weights):
    data = tmp_path / "ds"
    write_img2dataset(data, n_shards=1, rows_per_shard=4, fail_every=4)
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "score_dataset.py"), str(data), "--workers", "0",
         "--model", TINY_MODEL, "--clip-checkpoint", str(tiny_checkpoint), "--model-kwargs", TINY_JSON,
         "--aesthetic-weights", aesthetic_weights, "--threshold", "0", "--filtered-out", str(tmp_path / "kept")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 of 4 rows scored" in proc.stdout
    assert read_shards(data)["aesthetic_score"].notna().sum() == 3
    assert len(read_shards(tmp_path / "kept")) == 3
