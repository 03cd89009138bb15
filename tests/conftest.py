"""Shared fixtures. Data from outside the project (the real LAION weights, real img2dataset output,
odd images) lives in a folder beside the checkout, ``../shared`` (``$NEMO_AESTHETIC_SHARED``
points elsewhere). Without it the tests that need those files skip with one line naming what to
provide, and the rest run: a test that only needs a predictor of the right shape gets a generated
one. ``NEMO_AESTHETIC_REQUIRE_SHARED=1`` (``.ci/run`` sets it) turns those skips into failures,
so CI cannot quietly stop running them.
"""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_ENV = "NEMO_AESTHETIC_SHARED"
REQUIRE_SHARED_ENV = "NEMO_AESTHETIC_REQUIRE_SHARED"
SHARED = Path(os.environ.get(SHARED_ENV, REPO.parent / "shared"))
AESTHETIC_WEIGHTS = SHARED / "models" / "sac+logos+ava1-l14-linearMSE.pth"
TESTDATA = SHARED / "testdata"


def skip_without_shared(path: Path, what: str) -> None:
    """Skip (or, with $NEMO_AESTHETIC_REQUIRE_SHARED=1, fail) the calling test unless ``path`` exists."""
    if path.exists():
        return
    reason = (f"needs {what}: set ${SHARED_ENV} to a folder holding {path.relative_to(SHARED)} "
              f"(default ../shared; looked for {path})")
    if os.environ.get(REQUIRE_SHARED_ENV, "") == "1":
        pytest.fail(f"{reason}; ${REQUIRE_SHARED_ENV}=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


def needs_shared(path: Path, what: str):
    """A mark for a module or test that reads ``path`` directly (not through a fixture)."""
    if path.exists() or os.environ.get(REQUIRE_SHARED_ENV, "") == "1":
        return pytest.mark.shared_data  # present, or missing and then failing loudly in the test
    return pytest.mark.skip(reason=f"needs {what}: set ${SHARED_ENV} to a folder holding "
                                   f"{path.relative_to(SHARED)} (default ../shared; looked for {path})")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            # NeMo Curator's ported tests mark everything gpu; there the ones that need CUDA
            # themselves are skipped by tests/compat_legacy/conftest.py, the rest run on CPU.
            if "gpu" in item.keywords and "compat_legacy" not in item.path.parts and "runs_on_cpu" not in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """No test reads or writes the user's real weights cache or reaches the network for weights."""
    monkeypatch.setenv("NEMO_AESTHETIC_HOME", str(tmp_path / "nemo_home"))
    monkeypatch.setenv("NEMO_AESTHETIC_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def real_aesthetic_weights() -> str:
    """The real LAION aesthetic predictor file (its checksum, its golden scores matter)."""
    skip_without_shared(AESTHETIC_WEIGHTS, "the real LAION aesthetic weights")
    return str(AESTHETIC_WEIGHTS)


@pytest.fixture(scope="session")
def aesthetic_weights(tmp_path_factory) -> str:
    """A predictor file of the real one's shape: the real file where present, else a seeded random
    MLP of the upstream architecture (for tests that compare the pipeline against itself)."""
    if AESTHETIC_WEIGHTS.exists():
        return str(AESTHETIC_WEIGHTS)
    import torch

    from nemo_aesthetic.image.classifiers.aesthetic import upstream_mlp

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("generated_weights") / AESTHETIC_WEIGHTS.name
    torch.save({f"layers.{k}": v for k, v in upstream_mlp().state_dict().items()}, path)
    return str(path)


@pytest.fixture(scope="session")
def testdata() -> Path:
    skip_without_shared(TESTDATA, "the shared test data (real img2dataset output, odd images)")
    return TESTDATA


@pytest.fixture(scope="session")
def cpu_client():
    """One real LocalCluster (2 worker processes) shared by the tests that need a cluster."""
    from nemo_aesthetic import get_client

    client = get_client(cluster_type="cpu", n_workers=2, threads_per_worker=1, dashboard_address=":0")
    yield client
    cluster = client.cluster
    client.close()
    cluster.close()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A tiny CLIP-family model (factory.TINY_MODEL / TINY_KWARGS) saved once as a state dict:
    load it with ``checkpoint_path=`` so every process computes with the same weights."""
    import timm
    import torch
    from factory import TINY_KWARGS, TINY_MODEL

    torch.manual_seed(1234)
    model = timm.create_model(TINY_MODEL, pretrained=False, **TINY_KWARGS)
    path = tmp_path_factory.mktemp("tiny_clip") / "tiny_clip.pth"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture
def img2dataset_dir(tmp_path):
    from factory import write_img2dataset

    root = tmp_path / "dataset"
    expected = write_img2dataset(root)
    return root, expected
