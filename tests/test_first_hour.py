"""A newcomer's first hour (issue 24), each step run as a user runs it: the console script or a
``python file.py`` in a subprocess, with a fresh environment (empty weights folder, empty Hugging
Face cache, a home of its own) and no network (the hub and the weights' host refuse at once).
The tree under test is imported through PYTHONPATH, as everywhere in the suite."""
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from factory import write_img2dataset

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
CONSOLE_SCRIPT = Path(sys.executable).parent / "nemo-aesthetic"
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens there: connections are refused at once


def fresh_env(tmp_path, **extra) -> dict:
    """A new user's environment: nothing cached, no network, this checkout on PYTHONPATH."""
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(REPO), "HF_HOME": str(tmp_path / "hf"),
           "NEMO_AESTHETIC_HOME": str(tmp_path / "weights"),
           "HF_ENDPOINT": UNREACHABLE, "NEMO_AESTHETIC_MIRROR": UNREACHABLE}
    (tmp_path / "weights").mkdir(exist_ok=True)
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_command(*args, env, cwd, timeout=300) -> subprocess.CompletedProcess:
    cmd = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "nemo_aesthetic.cli"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def random_head(path) -> Path:
    """An aesthetic head file of the real one's shape (what --aesthetic-weights is given)."""
    from nemo_aesthetic.image.classifiers.aesthetic import upstream_mlp

    torch.manual_seed(3)
    torch.save({f"layers.{k}": v for k, v in upstream_mlp().state_dict().items()}, path)
    return Path(path)


# ------------------------------------------------------------------- 3. the README's first command
def readme_demo_command() -> list[str]:
    """``nemo-aesthetic demo --tiny`` exactly as the README's first code block prints it."""
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    line = next(line for line in block.splitlines() if "demo --tiny" in line)
    command = line.split("&&")[-1].split("#")[0].strip()
    assert command.startswith("nemo-aesthetic demo --tiny"), line
    return shlex.split(command)[1:]


@pytest.mark.slow
def test_demo_tiny_runs_with_no_weights_and_no_network(tmp_path):
    clone = tmp_path / "clone"
    clone.mkdir()
    env = fresh_env(tmp_path)
    start = time.monotonic()
    proc = run_command(*readme_demo_command(), env=env, cwd=clone)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Retrying" not in proc.stderr
    assert "RANDOM head" in proc.stdout and "MEANINGLESS" in proc.stdout  # says what it scored with
    out = tmp_path / "weights" / "demo"
    assert f"writing the sample dataset to {out}" in proc.stdout  # says where, at the start
    assert list(clone.iterdir()) == []  # nothing written into the folder it was run from
    scored = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("*.parquet"))])
    assert len(scored) == 16 and scored["aesthetic_score"].notna().sum() == 12
    # what the silence before the first progress line is: the model loads, each with its time
    err = proc.stderr
    loading, loaded, progress = (err.index("loading the models"), err.index("loaded the timm-embedder in"),
                                 err.index("progress:"))
    assert err.index("scoring 16 images") < loading < progress and loaded < progress, err
    assert time.monotonic() - start < 240


# ------------------------------------------------------------------- 4. the same model options
def test_every_command_that_scores_takes_the_same_model_options(tmp_path):
    env = fresh_env(tmp_path)

    def usage(*command) -> str:  # the usage line lists the options a command takes, as [--option ...]
        return " ".join(run_command(*command, "--help", env=env, cwd=tmp_path).stdout.split("\n\n")[0].split())

    model_options = ["[--model NAME]", "[--clip-checkpoint PATH]", "[--model-kwargs JSON]", "[--tiny]",
                     "[--batch-size N]", "[--head {", "[--aesthetic-weights PATH]"]
    for command in ("demo", "score"):
        text = usage(command)
        assert all(option in text for option in model_options), (command, text)
    text = usage("score-embeddings")
    assert "[--head {" in text and "[--aesthetic-weights PATH]" in text, text


