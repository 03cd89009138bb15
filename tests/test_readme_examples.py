"""Every Python example in README.md, executed exactly as printed (only the /data-style paths are
replaced), the way a user runs it: saved as ``example.py`` and run with ``python example.py`` in a
fresh environment with no network, and in a Jupyter kernel. A script without the ``__main__``
guard gets one line from ``get_client`` saying what to add.

The CLIP model is ViT-L/14 as printed, with random weights of the real shape laid out in a Hugging
Face cache exactly as a download leaves it. The API example takes the real aesthetic head from
$NEMO_AESTHETIC_HOME (sha256-checked there); the stage example's model_dir holds a head of the upstream
architecture that scores every image about 6, so its ``score_threshold=5.0`` keeps every image.
"""
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from factory import populate_hf_cache, write_img2dataset
from test_first_hour import fresh_env

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"^( *)```python\n(.*?)^\1```", README, re.S | re.M)
#: Each README block by a line only it has (a new block needs a test here).
API, STAGES, EMBEDDINGS, SCHEDULER = ("ImageTextPairDataset.from_webdataset", "pipeline = Pipeline(",
                                      "score_embeddings(", "get_client(scheduler_file=")


def block(marker: str) -> str:
    found = [textwrap.dedent(code) for _, code in BLOCKS if marker in code]
    assert len(found) == 1, marker
    return found[0]


def test_every_python_block_of_the_readme_is_tested_here():
    markers = (API, STAGES, EMBEDDINGS, SCHEDULER)
    assert len(BLOCKS) == len(markers)
    assert all(sum(m in code for _, code in BLOCKS) == 1 for m in markers)


def as_script(tmp_path, code: str, paths: dict, name: str = "example.py") -> Path:
    for printed, real in paths.items():
        assert printed in code, printed
        code = code.replace(f'"{printed}"', f'"{real}"')
    script = tmp_path / name
    script.write_text(code)
    return script


def run_script(script: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script.name], capture_output=True, text=True, cwd=script.parent,
                          env=env, timeout=timeout)


def run_in_jupyter(code: str, env: dict, cwd: Path) -> None:
    """Run ``code`` as one cell of a real Jupyter kernel (nbclient) started with ``env``."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(cwd)}})
    saved = dict(os.environ)
    try:  # the kernel inherits this process's environment; give it the fresh one
        os.environ.clear()
        os.environ.update(env)
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ----------------------------------------------------------------------- no guard: one line
def test_a_script_without_the_main_guard_gets_one_line(tmp_path):
    """The README's example as many users paste it: the same code, not under the guard."""
    code = block(API)
    imports, _, body = code.partition('if __name__ == "__main__":')
    unguarded = imports + textwrap.dedent(body.split("\n", 1)[1])
    write_img2dataset(tmp_path / "ds", n_shards=1, rows_per_shard=2)
    script = as_script(tmp_path, unguarded, {"/data/laion_subset": tmp_path / "ds",
                                             "/data/laion_aesthetic": tmp_path / "out"})
    start = time.monotonic()
    proc = run_script(script, fresh_env(tmp_path), timeout=120)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("example.py, line ") and "if __name__ == \"__main__\":" in lines[0], lines[0]
    assert time.monotonic() - start < 60
    assert not (tmp_path / "out").exists() and not list((tmp_path / "ds").glob("*.tmp*"))


# ----------------------------------------------------------------------- the examples, run
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A Hugging Face cache holding ViT-L/14 (random weights of the real shape) and, beside it in the
    same folder, an aesthetic head of the upstream architecture that scores about 6."""
    import timm

    from nemo_aesthetic.image.classifiers.aesthetic import upstream_mlp

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = timm.create_model("vit_large_patch14_clip_quickgelu_224", pretrained=False)
    populate_hf_cache(folder / "hub", model.state_dict())
    del model
    head = {f"layers.{k}": v for k, v in upstream_mlp().state_dict().items()}
    head["layers.7.bias"] = head["layers.7.bias"] + 6.0
    torch.save(head, folder / "hub" / "sac+logos+ava1-l14-linearMSE.pth")
    return folder


def model_env(tmp_path, models: Path) -> dict:
    """A user who has the weights: in the Hugging Face cache and $NEMO_AESTHETIC_HOME; no network."""
    return fresh_env(tmp_path, HF_HOME=models, NEMO_AESTHETIC_HOME=models / "hub")


@pytest.mark.slow
def test_the_api_example_runs_as_a_script(tmp_path, models, real_aesthetic_weights):
    """``AestheticClassifier()`` takes the cache's head, which must be the real file (sha256-checked)."""
    home = tmp_path / "nemo_home"
    home.mkdir()
    shutil.copy(real_aesthetic_weights, home / Path(real_aesthetic_weights).name)
    expected = write_img2dataset(tmp_path / "ds", n_shards=2, rows_per_shard=3, fail_every=3)
    script = as_script(tmp_path, block(API), {"/data/laion_subset": tmp_path / "ds",
                                              "/data/laion_aesthetic": tmp_path / "kept"})
    proc = run_script(script, fresh_env(tmp_path, HF_HOME=models, NEMO_AESTHETIC_HOME=home))
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    saved = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "ds").glob("*.parquet"))])
    ok = saved["status"] == "success"
    assert ok.sum() == sum(e["status"] == "success" for e in expected.values())
    assert saved.loc[ok, "aesthetic_score"].notna().all() and saved.loc[~ok, "aesthetic_score"].isna().all()
    kept = list((tmp_path / "kept").glob("*.parquet"))
    n_kept = sum(len(pd.read_parquet(p)) for p in kept)
    assert n_kept == int((saved.loc[ok, "aesthetic_score"] >= 5.0).sum())


