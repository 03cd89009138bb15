import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NEMO_AESTHETIC_SHARED", REPO.parent / "shared"))
AESTHETIC_WEIGHTS = SHARED / "models" / "sac+logos+ava1-l14-linearMSE.pth"
TESTDATA = SHARED / "testdata"


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
            if "gpu" in item.keywords and "compat_legacy" not in item.path.parts:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """No test reads or writes the user's real weights cache or reaches the network for weights."""
    monkeypatch.setenv("NEMO_AESTHETIC_HOME", str(tmp_path / "nemo_home"))
    monkeypatch.setenv("NEMO_AESTHETIC_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def aesthetic_weights() -> str:
    if not AESTHETIC_WEIGHTS.exists():
        pytest.fail(f"the real aesthetic weights are expected at {AESTHETIC_WEIGHTS} (../shared/models)")
    return str(AESTHETIC_WEIGHTS)


@pytest.fixture(scope="session")
def testdata() -> Path:
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