def test_score_embeddings_takes_aesthetic_weights(tmp_path):
    from test_score_embeddings import write_layout

    emb, _, arrays = write_layout(tmp_path / "in", "npy", sizes=[5, 3])
    head = random_head(tmp_path / "my-head.pth")
    proc = run_command("score-embeddings", emb, "--out", tmp_path / "scores", "--aesthetic-weights", head, "-q",
                          env=fresh_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from nemo_aesthetic.image.classifiers.aesthetic import load_upstream

    model = load_upstream(str(head))
    for i, x in enumerate(arrays):
        got = pd.read_parquet(tmp_path / "scores" / f"img_emb_{i}.parquet")["aesthetic_score"].to_numpy()
        with torch.no_grad():
            want = model(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy().ravel()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    missing = run_command("score-embeddings", emb, "--out", tmp_path / "s2", "--aesthetic-weights",
                             tmp_path / "nope.pth", env=fresh_env(tmp_path), cwd=tmp_path)
    assert "--aesthetic-weights does not exist" in one_line_error(missing)


# ------------------------------------------------------------------- 5. model names checked first
def test_a_model_name_typo_is_one_line_before_any_work(tmp_path):
    write_img2dataset(tmp_path / "ds", n_shards=1, rows_per_shard=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()}
    env = fresh_env(tmp_path)
    for extra in (["--tiny"], []):
        proc = run_command("score", tmp_path / "ds", *extra, "--model", "vit_large_patch14_clip_quickgelu_244",
                              env=env, cwd=tmp_path)
        line = one_line_error(proc)
        assert "did you mean vit_large_patch14_clip_quickgelu_224" in line, line
    tagged = run_command("score", tmp_path / "ds", "--model", "vit_large_patch14_clip_quickgelu_224.opnai",
                            env=env, cwd=tmp_path)
    assert "vit_large_patch14_clip_quickgelu_224.openai" in one_line_error(tagged)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()} == before
    demo_out = tmp_path / "demo"
    proc = run_command("demo", "--tiny", "--model", "vit_larg_patch14_clip", "--out", demo_out,
                          env=env, cwd=tmp_path)
    assert "did you mean" in one_line_error(proc)
    assert not demo_out.exists()  # the sample dataset is not written before the check


# ------------------------------------------------------------------- 6. nothing to score
def test_score_on_metadata_without_tars_is_an_error(tmp_path):
    write_img2dataset(tmp_path / "full", n_shards=2, rows_per_shard=3)
    only_meta = tmp_path / "meta"
    only_meta.mkdir()
    for p in (tmp_path / "full").glob("*.parquet"):
        (only_meta / p.name).write_bytes(p.read_bytes())
    before = {p.name: p.read_bytes() for p in only_meta.iterdir()}
    proc = run_command("score", only_meta, "--tiny", env=fresh_env(tmp_path), cwd=tmp_path)
    line = one_line_error(proc)
    assert "no .tar" in line and "NNNNN.tar" in line, line
    assert {p.name: p.read_bytes() for p in only_meta.iterdir()} == before  # not rewritten


# ------------------------------------------------------------------- 7. the threshold's scale
def test_a_threshold_on_the_wrong_scale_is_said_once(tmp_path):
    from test_cli import _scored_dataset

    meta = _scored_dataset(tmp_path / "ds")  # scores 2..8
    env = fresh_env(tmp_path)
    low = run_command("filter", tmp_path / "ds", "--threshold", "0.5", "--out", tmp_path / "low", "-q",
                         env=env, cwd=tmp_path)
    assert low.returncode == 0, low.stderr
    warnings = [line for line in low.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "keeps every scored row" in warnings[0] and "0-10 scale" in warnings[0], low.stderr
    assert f"{meta['aesthetic_score'].min():.2f}" in warnings[0]  # the scores' range
    high = run_command("filter", tmp_path / "ds", "--threshold", "50", "--out", tmp_path / "high", "-q",
                          env=env, cwd=tmp_path)
    assert high.returncode == 0 and "keeps no row" in high.stderr and "nothing written" in high.stdout
    assert not (tmp_path / "high").exists()  # no empty output folder
    fine = run_command("filter", tmp_path / "ds", "--threshold", "5", "--out", tmp_path / "fine", "-q",
                          env=env, cwd=tmp_path)
    assert fine.returncode == 0 and "warning" not in fine.stderr
    report = run_command("report", tmp_path / "ds", "--threshold", "50", "--out", tmp_path / "r.html", "-q",
                            env=env, cwd=tmp_path)
    assert report.returncode == 0 and "keeps no row" in report.stderr, report.stderr


def test_the_stage_default_threshold_warns_once_about_the_scale(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(
        "from nemo_aesthetic.stages.image.filters.aesthetic_filter import ImageAestheticFilterStage\n"
        "ImageAestheticFilterStage()\n"
        "ImageAestheticFilterStage(model_dir='/models')\n"
        "ImageAestheticFilterStage(score_threshold=5.0)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                          env=fresh_env(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("score_threshold 0.5 keeps nearly every image") == 1, proc.stderr
    assert "0-10 scale" in proc.stderr


# ------------------------------------------------------------------- 9. help and errors in CLI terms
def test_help_texts_read_as_written(tmp_path):
    env = fresh_env(tmp_path)
    for args in (["--help"], ["filter", "--help"], ["score-embeddings", "--help"], ["score", "--help"]):
        text = run_command(*args, env=env, cwd=tmp_path).stdout
        assert "%%" not in text, (args, text)
    text = " ".join(run_command("score-embeddings", "--help", env=env, cwd=tmp_path).stdout.split())
    start = text.index("--head {", text.index("options:"))
    head = text[start:text.index("--aesthetic-weights PATH", start)]
    assert "512-d" in head and "--model" not in head and ") (" not in head, head  # one clause each


def test_errors_name_the_options(tmp_path):
    from test_cli import _scored_dataset
    from test_score_embeddings import write_layout

    env = fresh_env(tmp_path)
    emb, _, _ = write_layout(tmp_path / "in", "npy", sizes=[2])
    inside = one_line_error(run_command("score-embeddings", emb, "--out", Path(emb) / "scores", env=env,
                                           cwd=tmp_path))
    assert "--out" in inside and "out=" not in inside, inside
    _scored_dataset(tmp_path / "ds")
    infinite = one_line_error(run_command("report", tmp_path / "ds", "--threshold", "inf", env=env,
                                             cwd=tmp_path))
    assert "--threshold" in infinite, infinite


# ------------------------------------------------------------------- 8. the README on a fresh clone
def test_the_readme_sends_a_fresh_clone_to_nothing_outside_it():
    """A clone has no ``../shared``: the README names no file outside the repository as something to
    read, every relative link resolves inside the clone, and it says how to see the skips' reasons."""
    outside = re.findall(r"\.\./shared/[\w.-]+", README)
    assert not outside, outside  # e.g. "`../shared/DESIGN.md` explains the flow"
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README):
        assert (REPO / target).exists(), f"README links to {target}, which a clone does not have"
    assert "python -m pytest -q -rs" in README


def test_the_readme_table_of_shared_files_matches_the_files_the_tests_read():
    """The table that tells a newcomer how to make the shared folder names the paths tests read."""
    from conftest import AESTHETIC_WEIGHTS, SHARED, TESTDATA, skip_without_shared

    skip_without_shared(TESTDATA, "the shared test data, to compare the README's table with")
    rows = re.findall(r"^\| `((?:models|testdata)/[^`]+)` \|", README, re.M)
    assert str(AESTHETIC_WEIGHTS.relative_to(SHARED)) in rows
    for row in rows:
        if "{" in row:  # models/laion-v1/sa_0_4_vit_{l_14,b_16,b_32}_linear.pth
            head, names, tail = re.match(r"(.*)\{(.*)\}(.*)", row).groups()
            paths = [head + name + tail for name in names.split(",")]
        else:
            paths = [row]
        for path in paths:
            assert (SHARED / path).exists(), f"the README's table names {path}, not in {SHARED}"