@pytest.mark.slow
def test_the_stage_example_runs_as_a_script(tmp_path, models):
    write_img2dataset(tmp_path / "wds", n_shards=2, rows_per_shard=3, fail_every=0)
    script = as_script(tmp_path, block(STAGES), {"/data/wds": tmp_path / "wds", "/models": models / "hub",
                                                 "/data/curated": tmp_path / "curated"})
    proc = run_script(script, model_env(tmp_path, models))
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    written = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "curated").glob("*.parquet"))])
    assert len(written) == 6 and (written["aesthetic_score"] >= 5.0).all()


@pytest.fixture
def v1_home(tmp_path):
    from conftest import SHARED, skip_without_shared

    v1 = SHARED / "models" / "laion-v1" / "sa_0_4_vit_l_14_linear.pth"
    skip_without_shared(v1, "the LAION-Aesthetics V1 ViT-L/14 head")
    home = tmp_path / "v1_home"
    home.mkdir()
    shutil.copy(v1, home / v1.name)
    return home


def test_the_embeddings_example_runs_as_a_script_and_in_jupyter(tmp_path, v1_home):
    from test_score_embeddings import write_layout

    emb, meta, arrays = write_layout(tmp_path / "in", "parquet_npy", sizes=[4, 3])
    env = fresh_env(tmp_path, NEMO_AESTHETIC_HOME=v1_home)
    for run, out in (("script", tmp_path / "scores"), ("jupyter", tmp_path / "scores_nb")):
        paths = {"/data/img_emb": emb, "/data/scores": out, "/data/metadata": meta}
        script = as_script(tmp_path, block(EMBEDDINGS), paths)
        if run == "script":
            proc = run_script(script, env, timeout=300)
            assert proc.returncode == 0 and "7 rows; not scored: none" in proc.stdout, (proc.stdout, proc.stderr)
        else:
            run_in_jupyter(script.read_text(), env, tmp_path)
        scores = [pd.read_parquet(out / f"img_emb_{i}.parquet") for i in range(2)]
        assert [len(s) for s in scores] == [4, 3] and all(s["aesthetic_score"].notna().all() for s in scores)


def test_the_scheduler_file_example_runs_as_a_script_and_in_jupyter(tmp_path):
    env = fresh_env(tmp_path)
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file",
                                  str(scheduler_file), "--port", "0", "--dashboard-address", ":0"],
                                 env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        script = as_script(tmp_path, block(SCHEDULER), {"/shared/scheduler.json": scheduler_file})
        proc = run_script(script, env, timeout=120)
        assert proc.returncode == 0 and "<Client: 'tcp://" in proc.stdout, (proc.stdout, proc.stderr)
        run_in_jupyter(script.read_text(), env, tmp_path)
    finally:
        scheduler.terminate()
        scheduler.wait(30)


@pytest.mark.slow
def test_the_api_example_starts_its_cluster_in_jupyter(tmp_path):
    """In a kernel the guarded block runs (``__name__`` is "__main__" there) and get_client starts
    its local cluster: the guard check does not mistake a notebook for a script."""
    marker = tmp_path / "workers.txt"
    code = block(API).split("    dataset = ")[0] + textwrap.indent(textwrap.dedent(f"""
        open({str(marker)!r}, "w").write(str(len(client.scheduler_info()["workers"])))
        cluster = client.cluster
        client.close()
        cluster.close()
        """), "    ")
    run_in_jupyter(code, fresh_env(tmp_path), tmp_path)
    assert int(marker.read_text()) >= 1


@pytest.mark.slow
def test_the_api_example_offline_stops_at_the_first_failure(tmp_path, real_aesthetic_weights):
    """No CLIP weights and no network: the first model load fails at once with what to place where,
    instead of every worker retrying the hub for a minute ("Retrying in 8s")."""
    home = tmp_path / "nemo_home"
    home.mkdir()
    shutil.copy(real_aesthetic_weights, home / Path(real_aesthetic_weights).name)
    write_img2dataset(tmp_path / "ds", n_shards=2, rows_per_shard=3)
    script = as_script(tmp_path, block(API), {"/data/laion_subset": tmp_path / "ds",
                                              "/data/laion_aesthetic": tmp_path / "kept"})
    start = time.monotonic()
    proc = run_script(script, fresh_env(tmp_path, NEMO_AESTHETIC_HOME=home), timeout=300)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Retrying" not in proc.stderr, proc.stderr
    assert "weights are not available (cannot reach http://127.0.0.1:9" in proc.stderr, proc.stderr
    assert "models--timm--vit_large_patch14_clip_224.openai" in proc.stderr
    assert time.monotonic() - start < 120
